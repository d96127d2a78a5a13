"""Loading: from a path to a Config, or to ConfigError with every problem in the file's order.

This is where the other modules meet: the TOML is read (with a line for each syntax error, even
the ones tomllib reports only at the end of the file), secrets are resolved, the model and the
cross-key checks run, and their problems are merged and listed as the file reads.
"""

from __future__ import annotations

import bisect
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Final

import pydantic

from voltd.config.checks import _cross_checks
from voltd.config.errors import (
    ConfigError,
    Loc,
    _allowed_keys,
    _descend,
    _got,
    _located,
    _unwrap_models,
    format_key_path,
)
from voltd.config.model import (
    Config,
    MatchSpec,
    RouteConfig,
    SinkConfig,
    SinkDelivery,
    _File,
    _Match,
    _Sink,
)
from voltd.config.secrets import _HIDDEN, _Secrets
from voltd.config.values import _or_none, normalize_number

_MISSING: Final = {
    ("routes", "sinks"): "missing: expected the sinks this route delivers to, "
    'e.g. sinks = ["archive"]',
    ("sinks", "type"): 'missing: every sink needs a type, e.g. type = "file"',
}


def _file_problems(err: pydantic.ValidationError, secrets: _Secrets) -> list[tuple[Loc, str]]:
    """The problems in a validation error, with the input shown unless it is a secret."""
    out: list[tuple[Loc, str]] = []
    for error in err.errors(include_url=False):
        loc, message = _located(_File, error)
        exc = (error.get("ctx") or {}).get("error")
        if loc in secrets.broken and error["type"] != "extra_forbidden":
            continue  # already reported as a secret that could not be resolved
        if error["type"] == "missing":
            message = _MISSING.get((str(loc[0]), str(loc[-1])), message)
        elif error["type"] != "extra_forbidden" and getattr(exc, "show_input", True):
            if message == _Sink._expected:  # the only message that names its own key path
                message = message.format(path=format_key_path(loc))
            if format_key_path(loc) in secrets.paths:
                message += f" ({_HIDDEN})"
            else:
                message += _got(error.get("input"))
        out.append((loc, message))
    return out


#: The order problems are listed in: what later sections refer to comes first.
_SECTION_ORDER: Final = (
    "server", "admin", "spool", "verify", "retry", "numbers", "sinks", "routes", "defaults",
    "plugin_dirs",
)  # fmt: skip


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
        if isinstance(raw, dict) and _has(raw, part):
            raw = raw[part]
        elif isinstance(raw, list) and isinstance(part, int) and _has(raw, part):
            raw = raw[part]
        else:
            raw = None
    return tuple(ranks)


def _has(container: dict[str, Any] | list[Any], part: str | int) -> bool:
    return part in container if isinstance(container, dict) else 0 <= int(part) < len(container)


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
        sinks={
            name: SinkConfig(
                s.type, dict(s.model_extra or {}), SinkDelivery(s.concurrency, s.rate, s.retry)
            )
            for name, s in f.sinks.items()
        },
        defaults=f.defaults,
        plugin_dirs=f.plugin_dirs,
        secret_keys=frozenset(secrets.paths),
    )


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
        bad_line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            [f"{source_name}: line {bad_line}: invalid TOML: the file is not UTF-8 text"]
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
