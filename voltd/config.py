"""Configuration: one TOML file turned into typed, validated settings, or every mistake at once.

The operator fixes a config by reading our messages, so each problem names the file, the key
path and what was expected, and all of them are reported together: a broken config should take
one edit, not one restart per typo. Nothing here raises a traceback for bad input, and no
value that came from a `${env:…}`/`${file:…}` secret is ever echoed back.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import math
import os
import re
import ssl
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, get_args, get_origin

import phonenumbers
import pydantic
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from voltd.verify import ALGORITHMS, ENCODINGS, KeyLoadError, load_public_key_file

__all__ = [
    "MATCH_KEYS",
    "AdminConfig",
    "BindAddress",
    "Config",
    "ConfigError",
    "DefaultsConfig",
    "MatchSpec",
    "RetryConfig",
    "RouteConfig",
    "ServerConfig",
    "SinkConfig",
    "SpoolConfig",
    "VerifyConfig",
    "format_key_path",
    "load",
    "normalize_number",
    "parse_duration",
    "validation_problems",
]

DURATION_EXPECTED: Final = "expected a duration like 200ms, 2s, 5m, 1h or 7d"
NUMBER_EXPECTED: Final = "expected a phone number in international form like +1 555 555 0123"

#: Keys of a `match`/`exclude` table, in the order the documentation lists them.
MATCH_KEYS: Final = (
    "number",
    "from",
    "to",
    "direction",
    "event",
    "status",
    "message_type",
    "error_code",
    "carrier",
    "text",
)
#: Keys whose values are phone numbers, names from [numbers] or number globs.
NUMBER_KEYS: Final = frozenset({"number", "from", "to"})
#: Keys compared case-insensitively (values are stored lower-cased).
CASELESS_KEYS: Final = frozenset(
    {"direction", "event", "status", "message_type", "error_code", "carrier"}
)
DIRECTIONS: Final = ("inbound", "outbound")
GLOB_CHARS: Final = frozenset("*?[")

_TOP_KEYS: Final = (
    "server",
    "admin",
    "verify",
    "spool",
    "retry",
    "numbers",
    "routes",
    "sinks",
    "defaults",
    "plugin_dirs",
)
_SERVER_KEYS: Final = ("bind", "path", "certfile", "keyfile", "max_body_bytes", "answer_probes")
_ADMIN_KEYS: Final = ("bind",)
_VERIFY_KEYS: Final = ("public_keys", "header", "algorithm", "encoding", "max_age")
_SPOOL_KEYS: Final = ("path", "retention")
_RETRY_KEYS: Final = ("initial", "max_delay", "give_up_after")
_ROUTE_KEYS: Final = ("name", "match", "exclude", "sinks", "final")
_DEFAULTS_KEYS: Final = ("unmatched",)

_DEFAULT_BIND: Final = "0.0.0.0:8443"
_DEFAULT_ADMIN_BIND: Final = "127.0.0.1:9310"
_DEFAULT_RETENTION: Final = 7 * 86400.0
_DEFAULT_HEADER: Final = "X-Respond-Flow-Signature"
_DEFAULT_ALGORITHM: Final = "rsa-pkcs1v15-sha256"
_DEFAULT_ENCODING: Final = "base64"

# --------------------------------------------------------------------------------------------
# Errors and key paths


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every reason, one line each."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


Loc = tuple[str | int, ...]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_key_path(loc: Iterable[str | int], prefix: str = "") -> str:
    """Spell a key path the way the operator would find it in the file: `routes[1].sinks[0]`.

    Keys that TOML would need quoted are quoted, so `sinks."a.b"` is not mistaken for nesting.
    """
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            out += f".{key}" if out else key
    return out


def _kind(value: object) -> str:
    """Name a value's type in TOML's words, which is what the operator wrote."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, _dt.date | _dt.time):
        return "a date/time"
    return f"a {type(value).__name__}"


def _short_repr(value: str, limit: int = 80) -> str:
    if len(value) > limit:
        return repr(value[:limit]) + "…"
    return repr(value)


# --------------------------------------------------------------------------------------------
# Value parsers usable on their own

_DIGITS = r"(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
_PLAIN_NUMBER = re.compile(_DIGITS)
_DURATION_PART = re.compile(rf"\s*({_DIGITS})\s*(ms|s|m|h|d)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | int | float) -> float:
    """Seconds from `200ms`, `2s`, `5m`, `1h`, `7d`, `1h30m` or a plain number of seconds.

    Units are lower-case only: `5M` could mean months to someone, and guessing is worse than
    asking.
    """
    if isinstance(value, bool):
        raise ValueError(DURATION_EXPECTED)
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(DURATION_EXPECTED) from None
    elif isinstance(value, str):
        text = value.strip()
        if _PLAIN_NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            seconds, pos = 0.0, 0
            while pos < len(text):
                m = _DURATION_PART.match(text, pos)
                if m is None:
                    raise ValueError(DURATION_EXPECTED)
                seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
                pos = m.end()
            if pos == 0:
                raise ValueError(DURATION_EXPECTED)
    else:
        raise ValueError(DURATION_EXPECTED)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(DURATION_EXPECTED)
    return seconds


_PHONE_CHARS: Final = frozenset("+0123456789 -().")
_NUMBER_FORMATTING: Final = frozenset(" -().")


def normalize_number(text: str) -> str:
    """E.164 for a number written in international form, formatting allowed.

    `is_possible_number` rather than `is_valid_number`: Volt's own examples use fictional 555
    numbers, which are possible but not valid, and an operator testing with them must not be
    told their config is wrong.
    """
    if not isinstance(text, str):
        raise ValueError(NUMBER_EXPECTED)
    t = text.strip()
    if (
        not t.startswith("+")
        or len(t) > 40
        or "+" in t[1:]
        or any(c not in _PHONE_CHARS for c in t)
    ):
        raise ValueError(NUMBER_EXPECTED)
    try:
        number = phonenumbers.parse(t, None)
    except phonenumbers.NumberParseException:
        raise ValueError(NUMBER_EXPECTED) from None
    if not phonenumbers.is_possible_number(number):
        raise ValueError(NUMBER_EXPECTED)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _number_glob(text: str) -> str | None:
    """Strip formatting from a number glob, keeping `-` inside `[0-4]` ranges; None if invalid."""
    out: list[str] = []
    in_class = False
    for c in text.strip():
        if in_class:
            if c == "]":
                in_class = False
            elif c not in "0123456789-!":
                return None
            out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
        elif c in _NUMBER_FORMATTING:
            continue
        elif c in "+0123456789*?":
            out.append(c)
        else:
            return None
    glob = "".join(out)
    if in_class or not glob or not any(c in GLOB_CHARS for c in glob):
        return None
    return glob


# --------------------------------------------------------------------------------------------
# pydantic errors → problems

_PLAIN_MESSAGES: Final = {
    "missing": "missing; this key is required",
    "string_type": "expected a string",
    "str_type": "expected a string",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "list_type": "expected an array",
    "tuple_type": "expected an array",
    "set_type": "expected an array",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "dataclass_type": "expected a table",
    "none_required": "expected no value",
    "finite_number": "expected a finite number",
    "url_type": "expected a URL",
    "path_type": "expected a file path",
    "frozen_instance": "cannot be changed",
}
_CONSTRAINT_MESSAGES: Final = {
    "greater_than": ("gt", "expected a value greater than {}"),
    "greater_than_equal": ("ge", "expected a value of at least {}"),
    "less_than": ("lt", "expected a value less than {}"),
    "less_than_equal": ("le", "expected a value of at most {}"),
    "multiple_of": ("multiple_of", "expected a multiple of {}"),
    "string_too_short": ("min_length", "expected at least {} character(s)"),
    "string_too_long": ("max_length", "expected at most {} character(s)"),
    "too_short": ("min_length", "expected at least {} item(s)"),
    "too_long": ("max_length", "expected at most {} item(s)"),
    "string_pattern_mismatch": ("pattern", "expected text matching the pattern {}"),
    "literal_error": ("expected", "expected {}"),
    "enum": ("expected", "expected {}"),
}
# Union members and validator wrappers add these to `loc`; they are not keys the user wrote.
_LOC_TAG = re.compile(
    r"(?:function-(?:after|before|wrap|plain)|tagged-union|list|dict|set|tuple|frozenset"
    r"|union|chain|nullable|lax-or-strict|json-or-python|constrained-\w+|is-instance|literal)"
    r"\[.*\]|constrained-\w+|lax-or-strict|json-or-python|str|int|float|bool|bytes|none"
)


def _pydantic_message(error: Mapping[str, Any]) -> str:
    """Plain words for one pydantic error, built so that the input value can never appear."""
    etype = error.get("type", "")
    if etype in _PLAIN_MESSAGES:
        return _PLAIN_MESSAGES[etype]
    ctx = error.get("ctx") or {}
    if etype in _CONSTRAINT_MESSAGES:
        key, template = _CONSTRAINT_MESSAGES[etype]
        if key in ctx:
            return template.format(ctx[key])
    msg = str(error.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    if msg.startswith("Input should be "):
        return "expected " + msg[len("Input should be ") :]
    if msg.startswith("Input should have "):
        return "expected " + msg[len("Input should have ") :]
    return msg[:1].lower() + msg[1:]


def _unwrap_models(annotation: Any) -> list[Any]:
    """The annotations a loc step can descend into (Optional/Union members)."""
    origin = get_origin(annotation)
    if origin is not None and origin not in (list, dict, tuple, set, frozenset):
        found: list[Any] = []
        for arg in get_args(annotation):
            found.extend(_unwrap_models(arg))
        return found or [annotation]
    return [annotation]


def _descend(annotation: Any, part: str | int) -> Any | None:
    """The annotation reached by one step of a loc, or None if it cannot be followed."""
    for candidate in _unwrap_models(annotation):
        origin = get_origin(candidate)
        args = get_args(candidate)
        if isinstance(part, int) and origin in (list, tuple, set, frozenset) and args:
            return args[0]
        if isinstance(part, str) and origin is dict and len(args) == 2:
            return args[1]
        if (
            isinstance(part, str)
            and isinstance(candidate, type)
            and issubclass(candidate, pydantic.BaseModel)
        ):
            for name, info in candidate.model_fields.items():
                if part in (name, info.alias):
                    return info.annotation
    return None


def _allowed_keys(model: type[pydantic.BaseModel] | None, loc: Loc) -> list[str] | None:
    """The keys accepted by the table at `loc`, when the model says so."""
    if model is None:
        return None
    annotation: Any = model
    for part in loc:
        annotation = _descend(annotation, part)
        if annotation is None:
            return None
    for candidate in _unwrap_models(annotation):
        if isinstance(candidate, type) and issubclass(candidate, pydantic.BaseModel):
            return [info.alias or name for name, info in candidate.model_fields.items()]
    return None


def _clean_loc(model: type[pydantic.BaseModel] | None, loc: Sequence[str | int]) -> Loc:
    """Drop the type tags pydantic puts in `loc` for union members and validators."""
    out: list[str | int] = []
    annotation: Any = model
    for part in loc:
        if annotation is not None:
            nxt = _descend(annotation, part)
            if nxt is None and isinstance(part, str) and _LOC_TAG.fullmatch(part):
                continue
            out.append(part)
            annotation = nxt
        elif isinstance(part, str) and _LOC_TAG.fullmatch(part) and out:
            continue
        else:
            out.append(part)
    return tuple(out)


def _merge(messages: list[str]) -> str:
    """One sentence for the alternatives of a union: `expected a string or an array`."""
    unique = list(dict.fromkeys(messages))
    if len(unique) == 1:
        return unique[0]
    if all(m.startswith("expected ") for m in unique):
        return "expected " + " or ".join(m[len("expected ") :] for m in unique)
    return "; or ".join(unique)


def validation_problems(
    source: str,
    prefix: str,
    err: pydantic.ValidationError,
    *,
    model: type[pydantic.BaseModel] | None = None,
) -> list[str]:
    """Turn a pydantic error into `FILE: key.path: what is wrong` lines.

    Input values are never included: pydantic does not know which keys hold secrets. Pass the
    validated `model` to have unknown keys listed with the keys that are accepted.
    """
    grouped: dict[Loc, list[str]] = {}
    for error in err.errors(include_url=False, include_input=False):
        loc = _clean_loc(model, error.get("loc", ()))
        if error.get("type") == "extra_forbidden" and loc:
            allowed = _allowed_keys(model, loc[:-1])
            message = (
                f"unknown key (expected one of: {', '.join(allowed)})" if allowed else "unknown key"
            )
        else:
            message = _pydantic_message(error)
        grouped.setdefault(loc, []).append(message)
    problems = []
    for loc, messages in grouped.items():
        path = format_key_path(loc, prefix) or "(top level)"
        problems.append(f"{source}: {path}: {_merge(messages)}")
    return problems


# --------------------------------------------------------------------------------------------
# The typed configuration


@dataclass(frozen=True, slots=True)
class BindAddress:
    """One listening address; IPv6 hosts are kept without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> BindAddress:
        """`host:port` or `[v6]:port`; ValueError says what was expected."""
        expected = "expected host:port like 0.0.0.0:8443 or [::1]:8443"
        t = text.strip()
        if t.startswith("["):
            close = t.find("]")
            if close < 0 or t[close + 1 : close + 2] != ":":
                raise ValueError(expected)
            host, port_text = t[1:close], t[close + 2 :]
            if not _is_ipv6(host):
                raise ValueError(f"{expected}; the part in brackets is not an IPv6 address")
        else:
            host, sep, port_text = t.rpartition(":")
            if not sep or not host:
                raise ValueError(expected)
            if ":" in host:
                raise ValueError(f"{expected}; put an IPv6 address in brackets")
            if not _HOSTNAME.fullmatch(host):
                raise ValueError(f"{expected}; the host is not a host name or IP address")
        if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
            raise ValueError(f"{expected}; the port must be a number from 0 to 65535")
        return cls(host, int(port_text))


_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The webhook listener."""

    bind: list[BindAddress] = field(default_factory=lambda: [BindAddress("0.0.0.0", 8443)])
    path: str = "/webhooks"
    certfile: Path | None = None
    keyfile: Path | None = None
    max_body_bytes: int = 1048576
    answer_probes: bool = True

    @property
    def https(self) -> bool:
        return self.certfile is not None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """Health and metrics listener; `bind` None means disabled."""

    bind: BindAddress | None = BindAddress("127.0.0.1", 9310)


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    """How signatures are checked; `keys` are the loaded `public_keys`, same order."""

    public_keys: list[Path]
    keys: list[RSAPublicKey]
    header: str = _DEFAULT_HEADER
    algorithm: str = _DEFAULT_ALGORITHM
    encoding: str = _DEFAULT_ENCODING
    max_age: float = _DEFAULT_RETENTION


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    path: Path = Path("spool.db")
    retention: float = _DEFAULT_RETENTION


@dataclass(frozen=True, slots=True)
class RetryConfig:
    initial: float = 2.0
    max_delay: float = 3600.0
    give_up_after: float = 86400.0


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
    """A `[sinks.NAME]` table: its type, and everything else for the sink type to validate."""

    type: str
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DefaultsConfig:
    unmatched: str | None = None


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
# Secrets


class _Broken:
    """Stands in for a value whose secret could not be resolved, so it is not judged twice."""

    def __repr__(self) -> str:
        return "<unresolved secret>"


_BROKEN: Final = _Broken()
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_SECRET_HELP: Final = "expected ${env:NAME} or ${file:PATH} (write $${ for a literal ${)"


# --------------------------------------------------------------------------------------------
# The checker


class _Checker:
    """Walks the parsed TOML once, collecting problems instead of stopping at the first."""

    def __init__(self, source_name: str, base: Path) -> None:
        self.source_name = source_name
        self.base = base
        self.problems: list[str] = []
        self.secret_paths: set[str] = set()

    # -- reporting --------------------------------------------------------------------------

    def add(self, loc: Loc, message: str) -> None:
        path = format_key_path(loc) or "(top level)"
        self.problems.append(f"{self.source_name}: {path}: {message}")

    def got(self, loc: Loc, value: object) -> str:
        """`, got 'x'` for a message, or nothing when the value is (part) secret."""
        if format_key_path(loc) in self.secret_paths:
            return " (value hidden: it comes from a secret)"
        if isinstance(value, str):
            return f", got {_short_repr(value)}"
        if isinstance(value, bool | int | float):
            return f", got {_kind(value)} ({value!r})"
        return f", got {_kind(value)}"

    # -- secrets ----------------------------------------------------------------------------

    def expand(self, value: Any, loc: Loc) -> Any:
        """Resolve `${env:…}`/`${file:…}` in every string, remembering where secrets went."""
        if isinstance(value, dict):
            return {k: self.expand(v, (*loc, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand(v, (*loc, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return self._expand_string(value, loc)
        return value

    def _expand_string(self, text: str, loc: Loc) -> Any:
        out: list[str] = []
        pos = 0
        secret = False
        ok = True
        for m in _REFERENCE.finditer(text):
            out.append(text[pos : m.start()])
            pos = m.end()
            token = m.group(0)
            if token == "$${":
                out.append("${")
                continue
            secret = True
            if m.group(1) is None:
                self.add(loc, f"unterminated secret reference '${{' without '}}'; {_SECRET_HELP}")
                ok = False
                continue
            resolved = self._resolve(m.group(1), loc)
            if resolved is None:
                ok = False
            else:
                out.append(resolved)
        out.append(text[pos:])
        if secret:
            self.secret_paths.add(format_key_path(loc))
        return "".join(out) if ok else _BROKEN

    def _resolve(self, reference: str, loc: Loc) -> str | None:
        kind, sep, arg = reference.partition(":")
        kind = kind.strip()
        if not sep or kind not in ("env", "file"):
            shown = kind if _BARE_KEY.fullmatch(kind or "-") and len(kind) <= 20 else "?"
            self.add(loc, f"unknown kind of secret reference '${{{shown}:…}}'; {_SECRET_HELP}")
            return None
        arg = arg.strip()
        if not arg:
            what = "NAME" if kind == "env" else "PATH"
            self.add(loc, f"empty secret reference '${{{kind}:}}'; expected ${{{kind}:{what}}}")
            return None
        if kind == "env":
            value = os.environ.get(arg)
            if value is None:
                self.add(loc, f"environment variable {arg} is not set")
            return value
        path = self.path(arg)
        try:
            with open(path, "rb") as f:
                data = f.read(1 << 20)
        except OSError as e:
            self.add(loc, f"cannot read secret file {path}: {e.strerror or type(e).__name__}")
            return None
        try:
            content = data.decode("utf-8")
        except UnicodeDecodeError:
            self.add(loc, f"secret file {path} is not UTF-8 text")
            return None
        if content.endswith("\r\n"):
            return content[:-2]
        if content.endswith("\n"):
            return content[:-1]
        return content

    # -- shapes -----------------------------------------------------------------------------

    def table(self, loc: Loc, value: Any, allowed: Sequence[str]) -> dict[str, Any]:
        """The table at `loc` (empty when absent or wrong); unknown keys are problems."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            if value is not _BROKEN:
                self.add(loc, f"expected a table{self.got(loc, value)}")
            return {}
        for key in value:
            if key not in allowed:
                self.add((*loc, key), f"unknown key (expected one of: {', '.join(allowed)})")
        return value

    def string(self, loc: Loc, value: Any, *, nonempty: bool = True) -> str | None:
        if value is _BROKEN:
            return None
        if not isinstance(value, str):
            self.add(loc, f"expected a string{self.got(loc, value)}")
            return None
        if nonempty and not value.strip():
            self.add(loc, "expected a non-empty string")
            return None
        return value

    def boolean(self, loc: Loc, value: Any) -> bool | None:
        if value is _BROKEN:
            return None
        if not isinstance(value, bool):
            self.add(loc, f"expected true or false{self.got(loc, value)}")
            return None
        return value

    def string_list(self, loc: Loc, value: Any, what: str = "a string") -> list[tuple[Loc, Any]]:
        """Items of a string-or-array value, each with its own loc (a lone string keeps `loc`)."""
        if value is _BROKEN:
            return []
        if isinstance(value, list):
            return [((*loc, i), item) for i, item in enumerate(value)]
        if isinstance(value, str):
            return [(loc, value)]
        self.add(loc, f"expected {what} or an array of them{self.got(loc, value)}")
        return []

    def duration(self, loc: Loc, value: Any) -> float | None:
        if value is _BROKEN:
            return None
        try:
            return parse_duration(value)
        except ValueError as e:
            self.add(loc, f"{e}{self.got(loc, value)}")
            return None

    def path(self, text: str) -> Path:
        """Absolute path; relative ones are relative to the config file, not the cwd."""
        return Path(os.path.abspath(self.base / os.path.expanduser(text)))

    def path_value(self, loc: Loc, value: Any) -> Path | None:
        text = self.string(loc, value)
        return None if text is None else self.path(text)

    # -- sections ---------------------------------------------------------------------------

    def server(self, raw: Any) -> ServerConfig:
        t = self.table(("server",), raw, _SERVER_KEYS)
        defaults = ServerConfig()
        binds = self.binds(("server", "bind"), t.get("bind", [_DEFAULT_BIND])) or defaults.bind

        path = defaults.path
        if "path" in t:
            text = self.string(("server", "path"), t["path"])
            if text is not None:
                if not text.startswith("/") or any(c.isspace() or c in "?#" for c in text):
                    where = ("server", "path")
                    self.add(where, f"expected a URL path starting with /{self.got(where, text)}")
                else:
                    path = text

        certfile = (
            self.path_value(("server", "certfile"), t["certfile"]) if "certfile" in t else None
        )
        keyfile = self.path_value(("server", "keyfile"), t["keyfile"]) if "keyfile" in t else None
        if "certfile" in t and "keyfile" not in t:
            self.add(
                ("server", "keyfile"),
                "missing: server.certfile is set, so keyfile (its private key) is needed too; "
                "set both for HTTPS, or neither for plain HTTP behind a TLS proxy",
            )
        elif "keyfile" in t and "certfile" not in t:
            self.add(
                ("server", "certfile"),
                "missing: server.keyfile is set, so certfile (its certificate) is needed too; "
                "set both for HTTPS, or neither for plain HTTP behind a TLS proxy",
            )
        elif certfile is not None and keyfile is not None:
            self.check_tls(certfile, keyfile)
        for key, given in (("certfile", certfile), ("keyfile", keyfile)):
            if given is not None and (certfile is None or keyfile is None):
                self.readable(("server", key), given)

        max_body = defaults.max_body_bytes
        if "max_body_bytes" in t:
            v = t["max_body_bytes"]
            where = ("server", "max_body_bytes")
            if v is _BROKEN:
                pass
            elif not isinstance(v, int) or isinstance(v, bool) or v < 1:
                self.add(where, f"expected a whole number of bytes, at least 1{self.got(where, v)}")
            else:
                max_body = v

        probes = defaults.answer_probes
        if "answer_probes" in t:
            b = self.boolean(("server", "answer_probes"), t["answer_probes"])
            probes = probes if b is None else b
        return ServerConfig(binds, path, certfile, keyfile, max_body, probes)

    def binds(self, loc: Loc, value: Any) -> list[BindAddress] | None:
        items = self.string_list(loc, value, "a host:port string")
        if isinstance(value, list) and not value:
            self.add(loc, "expected at least one host:port like 0.0.0.0:8443")
            return None
        out = []
        for item_loc, item in items:
            b = self.bind(item_loc, item)
            if b is not None:
                out.append(b)
        return out if out and len(out) == len(items) else None

    def bind(self, loc: Loc, value: Any) -> BindAddress | None:
        text = self.string(loc, value, nonempty=False)
        if text is None:
            return None
        try:
            return BindAddress.parse(text)
        except ValueError as e:
            self.add(loc, f"{e}{self.got(loc, text)}")
            return None

    def readable(self, loc: Loc, path: Path) -> bool:
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            self.add(loc, f"cannot read: {e.strerror or type(e).__name__} (file {path})")
            return False
        return True

    def check_tls(self, certfile: Path, keyfile: Path) -> None:
        """Load the pair exactly as the server will, and say which half is wrong if it fails."""
        cert_ok = self.readable(("server", "certfile"), certfile)
        if not (self.readable(("server", "keyfile"), keyfile) and cert_ok):
            return
        asked: list[bool] = []

        def no_passphrase() -> bytes:
            # Without a callback OpenSSL would prompt on the terminal and `check` would hang.
            asked.append(True)
            return b""

        try:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(certfile, keyfile, password=no_passphrase)
        except (ssl.SSLError, OSError, ValueError) as e:
            self.diagnose_tls(certfile, keyfile, e, encrypted=bool(asked))

    def diagnose_tls(
        self, certfile: Path, keyfile: Path, error: Exception, *, encrypted: bool
    ) -> None:
        """Say which half of a TLS pair that OpenSSL refused is wrong, in the operator's terms."""
        from cryptography import x509
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization

        pem = "expected a PEM file ('-----BEGIN CERTIFICATE-----')"
        try:
            x509.load_pem_x509_certificates(certfile.read_bytes())
        except (ValueError, OSError):
            self.add(("server", "certfile"), f"not a PEM certificate; {pem} (file {certfile})")
            return
        expected = "expected an unencrypted PEM private key ('-----BEGIN PRIVATE KEY-----')"
        try:
            serialization.load_pem_private_key(keyfile.read_bytes(), password=None)
        except TypeError:
            encrypted = True
        except (ValueError, UnsupportedAlgorithm, OSError):
            if not encrypted:
                self.add(
                    ("server", "keyfile"), f"not a PEM private key; {expected} (file {keyfile})"
                )
                return
        if encrypted:
            self.add(
                ("server", "keyfile"),
                f"the private key is encrypted with a passphrase; {expected} (file {keyfile})",
            )
            return
        reason = getattr(error, "reason", None) or str(error) or type(error).__name__
        if "MISMATCH" in str(reason).upper() or "MISMATCH" in str(error).upper():
            self.add(
                ("server", "keyfile"),
                f"this private key does not belong to the certificate in server.certfile "
                f"(file {keyfile})",
            )
        else:
            self.add(
                ("server", "certfile"),
                f"the certificate and key do not load together for TLS: {reason} "
                f"(files {certfile}, {keyfile})",
            )

    def admin(self, raw: Any) -> AdminConfig:
        t = self.table(("admin",), raw, _ADMIN_KEYS)
        value = t.get("bind", _DEFAULT_ADMIN_BIND)
        if value == "":
            return AdminConfig(None)
        b = self.bind(("admin", "bind"), value)
        return AdminConfig(b) if b is not None else AdminConfig()

    def verify(self, raw: Any, retention: float) -> VerifyConfig:
        t = self.table(("verify",), raw, _VERIFY_KEYS)
        paths: list[Path] = []
        keys: list[RSAPublicKey] = []
        loc: Loc = ("verify", "public_keys")
        if "public_keys" not in t:
            self.add(
                loc,
                "missing: expected at least one public key file, e.g. "
                'public_keys = ["volt_id_rsa.pub"] (Volt publishes it as id_rsa.pub)',
            )
        else:
            items = self.string_list(loc, t["public_keys"], "a file path")
            if isinstance(t["public_keys"], list) and not t["public_keys"]:
                self.add(loc, "expected at least one public key file")
            for item_loc, item in items:
                path = self.path_value(item_loc, item)
                if path is None:
                    continue
                try:
                    keys.append(load_public_key_file(path))
                except KeyLoadError as e:
                    self.add(item_loc, f"{e} (file {path})")
                    continue
                paths.append(path)

        header = _DEFAULT_HEADER
        if "header" in t:
            text = self.string(("verify", "header"), t["header"])
            if text is not None:
                if not _HEADER_NAME.fullmatch(text):
                    where = ("verify", "header")
                    self.add(where, f"expected an HTTP header name{self.got(where, text)}")
                else:
                    header = text

        algorithm = self.choice(("verify", "algorithm"), t, ALGORITHMS, _DEFAULT_ALGORITHM)
        encoding = self.choice(("verify", "encoding"), t, ENCODINGS, _DEFAULT_ENCODING)

        max_age = retention
        if "max_age" in t:
            d = self.duration(("verify", "max_age"), t["max_age"])
            max_age = max_age if d is None else d
        return VerifyConfig(paths, keys, header, algorithm, encoding, max_age)

    def choice(self, loc: Loc, t: Mapping[str, Any], options: Sequence[str], default: str) -> str:
        if loc[-1] not in t:
            return default
        text = self.string(loc, t[loc[-1]])
        if text is None:
            return default
        if text not in options:
            self.add(loc, f"expected one of {', '.join(options)}{self.got(loc, text)}")
            return default
        return text

    def spool(self, raw: Any) -> SpoolConfig:
        t = self.table(("spool",), raw, _SPOOL_KEYS)
        path = self.path_value(("spool", "path"), t.get("path", "spool.db")) or self.path(
            "spool.db"
        )
        retention = self.positive_duration(("spool", "retention"), t, _DEFAULT_RETENTION)
        return SpoolConfig(path, retention)

    def positive_duration(self, loc: Loc, t: Mapping[str, Any], default: float) -> float:
        if loc[-1] not in t:
            return default
        d = self.duration(loc, t[loc[-1]])
        if d is None:
            return default
        if d <= 0:
            self.add(loc, f"expected a duration greater than 0{self.got(loc, t[loc[-1]])}")
            return default
        return d

    def retry(self, raw: Any) -> RetryConfig:
        t = self.table(("retry",), raw, _RETRY_KEYS)
        d = RetryConfig()
        initial = self.positive_duration(("retry", "initial"), t, d.initial)
        max_delay = self.positive_duration(("retry", "max_delay"), t, d.max_delay)
        give_up = self.positive_duration(("retry", "give_up_after"), t, d.give_up_after)
        if initial > max_delay:
            self.add(
                ("retry", "initial"),
                f"the first retry delay ({initial:g}s) is longer than retry.max_delay "
                f"({max_delay:g}s); expected initial <= max_delay",
            )
        return RetryConfig(initial, max_delay, give_up)

    def numbers(self, raw: Any) -> dict[str, str | None]:
        """Name → E.164; names whose number is wrong map to None (reported once, here)."""
        out: dict[str, str | None] = {}
        if raw is None or raw is _BROKEN:
            return out
        if not isinstance(raw, dict):
            where: Loc = ("numbers",)
            self.add(
                where,
                f'expected a table like {{ front-desk = "+1 555 555 0123" }}{self.got(where, raw)}',
            )
            return out
        t = raw
        for name, value in t.items():
            loc = ("numbers", name)
            text = self.string(loc, value)
            out[name] = None
            if text is None:
                continue
            try:
                out[name] = normalize_number(text)
            except ValueError:
                self.add(loc, f"{NUMBER_EXPECTED}{self.got(loc, text)}")
        return out

    def sinks(self, raw: Any) -> dict[str, SinkConfig]:
        out: dict[str, SinkConfig] = {}
        if raw is None:
            return out
        if not isinstance(raw, dict):
            self.add(
                ("sinks",), f"expected a table of [sinks.NAME] tables{self.got(('sinks',), raw)}"
            )
            return out
        for name, value in raw.items():
            loc: Loc = ("sinks", name)
            if not isinstance(value, dict):
                self.add(
                    loc,
                    f"expected a table [sinks.{format_key_path((name,))}]{self.got(loc, value)}",
                )
                continue
            options = {k: v for k, v in value.items() if k != "type"}
            if "type" not in value:
                self.add(
                    (*loc, "type"),
                    'missing: every sink needs a type, e.g. type = "file"',
                )
                sink_type = None
            else:
                sink_type = self.string((*loc, "type"), value["type"])
            out[name] = SinkConfig(sink_type or "", options)
        return out

    def routes(
        self, raw: Any, numbers: Mapping[str, str | None], sinks: Mapping[str, SinkConfig]
    ) -> list[RouteConfig]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.add(
                ("routes",), f"expected an array of [[routes]] tables{self.got(('routes',), raw)}"
            )
            return []
        out: list[RouteConfig] = []
        names: dict[str, int] = {}
        for i, value in enumerate(raw):
            loc: Loc = ("routes", i)
            if not isinstance(value, dict):
                self.add(loc, f"expected a [[routes]] table{self.got(loc, value)}")
                continue
            t = self.table(loc, value, _ROUTE_KEYS)
            name = f"route {i + 1}"
            if "name" in t:
                name = self.string((*loc, "name"), t["name"]) or name
            if name in names:
                self.add(
                    (*loc, "name"),
                    f"route name {_short_repr(name)} is already used by routes[{names[name]}]; "
                    "expected unique names",
                )
            names.setdefault(name, i)
            match = self.match_spec((*loc, "match"), t.get("match"), numbers)
            if match is None:
                match = MatchSpec()
            exclude = None
            if "exclude" in t:
                exclude = self.match_spec((*loc, "exclude"), t["exclude"], numbers)
                if exclude is not None and not exclude.conditions and t["exclude"] == {}:
                    self.add(
                        (*loc, "exclude"),
                        "an empty exclude table would exclude every event; "
                        "expected at least one key, or remove exclude",
                    )
            route_sinks = self.route_sinks((*loc, "sinks"), t, sinks)
            final = False
            if "final" in t:
                final = bool(self.boolean((*loc, "final"), t["final"]))
            out.append(RouteConfig(name, match, exclude, route_sinks, final))
        return out

    def route_sinks(
        self, loc: Loc, t: Mapping[str, Any], sinks: Mapping[str, SinkConfig]
    ) -> list[str]:
        if "sinks" not in t:
            self.add(
                loc, 'missing: expected the sinks this route delivers to, e.g. sinks = ["archive"]'
            )
            return []
        value = t["sinks"]
        if isinstance(value, list) and not value:
            self.add(loc, "expected at least one sink name")
            return []
        out: list[str] = []
        for item_loc, item in self.string_list(loc, value, "a sink name"):
            name = self.string(item_loc, item)
            if name is None:
                continue
            if name not in sinks:
                self.add(item_loc, self.no_sink(item_loc, name, sinks))
                continue
            if name not in out:
                out.append(name)
        return out

    def no_sink(self, loc: Loc, name: str, sinks: Mapping[str, SinkConfig]) -> str:
        defined = ", ".join(sorted(sinks)) if sinks else "none; add a [sinks.NAME] table"
        if format_key_path(loc) in self.secret_paths:
            return f"no such sink (value hidden: it comes from a secret) (defined: {defined})"
        return f"no sink named {_short_repr(name)} (defined: {defined})"

    def match_spec(self, loc: Loc, raw: Any, numbers: Mapping[str, str | None]) -> MatchSpec | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            if raw is not _BROKEN:
                self.add(
                    loc, f'expected a table like {{ status = ["failed"] }}{self.got(loc, raw)}'
                )
            return None
        t = self.table(loc, raw, MATCH_KEYS)
        values: dict[str, tuple[str, ...]] = {}
        written: dict[str, tuple[str, ...]] = {}
        for key, value in t.items():
            if key not in MATCH_KEYS:
                continue
            key_loc = (*loc, key)
            if isinstance(value, list) and not value:
                self.add(key_loc, "expected at least one value (an empty list never matches)")
                continue
            if key == "error_code":
                if isinstance(value, int) and not isinstance(value, bool):
                    value = str(value)
                elif isinstance(value, list):
                    value = [
                        str(v) if isinstance(v, int) and not isinstance(v, bool) else v
                        for v in value
                    ]
            what = "a string (or integer)" if key == "error_code" else "a string"
            norm: list[str] = []
            wrote: list[str] = []
            for item_loc, item in self.string_list(key_loc, value, what):
                text = self.string(item_loc, item, nonempty=False)
                if text is None:
                    continue
                n = self.match_value(key, item_loc, text, numbers)
                if n is not None:
                    norm.append(n)
                    wrote.append(text)
            if norm:
                values[key] = tuple(norm)
                written[key] = tuple(wrote)
        return MatchSpec(values, written)

    def match_value(
        self, key: str, loc: Loc, text: str, numbers: Mapping[str, str | None]
    ) -> str | None:
        """One normalized value, or None after reporting why it cannot be used."""
        if key in NUMBER_KEYS:
            if text in numbers:
                return numbers[text]  # None when that number is wrong: reported under [numbers]
            if any(c in GLOB_CHARS for c in text):
                glob = _number_glob(text)
                if glob is None:
                    self.add(
                        loc,
                        "expected a number glob made of +, digits, spaces and * ? [0-9] "
                        f"like +1555*{self.got(loc, text)}",
                    )
                return glob
            try:
                return normalize_number(text)
            except ValueError:
                pass
            if any(c.isalpha() for c in text):
                defined = ", ".join(sorted(numbers)) if numbers else "none"
                if format_key_path(loc) in self.secret_paths:
                    self.add(loc, f"no such name in [numbers] (defined: {defined})")
                else:
                    self.add(
                        loc,
                        f"no number named {_short_repr(text)} in [numbers] (defined: {defined})",
                    )
            else:
                self.add(
                    loc,
                    "expected a name from [numbers], a phone number in international form like "
                    f"+1 555 555 0123 or a glob like +1555*{self.got(loc, text)}",
                )
            return None
        if key == "direction":
            lowered = text.strip().lower()
            if lowered not in DIRECTIONS:
                self.add(loc, f"expected inbound or outbound{self.got(loc, text)}")
                return None
            return lowered
        if key == "text":
            try:
                re.compile(text)
            except (re.error, RecursionError, OverflowError, ValueError) as e:
                # re's messages may quote part of the pattern, so none for a secret pattern.
                secret = format_key_path(loc) in self.secret_paths
                self.add(loc, "not a valid regular expression" + ("" if secret else f": {e}"))
                return None
            return text
        return text.lower()

    def defaults(self, raw: Any, sinks: Mapping[str, SinkConfig]) -> DefaultsConfig:
        t = self.table(("defaults",), raw, _DEFAULTS_KEYS)
        if "unmatched" not in t:
            return DefaultsConfig()
        loc: Loc = ("defaults", "unmatched")
        name = self.string(loc, t["unmatched"])
        if name is None:
            return DefaultsConfig()
        if name not in sinks:
            self.add(loc, self.no_sink(loc, name, sinks))
            return DefaultsConfig()
        return DefaultsConfig(name)

    def plugin_dirs(self, raw: Any) -> list[Path]:
        if raw is None:
            return []
        out: list[Path] = []
        for item_loc, item in self.string_list(("plugin_dirs",), raw, "a directory path"):
            path = self.path_value(item_loc, item)
            if path is None:
                continue
            if not path.is_dir():
                why = "not a directory" if path.exists() else "directory does not exist"
                self.add(item_loc, f"{why} (path {path})")
                continue
            out.append(path)
        return out


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _check(data: dict[str, Any], source: Path, source_name: str) -> Config:
    """Validate parsed TOML; raises ConfigError with every problem found."""
    c = _Checker(source_name, source.parent)
    data = c.expand(data, ())
    c.table((), data, _TOP_KEYS)
    server = c.server(data.get("server"))
    admin = c.admin(data.get("admin"))
    if admin.bind is not None and admin.bind.port != 0 and admin.bind in server.bind:
        c.add(("admin", "bind"), f"{admin.bind} is also in server.bind; expected another port")
    spool = c.spool(data.get("spool"))
    verify = c.verify(data.get("verify"), spool.retention)
    retry = c.retry(data.get("retry"))
    numbers = c.numbers(data.get("numbers"))
    sinks = c.sinks(data.get("sinks"))
    routes = c.routes(data.get("routes"), numbers, sinks)
    defaults = c.defaults(data.get("defaults"), sinks)
    plugin_dirs = c.plugin_dirs(data.get("plugin_dirs"))
    if c.problems:
        raise ConfigError(c.problems)
    return Config(
        source=source,
        source_name=source_name,
        server=server,
        admin=admin,
        verify=verify,
        spool=spool,
        retry=retry,
        numbers={k: v for k, v in numbers.items() if v is not None},
        routes=routes,
        sinks=sinks,
        defaults=defaults,
        plugin_dirs=plugin_dirs,
        secret_keys=frozenset(c.secret_paths),
    )


_TOML_POSITION = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.DOTALL)


def load(path: str | Path) -> Config:
    """Read, parse and validate a config file; ConfigError lists everything that is wrong."""
    source_name = str(path)
    source = Path(os.path.abspath(os.path.expanduser(path)))
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError([f"{source_name}: cannot read: {e.strerror or e}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            [f"{source_name}: line {line}: invalid TOML: the file is not UTF-8 text"]
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        m = _TOML_POSITION.match(message)
        if m:
            where = f"line {m.group(2)}, column {m.group(3)}"
            message = m.group(1)
        else:
            where = "end of file" if "end of document" in message else "somewhere"
            message = message.replace(" (at end of document)", "")
        raise ConfigError([f"{source_name}: {where}: invalid TOML: {message}"]) from None
    except RecursionError:
        raise ConfigError([f"{source_name}: invalid TOML: nested too deeply"]) from None
    try:
        return _check(data, source, source_name)
    except RecursionError:
        # tomllib accepted the nesting but walking it again on a deeper stack did not.
        raise ConfigError([f"{source_name}: invalid TOML: nested too deeply"]) from None
