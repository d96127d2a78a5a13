"""Configuration: one TOML file turned into typed, validated settings, or every mistake at once.

The operator fixes a config by reading our messages, so each problem names the file, the key
path and what was expected, and all of them are reported together: a broken config should take
one edit, not one restart per typo. Nothing here raises a traceback for bad input, and no
value that came from a `${env:…}`/`${file:…}` secret is ever echoed back.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import functools
import ipaddress
import json
import math
import os
import re
import ssl
import sys
import tomllib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, NamedTuple, TypeVar, get_args, get_origin

import phonenumbers
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

_DEFAULT_RETENTION: Final = 7 * 86400.0
_DEFAULT_BIND: Final = "0.0.0.0:8443"
_DEFAULT_ADMIN_BIND: Final = "127.0.0.1:9310"
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

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
_T = TypeVar("_T")
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


def one_line(text: str) -> str:
    """`text` as it is, or quoted with escapes when it holds a line break or another character
    that is not printable: each problem is one line, and `voltd check` prints them one by one."""
    return text if text.isprintable() else repr(text)


#: What a message says instead of a value that came from a `${env:…}`/`${file:…}` secret.
_HIDDEN: Final = "value hidden: it comes from a secret"


def _path_note(path: Path, secret: bool, kind: str = "file") -> str:
    """`(file /abs/path)` to end a message with, or the path hidden when a secret went into it."""
    if secret:
        return f"({kind} hidden: it comes from a secret)"
    return f"({kind} {one_line(str(path))})"


def _open_error(e: OSError | ValueError) -> str:
    """Why open() failed, in words. Its only ValueError for paths read here is for a NUL
    character (lone surrogates cannot come from TOML, UTF-8 files or the environment)."""
    if isinstance(e, OSError):
        return e.strerror or type(e).__name__
    return "the path contains a NUL character"


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
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if len(e164) > 16:  # E.164 allows 15 digits; the library's metadata allows some more
        raise ValueError(NUMBER_EXPECTED)
    # The library may rewrite a number (a migrated numbering plan adds digits; all-zero
    # inputs lose some and change again when read back). Keep only what drops formatting and
    # at most a trunk prefix such as the 0 in "+44 (0)20": anything else is not what was meant.
    written = iter(c for c in t if c.isdigit())
    if not all(d in written for d in e164[1:]):
        raise ValueError(NUMBER_EXPECTED)
    again = phonenumbers.format_number(
        phonenumbers.parse(e164, None), phonenumbers.PhoneNumberFormat.E164
    )
    if again != e164:
        raise ValueError(NUMBER_EXPECTED)
    return e164


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


def _located(model: type[pydantic.BaseModel] | None, error: Mapping[str, Any]) -> tuple[Loc, str]:
    """Key path and plain message of one pydantic error; the input is never quoted."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") != "extra_forbidden" or not loc:
        return _clean_loc(model, loc), _pydantic_message(error)
    # The unknown key stays as written even if it looks like one of pydantic's loc tags.
    loc = (*_clean_loc(model, loc[:-1]), loc[-1])
    allowed = _allowed_keys(model, loc[:-1])
    return loc, f"unknown key (expected one of: {', '.join(allowed)})" if allowed else "unknown key"


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
        loc, message = _located(model, error)
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
# Validation: pydantic models for the file's structure, small validators for its values


class _Invalid(ValueError):
    """A validator's complaint in the operator's words; `show_input` appends `, got …`
    (or says the value is hidden) unless the message already says enough."""

    def __init__(self, message: str, *, show_input: bool = True) -> None:
        super().__init__(message)
        self.show_input = show_input


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


def _path(value: Any, info: ValidationInfo) -> Path:
    if "\0" in _text(value):  # no file can be named so; open() would raise ValueError
        raise _Invalid("expected a path without NUL characters")
    return _absolute(info.context["base"], value)


def _absolute(base: Path, text: str) -> Path:
    """Relative paths are relative to the config file, not to the cwd."""
    return Path(os.path.abspath(base / os.path.expanduser(text)))


def _readable(path: Path, *, secret: bool) -> Path:
    """The path, if the file opens: one the server cannot read fails the check, not the start."""
    try:
        with open(path, "rb"):
            pass
    except (OSError, ValueError) as e:
        why = f"cannot read: {_open_error(e)} {_path_note(path, secret)}"
        raise _Invalid(why, show_input=False) from None
    return path


def _directory(value: Any, info: ValidationInfo) -> Path:
    """A path (see `_path`) to a directory that exists: plugins are looked for there."""
    path = _path(value, info)
    if not path.is_dir():
        why = "not a directory" if path.exists() else "directory does not exist"
        secret = value in info.context["secrets"]
        raise _Invalid(f"{why} {_path_note(path, secret, 'path')}", show_input=False)
    return path


def _bind(value: Any) -> BindAddress:
    if not isinstance(value, str):
        raise _Invalid("expected a string")
    return BindAddress.parse(value)


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise _Invalid("expected a duration greater than 0")
    return seconds


class _KeyFile(NamedTuple):
    path: Path
    key: RSAPublicKey


def _key_file(value: Any, info: ValidationInfo) -> _KeyFile:
    """Load the key now: a key the server could not use must fail the check, not the start."""
    path = _path(value, info)
    try:
        return _KeyFile(path, load_public_key_file(path))
    except KeyLoadError as e:
        note = _path_note(path, value in info.context["secrets"])
        raise _Invalid(f"{e} {note}", show_input=False) from None


def _sink_name(value: Any, info: ValidationInfo) -> str:
    sinks = info.context["sinks"]
    if _text(value) in sinks:
        return value
    defined = ", ".join(sorted(sinks)) if sinks else "none; add a [sinks.NAME] table"
    shown = f"such sink ({_HIDDEN})"
    if value not in info.context["secrets"]:
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
    secret = value in info.context["secrets"]
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
    numbers: Mapping[str, str | None] = info.context["numbers"]
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
_Binds = _many(_Bind, "a host:port string", "expected at least one host:port like 0.0.0.0:8443")
_Path = Annotated[Path, BeforeValidator(_path)]
_KeyFiles = _many(
    Annotated[InstanceOf[_KeyFile], BeforeValidator(_key_file)],
    "a file path",
    "expected at least one public key file",
)
_PositiveDuration = Annotated[float, BeforeValidator(_positive_duration)]
_SinkName = Annotated[str, BeforeValidator(_sink_name)]
_Dirs = _many(Annotated[Path, BeforeValidator(_directory)], "a directory path")
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

    bind: _Binds = [BindAddress("0.0.0.0", 8443)]
    path: Annotated[
        str,
        _when(
            lambda t: t.startswith("/") and not any(c.isspace() or c in "?#" for c in t),
            "expected a URL path starting with /",
        ),
    ] = "/webhooks"
    certfile: _Path | None = None  # both readable and a pair: see _cross_checks
    keyfile: _Path | None = None
    max_body_bytes: Annotated[
        int,
        _when(
            lambda v: type(v) is int and v >= 1,
            "expected a whole number of bytes, at least 1",
            text=False,
        ),
    ] = 1048576
    answer_probes: StrictBool = True

    @property
    def https(self) -> bool:
        return self.certfile is not None


class AdminConfig(_Table):
    """Health and metrics listener; `bind` None means disabled (bind = "")."""

    bind: Annotated[
        InstanceOf[BindAddress] | None, BeforeValidator(lambda v: None if v == "" else _bind(v))
    ] = BindAddress("127.0.0.1", 9310)


class VerifyConfig(_Table):
    """How signatures are checked; `keys` are the loaded `public_keys`, same order."""

    key_files: _KeyFiles = pydantic.Field(alias="public_keys")
    header: Annotated[str, _when(_HEADER_NAME.fullmatch, "expected an HTTP header name")] = (
        "X-Respond-Flow-Signature"
    )
    algorithm: Annotated[
        str, _when(ALGORITHMS.__contains__, f"expected one of {', '.join(ALGORITHMS)}")
    ] = "rsa-pkcs1v15-sha256"
    encoding: Annotated[
        str, _when(ENCODINGS.__contains__, f"expected one of {', '.join(ENCODINGS)}")
    ] = "base64"
    max_age: Annotated[float, BeforeValidator(parse_duration)] = _DEFAULT_RETENTION
    # When max_age is not given, load() sets it to spool.retention.

    @property
    def public_keys(self) -> list[Path]:
        return [k.path for k in self.key_files]

    @property
    def keys(self) -> list[RSAPublicKey]:
        return [k.key for k in self.key_files]


class SpoolConfig(_Table):
    path: _Path = pydantic.Field("spool.db", validate_default=True)
    retention: _PositiveDuration = _DEFAULT_RETENTION


class RetryConfig(_Table):
    initial: _PositiveDuration = 2.0
    max_delay: _PositiveDuration = 3600.0
    give_up_after: _PositiveDuration = 86400.0


class DefaultsConfig(_Table):
    unmatched: _SinkName | None = None


class _Match(_Table):
    """A `match` or `exclude` table; each value is (normalized, as written)."""

    _expected: ClassVar[str] = 'expected a table like { status = ["failed"] }'
    number: _values("number") = None
    from_: _values("from") = pydantic.Field(None, alias="from")
    to: _values("to") = None
    direction: _values("direction") = None
    event: _values("event") = None
    status: _values("status") = None
    message_type: _values("message_type") = None
    error_code: _values("error_code") = None
    carrier: _values("carrier") = None
    text: _values("text") = None
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
    sinks: _many(_SinkName, "a sink name", "expected at least one sink name")
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


class _File(_Table):
    """The whole file, as `load` turns it into a Config."""

    server: ServerConfig = _SECTION
    admin: AdminConfig = _SECTION
    verify: VerifyConfig = _SECTION  # validated when absent too: public_keys is required
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
#: The order problems are listed in: what later sections refer to comes first.
_SECTION_ORDER: Final = (
    "server", "admin", "spool", "verify", "retry", "numbers", "sinks", "routes", "defaults",
    "plugin_dirs",
)  # fmt: skip


def _tls_problem(certfile: Path, keyfile: Path, hidden: Collection[str]) -> tuple[str, str] | None:
    """Load the pair exactly as the server will; if that fails, say which half is wrong.

    `hidden` names the keys (certfile, keyfile) whose paths came from secrets.
    """
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    cert_note = _path_note(certfile, "certfile" in hidden)
    key_note = _path_note(keyfile, "keyfile" in hidden)

    asked: list[bool] = []

    def no_passphrase() -> bytes:
        # Without a callback OpenSSL would prompt on the terminal and `check` would hang.
        asked.append(True)
        return b""

    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certfile, keyfile, password=no_passphrase)
        return None
    except (ssl.SSLError, OSError, ValueError) as e:
        error: Exception = e
    try:
        x509.load_pem_x509_certificates(certfile.read_bytes())
    except (ValueError, OSError):
        pem = "expected a PEM file ('-----BEGIN CERTIFICATE-----')"
        return "certfile", f"not a PEM certificate; {pem} {cert_note}"
    expected = "expected an unencrypted PEM private key ('-----BEGIN PRIVATE KEY-----')"
    encrypted = bool(asked)
    try:
        serialization.load_pem_private_key(keyfile.read_bytes(), password=None)
    except TypeError:
        encrypted = True
    except (ValueError, UnsupportedAlgorithm, OSError):
        if not encrypted:
            return "keyfile", f"not a PEM private key; {expected} {key_note}"
    if encrypted:
        return "keyfile", f"the private key is encrypted with a passphrase; {expected} {key_note}"
    reason = getattr(error, "reason", None) or str(error) or type(error).__name__
    if "MISMATCH" in str(reason).upper() or "MISMATCH" in str(error).upper():
        return "keyfile", (
            f"this private key does not belong to the certificate in server.certfile {key_note}"
        )
    files = f"(files {one_line(str(certfile))}, {one_line(str(keyfile))})"
    if hidden:
        files = "(files hidden: a secret went into their paths)"
    return "certfile", f"the certificate and key do not load together for TLS: {reason} {files}"


# --------------------------------------------------------------------------------------------
# Secrets: resolved before validation, remembered so that they are never echoed

#: Stands in for a value whose secret could not be resolved, so it is not judged twice.
_BROKEN: Final = object()
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_SECRET_HELP: Final = "expected ${env:NAME} or ${file:PATH} (write $${ for a literal ${)"


class _Secrets:
    """Resolves `${env:…}`/`${file:…}` in every string, remembering where secrets went."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.problems: list[tuple[Loc, str]] = []
        self.paths: set[str] = set()  # key paths holding a secret
        self.broken: set[Loc] = set()  # key paths whose secret could not be resolved
        self.values: set[str] = set()  # resolved values, for messages that quote a value

    def expand(self, value: Any, loc: Loc = ()) -> Any:
        if isinstance(value, dict):
            return {k: self.expand(v, (*loc, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand(v, (*loc, i)) for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value
        found: list[str] = []  # problems, or "" for each reference resolved

        def replace(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            try:
                if m.group(1) is None:
                    raise _Invalid(
                        f"unterminated secret reference '${{' without '}}'; {_SECRET_HELP}"
                    )
                resolved = self._resolve(m.group(1))
            except _Invalid as e:
                found.append(str(e))
                return ""
            found.append("")
            return resolved

        text = _REFERENCE.sub(replace, value)
        if not found:
            return text
        self.paths.add(format_key_path(loc))
        self.problems += [(loc, problem) for problem in found if problem]
        if any(found):
            self.broken.add(loc)
            return _BROKEN
        self.values.add(text)
        return text

    def _resolve(self, reference: str) -> str:
        kind, sep, arg = (part.strip() for part in reference.partition(":"))
        if not sep or kind not in ("env", "file"):
            shown = kind if _BARE_KEY.fullmatch(kind or "-") and len(kind) <= 20 else "?"
            raise _Invalid(f"unknown kind of secret reference '${{{shown}:…}}'; {_SECRET_HELP}")
        if not arg:
            what = "NAME" if kind == "env" else "PATH"
            raise _Invalid(f"empty secret reference '${{{kind}:}}'; expected ${{{kind}:{what}}}")
        if kind == "env":
            if arg not in os.environ:
                raise _Invalid(f"environment variable {one_line(arg)} is not set")
            return os.environ[arg]
        path = _absolute(self.base, arg)
        try:
            with open(path, "rb") as f:
                content = f.read(1 << 20).decode("utf-8")
        except UnicodeDecodeError:  # a ValueError too: caught first
            raise _Invalid(f"secret file {one_line(str(path))} is not UTF-8 text") from None
        except (OSError, ValueError) as e:
            shown = one_line(str(path))
            raise _Invalid(f"cannot read secret file {shown}: {_open_error(e)}") from None
        if content.endswith("\n"):  # the newline an editor adds is not part of the secret
            content = content[:-2] if content.endswith("\r\n") else content[:-1]
        return content


# --------------------------------------------------------------------------------------------
# Loading

_MISSING: Final = {
    ("verify", "public_keys"): "missing: expected at least one public key file, e.g. "
    'public_keys = ["volt_id_rsa.pub"] (Volt publishes it as id_rsa.pub)',
    ("routes", "sinks"): "missing: expected the sinks this route delivers to, "
    'e.g. sinks = ["archive"]',
    ("sinks", "type"): 'missing: every sink needs a type, e.g. type = "file"',
}


def _got(value: object) -> str:
    """`, got 'x'` for a message: the operator sees what we read."""
    if isinstance(value, str):
        return f", got {_short_repr(value)}"
    if isinstance(value, bool | int | float):
        try:
            shown = repr(value)
        except ValueError:  # past Python's int-to-str limit (tomllib reads such an int in hex)
            shown = "too many digits to show"
        return f", got {_kind(value)} ({shown})"
    return f", got {_kind(value)}"


def _file_problems(err: pydantic.ValidationError, secrets: _Secrets) -> list[tuple[Loc, str]]:
    """The problems in a validation error, with the input shown unless it is a secret."""
    out: list[tuple[Loc, str]] = []
    for error in err.errors(include_url=False):
        loc, message = _located(_File, error)
        exc = (error.get("ctx") or {}).get("error")
        if loc in secrets.broken and error["type"] != "extra_forbidden":
            continue  # already reported as a secret that could not be resolved
        if error["type"] == "missing":
            message = _MISSING.get((loc[0], loc[-1]), message)
        elif error["type"] != "extra_forbidden" and getattr(exc, "show_input", True):
            if message == _Sink._expected:  # the only message that names its own key path
                message = message.format(path=format_key_path(loc))
            if format_key_path(loc) in secrets.paths:
                message += f" ({_HIDDEN})"
            else:
                message += _got(error.get("input"))
        out.append((loc, message))
    return out


def _rank(loc: Loc, data: Any) -> tuple[int, ...]:
    """Sort key listing problems as the checks run: section by section, a table's unknown keys
    first, then its keys in the model's order (the file's order for names and `match` keys)."""
    if not loc:
        return (-1,)
    ranks = [_SECTION_ORDER.index(loc[0]) if loc[0] in _SECTION_ORDER else -1]
    annotation, raw = _descend(_File, loc[0]), data.get(loc[0])
    for part in loc[1:]:
        keys = _allowed_keys(annotation, ()) if annotation is not None else None
        by_file = keys is None or _Match in _unwrap_models(annotation)
        if isinstance(part, int):
            ranks.append(part)
        elif keys is not None and part not in keys:
            ranks.append(-1)
        elif by_file and isinstance(raw, dict) and part in raw:
            ranks.append(list(raw).index(part))
        else:
            ranks.append(keys.index(part) if keys else 0)
        annotation = _descend(annotation, part) if annotation is not None else None
        raw = raw[part] if isinstance(raw, dict | list) and _has(raw, part) else None
    return tuple(ranks)


def _has(container: dict[str, Any] | list[Any], part: str | int) -> bool:
    return part in container if isinstance(container, dict) else 0 <= int(part) < len(container)


_TLS_HELP: Final = "set both for HTTPS, or neither for plain HTTP behind a TLS proxy"
_AFTER_TLS: Final = ("server", "keyfile", 0)  # TLS problems are listed after both paths


def _from_secret(value: Any, secrets: Collection[str]) -> bool:
    """Whether a raw value is (or equals) one that came from a secret, so must not be shown."""
    return isinstance(value, str) and value in secrets


def _cross_checks(
    data: dict[str, Any], base: Path, secrets: Collection[str]
) -> list[tuple[Loc, str, Loc]]:
    """Checks that involve several keys, run on the raw values.

    They run even when a neighbouring key is wrong (which is reported where it is), taking a
    missing or wrong value as its default, so that one pass shows every problem. Each problem
    comes with the key path it is listed at, as if checked right after that key. Values in
    `secrets` (those resolved from `${env:…}`/`${file:…}`) are never shown.
    """
    server, admin, retry = (
        data.get(k) if isinstance(data.get(k), dict) else {} for k in ("server", "admin", "retry")
    )
    routes = data.get("routes")
    return [
        *_tls_checks(server, base, secrets),
        *_bind_checks(server, admin, secrets),
        *_retry_checks(retry, secrets),
        *_route_name_checks(routes if isinstance(routes, list) else [], secrets),
    ]


def _tls_checks(
    server: dict[str, Any], base: Path, secrets: Collection[str]
) -> list[tuple[Loc, str, Loc]]:
    """Both TLS files or neither, each readable, and the two a pair the server can load."""
    out: list[tuple[Loc, str, Loc]] = []
    for given, needed, what in (
        ("certfile", "keyfile", "its private key"),
        ("keyfile", "certfile", "its certificate"),
    ):
        if given in server and needed not in server:
            why = f"missing: server.{given} is set, so {needed} ({what}) is needed too"
            out.append((("server", needed), f"{why}; {_TLS_HELP}", _AFTER_TLS))
    files: dict[str, Path] = {}
    hidden = {key for key in ("certfile", "keyfile") if _from_secret(server.get(key), secrets)}
    for key in ("certfile", "keyfile"):
        text = server.get(key)
        # Anything else is not a path: the model says so at the key.
        if isinstance(text, str) and text.strip() and "\0" not in text:
            try:
                files[key] = _readable(_absolute(base, text), secret=key in hidden)
            except _Invalid as e:
                out.append((("server", key), str(e), _AFTER_TLS))
    if len(files) == 2:
        problem = _tls_problem(files["certfile"], files["keyfile"], hidden)
        if problem is not None:
            out.append((("server", problem[0]), problem[1], _AFTER_TLS))
    return out


def _bind_checks(
    server: dict[str, Any], admin: dict[str, Any], secrets: Collection[str]
) -> list[tuple[Loc, str, Loc]]:
    """The admin listener cannot share a port with the webhook listener."""
    written = server.get("bind", _DEFAULT_BIND)
    written = written if isinstance(written, list) else [written]
    binds = [_or_none(_bind, b) for b in written]
    if not binds or None in binds:
        written, binds = [_DEFAULT_BIND], [_or_none(_bind, _DEFAULT_BIND)]
    raw = admin.get("bind", _DEFAULT_ADMIN_BIND)
    bind = raw and _or_none(_bind, raw)
    if raw and bind is None:
        raw, bind = _DEFAULT_ADMIN_BIND, _bind(_DEFAULT_ADMIN_BIND)
    if not bind or bind.port == 0 or bind not in binds:
        return []
    clashing = [text for text, b in zip(written, binds, strict=True) if b == bind]
    if any(_from_secret(text, secrets) for text in [raw, *clashing]):
        shown = f"this address ({_HIDDEN})"
    else:
        shown = one_line(str(bind))
    why = f"{shown} is also in server.bind; expected another port"
    return [(("admin", "bind"), why, ("admin", "bind"))]


def _retry_checks(retry: dict[str, Any], secrets: Collection[str]) -> list[tuple[Loc, str, Loc]]:
    """The first retry delay cannot be longer than the longest one."""
    shown: list[str] = []
    seconds: list[float] = []
    for key, default in (("initial", 2.0), ("max_delay", 3600.0)):
        given = _or_none(_positive_duration, retry.get(key, default))
        seconds.append(given or default)
        hidden = given is not None and _from_secret(retry.get(key), secrets)
        shown.append(_HIDDEN if hidden else f"{seconds[-1]:g}s")
    if seconds[0] <= seconds[1]:
        return []
    why = (
        f"the first retry delay ({shown[0]}) is longer than retry.max_delay ({shown[1]}); "
        "expected initial <= max_delay"
    )
    return [(("retry", "initial"), why, ("retry", "give_up_after", 0))]


def _route_name_checks(routes: list[Any], secrets: Collection[str]) -> list[tuple[Loc, str, Loc]]:
    """Route names are unique, counting the automatic `route N` of a route without a name.

    A clash with an automatic name is reported at the name that is in the file.
    """
    out: list[tuple[Loc, str, Loc]] = []
    seen: dict[str, int] = {}
    automatic: set[int] = set()
    for i, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        name = route.get("name")
        if "name" not in route:
            name = f"route {i + 1}"
            automatic.add(i)
        elif not (isinstance(name, str) and name.strip()):
            continue  # not a name: reported at the key
        first = seen.setdefault(name, i)
        if first == i:
            continue
        shown = f"({_HIDDEN})" if _from_secret(name, secrets) else _short_repr(name)
        if automatic & {first, i}:
            named, unnamed = (first, i) if i in automatic else (i, first)
            why = (
                f"route name {shown} is also the automatic name of routes[{unnamed}], which has "
                "no name; expected another name"
            )
        else:
            named = i
            why = f"route name {shown} is already used by routes[{first}]; expected unique names"
        out.append((("routes", named, "name"), why, ("routes", named, "name")))
    return out


def _check(data: dict[str, Any], source: Path, source_name: str) -> Config:
    """Validate parsed TOML; raises ConfigError with every problem found."""
    secrets = _Secrets(source.parent)
    data = secrets.expand(data)
    numbers, sinks = data.get("numbers"), data.get("sinks")
    numbers = numbers if isinstance(numbers, dict) else {}
    sinks = sinks if isinstance(sinks, dict) else {}
    context = {
        "base": source.parent,
        # Only names are needed to check references; a wrong number is reported under
        # [numbers] (as None here), not again at each route that names it.
        "numbers": {name: _or_none(normalize_number, text) for name, text in numbers.items()},
        "sinks": {name for name, table in sinks.items() if isinstance(table, dict)},
        "secrets": secrets.values,
    }
    problems: list[tuple[Loc, str, Loc]] = []
    f: _File | None = None
    try:
        f = _File.model_validate(data, context=context)
    except pydantic.ValidationError as e:
        problems = [(loc, message, loc) for loc, message in _file_problems(e, secrets)]
    problems += _cross_checks(data, source.parent, secrets.values)
    if f is None or secrets.problems or problems:
        problems.sort(key=lambda p: _rank(p[2], data))  # stable: cross-checks after the keys
        raise ConfigError(
            f"{source_name}: {format_key_path(loc) or '(top level)'}: {message}"
            for loc, message, *_ in [*secrets.problems, *problems]
        )
    verify = f.verify
    if "max_age" not in verify.model_fields_set:
        verify = verify.model_copy(update={"max_age": f.spool.retention})
    routes = [
        RouteConfig(
            r.name or f"route {i + 1}",
            r.match.spec() if r.match else MatchSpec(),
            r.exclude.spec() if r.exclude else None,
            list(dict.fromkeys(r.sinks)),
            r.final,
        )
        for i, r in enumerate(f.routes)
    ]
    return Config(
        source=source,
        source_name=source_name,
        server=f.server,
        admin=f.admin,
        verify=verify,
        spool=f.spool,
        retry=f.retry,
        numbers=f.numbers,
        routes=routes,
        sinks={name: SinkConfig(s.type, dict(s.model_extra or {})) for name, s in f.sinks.items()},
        defaults=f.defaults,
        plugin_dirs=f.plugin_dirs,
        secret_keys=frozenset(secrets.paths),
    )


def _or_none(parse: Callable[[Any], _T], value: Any) -> _T | None:
    """`parse(value)`, or None when it is not valid (the model reports why)."""
    try:
        return parse(value)
    except ValueError:
        return None


_TOML_POSITION = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.DOTALL)
#: How much text `_unfinished_line` may parse (about a second) before it gives up.
_SCAN_BUDGET: Final = 10_000_000


def _line_ends(text: str) -> list[int]:
    """The offset just after each line, so that `text[:end]` holds whole lines."""
    return [*(m.end() for m in re.finditer("\n", text)), len(text)]


def _parses(text: str) -> bool:
    """Whether tomllib reads `text` without any error."""
    try:
        tomllib.loads(text)
    except (ValueError, RecursionError):  # TOMLDecodeError is a ValueError
        return False
    return True


def _unfinished_line(text: str) -> int | None:
    """The line where the statement tomllib found unfinished at the end of the file starts.

    tomllib reports an unclosed string or array only at the end of the document, which does
    not help find it. Every whole line before that statement parses, and no longer run of
    lines does (each holds the unfinished start), so it begins right after the longest run
    of lines that parses. Error path only; None when the file is too long to search.
    """
    budget = _SCAN_BUDGET
    starts = [0, *_line_ends(text)[:-1]]
    for index in range(len(starts) - 1, -1, -1):
        budget -= starts[index]
        if budget < 0:
            return None
        if _parses(text[: starts[index]]):
            return index + 1
    return None


def _huge_integer_line(text: str) -> int:
    """The line of the integer literal tomllib could not convert (a plain ValueError).

    tomllib reads in order, so a run of whole lines raises that error exactly when it holds
    the line of that literal: the first such run, found by bisection, ends on its line.
    """

    def refused(end: int) -> bool:
        try:
            tomllib.loads(text[:end])
        except ValueError as e:
            return not isinstance(e, tomllib.TOMLDecodeError)
        except RecursionError:
            return False
        return False

    return bisect.bisect_left(_line_ends(text), True, key=refused) + 1


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
        elif "end of document" in message:
            message = message.replace(" (at end of document)", "")
            line = _unfinished_line(text)
            where = "end of file"
            if line is not None:  # where the unclosed string, array or table begins
                where, message = f"line {line}", f"{message} (unfinished at the end of the file)"
        else:
            where = "somewhere"
        raise ConfigError([f"{source_name}: {where}: invalid TOML: {message}"]) from None
    except ValueError:  # after TOMLDecodeError, a subclass: int() refused a huge literal
        limit = sys.get_int_max_str_digits()
        raise ConfigError(
            [
                f"{source_name}: line {_huge_integer_line(text)}: invalid TOML: an integer has "
                f"too many digits (more than {limit})"
            ]
        ) from None
    except RecursionError:
        raise ConfigError([f"{source_name}: invalid TOML: nested too deeply"]) from None
    try:
        return _check(data, source, source_name)
    except RecursionError:
        # tomllib accepted the nesting but walking it again on a deeper stack did not.
        raise ConfigError([f"{source_name}: invalid TOML: nested too deeply"]) from None
