"""Log lines as an operator and a log shipper get them (voltd.logs): logfmt and JSON, one
record per line with tracebacks inside it, and the `<N>` priority prefix under journald.

The formatter tests format real LogRecords; the daemon tests run `voltd serve` with its stderr
in a file, as journald would hold it, and read every line of it."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Daemon, _status_urls, make_event
from voltd import logs
from voltd.logs import JSONFormatter, LogfmtFormatter, escape_logfmt

# -- a logfmt reader: what a log shipper does with our lines ----------------------------------

_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?:\s+|$)')
_ESCAPE = re.compile(r"\\(u[0-9a-f]{4}|U[0-9a-f]{8}|.)")
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code[0] in "uU" and len(code) > 1:
        return chr(int(code[1:], 16))
    return _SIMPLE[code]


def parse_logfmt(line: str) -> dict[str, str]:
    """One logfmt line back into its fields; fails on anything that is not logfmt."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(line):
        m = _PAIR.match(line, pos)
        assert m is not None, f"not logfmt at {pos}: {line!r}"
        key, value = m.group(1), m.group(2)
        if value.startswith('"'):
            value = _ESCAPE.sub(_unescape, value[1:-1])
        assert key not in out, f"{key} twice in {line!r}"
        out[key] = value
        pos = m.end()
    return out


# -- records through the real formatters ---------------------------------------------------

#: 2026-12-01T07:00:00.125Z (an eighth of a second is exact in binary floating point).
WHEN = datetime(2026, 12, 1, 7, 0, 0, 125000, tzinfo=UTC).timestamp()


def record(
    msg: str,
    *args: object,
    level: int = logging.INFO,
    name: str = "voltd.delivery",
    exc_info: Any = None,
    extra: dict[str, Any] | None = None,
) -> logging.LogRecord:
    rec = logging.getLogger(name).makeRecord(
        name, level, __file__, 1, msg, args, exc_info, extra=extra
    )
    rec.created = WHEN
    return rec


def raised(exc: BaseException) -> Any:
    """exc_info of `exc` raised and caught, with a real traceback."""
    try:
        raise exc
    except BaseException:  # noqa: BLE001 - caught to keep it
        return sys.exc_info()


def test_logfmt_line_has_time_level_logger_msg_and_the_extra_fields() -> None:
    rec = record(
        "sink ops: %d deliveries failed (%s)", 3, "HTTP 500", extra={"sink": "ops", "n": 3}
    )
    assert LogfmtFormatter().format(rec) == (
        "time=2026-12-01T07:00:00.125Z level=info logger=voltd.delivery "
        'msg="sink ops: 3 deliveries failed (HTTP 500)" sink=ops n=3'
    )


@pytest.mark.parametrize(
    "text",
    [
        'she said "hi" \\o/',
        "two\nlines\r\nand\ttab",
        "héllo 日本 🙂 ünïcode",
        "line\u2028separator\u2029paragraph\x85nel\x0bvt\x0cff\x1c",
        "bidi \u202eevil\u202c and zero\u200bwidth and \x00nul \x1b[31mansi",
        "lone \udcff surrogate",
        "",
        "key=value",
        "bare",
    ],
)
def test_logfmt_escapes_so_one_record_is_one_line_and_reads_back(text: str) -> None:
    line = LogfmtFormatter().format(record("%s", text, extra={"detail": text}))
    assert len(line.splitlines()) == 1  # Python's idea of a line is the widest
    line.encode("utf-8")  # writable, lone surrogates included
    fields = parse_logfmt(line)
    assert fields["msg"] == text and fields["detail"] == text
    assert fields["level"] == "info" and fields["logger"] == "voltd.delivery"


def test_logfmt_keeps_printable_unicode_readable() -> None:
    line = LogfmtFormatter().format(record("héllo 日本 🙂"))
    assert 'msg="héllo 日本 🙂"' in line
    assert escape_logfmt("ops") == "ops" and escape_logfmt("") == '""'
    assert escape_logfmt('a "b"\n') == '"a \\"b\\"\\n"'


def test_a_traceback_stays_on_the_line_and_parses_back() -> None:
    exc_info = raised(RuntimeError('a "quoted"\nbug'))
    rec = record("sink x: a plugin bug", level=logging.ERROR, exc_info=exc_info)
    line = LogfmtFormatter().format(rec)
    assert "\n" not in line and len(line.splitlines()) == 1
    fields = parse_logfmt(line)
    assert fields["level"] == "error" and fields["msg"] == "sink x: a plugin bug"
    assert fields["exc"].startswith("Traceback (most recent call last):\n")
    assert "in raised\n" in fields["exc"]
    assert fields["exc"].endswith('RuntimeError: a "quoted"\nbug')
    assert list(fields)[-1] == "exc"  # the long field last


def test_json_lines_parse_and_carry_the_fields() -> None:
    exc_info = raised(KeyError("no such field"))
    rec = record(
        "sink %s: bug \u2028 %s",
        "ops",
        "日本",
        level=logging.ERROR,
        exc_info=exc_info,
        extra={"sink": "ops", "attempts": 2, "when": datetime(2026, 1, 1, tzinfo=UTC)},
    )
    line = JSONFormatter().format(rec)
    assert len(line.splitlines()) == 1 and line.isascii()
    obj = json.loads(line)
    assert obj["time"] == "2026-12-01T07:00:00.125Z"
    assert obj["level"] == "error" and obj["logger"] == "voltd.delivery"
    assert obj["msg"] == "sink ops: bug \u2028 日本"
    assert obj["sink"] == "ops" and obj["attempts"] == 2
    assert obj["when"] == "2026-01-01 00:00:00+00:00"
    assert obj["exc"].startswith("Traceback") and obj["exc"].endswith("KeyError: 'no such field'")


def test_extra_fields_never_overwrite_the_core_ones() -> None:
    rec = record("m", extra={"time": "t", "level": "l", "logger": "x", "exc": "e", "a b": 1})
    for line in (LogfmtFormatter().format(rec), JSONFormatter().format(rec)):
        fields = parse_logfmt(line) if not line.startswith("{") else json.loads(line)
        assert fields["level"] == "info" and fields["logger"] == "voltd.delivery"
        assert fields["time"] == "2026-12-01T07:00:00.125Z" and "exc" not in fields
        assert fields["extra_time"] == "t" and fields["extra_exc"] == "e"
        assert fields["a_b"] in ("1", 1)


def test_a_log_call_with_wrong_arguments_still_makes_one_line() -> None:
    line = LogfmtFormatter().format(record("%d events", "many"))
    assert len(line.splitlines()) == 1
    assert "events" in parse_logfmt(line)["msg"]


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.CRITICAL, "<2>"),
        (logging.ERROR, "<3>"),
        (logging.WARNING, "<4>"),
        (logging.INFO, "<6>"),
        (logging.DEBUG, "<7>"),
    ],
)
def test_under_journald_lines_carry_the_priority_and_no_time(level: int, prefix: str) -> None:
    rec = record("stopped", level=level, exc_info=raised(ValueError("x\ny")))
    line = LogfmtFormatter(journal=True).format(rec)
    assert line.startswith(prefix) and len(line.splitlines()) == 1
    fields = parse_logfmt(line.removeprefix(prefix))
    assert "time" not in fields and fields["msg"] == "stopped"
    obj = json.loads(JSONFormatter(journal=True).format(rec).removeprefix(prefix))
    assert "time" not in obj and obj["exc"].endswith("ValueError: x\ny")


def test_a_record_that_renders_to_several_lines_prefixes_each() -> None:
    class Leaky(LogfmtFormatter):
        def render(self, fields: dict[str, Any]) -> str:
            return "one\ntwo"

    assert Leaky(journal=True).format(record("x", level=logging.WARNING)) == "<4>one\n<4>two"


# -- setup: the handler, journald detection ------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, hook = list(root.handlers), root.level, sys.excepthook
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    sys.excepthook = hook
    logging.captureWarnings(False)


def test_journald_is_only_when_journal_stream_names_this_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        st = os.fstat(a.fileno())
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        assert not logs.under_journald(a)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.under_journald(a)
        assert not logs.under_journald(b)  # inherited by a child whose stderr went elsewhere
        assert not logs.under_journald(io.StringIO())
        monkeypatch.setenv("JOURNAL_STREAM", "junk")
        assert not logs.under_journald(a)


@pytest.mark.usefixtures("restore_logging")
def test_setup_sends_library_records_and_uncaught_errors_through_the_formatter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "err", "w") as err:
        st = os.fstat(err.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        logs.setup("info", "logfmt", err)
        logs.setup("warning", "logfmt", err)  # again: replaces, does not add a second handler
        logging.getLogger("hypercorn.error").warning("a library says\nso")
        logging.getLogger("mail.log").info("below the level")
        sys.excepthook(*raised(RuntimeError("boom")))
    lines = (tmp_path / "err").read_text().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("<4>")
    assert parse_logfmt(lines[0][3:])["logger"] == "hypercorn.error"
    assert lines[1].startswith("<2>")
    assert parse_logfmt(lines[1][3:])["exc"].endswith("RuntimeError: boom")


@pytest.mark.usefixtures("restore_logging")
def test_setup_json_at_debug_without_journald(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    logs.setup("debug", "json", out)
    # (not httpx: voltd turns its request lines down to warning, as they show full URLs)
    logging.getLogger("some.library").debug("a library's %s", "debug line")
    (obj,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert obj["level"] == "debug" and obj["logger"] == "some.library" and "time" in obj


# -- a real `voltd serve` --------------------------------------------------------------------

BUGGY_PLUGIN = """\
import voltd


class Buggy(voltd.Sink):
    async def send(self, event):
        raise RuntimeError('a "quoted"\\nplugin bug')  # not a SinkError: a plugin bug


@voltd.hookimpl
def register_sink_types(register):
    register("buggy", Buggy)
"""

ROUTES = """\
[[routes]]
name = "everything"
sinks = ["all", "buggy"]

[sinks.all]
type = "file"
path = "out/all.jsonl"

[sinks.buggy]
type = "buggy"
"""

SECRET_TEXT = "the SMS text nobody logs above debug"


def serve(
    root: Path, args: list[str], *, journal: bool, timeout: float = 30.0
) -> tuple[list[str], str]:
    """`voltd serve` on `root` (a buggy plugin sink next to a file sink) with its stderr in a
    file, JOURNAL_STREAM naming that file when `journal`; post one event, wait for the plugin
    bug to be logged, stop it. Returns the lines of its stderr and the event's text."""
    d = Daemon(root)
    (root / "plugins").mkdir()
    (root / "plugins" / "buggy.py").write_text(BUGGY_PLUGIN)
    d.configure(body=ROUTES, plugin_dirs=True)
    short = Path(tempfile.mkdtemp(prefix="voltd-", dir="/tmp"))  # AF_UNIX paths are short
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(short / "n"))
    notify.settimeout(0.2)
    stderr_path = root / "stderr.log"
    with stderr_path.open("wb") as stderr:
        st = os.fstat(stderr.fileno())
        env = dict(os.environ, PYTHONUNBUFFERED="1", NOTIFY_SOCKET=str(short / "n"))
        env.pop("JOURNAL_STREAM", None)
        if journal:
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        argv = [sys.executable, "-m", "voltd", *args]
        argv[argv.index("serve") + 1 : argv.index("serve") + 1] = ["-c", str(d.config)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    try:
        deadline = time.monotonic() + timeout
        ready = ""
        while "READY=1" not in ready.split("\n"):
            assert proc.poll() is None, stderr_path.read_text(errors="replace")
            assert time.monotonic() < deadline, stderr_path.read_text(errors="replace")
            try:
                ready = notify.recv(65536).decode()
            except TimeoutError:
                continue
        d.url = _status_urls(ready)[0][0]
        event = make_event(text=SECRET_TEXT)
        assert d.post(event).status_code == 200
        assert d.post(event).json()["duplicate"] is True  # logged at debug
        d.wait_for(lambda: len(d.lines("out/all.jsonl")) == 1)
        while "plugin bug" not in stderr_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, stderr_path.read_text(errors="replace")
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout) == 0, stderr_path.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        d.close()
        notify.close()
        shutil.rmtree(short, ignore_errors=True)
    text = stderr_path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return text.splitlines(), text


def _bug(records: list[dict[str, Any]]) -> dict[str, Any]:
    (bug,) = [r for r in records if "a plugin bug" in r["msg"]]
    return bug


def _assert_the_bug_is_whole(bug: dict[str, Any]) -> None:
    assert bug["level"] == "error" and bug["logger"] == "voltd.delivery"
    assert bug["msg"].startswith("sink buggy: plugin 'buggy' from ")
    assert bug["exc"].startswith("Traceback (most recent call last):\n")
    assert "buggy.py" in bug["exc"]
    assert bug["exc"].endswith('RuntimeError: a "quoted"\nplugin bug')


@pytest.mark.slow
def test_serve_under_journald_prefixes_every_line_tracebacks_included(tmp_path: Path) -> None:
    lines, _ = serve(tmp_path, ["--log-level", "debug", "serve"], journal=True)
    assert lines
    records = []
    for line in lines:
        m = re.match(r"<([2-7])>", line)
        assert m, f"no priority prefix: {line!r}"
        fields = parse_logfmt(line[m.end() :])
        assert "time" not in fields, line  # journald stamps it
        assert int(m.group(1)) == logs.priority(logging.getLevelName(fields["level"].upper()))
        records.append(fields)
    _assert_the_bug_is_whole(_bug(records))
    assert any(r["level"] == "debug" for r in records)  # --log-level debug shows debug
    assert any(r["msg"] == "stopped" for r in records)


@pytest.mark.slow
def test_serve_log_format_json_writes_one_json_object_per_line(tmp_path: Path) -> None:
    lines, text = serve(tmp_path, ["serve", "--log-format", "json"], journal=False)
    records = [json.loads(line) for line in lines]  # every line, or it fails here
    assert all(set(r) >= {"time", "level", "logger", "msg"} for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in records)
    _assert_the_bug_is_whole(_bug(records))
    assert not [r for r in records if r["level"] == "debug"]
    assert SECRET_TEXT not in text  # at info, no message text


@pytest.mark.slow
def test_serve_json_under_journald(tmp_path: Path) -> None:
    lines, _ = serve(tmp_path, ["--log-format", "json", "serve"], journal=True)
    records = []
    for line in lines:
        m = re.match(r"<([2-7])>", line)
        assert m, f"no priority prefix: {line!r}"
        records.append(json.loads(line[m.end() :]))
    assert not [r for r in records if "time" in r]
    _assert_the_bug_is_whole(_bug(records))


def test_the_flag_goes_before_or_after_the_command() -> None:
    from voltd.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["serve", "-c", "x"]).log_format == "logfmt"
    assert parse(["--log-format", "json", "serve", "-c", "x"]).log_format == "json"
    assert parse(["serve", "-c", "x", "--log-format", "json"]).log_format == "json"
    args = parse(["--log-level", "debug", "check", "-c", "x", "--log-level", "error"])
    assert args.log_level == "error"
    assert parse(["--log-level", "debug", "check", "-c", "x"]).log_level == "debug"
    with pytest.raises(SystemExit):
        parse(["serve", "-c", "x", "--log-format", "xml"])


def test_a_bad_command_still_fails_cleanly_with_the_new_logging(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "voltd", "--log-format", "json", "check", "-c", tmp_path / "no"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
