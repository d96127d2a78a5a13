"""The plugin SDK: the public surface, loading that catches a plugin author's mistakes, the
delivery semantics a sink relies on, per-sink state in a real spool (and its migration), and
broken plugins in a real daemon, which reports them and keeps running."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

import voltd
import voltd.testing as vt
from tests.helpers import Daemon, make_event
from voltd.delivery import DeliveryOptions, RetryPolicy, SinkWorker
from voltd.events import parse
from voltd.plugins import Origin, close_sink, discover
from voltd.spool import SCHEMA_VERSION, Due, Spool, SpoolDB, SpoolError
from voltd.stall import StallWatch

# --------------------------------------------------------------------------------------------
# The public surface


def test_public_names_are_exported_and_versioned() -> None:
    for name in voltd.__all__:
        assert hasattr(voltd, name), name
    assert voltd.PLUGIN_API_VERSION[0] >= 1
    voltd.require_api(*voltd.PLUGIN_API_VERSION)
    with pytest.raises(ImportError, match=r"needs voltd plugin API 99\.0"):
        voltd.require_api(99)
    with pytest.raises(ImportError, match="plugin API"):
        voltd.require_api(voltd.PLUGIN_API_VERSION[0], voltd.PLUGIN_API_VERSION[1] + 1)


def test_event_is_a_read_only_view() -> None:
    failed = vt.volt_examples()[1]
    assert failed.raw.startswith(b"{") and failed.status == "failed"
    assert failed.our_number == "+15555550145" and failed.our_name == "sales"
    assert failed.their_number == "+15555550123"
    assert failed.message_id == failed.payload["id"]
    assert failed.when is not None and failed.when.tzinfo is not None
    with pytest.raises(AttributeError):
        failed.raw = b"{}"  # type: ignore[misc]
    with pytest.raises(TypeError):
        failed.payload["status"] = "delivered"  # type: ignore[index]
    with pytest.raises(AttributeError):
        failed.payload["media"].append("x")  # arrays are tuples
    copy = failed.to_dict()
    copy["payload"]["status"] = "delivered"
    assert failed.status == "failed"  # the copy is the caller's own


def test_duck_typed_sink_of_voltd_0_1_still_loads_and_is_adapted(tmp_path: Path) -> None:
    (tmp_path / "old.py").write_text(
        textwrap.dedent(
            """
            import pydantic, voltd

            class Old:
                class Options(pydantic.BaseModel):
                    model_config = pydantic.ConfigDict(extra="forbid")
                max_batch = 7
                def __init__(self, options, context):
                    self.got = []
                async def send(self, event):
                    self.got.append(event.id)

            @voltd.hookimpl
            def register_sink_types(register):
                register("old", Old)
            """
        )
    )
    registry = discover([tmp_path], disabled=())
    assert registry.problems == []
    sink = vt.build_sink(registry.sink_types["old"].cls)
    assert isinstance(sink, voltd.Sink) and not sink.takes_batches and sink.max_batch == 7


# --------------------------------------------------------------------------------------------
# Loading catches mistakes, each reported by plugin and origin


def plugin(directory: Path, stem: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.py"
    path.write_text("import voltd, pydantic\n" + textwrap.dedent(body))
    return path


GOOD = """
class Good(voltd.Sink):
    async def send(self, event):
        pass

@voltd.hookimpl
def register_sink_types(register):
    register("{name}", Good)
"""


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            GOOD.format(name="x").replace("register_sink_types", "register_sink_type"),
            "unknown hook 'register_sink_type'",
        ),
        (
            GOOD.format(name="x").replace("async def send", "def send"),
            "`send` must be `async def`",
        ),
        (
            GOOD.format(name="x").replace("async def send(self, event):", "async def x(self):"),
            "class does not implement send",
        ),
        (
            GOOD.format(name="x").replace("@voltd.hookimpl\n", ""),
            "implements no voltd hook",
        ),
        (
            GOOD.format(name="file"),
            "sink type 'file' is already provided by plugin 'file' from voltd",
        ),
        ("import voltd_no_such_sdk\n", "failed to import: ModuleNotFoundError"),
    ],
    ids=["misspelt-hook", "sync-send", "no-send", "no-hookimpl", "first-party-name", "import"],
)
def test_a_broken_plugin_is_reported_by_name_and_others_load(
    tmp_path: Path, body: str, expected: str
) -> None:
    path = plugin(tmp_path, "broken", body)
    plugin(tmp_path, "works", GOOD.format(name="works"))
    registry = discover([tmp_path], disabled=())
    assert "works" in registry.sink_types and "file" in registry.sink_types
    assert [p.origin for p in registry.problems] == [Origin("broken", path=str(path))]
    assert expected in registry.problems[0].message
    assert str(registry.problems[0]).startswith(f"plugin 'broken' from {path}: ")


def test_voltd_disable_plugins_blocks_named_plugins(tmp_path: Path) -> None:
    plugin(tmp_path, "works", GOOD.format(name="works"))
    registry = discover(
        [tmp_path],
        disabled=voltd.plugins.disabled_plugins(
            {"VOLTD_DISABLE_PLUGINS": "works, file http,slack email"}
        ),
    )
    assert registry.sink_types == {}
    assert {o.plugin for o in registry.blocked} == {"works", "file", "http", "slack", "email"}
    assert registry.problems == []


# --------------------------------------------------------------------------------------------
# voltd.testing against the SDK's own expectations


class Blocking(voltd.Sink):
    async def send(self, event: voltd.Event) -> None:
        time.sleep(0.2)  # noqa: ASYNC251 - the mistake this catches


class Sloppy(voltd.Sink):
    async def send(self, event: voltd.Event) -> None:
        raise KeyError("status")


class Gone(voltd.Sink):
    async def send(self, event: voltd.Event) -> None:
        raise voltd.EndpointGone("HTTP 410 Gone")


class Rejecting(voltd.Sink):
    async def send(self, event: voltd.Event) -> None:
        if event.status == "failed":
            raise voltd.PermanentError("rejected: invalid payload")


class Batching(voltd.Sink):
    """All or nothing: a batch with a poisoned event is refused as a whole."""

    max_batch = 10

    def __init__(self, options: Any, context: voltd.SinkContext) -> None:
        super().__init__(options, context)
        self.got: list[str] = []
        self.calls: list[int] = []

    async def send(self, event: voltd.Event) -> None:
        await self.send_batch([event])

    async def send_batch(self, events: Sequence[voltd.Event]) -> None:
        self.calls.append(len(events))
        if any(e.text == "poison" for e in events):
            raise voltd.PermanentError("batch refused: one event is invalid")
        self.got.extend(e.id for e in events)


async def test_check_sink_catches_a_blocking_send_and_a_stray_exception() -> None:
    with pytest.raises(AssertionError, match="blocked the event loop for"):
        await vt.check_sink(vt.build_sink(Blocking))
    with pytest.raises(AssertionError, match="raised KeyError"):
        await vt.check_sink(vt.build_sink(Sloppy))
    await vt.check_sink(vt.build_sink(Rejecting))
    await vt.check_sink(vt.build_sink(Gone))


async def test_deliver_shows_permanent_as_dead_and_batches_all_or_nothing() -> None:
    report = await vt.deliver(vt.build_sink(Rejecting), vt.volt_examples())
    assert [e.status for e in report.delivered] == ["delivered"]
    assert [(e.status, error) for e, error in report.dead] == [
        ("failed", "PermanentError: rejected: invalid payload")
    ]

    sink = vt.build_sink(Batching)
    assert isinstance(sink, Batching)
    events = [vt.make_event(text=t) for t in ("a", "b", "poison", "c")]
    report = await vt.deliver(sink, events)
    # The refused batch is retried one by one, so only the poisoned event is a dead letter.
    assert sink.calls[0] == 4
    assert [e.text for e in report.delivered] == ["a", "b", "c"]
    assert [e.text for e, _ in report.dead] == ["poison"]


async def test_endpoint_gone_disables_the_sink_and_nothing_is_dead() -> None:
    report = await vt.deliver(vt.build_sink(Gone), vt.volt_examples())
    assert report.disabled == "EndpointGone: HTTP 410 Gone"
    assert report.dead == [] and len(report.pending) == 2


def test_build_sink_reports_option_errors_as_an_operator_sees_them() -> None:
    class Opinionated(voltd.Sink):
        class Options(voltd.SinkOptions):
            url: str
            retries: int = 3

        async def send(self, event: voltd.Event) -> None:
            pass

    with pytest.raises(vt.ConfigError) as error:
        vt.build_sink(Opinionated, {"retries": "many", "colour": "red"}, name="pager")
    text = str(error.value)
    assert "sinks.pager.colour: unknown key (expected one of: url, retries)" in text
    assert "sinks.pager.url: missing" in text
    assert "sinks.pager.retries: expected an integer" in text


# --------------------------------------------------------------------------------------------
# Delivery semantics a sink relies on (real spool, real worker)


class Limited(voltd.Sink):
    """429 with Retry-After until `until`, then fine."""

    def __init__(self, options: Any, context: voltd.SinkContext) -> None:
        super().__init__(options, context)
        self.until = 0.0
        self.attempts: list[float] = []

    async def send(self, event: voltd.Event) -> None:
        self.attempts.append(time.monotonic())
        if time.monotonic() < self.until:
            raise voltd.RetryableError("429 Too Many Requests", retry_after=1.0)


async def test_retry_after_pauses_the_whole_sink(tmp_path: Path) -> None:
    sink = vt.build_sink(Limited)
    assert isinstance(sink, Limited)
    sink.until = time.monotonic() + 0.5
    events = [vt.make_event() for _ in range(5)]
    db = SpoolDB(tmp_path / "spool.db")
    db.insert([(e, ["s"]) for e in events])
    db.close()
    spool = Spool(tmp_path / "spool.db")
    policy = RetryPolicy(initial=0.01, max_delay=5, give_up_after=60)
    options = DeliveryOptions(linger=0, idle_poll=0.05, batch_size=1)
    worker = SinkWorker("s", sink, spool, policy, options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.writer)
            await nursery.start(worker.run)
            with trio.fail_after(10):
                while (await spool.status())["s"]["delivered"] < 5:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    finally:
        spool.close()
    # One refused attempt, then nothing for the whole sink until Retry-After had passed
    # (the policy alone would have retried after ~10 ms, per event).
    assert sink.attempts[1] - sink.attempts[0] >= 0.95
    assert len(sink.attempts) == 6


async def test_close_sink_survives_aclose_raising_or_hanging(caplog: Any) -> None:
    class Raises(voltd.Sink):
        async def send(self, event: voltd.Event) -> None:
            pass

        async def aclose(self) -> None:
            raise RuntimeError("socket already closed")

    class Hangs(Raises):
        async def aclose(self) -> None:
            await trio.sleep_forever()

    caplog.set_level(logging.WARNING)
    with trio.fail_after(5):
        await close_sink("r", vt.build_sink(Raises))
        await close_sink("h", vt.build_sink(Hangs), within=0.2)
    assert "sink r: aclose failed: RuntimeError: socket already closed" in caplog.text
    assert "sink h: aclose did not finish within 0.2s" in caplog.text


async def test_stall_watch_names_the_sink_that_blocked_the_loop(
    caplog: Any, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING)
    sink = vt.build_sink(Blocking)
    spool = Spool(tmp_path / "spool.db")
    worker = SinkWorker("pager", sink, spool, RetryPolicy())
    due = [Due(vt.make_event(), 0, time.time())]
    watch = StallWatch(lambda o: o.name if isinstance(o, SinkWorker) else None)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.writer)
            nursery.start_soon(watch.run)
            await trio.sleep(0.1)
            await worker.attempt(due)
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    finally:
        spool.close()
    assert watch.stalls == 1
    assert "blocked for" in caplog.text and "by sink 'pager'" in caplog.text
    assert "test_sdk.py" in caplog.text and "in send" in caplog.text


# --------------------------------------------------------------------------------------------
# Per-sink durable state, and the spool schema it needed


class Remembers(voltd.Sink):
    async def send(self, event: voltd.Event) -> None:
        state = self.context.state
        assert state is not None
        seen = int(await state.get("seen") or 0)
        await state.set("seen", str(seen + 1))
        await state.set(f"last:{event.message_id}", event.status or "")


async def test_sink_state_is_durable_and_per_sink(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    for _ in range(2):  # a restart keeps what was stored
        spool = Spool(path)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(spool.writer)
                a, b = voltd.state.SinkState("a", spool), voltd.state.SinkState("b", spool)
                n = int(await a.get("n") or 0)
                await a.set("n", str(n + 1))
                assert await b.get("n") is None
                await b.set("gone", "x")
                await b.delete("gone")
                assert await b.get("gone") is None
                nursery.cancel_scope.cancel()
        finally:
            spool.close()
    db = SpoolDB(path, readonly=True)
    assert db.get_state("a", "n") == "2"
    db.close()
    with pytest.raises(ValueError, match="state keys"):
        await voltd.state.SinkState("a", None).get("")
    with pytest.raises(voltd.state.StateUnavailable):
        await voltd.state.SinkState("a").get("k")


#: The schema of the first release (version 1), as it wrote it; kept here so that the
#: migration is tested against the real thing, not against what the code now calls version 1.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    envelope_id TEXT NOT NULL,
    digest BLOB NOT NULL,
    received_at REAL NOT NULL,
    body BLOB NOT NULL,
    UNIQUE (envelope_id, digest)
);
CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
CREATE TABLE IF NOT EXISTS deliveries (
    event_seq INTEGER NOT NULL,
    sink TEXT NOT NULL,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_error TEXT,
    PRIMARY KEY (event_seq, sink)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (sink, next_at, event_seq)
    WHERE state = 0;
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', '1');
"""


def v1_spool(path: Path, events: Sequence[bytes], sinks: Sequence[str]) -> None:
    """A spool as release 1 left it: events stored, deliveries pending, one retrying."""
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V1)
    now = time.time()
    for i, raw in enumerate(events):
        event = parse(raw)
        assert isinstance(event, voltd.Event)
        seq = conn.execute(
            "INSERT INTO events (envelope_id, digest, received_at, body) VALUES (?, ?, ?, ?)",
            (event.id, event.digest, now, raw),
        ).lastrowid
        for sink in sinks:
            conn.execute(
                "INSERT INTO deliveries (event_seq, sink, state, attempts, next_at, updated_at,"
                " last_error) VALUES (?, ?, 0, ?, ?, ?, ?)",
                (seq, sink, i % 2, now + (60 if i == 0 else 0), now, "earlier" if i else None),
            )
    conn.commit()
    conn.close()


def test_a_release_1_spool_migrates_and_delivers_everything(daemon: Daemon) -> None:
    bodies = [make_event() for _ in range(20)]
    daemon.configure()
    v1_spool(daemon.root / "spool.db", bodies, ["all"])
    daemon.start()
    daemon.wait_for(lambda: len(daemon.lines("out/all.jsonl")) == len(bodies))
    assert sorted(daemon.lines("out/all.jsonl")) == sorted(bodies)
    assert any("spool schema migrated to version 2" in line for line in daemon.log)
    # ... and keeps working as a version-2 spool, state table included.
    assert daemon.post(make_event()).status_code == 200
    assert daemon.stop() == 0
    db = SpoolDB(daemon.root / "spool.db", readonly=True)
    assert db.version == SCHEMA_VERSION == 2
    assert db.conn.execute("SELECT COUNT(*) FROM sink_state").fetchone() == (0,)
    db.close()


def test_a_spool_from_a_newer_release_is_refused_not_misread(tmp_path: Path) -> None:
    SpoolDB(tmp_path / "spool.db").close()
    conn = sqlite3.connect(tmp_path / "spool.db")
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    conn.commit()
    conn.close()
    with pytest.raises(SpoolError, match="schema version 99, written by a newer voltd"):
        SpoolDB(tmp_path / "spool.db")


# --------------------------------------------------------------------------------------------
# Broken plugins in a real daemon: reported by name, the daemon keeps serving


BROKEN_AT_RUN_TIME = """
import time, trio

class Buggy(voltd.Sink):
    async def send(self, event):
        return event.payload["no such field"]      # KeyError: a plugin bug

class Hog(voltd.Sink):
    async def send(self, event):
        time.sleep(0.3)                            # blocks the event loop

class SlowToClose(voltd.Sink):
    async def send(self, event):
        pass
    async def aclose(self):
        await trio.sleep_forever()

class FailsToClose(voltd.Sink):
    async def send(self, event):
        pass
    async def aclose(self):
        raise RuntimeError("double close")

@voltd.hookimpl
def register_sink_types(register):
    register("buggy", Buggy)
    register("hog", Hog)
    register("slow-close", SlowToClose)
    register("fails-close", FailsToClose)
"""

ROUTES = """
[[routes]]
name = "everything"
sinks = ["all", "buggy", "hog", "slow", "fails"]

[sinks.all]
type = "file"
path = "out/all.jsonl"

[sinks.buggy]
type = "buggy"

[sinks.hog]
type = "hog"

[sinks.slow]
type = "slow-close"

[sinks.fails]
type = "fails-close"
"""


@pytest.mark.slow
def test_broken_plugins_are_reported_and_the_daemon_keeps_serving(daemon: Daemon) -> None:
    plugins = daemon.root / "plugins"
    plugin(plugins, "runtime", BROKEN_AT_RUN_TIME)
    plugin(plugins, "typo", GOOD.format(name="t").replace("register_sink_types", "register_sinks"))
    plugin(plugins, "missing", "import voltd_no_such_sdk\n")
    daemon.configure(plugin_dirs=True, body=ROUTES)
    daemon.start()
    log = "\n".join(daemon.log)
    assert f"plugin 'typo' from {plugins / 'typo.py'}: is not a valid voltd plugin" in log
    assert f"plugin 'missing' from {plugins / 'missing.py'}: failed to import" in log

    bodies = [make_event() for _ in range(3)]
    for body in bodies:
        assert daemon.post(body).status_code == 200
    daemon.wait_for(lambda: len(daemon.lines("out/all.jsonl")) == 3)
    daemon.wait_for(lambda: any("by sink 'hog'" in line for line in daemon.log))
    daemon.wait_for(lambda: any("raised an unexpected KeyError" in line for line in daemon.log))
    log = "\n".join(daemon.log)
    assert f"sink buggy: plugin 'runtime' from {plugins / 'runtime.py'} raised" in log
    assert "Traceback" in log  # the plugin author sees where
    assert log.count("raised an unexpected KeyError") == 1  # once per run of failures

    # A reload that drops the sinks whose aclose fails or hangs: reported, not fatal.
    daemon.configure(
        plugin_dirs=True, body=ROUTES.replace(', "slow", "fails"', "").split("[sinks.slow]")[0]
    )
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGHUP)
    daemon.wait_for(lambda: any("configuration reloaded" in line for line in daemon.log))
    log = "\n".join(daemon.log)
    assert "sink fails: aclose failed: RuntimeError: double close" in log
    assert "sink slow: aclose did not finish within 5s" in log
    assert daemon.post(make_event()).status_code == 200
    daemon.wait_for(lambda: len(daemon.lines("out/all.jsonl")) == 4)
    assert daemon.stop() == 0


def test_serve_refuses_a_config_whose_sink_plugin_is_broken(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    plugin(tmp_path / "plugins", "sync", GOOD.format(name="t").replace("async def", "def"))
    d.configure(plugin_dirs=True, body='[[routes]]\nsinks = ["t"]\n[sinks.t]\ntype = "t"\n')
    with pytest.raises(RuntimeError, match="voltd did not start"):
        d.start(timeout=15)
    assert any(
        "sinks.t.type" in line and "plugin 'sync'" in line and "must be `async def`" in line
        for line in d.log
    )


def test_an_option_marked_secret_is_hidden_by_check_even_when_written_inline(
    tmp_path: Path,
) -> None:
    d = Daemon(tmp_path)
    plugin(
        tmp_path / "plugins",
        "pager",
        """
        from typing import Annotated

        class Pager(voltd.Sink):
            class Options(voltd.SinkOptions):
                url: str
                token: Annotated[str, voltd.Secret()]

            async def send(self, event):
                pass

        @voltd.hookimpl
        def register_sink_types(register):
            register("pager", Pager)
        """,
    )
    d.configure(
        plugin_dirs=True,
        body='[[routes]]\nsinks = ["p"]\n[sinks.p]\ntype = "pager"\n'
        'url = "https://pager.example/hook"\ntoken = "tok-inline-1234567"\n',
    )
    out = subprocess.run(
        [sys.executable, "-m", "voltd", "check", "-c", str(d.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert '"token": "***"' in out.stdout and "tok-inline" not in out.stdout + out.stderr
    assert "https://pager.example/hook" in out.stdout  # not marked: shown
