"""Operating a shared PostgreSQL spool (`[spool] url`) with real parts: `voltd serve` processes
(tests/helpers.py's `Daemon`), the command line in subprocesses (`python -m voltd ...`), and the
session's real PostgreSQL server (tests/pg.py), which these tests stop, SIGKILL and restart.

- the database restarted (stopped, then SIGKILLed) under load: 503s while it is down, never a
  200 for an event that is not committed, /healthz says so, and every acknowledged event is
  delivered once it is back;
- the command line: `voltd spool migrate`, `voltd check`, `voltd serve` (with and without
  `--migrate`), `voltd spool status|dead|replay|retry` from another host's config while two
  instances run;
- the password (`[spool] password`, or in the URL) never shown, also when the connection fails;
  password authentication enforced for one role of the fixture's server;
- a spool written at schema version 1 upgraded by `voltd spool migrate` and drained;
- `[spool]` configuration mistakes, and where the fetched key's cache goes with `url`.

The `postgres` fixture is one server for the whole session: a test that stops it starts it
again in a `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.helpers import Daemon, RecordingReceiver, make_event
from tests.pg import PostgresServer, free_port
from voltd.config import ConfigError, load
from voltd.events import Event, parse
from voltd.keyfetch import cache_dir
from voltd.spool_pg import PG_SCHEMA_VERSION, PgSpoolDB, migrate, schema_version
from voltd.spool_pg.sql import _MIGRATIONS

# --------------------------------------------------------------------------------------------
# Helpers

ARCHIVE_FILE = "out/archive.jsonl"
ARCHIVE = """\
[[routes]]
name = "all"
sinks = ["archive"]

[sinks.archive]
type = "file"
path = "out/archive.jsonl"
"""


def toml_str(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text)


def use_postgres(d: Daemon, url: str, spool_extra: str = "", **configure: Any) -> Path:
    """`d.configure(...)`, with the `[spool]` table's `path = "spool.db"` replaced by
    `url = ...` (and `spool_extra` lines: password, state_dir)."""
    d.configure(**configure)
    text = d.config.read_text()
    old = '[spool]\npath = "spool.db"\n'
    assert old in text, "tests/helpers.py's BASE_CONFIG changed its [spool] table"
    new = f"[spool]\nurl = {toml_str(url)}\n" + (spool_extra.strip() + "\n" if spool_extra else "")
    d.config.write_text(text.replace(old, new, 1))
    return d.config


def voltd(*args: str | Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """The command line exactly as an operator runs it (as tests/test_cli.py does)."""
    return subprocess.run(
        [sys.executable, "-m", "voltd", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def clean_failure(result: subprocess.CompletedProcess[str], code: int) -> str:
    """Failed with `code` and said why, without a traceback; returns stderr."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.strip(), "a failure must say why"
    assert "Traceback" not in result.stderr + result.stdout
    return result.stderr


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def archived(*daemons: Daemon, path: str = "out/archive.jsonl") -> Counter[str]:
    """Envelope ids in the file sinks of `daemons`, with how often each was written."""
    return Counter(json.loads(line)["id"] for d in daemons for line in d.lines(path))


def event_id(body: bytes) -> str:
    return str(json.loads(body)["id"])


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.fixture
def deployments(tmp_path: Path) -> Iterator[Callable[[str], Daemon]]:
    """Make `Daemon`s in subdirectories of tmp_path (another "host" each); all are killed (if
    still running) at the end."""
    made: list[Daemon] = []

    def make(name: str) -> Daemon:
        d = Daemon(tmp_path / name)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


# --------------------------------------------------------------------------------------------
# 1. The database restarted under load


@dataclass(frozen=True)
class Answer:
    id: str
    sent: float  # time.monotonic() before the request
    done: float  # and after its answer
    status: int | None  # None: no HTTP answer at all
    text: str


class Load:
    """Client threads posting unique signed events as fast as the daemon answers, with a short
    pause between requests; every answer is kept."""

    def __init__(self, daemon: Daemon, threads: int = 4, pause: float = 0.01) -> None:
        self.daemon = daemon
        self.pause = pause
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)

    def _run(self) -> None:
        with httpx.Client(verify=self.daemon.tls(), timeout=60) as client:
            while not self._stop.is_set():
                self.post(client)
                time.sleep(self.pause)

    def post(self, client: httpx.Client) -> None:
        """One new event, its answer kept with the others."""
        body = make_event()
        headers = {
            "Content-Type": "application/json",
            "X-Respond-Flow-Signature": self.daemon.signer.sign(body),
        }
        sent = time.monotonic()
        try:
            r = client.post(self.daemon.url, content=body, headers=headers)
            status, text = r.status_code, r.text
        except httpx.HTTPError as exc:
            status, text = None, repr(exc)
        answer = Answer(event_id(body), sent, time.monotonic(), status, text)
        with self._lock:
            self.answers.append(answer)

    def post_one(self) -> None:
        with httpx.Client(verify=self.daemon.tls(), timeout=60) as client:
            self.post(client)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def acked_since(self, t: float, n: int) -> Callable[[], bool]:
        """Whether `n` requests sent after `t` were answered 200 (for `wait_until`)."""
        return lambda: sum(1 for a in self.snapshot() if a.status == 200 and a.sent > t) >= n


def healthz(d: Daemon) -> tuple[float, float, int, dict[str, object]]:
    """(sent, answered, status, body) of the admin listener's /healthz."""
    sent = time.monotonic()
    r = httpx.get(f"{d.admin_url}/healthz", timeout=60)
    return sent, time.monotonic(), r.status_code, r.json()


def timeline(answers: list[Answer], outages: list[tuple[str, float, float]], d: Daemon) -> str:
    """For failure messages: the answers around each outage, and the daemon's log."""
    out = []
    for how, down, up in outages:
        out.append(f"{how}: down for {up - down:.1f}s")
        for a in answers:
            if down - 2 <= a.done and a.sent <= up + 10:
                out.append(
                    f"  sent {a.sent - down:+6.2f}s answered {a.done - down:+6.2f}s: {a.status}"
                )
    return "\n".join([*out, "log:", *d.log[-60:]])


#: The database stays down at least this long each time (seconds).
MIN_DOWN = 3.0


def test_database_restart_under_load_loses_no_acknowledged_event(
    daemon: Daemon, pg_url: str, postgres: PostgresServer
) -> None:
    password = "pw-" + secrets.token_hex(12)
    (daemon.root / "pgpass").write_text(password + "\n")
    use_postgres(daemon, pg_url, 'password = "${file:pgpass}"', body=ARCHIVE)
    migrate(pg_url)
    daemon.start()
    where = f"postgresql://voltd@127.0.0.1:{postgres.port}/{dbname(pg_url)}"
    outages: list[tuple[str, float, float]] = []
    #: Lines in the file sink when the database went down, and when it came back.
    written_at: list[tuple[int, int]] = []
    health: list[tuple[float, float, int, dict[str, object]]] = []
    with Load(daemon) as load:
        wait_until("the first acknowledgements", load.acked_since(0, 40))
        for how in ("stop", "kill"):
            try:
                if how == "stop":
                    postgres.stop()  # "fast": sessions are ended, then a checkpoint
                else:
                    postgres.kill()  # SIGKILL of every server process: crash recovery next
                down = time.monotonic()
                lines_down = len(daemon.lines(ARCHIVE_FILE))
                # Down until /healthz and a request sent since have been answered (a request
                # waits up to 5 s for a connection, behind the batch before it; the client
                # threads may all be waiting on requests sent before), and at least MIN_DOWN
                # seconds.
                probes = [
                    threading.Thread(target=lambda: health.append(healthz(daemon)), daemon=True),
                    threading.Thread(target=load.post_one, daemon=True),
                ]
                for probe in probes:
                    probe.start()
                while (
                    any(probe.is_alive() for probe in probes) or time.monotonic() < down + MIN_DOWN
                ):
                    assert time.monotonic() < down + 60, "no answer while the database is down"
                    time.sleep(0.05)
                assert daemon.proc is not None and daemon.proc.poll() is None, "voltd exited"
                written_at.append((lines_down, len(daemon.lines(ARCHIVE_FILE))))
                up = time.monotonic()
            finally:
                postgres.start()
            outages.append((how, down, up))
            # Ingest answers 200 again, and /healthz says so.
            wait_until(f"200s after the {how}", load.acked_since(up, 10), 90)
            wait_until(f"/healthz 200 after the {how}", lambda: healthz(daemon)[2] == 200, 60)
        after = time.monotonic()
        wait_until("acknowledgements at the end", load.acked_since(after, 20))
    answers = load.snapshot()

    # Every request got an HTTP answer, a 200 or a 503: voltd kept running throughout.
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert {a.status for a in answers} <= {200, 503}, Counter(a.status for a in answers)
    for how, down, up in outages:
        # Sent once the database was down, answered before it was back: nothing could
        # commit, so never a 200. (Sent before, answered after: it may have committed.)
        inside = [a for a in answers if a.sent >= down and a.done <= up]
        assert inside, f"no request was answered while the database was down ({how})\n" + (
            timeline(answers, outages, daemon)
        )
        assert {a.status for a in inside} == {503}, (how, Counter(a.status for a in inside))
        seen = [h for h in health if down <= h[0] and h[1] <= up]
        assert seen and {h[2] for h in seen} == {503}, (how, seen)
        for _, _, _, body in seen:
            problems = body["problems"]
            assert isinstance(problems, list) and any(
                str(p).startswith(f"spool: {where}: ") for p in problems
            ), problems
    for a in answers:
        if a.status == 503:
            # Readable: what failed, where (without the password), and psycopg's reason.
            error = json.loads(a.text)["error"]
            assert error.startswith(f"cannot store: {where}: "), error
            assert "\n" not in error and password not in error
    assert healthz(daemon)[2] == 200

    # Every acknowledged event is delivered, before, during and after the outages.
    acked = {a.id for a in answers if a.status == 200}
    posted = {a.id for a in answers}
    daemon.wait_for(lambda: acked <= set(archived(daemon)), timeout=90)
    db = PgSpoolDB(pg_url)
    try:
        wait_until("no pending deliveries", lambda: db.status()["archive"]["pending"] == 0)
        assert db.status()["archive"]["dead"] == 0
    finally:
        db.close()
    lines = [event_id(line) for line in daemon.lines(ARCHIVE_FILE)]
    written = Counter(lines)
    # A 503 may still have been committed (the COMMIT went through, its answer was lost with
    # the connection): delivered then, which is fine; nothing that was never posted is.
    assert set(written) <= posted
    # Exactly once, but for what an outage explains: a single event's write is confirmed to
    # the spool without waiting (`record_soon`); when that commit is lost with the database,
    # the delivery is still pending after the restart and made again (at least once). Such a
    # line was written before the database came back and again after it went down.
    duplicates = {i: n for i, n in written.items() if n > 1}
    unexplained = []
    for eid in duplicates:
        at = [i for i, x in enumerate(lines) if x == eid]
        straddles = any(
            at[0] < came_back and at[1] >= went_down for went_down, came_back in written_at
        )
        if len(at) != 2 or not straddles:
            unexplained.append((eid, at))
    report = (
        f"{len(answers)} requests, {len(acked)} acknowledged, "
        f"{sum(1 for a in answers if a.status == 503)} answered 503, "
        f"{len(set(written) - acked)} delivered although answered 503, "
        f"{len(duplicates)} written twice across an outage (at least once), "
        f"{len(unexplained)} unexplained duplicates"
    )
    print(report)
    assert not unexplained, (report, unexplained, written_at)
    assert daemon.stop() == 0

    log = "\n".join(daemon.log)
    assert password not in log
    assert "Traceback" not in log, log[-5000:]
    # One record per line (logfmt): a multi-line message would be a line without `time=`.
    assert all(line.startswith("time=") for line in daemon.log), log[-5000:]
    # An unreachable database is said as such, not taken for another instance delivering
    # to the ordered (concurrency 1) file sink: there is no other instance. (Until
    # `PgSpool.acquire_sink` raised SpoolError on a database error instead of returning
    # False, the worker logged "delivered by another instance; standing by" here.)
    assert not any("another instance" in line for line in daemon.log), log[-5000:]
    # The outages are in the log, readably: one line each, naming the database, no password.
    spool_lines = [line for line in daemon.log if where in line]
    assert spool_lines, log[-5000:]
    assert any("answered 503" in line for line in spool_lines), log[-5000:]


# --------------------------------------------------------------------------------------------
# 2. The command line against PostgreSQL, with two instances running


@pytest.fixture
def receiver() -> Iterator[RecordingReceiver]:
    """The relays' receiver: its port refuses connections until `start()`; `/gone` answers 410
    until told otherwise, everything else 200."""
    with RecordingReceiver(listen=False) as server:
        server.set_status("/gone", 410)
        yield server


def relay_body(receiver: RecordingReceiver) -> str:
    return f"""\
[[routes]]
name = "all"
sinks = ["archive", "relay", "gone"]

[sinks.archive]
type = "file"
path = "out/archive.jsonl"

[sinks.relay]
type = "http"
url = "{receiver.url("/relay")}"
retry = {{ give_up_after = "2s" }}

[sinks.gone]
type = "http"
url = "{receiver.url("/gone")}"
"""


SPOOL_COLUMNS = (
    "sink",
    "state",
    "pending",
    "in flight",
    "retrying",
    "next retry",
    "dead",
    "done 1h",
    "oldest",
)


def status_table(out: str, sinks: list[str]) -> dict[str, dict[str, str]]:
    """The rows of `voltd spool status`'s table, by sink and column (the numbers are right
    aligned under their heading, the first two columns left aligned)."""
    lines = out.splitlines()
    head = next(line for line in lines if line.startswith("sink "))
    rights = [head.index(name) + len(name) for name in SPOOL_COLUMNS]
    rows: dict[str, dict[str, str]] = {}
    for line in lines:
        words = line.split()
        if not words or words[0] not in sinks:
            continue
        at = head.index("state")
        state = line[at:].split()[0]
        row = {"sink": words[0], "state": state}
        left = at + len(state)
        for i, name in enumerate(SPOOL_COLUMNS[2:], 2):
            row[name] = line[left : rights[i]].strip()
            left = rights[i]
        rows[words[0]] = row
    return rows


def test_cli_against_postgres_with_two_instances(
    deployments: Callable[[str], Daemon],
    pg_url: str,
    postgres: PostgresServer,
    receiver: RecordingReceiver,
) -> None:
    where = f"postgresql://voltd@127.0.0.1:{postgres.port}/{dbname(pg_url)}"
    a, b, ops = deployments("a"), deployments("b"), deployments("ops")
    for d in (a, b, ops):  # ops: another host, with the same config, where nothing runs
        use_postgres(d, pg_url, body=relay_body(receiver))
    cfg = ["-c", str(ops.config)]

    # Not migrated: `check` and `serve` refuse, naming the command that fixes it.
    err = clean_failure(voltd("check", *cfg), 1)
    assert "voltd spool migrate" in err and where in err, err
    err = clean_failure(voltd("serve", "-c", a.config), 1)
    assert "voltd spool migrate" in err and where in err, err
    with psycopg.connect(pg_url) as conn:
        assert schema_version(conn) is None  # neither created anything

    # `voltd spool migrate`: created, then nothing to do.
    out = ok(voltd("spool", "migrate", *cfg))
    assert out.strip() == f"{where}: spool schema created (version {PG_SCHEMA_VERSION})"
    out = ok(voltd("spool", "migrate", *cfg))
    assert out.strip() == f"{where}: spool schema is up to date (version {PG_SCHEMA_VERSION})"
    out = ok(voltd("check", *cfg))
    assert f"spool:    {where} (PostgreSQL, schema version {PG_SCHEMA_VERSION})," in out, out

    # Two instances on the spool; events through both.
    a.start()
    b.start()
    bodies = [make_event(text=f"via a {i}") for i in range(3)]
    bodies += [make_event(text=f"via b {i}") for i in range(2)]
    for i, body in enumerate(bodies):
        r = (a if i < 3 else b).post(body)
        assert r.status_code == 200, r.text
    ids = {event_id(body) for body in bodies}
    # The file sink keeps its order (concurrency 1): one instance at a time writes its file.
    wait_until("the archive", lambda: set(archived(a, b)) == ids)
    assert max(archived(a, b).values()) == 1

    # Waiting is done by asking the database here (a command takes a second to start).
    db = PgSpoolDB(pg_url)
    try:
        _cli_with_two_instances(a, b, cfg, db, ids, receiver, where)
    finally:
        db.close()


def _cli_with_two_instances(
    a: Daemon,
    b: Daemon,
    cfg: list[str],
    db: PgSpoolDB,
    ids: set[str],
    receiver: RecordingReceiver,
    where: str,
) -> None:
    # The relay's port refuses connections: after 2 s each event is a dead letter.
    def dead_ids() -> set[str]:
        return {r["id"] for r in db.dead("relay")}

    wait_until("dead letters", lambda: dead_ids() == ids, 60)
    assert {r["id"] for r in json.loads(ok(voltd("spool", "dead", "--json", *cfg)))} == ids
    dead_text = ok(voltd("spool", "dead", "--sink", "relay", *cfg))
    lines = dead_text.splitlines()
    assert len(lines) == 5, dead_text
    for line in lines:
        assert line.startswith("relay  seq "), line
        assert re.search(r"  attempts [1-9][0-9]*  ", line), line
        assert "refused" in line.lower(), line  # why it failed, in words
    assert {line.split()[3] for line in lines} == ids

    # `voltd spool status` from the other host: both instances, the counts.
    out = ok(voltd("spool", "status", *cfg))
    assert f"spool: {where}; events stored: 5" in out, out
    running = next(line for line in out.splitlines() if line.startswith("instances running: "))
    assert running.startswith("instances running: 2: "), out
    for d in (a, b):
        assert d.proc is not None and f"-{d.proc.pid}-" in running, running
    rows = status_table(out, ["archive", "relay", "gone"])
    assert rows["relay"]["dead"] == "5" and rows["relay"]["pending"] == "0", out
    assert rows["archive"]["done 1h"] == "5" and rows["archive"]["pending"] == "0", out
    assert rows["archive"]["state"] == "ok", out
    assert rows["gone"]["pending"] == "5" and rows["gone"]["dead"] == "0", out
    status = json.loads(ok(voltd("spool", "status", "--json", *cfg)))
    assert status["daemon_running"] is True and status["events"] == 5
    assert len(status["instances"]) == 2 and running.endswith(", ".join(status["instances"]))
    assert status["sinks"]["relay"]["dead"] == 5 and status["sinks"]["relay"]["pending"] == 0
    assert status["sinks"]["archive"]["delivered_last_hour"] == 5
    assert status["sinks"]["gone"]["pending"] == 5 and status["sinks"]["gone"]["retrying"] == 5

    # The receiver opens; replay: the dead letters are pending again and delivered.
    receiver.start()
    out = ok(voltd("spool", "replay", "--sink", "relay", *cfg))
    assert out.startswith("5 dead letter(s) queued again"), out
    assert dead_ids() == set()
    assert "no dead letters" in ok(voltd("spool", "dead", *cfg))
    wait_until("the replayed relay", lambda: set(receiver.ids("/relay")) == ids, 30)
    assert max(receiver.counts("/relay").values()) == 1

    # `gone` answers 410 now: the sink is disabled, its deliveries wait.
    def gone_state() -> object:
        return db.sink_status().get("gone", {}).get("state")

    wait_until("gone disabled", lambda: gone_state() == "disabled", 30)
    out = ok(voltd("spool", "status", *cfg))
    assert "gone: disabled: " in out and "`voltd spool retry --sink gone`" in out, out
    assert status_table(out, ["gone"])["gone"]["pending"] == "5", out
    receiver.set_status("/gone", None)
    out = ok(voltd("spool", "retry", "--sink", "gone", *cfg))
    assert out.startswith("sink gone: 5 waiting deliveries due now"), out
    wait_until("gone enabled and delivered", lambda: set(receiver.ids("/gone")) == ids, 30)
    wait_until("status ok again", lambda: gone_state() == "ok", 30)
    wait_until(
        "outcomes recorded",
        lambda: all(c["pending"] == 0 for c in db.status().values()),
        30,
    )
    status = json.loads(ok(voltd("spool", "status", "--json", *cfg)))
    for sink in ("archive", "relay", "gone"):
        assert status["sinks"][sink]["pending"] == 0, status
        assert status["sinks"][sink]["dead"] == 0, status

    assert a.stop() == 0 and b.stop() == 0
    out = ok(voltd("spool", "status", *cfg))
    assert "instances running: 0" in out, out
    assert set(status_table(out, ["archive", "relay", "gone"])) == {"archive", "relay", "gone"}
    assert all(r["state"] == "stopped" for r in status_table(out, ["relay", "gone"]).values())


def test_serve_migrate_creates_the_schema_and_starts(tmp_path: Path, pg_url: str) -> None:
    d = Daemon(tmp_path)
    use_postgres(d, pg_url, body=ARCHIVE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "voltd", "serve", "--migrate", "-c", str(d.config)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    log: list[str] = []
    assert proc.stderr is not None
    stream = proc.stderr
    reader = threading.Thread(target=lambda: log.extend(stream), daemon=True)
    reader.start()
    try:
        wait_until(
            "serving",
            lambda: any("serving webhooks on" in line for line in log) or proc.poll() is not None,
        )
        assert proc.poll() is None, "".join(log)
        assert any(f"spool schema migrated to version {PG_SCHEMA_VERSION}" in x for x in log), log
        with psycopg.connect(pg_url) as conn:
            assert schema_version(conn) == PG_SCHEMA_VERSION
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        reader.join(10)
    assert code == 0, "".join(log)
    # `check` sees the spool it made.
    out = ok(voltd("check", "-c", d.config))
    assert f"(PostgreSQL, schema version {PG_SCHEMA_VERSION})" in out, out


# --------------------------------------------------------------------------------------------
# 3. The password never shows; password authentication enforced for one role


@contextlib.contextmanager
def password_role(postgres: PostgresServer, url: str, password: str) -> Iterator[str]:
    """A role that logs in with `password` (scram-sha-256), owning the database of `url`, and
    a pg_hba.conf line that makes the server ask that role for it on that database (the
    fixture's other lines trust everyone). Yields the role's name; undone afterwards."""
    role = f"voltd_pw_{secrets.token_hex(4)}"
    db = dbname(url)
    hba = postgres.datadir / "pg_hba.conf"
    original = hba.read_text()
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(db), sql.Identifier(role)
            )
        )
        hba.write_text(f"host {db} {role} 127.0.0.1/32 scram-sha-256\n{original}")
        conn.execute("SELECT pg_reload_conf()")

    as_role = f"postgresql://{role}@{url.rsplit('@', 1)[1]}"

    def refused() -> bool:
        try:
            psycopg.connect(as_role, connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            return "password" in str(exc)
        return False

    try:
        wait_until("password authentication", refused, 30)  # the reload takes a moment
        yield role
    finally:
        hba.write_text(original)
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(db), sql.Identifier(postgres.user)
                )
            )
        # The role itself: best effort (the server goes at the end of the session anyway).
        with contextlib.suppress(psycopg.Error):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                        sql.Identifier(role), sql.Identifier(postgres.user)
                    )
                )
            with psycopg.connect(postgres.url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_the_password_never_shows_and_is_enforced(
    daemon: Daemon, pg_url: str, postgres: PostgresServer
) -> None:
    # Characters that need quoting in a conninfo string and escaping in a URL.
    password = f"pw {secrets.token_hex(8)}'\\\"@/:"
    wrong = f"wrong-{secrets.token_hex(8)}"
    pgpass = daemon.root / "pgpass"
    with password_role(postgres, pg_url, password) as role:
        host = f"127.0.0.1:{postgres.port}"
        db = dbname(pg_url)
        url = f"postgresql://{role}@{host}/{db}"
        where = url  # nothing in it to hide
        pgpass.write_text(password + "\n")
        use_postgres(daemon, url, 'password = "${file:pgpass}"', body=ARCHIVE)
        cfg = ["-c", str(daemon.config)]
        shown: list[str] = []

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            result = voltd(*args)
            shown.append(result.stdout + result.stderr)
            return result

        assert ok(run("spool", "migrate", *cfg)).startswith(f"{where}: spool schema created")
        assert f"spool:    {where} (PostgreSQL, schema version" in ok(run("check", *cfg))

        daemon.start()
        body = make_event()
        assert daemon.post(body).status_code == 200
        daemon.wait_for(lambda: daemon.lines("out/archive.jsonl") == [body])
        assert "instances running: 1: " in ok(run("spool", "status", *cfg))
        assert '"daemon_running": true' in ok(run("spool", "status", "--json", *cfg))
        # Its sessions are ended under it (an administrator, a failover): it logs the
        # failures and connects again, with the password.
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )

        def accepted() -> bool:
            return daemon.post(make_event()).status_code == 200

        wait_until("ingest after the sessions were ended", accepted, 60)
        assert daemon.stop() == 0
        log = "\n".join(daemon.log)
        assert any(where in line and "terminat" in line for line in daemon.log), log[-3000:]

        # A wrong password: a clear exit 1 from each command, the password not in it.
        pgpass.write_text(wrong + "\n")
        for args in (["check"], ["spool", "status"], ["spool", "migrate"], ["serve"]):
            err = clean_failure(run(*args, *cfg), 1)
            assert where in err and f'password authentication failed for user "{role}"' in err, (
                args,
                err,
            )
            assert wrong not in err and password not in err
        # The password in the URL itself, percent-encoded.
        quoted = urllib.parse.quote(password, safe="")
        in_url = f"postgresql://{role}:{quoted}@{host}/{db}"
        use_postgres(daemon, in_url, body=ARCHIVE)
        assert f"spool:    {where} (PostgreSQL" in ok(run("check", *cfg))
        assert "instances running: 0" in ok(run("spool", "status", *cfg))

    # The server cannot be reached (a closed port): a clear exit 1, still no password.
    closed = f"127.0.0.1:{free_port()}"
    pgpass.write_text(password + "\n")
    use_postgres(
        daemon, f"postgresql://{role}@{closed}/{db}", 'password = "${file:pgpass}"', body=ARCHIVE
    )
    err = clean_failure(run("check", *cfg), 1)
    assert f"spool.url: cannot connect to postgresql://{role}@{closed}/{db}: " in err, err
    assert "refused" in err.lower(), err
    # ... and with the password in the URL.
    use_postgres(daemon, f"postgresql://{role}:{quoted}@{closed}/{db}", body=ARCHIVE)
    for args in (["spool", "status"], ["serve"]):
        err = clean_failure(run(*args, *cfg), 1)
        assert f"postgresql://{role}@{closed}/{db}: " in err and "refused" in err.lower(), err

    for text in [*shown, log]:
        for secret in (password, quoted, wrong):
            assert secret not in text, (secret, text)


# --------------------------------------------------------------------------------------------
# 4. A spool written by a voltd of schema version 1, upgraded and drained


def test_schema_1_spool_is_upgraded_and_drained(daemon: Daemon, pg_url: str) -> None:
    use_postgres(daemon, pg_url, body=ARCHIVE)
    cfg = ["-c", str(daemon.config)]
    now = time.time()
    # What a voltd of schema version 1 left behind: its tables (those statements exactly),
    # its version row, and rows written as it wrote them: a new delivery, one being retried,
    # one claimed by an instance that died, a dead letter and a delivered one.
    kinds = ("new", "retrying", "claimed", "dead", "delivered")
    events: dict[str, Event] = {}
    for kind in kinds:
        body = make_event(text=f"left {kind}")
        event = parse(body, daemon.signer.sign(body))
        assert isinstance(event, Event)
        events[kind] = event
    with psycopg.connect(pg_url) as conn, conn.transaction():
        for statement in _MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO voltd_schema (version, migrated_at) VALUES (1, %s)", (now - 86400,)
        )
        for i, kind in enumerate(kinds):
            e = events[kind]
            row = conn.execute(
                "INSERT INTO events (envelope_id, digest, received_at, body, signature)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING seq",
                (e.id, e.digest, now - 600 + i, e.raw, e.volt_signature),
            ).fetchone()
            assert row is not None
            state, attempts, next_at, error, owner, until = {
                "new": (0, 0, now - 600, None, None, None),
                "retrying": (0, 3, now - 1, "POST https://x.example: 503", None, None),
                "claimed": (0, 1, now - 5, None, "oldhost-4242-0badcafe", now - 60),
                "dead": (2, 9, now - 100, "gave up after 1h: 503", None, None),
                "delivered": (1, 1, now - 500, None, None, None),
            }[kind]
            conn.execute(
                "INSERT INTO deliveries (event_seq, sink, state, attempts, next_at, updated_at,"
                " last_error, lease_owner, lease_until) VALUES (%s, 'archive', %s, %s, %s, %s,"
                " %s, %s, %s)",
                (row[0], state, attempts, next_at, now - 60, error, owner, until),
            )

    # This voltd refuses to use it before it is migrated, and says how.
    err = clean_failure(voltd("check", *cfg), 1)
    assert "schema version 1" in err and "voltd spool migrate" in err, err
    err = clean_failure(voltd("serve", *cfg), 1)
    assert "schema version 1" in err and "voltd spool migrate" in err, err

    out = ok(voltd("spool", "migrate", *cfg))
    assert out.strip().endswith(f"spool schema upgraded from version 1 to {PG_SCHEMA_VERSION}")
    with psycopg.connect(pg_url) as conn:
        assert schema_version(conn) == PG_SCHEMA_VERSION
        names = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes")}
        assert "deliveries_claims" in names  # version 2's index
        assert conn.execute("SELECT count(*) FROM voltd_schema").fetchone() == (1,)

    daemon.start()
    want = {events[k].id for k in ("new", "retrying", "claimed")}
    daemon.wait_for(lambda: set(archived(daemon)) == want, timeout=30)
    db = PgSpoolDB(pg_url)
    try:
        wait_until(
            "outcomes recorded",
            lambda: db.status()["archive"] == {"pending": 0, "delivered": 4, "dead": 1},
        )
        assert [r["id"] for r in db.dead()] == [events["dead"].id]
    finally:
        db.close()
    assert daemon.stop() == 0
    assert archived(daemon) == Counter(want)  # each once; the dead and delivered not again


# --------------------------------------------------------------------------------------------
# 5. [spool] configuration mistakes; where the fetched key's cache goes with `url`


def test_spool_config_mistakes_name_the_keys_and_hide_the_url(daemon: Daemon) -> None:
    daemon.configure(body=ARCHIVE)
    base = daemon.config.read_text()
    secret = f"hunter2-{secrets.token_hex(6)}"
    url = f"postgresql://voltd:{secret}@pg-secret-host.test:5432/voltd"
    (daemon.root / "pgpass").write_text(secret + "\n")
    cases = {
        # path and url: which one is meant?
        f'path = "spool.db"\nurl = {toml_str(url)}': (
            "spool.url: spool.path is set too: expected either path",
            "or url (PostgreSQL",
        ),
        # a password without url: for nothing
        'path = "spool.db"\npassword = "${file:pgpass}"': ("spool.password: only used with",),
        # not a PostgreSQL URL
        f'url = "mysql://root:{secret}@pg-secret-host.test/voltd"': (
            "spool.url: expected a PostgreSQL URL like postgresql://",
        ),
    }
    for spool, expected in cases.items():
        daemon.config.write_text(
            base.replace('[spool]\npath = "spool.db"\n', f"[spool]\n{spool}\n")
        )
        result = voltd("check", "-c", daemon.config)
        err = clean_failure(result, 2)
        for text in expected:
            assert text in err, (spool, err)
        assert secret not in result.stdout + err and "pg-secret-host.test" not in err, (spool, err)
    # The same judgement in-process (`voltd check` prints ConfigError as it is): a password
    # written in the file, not a secret reference, is not shown either.
    daemon.config.write_text(
        base.replace('path = "spool.db"\n', f'path = "spool.db"\npassword = {toml_str(secret)}\n')
    )
    with pytest.raises(ConfigError) as caught:
        load(daemon.config)
    assert "spool.password: only used with spool.url" in str(caught.value)
    assert secret not in str(caught.value)


def test_key_cache_goes_to_state_dir_with_a_postgres_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = Daemon(tmp_path)
    url = "postgresql://voltd@pg-secret-host.test/voltd"
    key_url = 'public_key_url = "https://keys.example/id_rsa.pub"'

    def loaded(spool: str) -> Path:
        use_postgres(d, url, spool, body=ARCHIVE, verify_extra=key_url)
        config = load(d.config)
        assert config.verify.public_key_url is not None
        return cache_dir(config)

    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert loaded('state_dir = "state"') == tmp_path / "state"
    assert loaded("") == tmp_path  # no StateDirectory=: beside the config
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/voltd:/var/lib/other")
    assert loaded("") == Path("/var/lib/voltd")  # systemd's StateDirectory= (the first)
    assert loaded('state_dir = "/srv/voltd-state"') == Path("/srv/voltd-state")  # given wins
    # With the SQLite spool: beside the spool file, as before.
    d.configure(body=ARCHIVE, verify_extra=key_url)
    assert cache_dir(load(d.config)) == tmp_path
