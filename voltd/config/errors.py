"""How problems are worded: ConfigError, key paths, values in messages, pydantic errors.

Every problem the config reports is one line, `FILE: key.path: what is wrong`, and the operator
fixes the file by reading it. Everything that decides how such a line looks lives here, so that
the loader, the cross-key checks and the sink types (through `validation_problems`) all speak
alike. Nothing here ever quotes a value pydantic saw: only the callers know which are secrets.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, get_args, get_origin

import pydantic


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


def one_line(text: str) -> str:
    """`text` as it is, or quoted with escapes when it holds a line break or another character
    that is not printable: each problem is one line, and `voltd check` prints them one by one."""
    return text if text.isprintable() else repr(text)


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


class _Invalid(ValueError):
    """A validator's complaint in the operator's words; `show_input` appends `, got …`
    (or says the value is hidden) unless the message already says enough."""

    def __init__(self, message: str, *, show_input: bool = True) -> None:
        super().__init__(message)
        self.show_input = show_input


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
