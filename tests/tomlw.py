"""A small TOML writer for the property tests (there is no tomli_w here): scalars, dates,
arrays, inline tables, [sections] for top-level tables and their sub-tables, and [[arrays]] of
tables at the top level. Every document it writes is read back with tomllib and compared, so a
writer bug cannot pass for a finding in voltd."""

from __future__ import annotations

import datetime as dt
import math
import re
import tomllib
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_str(text: str) -> str:
    out = ['"']
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c < " " or c == "\x7f":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_str(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(type(value))


def _section(path: list[str], table: dict[str, Any]) -> list[str]:
    out = ["[" + ".".join(_toml_key(p) for p in path) + "]"]
    subs: list[str] = []
    for key, value in table.items():
        if isinstance(value, dict) and len(path) == 1:
            subs += _section([*path, key], value)
        else:
            out.append(f"{_toml_key(key)} = {toml_value(value)}")
    return out + subs


def toml_dumps(doc: dict[str, Any]) -> str:
    """TOML text for `doc`; checked against tomllib so a writer bug cannot pass as a finding."""
    lines: list[str] = []
    later: list[str] = []
    for key, value in doc.items():
        if isinstance(value, dict):
            later += _section([key], value)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                later.append(f"[[{_toml_key(key)}]]")
                later += [f"{_toml_key(k)} = {toml_value(v)}" for k, v in item.items()]
        else:
            lines.append(f"{_toml_key(key)} = {toml_value(value)}")
    text = "\n".join([*lines, *later]) + "\n"
    assert same_toml(tomllib.loads(text), doc), text
    return text


def same_toml(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN and types must agree (1 is not 1.0 is not True); tables
    compare as sets of keys, since the writer puts sub-tables after plain keys."""
    if type(a) is not type(b) and not (isinstance(a, dt.tzinfo) and isinstance(b, dt.tzinfo)):
        return False
    if isinstance(a, dict):
        return set(a) == set(b) and all(same_toml(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_toml(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)
