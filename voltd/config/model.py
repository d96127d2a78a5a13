"""The typed configuration, and the pydantic models that check a file's tables into it.

`Config` and the dataclasses beside it are what the rest of voltd reads. The `_Table` models
describe the file's structure key by key: each validator says what it expected in the
operator's words (`_Invalid`), so `load` can turn any mistake into a problem line. Defaults come
from `defaults`; checks that involve several keys are in `checks`.
"""

from __future__ import annotations

import functools
import re
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, NamedTuple, TypeAlias
from urllib.parse import urlsplit

import pydantic
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    InstanceOf,
    StrictBool,
    Tag,
    ValidationInfo,
)

from voltd.config.errors import _Invalid, _short_repr, format_key_path, one_line
from voltd.config.paths import _absolute, _path_note, _readable
from voltd.config.secrets import _HIDDEN
from voltd.config.values import (
    BindAddress,
    Rate,
    _bind,
    _number_glob,
    _positive_duration,
    normalize_number,
    parse_duration,
)
from voltd.defaults import (
    ADMIN_BIND,
    ANSWER_PROBES,
    MAX_BODY_BYTES,
    MAX_CONCURRENCY,
    RETENTION,
    RETRY_GIVE_UP_AFTER,
    RETRY_INITIAL,
    RETRY_MAX_DELAY,
    SERVER_BIND,
    SIGNATURE_ALGORITHM,
    SIGNATURE_ENCODING,
    SIGNATURE_HEADER,
    SPOOL_PATH,
    WEBHOOK_PATH,
)
from voltd.verify import ALGORITHMS, ENCODINGS, KeyLoadError, load_public_key_file
from voltd.vocabulary import DIRECTIONS, GLOB_CHARS, MATCH_KEYS, NUMBER_KEYS

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class MatchSpec(Mapping[str, tuple[str, ...]]):
    """The conditions of a `match` or `exclude` table; as a mapping, key → normalized values.

    `conditions[key]` holds the normalized values (E.164 numbers, number globs without
    formatting, lower-cased strings for case-insensitive keys, regex sources for `text`);
    `written[key]` holds the same values as the operator wrote them, index for index, for
    explanations. Keys keep the order of the file. An empty spec matches every event.
    """

    conditions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    written: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __getitem__(self, key: str) -> tuple[str, ...]:
        return self.conditions[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.conditions)

    def __len__(self) -> int:
        return len(self.conditions)


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    match: MatchSpec
    exclude: MatchSpec | None
    sinks: list[str]
    final: bool = False


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """A `[sinks.NAME]` table: its type, voltd's delivery settings, and everything else for
    the sink type to validate."""

    type: str
    options: dict[str, Any]
    delivery: SinkDelivery = field(default_factory=lambda: SinkDelivery())


@dataclass(frozen=True, slots=True)
class SinkDelivery:
    """The delivery settings any sink table may hold, applied by voltd, never seen by the
    plugin: `concurrency`, `rate` (None: the sink type's default) and `retry` (the keys given
    override `[retry]`)."""

    concurrency: int = 1
    rate: Rate | None = None
    retry: SinkRetryConfig | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """Everything voltd needs from the file, validated; paths are absolute."""

    source: Path
    source_name: str
    server: ServerConfig
    admin: AdminConfig
    verify: VerifyConfig
    spool: SpoolConfig
    retry: RetryConfig
    numbers: dict[str, str]
    routes: list[RouteConfig]
    sinks: dict[str, SinkConfig]
    defaults: DefaultsConfig
    plugin_dirs: list[Path]
    secret_keys: frozenset[str]

    @property
    def config_dir(self) -> Path:
        return self.source.parent

    def is_secret(self, *loc: str | int) -> bool:
        """Whether the value at this key path, or anything inside it, came from a secret.

        `config.is_secret("sinks", name, option)` is what `voltd check` needs to redact an
        option, including lists and tables that hold a secret somewhere.
        """
        path = format_key_path(loc)
        if path in self.secret_keys:
            return True
        return any(k.startswith((path + ".", path + "[")) for k in self.secret_keys)


# --------------------------------------------------------------------------------------------
# The file's tables: small validators for its values, pydantic models for its structure


def _text(value: Any) -> str:
    """A non-empty string, or the reason it is not."""
    if not isinstance(value, str):
        raise _Invalid("expected a string")
    if not value.strip():
        raise _Invalid("expected a non-empty string", show_input=False)
    return value


def _when(ok: Callable[[Any], bool], message: str, *, text: bool = True) -> BeforeValidator:
    """Accept a value (a non-empty string, with `text`) only if `ok(value)`."""

    def check(value: Any) -> Any:
        if not ok(_text(value) if text else value):
            raise _Invalid(message)
        return value

    return BeforeValidator(check)


def _context(info: ValidationInfo) -> dict[str, Any]:
    """What `_check` passes to validation: the base directory, names, secrets."""
    assert info.context is not None, "config models are validated with a context"
    return info.context


def _path(value: Any, info: ValidationInfo) -> Path:
    if "\0" in _text(value):  # no file can be named so; open() would raise ValueError
        raise _Invalid("expected a path without NUL characters")
    return _absolute(_context(info)["base"], value)


def _directory(value: Any, info: ValidationInfo) -> Path:
    """A path (see `_path`) to a directory that exists: plugins are looked for there."""
    path = _path(value, info)
    if not path.is_dir():
        why = "not a directory" if path.exists() else "directory does not exist"
        secret = value in _context(info)["secrets"]
        raise _Invalid(f"{why} {_path_note(path, secret, 'path')}", show_input=False)
    return path


class _KeyFile(NamedTuple):
    path: Path
    key: RSAPublicKey


def _key_file(value: Any, info: ValidationInfo) -> _KeyFile:
    """Load the key now: a key the server could not use must fail the check, not the start."""
    path = _path(value, info)
    try:
        return _KeyFile(path, load_public_key_file(path))
    except KeyLoadError as e:
        note = _path_note(path, value in _context(info)["secrets"])
        raise _Invalid(f"{e} {note}", show_input=False) from None


def _https_url(value: Any) -> str:
    """An absolute https:// URL. The URL itself is never shown: only its host may be logged."""
    text = _text(value)
    try:
        parts = urlsplit(text.strip())
        host = parts.hostname
        _ = parts.port  # ValueError for a port that is not a number
    except ValueError:
        host = None
    example = "like https://callbacks.respondflow.com/id_rsa.pub"
    if any(c.isspace() or not c.isprintable() for c in text.strip()) or not host:
        raise _Invalid(f"expected an https:// URL {example}", show_input=False)
    if parts.scheme.lower() == "http":
        raise _Invalid(
            "plain http:// is refused: anyone on the way could hand us their own key; "
            f"expected an https:// URL {example}",
            show_input=False,
        )
    if parts.scheme.lower() != "https":
        raise _Invalid(f"expected an https:// URL {example}", show_input=False)
    return text.strip()


def _ca_file(value: Any, info: ValidationInfo) -> Path:
    """A PEM file of CA certificates the key URL's certificate is checked against."""
    path = _path(value, info)
    secret = value in _context(info)["secrets"]
    _readable(path, secret=secret)
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, ValueError, OSError):
        why = "no PEM CA certificate in this file; expected '-----BEGIN CERTIFICATE-----'"
        raise _Invalid(f"{why} {_path_note(path, secret)}", show_input=False) from None
    return path


#: What `ssh-keygen -lf` prints for a key: SHA256 and 43 characters of unpadded base64.
_FINGERPRINT = re.compile(r"SHA256:([A-Za-z0-9+/]{43})=?")


def _fingerprint(value: Any) -> str:
    text = _text(value).strip()
    m = _FINGERPRINT.fullmatch(text[:7].upper() + text[7:])
    if m is None:
        raise _Invalid(
            'expected a key fingerprint like "SHA256:" and 43 characters, as '
            "`ssh-keygen -lf volt-key-cache.pub` and voltd's log print it"
        )
    return f"SHA256:{m.group(1)}"


def _sink_name(value: Any, info: ValidationInfo) -> str:
    sinks = _context(info)["sinks"]
    if _text(value) in sinks:
        return value
    defined = ", ".join(sorted(sinks)) if sinks else "none; add a [sinks.NAME] table"
    shown = f"such sink ({_HIDDEN})"
    if value not in _context(info)["secrets"]:
        shown = f"sink named {_short_repr(value)}"
    raise _Invalid(f"no {shown} (defined: {defined})", show_input=False)


def _many(item: Any, what: str, empty: str | None = None, *, ints: bool = False) -> Any:
    """One value or an array of them, always a list afterwards.

    A lone value keeps the key path of its key, an item gets `[i]`: the tags of this union are
    named like pydantic's own so that `_clean_loc` drops them from error paths.
    """

    def shape(value: Any) -> Any:
        if ints:  # error_code: 702 and "702" mean the same
            value = [_int_text(v) for v in value] if isinstance(value, list) else _int_text(value)
        if isinstance(value, list) and not value and empty:
            raise _Invalid(empty, show_input=False)
        if not isinstance(value, str | list):
            raise _Invalid(f"expected {what} or an array of them")
        return value

    return Annotated[
        Annotated[item, Tag("str")] | Annotated[list[item], Tag("list[str]")],
        Discriminator(lambda v: "list[str]" if isinstance(v, list) else "str"),
        BeforeValidator(shape),
        AfterValidator(lambda v: v if isinstance(v, list) else [v]),
    ]


def _int_text(value: Any) -> Any:
    if not isinstance(value, int) or isinstance(value, bool):
        return value
    try:
        return str(value)
    except ValueError:  # past Python's int-to-str limit (tomllib reads such an int in hex)
        raise _Invalid(
            "expected an error code like 702 (this integer has too many digits)", show_input=False
        ) from None


def _match_value(key: str, value: Any, info: ValidationInfo) -> tuple[str | None, str]:
    """One value of match key `key` as (normalized, as written)."""
    if not isinstance(value, str):  # error_code's integers are strings by now
        raise _Invalid(f"expected {_what(key)}")
    secret = value in _context(info)["secrets"]
    if key == "direction":
        if value.strip().lower() not in DIRECTIONS:
            raise _Invalid("expected inbound or outbound")
        return value.strip().lower(), value
    if key == "text":
        try:
            re.compile(value)
        except (re.error, RecursionError, OverflowError, ValueError) as e:
            # re's messages may quote part of the pattern, so none for a secret pattern.
            tail = "" if secret else f": {one_line(str(e))}"
            raise _Invalid("not a valid regular expression" + tail, show_input=False) from None
        return value, value
    if key not in NUMBER_KEYS:
        return value.lower(), value
    numbers: Mapping[str, str | None] = _context(info)["numbers"]
    if value in numbers:
        return numbers[value], value  # None when that number is wrong: reported there
    if any(c in GLOB_CHARS for c in value):
        glob = _number_glob(value)
        if glob is None:
            raise _Invalid(
                "expected a number glob made of +, digits, spaces and * ? [0-9] like +1555*"
            )
        return glob, value
    try:
        return normalize_number(value), value
    except ValueError:
        if not any(c.isalpha() for c in value):
            raise _Invalid(
                "expected a name from [numbers], a phone number in international form like "
                "+1 555 555 0123 or a glob like +1555*"
            ) from None
    defined = ", ".join(sorted(numbers)) if numbers else "none"
    shown = "such name" if secret else f"number named {_short_repr(value)}"
    raise _Invalid(f"no {shown} in [numbers] (defined: {defined})", show_input=False)


def _what(key: str) -> str:
    """What one value of match key `key` may be, for messages."""
    return "a string (or integer)" if key == "error_code" else "a string"


def _values(key: str) -> Any:
    item = Annotated[Any, BeforeValidator(functools.partial(_match_value, key))]
    empty = "expected at least one value (an empty list never matches)"
    return _many(item, _what(key), empty, ints=key == "error_code") | None


def _is(kind: type | tuple[type, ...], message: str) -> BeforeValidator:
    return _when(lambda v: isinstance(v, kind), message, text=False)


_Bind = Annotated[InstanceOf[BindAddress], BeforeValidator(_bind)]
_Path = Annotated[Path, BeforeValidator(_path)]
_PositiveDuration = Annotated[float, BeforeValidator(_positive_duration)]
_SinkName = Annotated[str, BeforeValidator(_sink_name)]
if TYPE_CHECKING:
    # What the validators below produce, for the type checker: `_many` and `_values` build
    # pydantic types at run time, which a static checker cannot follow.
    _Binds = list[BindAddress]
    _KeyFiles = list[_KeyFile]
    _Fingerprints = list[str]
    _Dirs = list[Path]
    _SinkNames = list[str]
    _Values: TypeAlias = list[tuple[str | None, str]] | None
    _VNumber: TypeAlias = _Values
    _VFrom: TypeAlias = _Values
    _VTo: TypeAlias = _Values
    _VDirection: TypeAlias = _Values
    _VEvent: TypeAlias = _Values
    _VStatus: TypeAlias = _Values
    _VMessageType: TypeAlias = _Values
    _VErrorCode: TypeAlias = _Values
    _VCarrier: TypeAlias = _Values
    _VText: TypeAlias = _Values
else:
    _Binds = _many(_Bind, "a host:port string", "expected at least one host:port like 0.0.0.0:8443")
    _KeyFiles = _many(
        Annotated[InstanceOf[_KeyFile], BeforeValidator(_key_file)],
        "a file path",
        "expected at least one public key file",
    )
    _Fingerprints = _many(
        Annotated[str, BeforeValidator(_fingerprint)], 'a key fingerprint ("SHA256:…")'
    )
    _Dirs = _many(Annotated[Path, BeforeValidator(_directory)], "a directory path")
    _SinkNames = _many(_SinkName, "a sink name", "expected at least one sink name")
    (
        _VNumber,
        _VFrom,
        _VTo,
        _VDirection,
        _VEvent,
        _VStatus,
        _VMessageType,
        _VErrorCode,
        _VCarrier,
        _VText,
    ) = (_values(key) for key in MATCH_KEYS)
_SECTION: Final[Any] = pydantic.Field(default_factory=dict, validate_default=True)


class _Table(pydantic.BaseModel):
    """A TOML table: unknown keys are mistakes, and so is anything that is not a table."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    _expected: ClassVar[str] = "expected a table"

    @pydantic.model_validator(mode="before")
    @classmethod
    def _is_table(cls, data: Any) -> Any:
        if not isinstance(data, dict | cls):
            raise _Invalid(cls._expected)
        return data


class ServerConfig(_Table):
    """The webhook listener."""

    bind: _Binds = [BindAddress.parse(SERVER_BIND)]
    path: Annotated[
        str,
        _when(
            lambda t: t.startswith("/") and not any(c.isspace() or c in "?#" for c in t),
            "expected a URL path starting with /",
        ),
    ] = WEBHOOK_PATH
    certfile: _Path | None = None  # both readable and a pair: see _cross_checks
    keyfile: _Path | None = None
    max_body_bytes: Annotated[
        int,
        _when(
            lambda v: type(v) is int and v >= 1,
            "expected a whole number of bytes, at least 1",
            text=False,
        ),
    ] = MAX_BODY_BYTES
    answer_probes: StrictBool = ANSWER_PROBES

    @property
    def https(self) -> bool:
        return self.certfile is not None


class AdminConfig(_Table):
    """Health and metrics listener; `bind` None means disabled (bind = "")."""

    bind: Annotated[
        InstanceOf[BindAddress] | None, BeforeValidator(lambda v: None if v == "" else _bind(v))
    ] = BindAddress.parse(ADMIN_BIND)


class VerifyConfig(_Table):
    """How signatures are checked; `keys` are the loaded `public_keys`, same order, then the
    keys `voltd.keyfetch` took from `public_key_url` (`with_url_keys`; none after `load`).

    `public_keys` or `public_key_url` is required (see `checks`); `public_key_ca_file` and
    `public_key_fingerprints` only go with `public_key_url`.
    """

    key_files: _KeyFiles = pydantic.Field(default_factory=list, alias="public_keys")
    public_key_url: Annotated[str, BeforeValidator(_https_url)] | None = None
    public_key_ca_file: Annotated[Path, BeforeValidator(_ca_file)] | None = None
    public_key_fingerprints: _Fingerprints = []
    header: Annotated[str, _when(_HEADER_NAME.fullmatch, "expected an HTTP header name")] = (
        SIGNATURE_HEADER
    )
    algorithm: Annotated[
        str, _when(ALGORITHMS.__contains__, f"expected one of {', '.join(ALGORITHMS)}")
    ] = SIGNATURE_ALGORITHM
    encoding: Annotated[
        str, _when(ENCODINGS.__contains__, f"expected one of {', '.join(ENCODINGS)}")
    ] = SIGNATURE_ENCODING
    max_age: Annotated[float, BeforeValidator(parse_duration)] = RETENTION
    # When max_age is not given, load() sets it to spool.retention.

    @property
    def public_keys(self) -> list[Path]:
        return [k.path for k in self.key_files]

    _url_keys: tuple[RSAPublicKey, ...] = pydantic.PrivateAttr(())

    @property
    def keys(self) -> list[RSAPublicKey]:
        return [k.key for k in self.key_files] + list(self._url_keys)

    @property
    def url_keys(self) -> list[RSAPublicKey]:
        """The keys taken from `public_key_url` (fetched or cached), beside `public_keys`."""
        return list(self._url_keys)

    def with_url_keys(self, keys: list[RSAPublicKey]) -> VerifyConfig:
        """A copy that also verifies with `keys`, fetched from `public_key_url`."""
        copy = self.model_copy()
        copy._url_keys = tuple(keys)
        return copy


def _postgres_url(value: Any) -> str:
    """A libpq URL (`postgresql://user@host:port/dbname?…`). Never shown: it may hold a
    password; messages and `voltd check` show `SpoolConfig.where`."""
    text = _text(value).strip()
    example = "like postgresql://voltd@db.internal:5432/voltd"
    if not text.lower().startswith(("postgresql://", "postgres://")):
        raise _Invalid(f"expected a PostgreSQL URL {example}", show_input=False)
    import psycopg

    try:
        psycopg.conninfo.conninfo_to_dict(text)
    except psycopg.Error:  # not its message: that may quote the URL
        raise _Invalid(
            f"not a PostgreSQL URL libpq can read; expected one {example}", show_input=False
        ) from None
    return text


class SpoolConfig(_Table):
    """Where events wait: a SQLite file (`path`, the default) or, for several instances, a
    PostgreSQL database (`url`). Setting both is refused (see `_spool_checks`)."""

    path: _Path = pydantic.Field(SPOOL_PATH, validate_default=True)
    url: Annotated[str, BeforeValidator(_postgres_url)] | None = None
    #: The database password, apart from the URL so that a secret needs no URL-escaping.
    password: Annotated[str, BeforeValidator(_text)] | None = None
    #: Small files of voltd's own (the fetched key's cache). Default: `path`'s directory;
    #: with `url`, `$STATE_DIRECTORY` (systemd's StateDirectory=), else the config's directory.
    state_dir: _Path | None = None
    retention: _PositiveDuration = RETENTION

    @property
    def conninfo(self) -> str | None:
        """What psycopg connects with: `url`, with `password` added; None for SQLite."""
        if self.url is None:
            return None
        if self.password is None:
            return self.url
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self.url, password=self.password)

    @property
    def where(self) -> str:
        """The spool for messages: the file, or the database URL without its password."""
        if self.url is None:
            return str(self.path)
        from voltd.spool_pg.sql import safe_url

        return safe_url(self.url)


class RetryConfig(_Table):
    initial: _PositiveDuration = RETRY_INITIAL
    max_delay: _PositiveDuration = RETRY_MAX_DELAY
    give_up_after: _PositiveDuration = RETRY_GIVE_UP_AFTER


class SinkRetryConfig(_Table):
    """A sink's own `retry` table: each key given overrides the one in `[retry]`."""

    initial: _PositiveDuration | None = None
    max_delay: _PositiveDuration | None = None
    give_up_after: _PositiveDuration | None = None

    def over(self, base: RetryConfig) -> RetryConfig:
        given = {k: v for k, v in self.model_dump().items() if v is not None}
        return base.model_copy(update=given)


def _rate(value: Any) -> Rate:
    try:
        return Rate.parse(value)
    except ValueError as e:
        raise _Invalid(str(e)) from None


_Rate = Annotated[InstanceOf[Rate], BeforeValidator(_rate)]
_Concurrency = Annotated[
    int,
    _when(
        lambda v: type(v) is int and 1 <= v <= MAX_CONCURRENCY,
        f"expected a whole number from 1 to {MAX_CONCURRENCY}",
        text=False,
    ),
]


class DefaultsConfig(_Table):
    unmatched: _SinkName | None = None


class _Match(_Table):
    """A `match` or `exclude` table; each value is (normalized, as written)."""

    _expected: ClassVar[str] = 'expected a table like { status = ["failed"] }'
    number: _VNumber = None
    from_: _VFrom = pydantic.Field(None, alias="from")
    to: _VTo = None
    direction: _VDirection = None
    event: _VEvent = None
    status: _VStatus = None
    message_type: _VMessageType = None
    error_code: _VErrorCode = None
    carrier: _VCarrier = None
    text: _VText = None
    _order: tuple[str, ...] = ()

    @pydantic.model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler: pydantic.ValidatorFunctionWrapHandler) -> _Match:
        """Remember the file's key order: explanations list conditions as the file does."""
        spec = handler(data)
        spec._order = tuple(k for k in data if k in MATCH_KEYS)
        return spec

    def spec(self) -> MatchSpec:
        fields = {key: getattr(self, "from_" if key == "from" else key) for key in self._order}
        return MatchSpec(
            {k: tuple(n for n, _ in v) for k, v in fields.items()},
            {k: tuple(w for _, w in v) for k, v in fields.items()},
        )


class _Route(_Table):
    _expected: ClassVar[str] = "expected a [[routes]] table"
    name: Annotated[str, BeforeValidator(_text)] | None = None
    match: _Match | None = None
    exclude: _Match | None = None
    sinks: _SinkNames
    final: StrictBool = False

    @pydantic.field_validator("exclude")
    @classmethod
    def _not_empty(cls, exclude: _Match | None) -> _Match | None:
        if exclude is not None and not exclude._order:
            raise _Invalid(
                "an empty exclude table would exclude every event; "
                "expected at least one key, or remove exclude",
                show_input=False,
            )
        return exclude


class _Sink(_Table):
    """A `[sinks.NAME]` table: its type here, the rest for the sink type to validate."""

    model_config = pydantic.ConfigDict(extra="allow")
    _expected: ClassVar[str] = "expected a table [{path}]"
    type: Annotated[str, BeforeValidator(_text)]
    # Delivery settings (SinkDelivery): voltd's, so a plugin's options cannot use these names.
    concurrency: _Concurrency = 1
    rate: _Rate | None = None
    retry: SinkRetryConfig | None = None


class _File(_Table):
    """The whole file, as `load` turns it into a Config."""

    server: ServerConfig = _SECTION
    admin: AdminConfig = _SECTION
    verify: VerifyConfig = _SECTION  # public_keys or public_key_url is required: see checks
    spool: SpoolConfig = _SECTION
    retry: RetryConfig = _SECTION
    numbers: Annotated[
        dict[str, Annotated[str, BeforeValidator(lambda v: normalize_number(_text(v)))]],
        _is(dict, 'expected a table like { front-desk = "+1 555 555 0123" }'),
    ] = {}
    routes: Annotated[list[_Route], _is(list, "expected an array of [[routes]] tables")] = []
    sinks: Annotated[dict[str, _Sink], _is(dict, "expected a table of [sinks.NAME] tables")] = {}
    defaults: DefaultsConfig = _SECTION
    plugin_dirs: _Dirs = []


def _keys(model: type[pydantic.BaseModel]) -> tuple[str, ...]:
    return tuple(info.alias or name for name, info in model.model_fields.items())


_TOP_KEYS: Final = _keys(_File)
_SERVER_KEYS: Final = _keys(ServerConfig)
_ADMIN_KEYS: Final = _keys(AdminConfig)
_VERIFY_KEYS: Final = _keys(VerifyConfig)
_SPOOL_KEYS: Final = _keys(SpoolConfig)
_RETRY_KEYS: Final = _keys(RetryConfig)
_ROUTE_KEYS: Final = _keys(_Route)
_DEFAULTS_KEYS: Final = _keys(DefaultsConfig)
