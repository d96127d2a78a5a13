"""How log records become lines: logfmt (the default) or JSON, one record per line.

One record is always one line, tracebacks included: the traceback of `exc_info` goes into an
`exc` field of the record's own line (escaped in logfmt, a JSON string in JSON), never onto
continuation lines. That is what log shippers and `grep` want, and it is what keeps a record
whole under journald, which splits its input on newlines and gives each piece a priority of its
own.

- logfmt: `time=2026-12-01T07:00:00.123Z level=info logger=voltd.delivery msg="sink ops: ..."`
  then the structured fields passed with `extra=` (`sink=ops`), then `exc=` and `stack=`.
  A value is quoted when it is empty or holds a space, `=`, `"` or a character that is not
  printable; in quotes, `"` and `\\` are backslash-escaped and newlines, tabs and every other
  non-printable character (Unicode line separators, bidi controls, lone surrogates) are written
  as escapes (`\\n`, `\\t`, `\\u2028`), so no message can forge a second line or hide text.
- JSON: one object per line with `time`, `level`, `logger`, `msg`, the `extra=` fields, and
  `exc` / `stack` when present. It is ASCII-only (`\\uXXXX` escapes), so no locale and no
  Unicode line separator can break a line; `json.loads` takes each line as it is.
- Under journald (stderr *is* the journal: `JOURNAL_STREAM` names its device and inode, the
  check systemd documents), each line starts with the syslog priority `<N>` journald reads
  (`<2>` critical, `<3>` error, `<4>` warning, `<6>` info, `<7>` debug) and has no time
  stamp, because journald adds its own.

`setup()` puts one handler on the root logger, so what libraries log (hypercorn, httpx,
aiosmtpd's `mail.log`, Python warnings) comes out in the same format as voltd's own lines.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from types import TracebackType
from typing import Any, Final, TextIO

__all__ = [
    "FORMATS",
    "LEVELS",
    "JSONFormatter",
    "LineFormatter",
    "LogfmtFormatter",
    "escape_logfmt",
    "make_formatter",
    "priority",
    "setup",
    "under_journald",
]

#: The `--log-level` choices, lowest first.
LEVELS: Final = ("debug", "info", "warning", "error")
#: The `--log-format` choices; the first is the default.
FORMATS: Final = ("logfmt", "json")

# The attributes every LogRecord has: whatever else a record carries came from `extra=`.
_BLANK: Final = logging.LogRecord("", 0, "", 0, "", None, None)
_STANDARD: Final = frozenset([*vars(_BLANK), "message", "asctime", "taskName"])
# The fields a line always has (or may have); an `extra=` field of the same name is renamed.
_CORE: Final = frozenset({"time", "level", "logger", "msg", "exc", "stack"})
_BARE: Final = re.compile(r"[^\s=\"\\]+")
_KEY_JUNK: Final = re.compile(r"[^\w.-]", re.ASCII)
_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_MARK: Final = "_voltd_logs"


def priority(levelno: int) -> int:
    """The syslog priority journald reads from a `<N>` prefix (there is no `notice` level)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def escape_logfmt(value: str) -> str:
    """`value` as one logfmt value: bare when it can be, else quoted with every character
    that could end the line or mislead a reader escaped."""
    if value and value.isprintable() and _BARE.fullmatch(value):
        return value
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch == " " or ch.isprintable():
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _safe_str(value: object) -> str:
    """str(value), or a placeholder: a field whose __str__ raises must not lose the record."""
    try:
        return str(value)
    except Exception as exc:  # noqa: BLE001 - any error of foreign code, reported in the line
        return f"<unprintable {type(value).__name__}: {type(exc).__name__}>"


def _message(record: logging.LogRecord) -> str:
    """The record's message; a call whose arguments do not fit its format string still logs
    (logging would print a multi-line "--- Logging error ---" report instead)."""
    try:
        return record.getMessage()
    except Exception as exc:  # noqa: BLE001 - a bad log call must not cost the record
        return f"{_safe_str(record.msg)} % {_safe_str(record.args)} ({type(exc).__name__})"


def _timestamp(created: float) -> str:
    """UTC, milliseconds, `Z`: sorts as text and needs no time zone to read."""
    millis = int(created * 1000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000))
    return f"{stamp}.{millis % 1000:03d}Z"


class LineFormatter(logging.Formatter):
    """The shared part: which fields a record has, and the journald prefix. Subclasses say
    how the fields become one line (`render`)."""

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        #: Under journald: a `<N>` prefix on every line and no time stamp.
        self.journal = journal

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """time (not under journald), level, logger, msg, the `extra=` fields, exc, stack."""
        out: dict[str, Any] = {}
        if not self.journal:
            out["time"] = _timestamp(record.created)
        out["level"] = record.levelname.lower()
        out["logger"] = record.name
        out["msg"] = _message(record).rstrip("\n")  # e.g. a warning's, which ends in one
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            key = _KEY_JUNK.sub("_", key) or "_"
            out[f"extra_{key}" if key in _CORE or key in out else key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exc"] = self.formatException(record.exc_info).rstrip("\n")
        elif record.exc_text:
            out["exc"] = record.exc_text.rstrip("\n")
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info).rstrip("\n")
        return out

    def render(self, fields: dict[str, Any]) -> str:
        raise NotImplementedError

    def format(self, record: logging.LogRecord) -> str:
        text = self.render(self.fields(record))
        if not self.journal:
            return text
        # Nothing above renders a newline; should one slip through, it keeps its priority.
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


class LogfmtFormatter(LineFormatter):
    """`key=value` pairs: for people reading journalctl and for grep, and still parseable."""

    def render(self, fields: dict[str, Any]) -> str:
        return " ".join(f"{key}={escape_logfmt(self._text(v))}" for key, v in fields.items())

    @staticmethod
    def _text(value: object) -> str:
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        return _safe_str(value)


class JSONFormatter(LineFormatter):
    """One JSON object per line, for log shippers: nothing to parse but JSON."""

    def render(self, fields: dict[str, Any]) -> str:
        return json.dumps(fields, ensure_ascii=True, default=_safe_str)


_FORMATTERS: Final[dict[str, type[LineFormatter]]] = {
    "logfmt": LogfmtFormatter,
    "json": JSONFormatter,
}


def make_formatter(fmt: str = "logfmt", *, journal: bool = False) -> LineFormatter:
    """The formatter for a `--log-format` value."""
    try:
        return _FORMATTERS[fmt](journal=journal)
    except KeyError:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}") from None


def under_journald(stream: TextIO | None = None) -> bool:
    """Whether `stream` (stderr) is connected to the journal. `JOURNAL_STREAM` alone is not
    enough: a child of a service inherits it with its stderr redirected elsewhere, so its
    `device:inode` must be the stream's own (systemd.exec(5))."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat((sys.stderr if stream is None else stream).fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (AttributeError, OSError, ValueError):  # no descriptor (a StringIO), or junk
        return False


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """A crash's traceback as one critical record, so it too is one line with its priority."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("voltd").critical(
        "uncaught %s: the process stops", kind.__name__, exc_info=(kind, exc, tb)
    )


def setup(level: str = "info", fmt: str = "logfmt", stream: TextIO | None = None) -> None:
    """Send every logger's records to `stream` (stderr by default) as `fmt` lines at `level`
    and above; also Python warnings and an uncaught exception's traceback. Calling it again
    replaces what an earlier call installed."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(fmt, journal=under_journald(stream)))
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(_level(level))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _level(name: str) -> int:
    number = logging.getLevelName(name.upper())
    if not isinstance(number, int):
        raise ValueError(f"log level {name!r}: expected one of {', '.join(LEVELS)}")
    return number
