"""The delivery settings any sink accepts (`concurrency`, `rate`, `retry`; DESIGN §6), and the
sink states an operator sees (ok / paused / disabled) — in the config, a real spool and the
real worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import voltd
import voltd.testing as vt
from tests.helpers import Daemon, make_event, session_material
from voltd.config import ConfigError, load
from voltd.daemon import retry_policy, sink_rate
from voltd.delivery import DeliveryOptions, RetryPolicy, SinkWorker, run_workers
from voltd.spool import Spool, SpoolDB

FAST = DeliveryOptions(linger=0.0, idle_poll=0.1, attempt_timeout=5)


def config_with(tmp_path: Path, sink_table: str, retry: str = "") -> Path:
    keys = session_material() / "keys" / "volt_id_rsa.pub"
    path = tmp_path / "config.toml"
    path.write_text(
        f'[verify]\npublic_keys = ["{keys}"]\n{retry}\n'
        f'[[routes]]\nsinks = ["s"]\n\n[sinks.s]\ntype = "file"\npath = "x.jsonl"\n{sink_table}\n'
    )
    return path


# --------------------------------------------------------------------------------------------
# The config: read by voltd, never seen by the plugin, every mistake named


def test_delivery_settings_are_read_by_voltd_not_the_plugin(tmp_path: Path) -> None:
    config = load(
        config_with(
            tmp_path,
            'rate = "30/m"\nretry = { initial = "1s", give_up_after = "2h" }',
            retry='[retry]\ninitial = "5s"\nmax_delay = "10m"\n',
        )
    )
    sink = config.sinks["s"]
    assert sink.options == {"path": "x.jsonl"}  # the file sink's Options never see them
    assert sink.delivery.concurrency == 1
    assert sink.delivery.rate is not None and str(sink.delivery.rate) == "30/m"
    policy = retry_policy(config, "s")
    assert (policy.initial, policy.max_delay, policy.give_up_after) == (1.0, 600.0, 7200.0)
    assert retry_policy(config) == RetryPolicy(5.0, 600.0, 86400.0)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("concurrency = 0", "sinks.s.concurrency: expected a whole number from 1 to 256, got"),
        ("concurrency = 1.5", "sinks.s.concurrency: expected a whole number from 1 to 256"),
        ('rate = "fast"', 'sinks.s.rate: expected a rate like "50/s", "30/m" or "100/h"'),
        ('rate = "0/s"', "sinks.s.rate: expected a rate"),
        ('retry = { initial = "soon" }', "sinks.s.retry.initial: expected a duration"),
        ('retry = { every = "1s" }', "sinks.s.retry.every: unknown key (expected one of:"),
        (
            'retry = { initial = "2h" }',
            "sinks.s.retry.initial: the first retry delay (7200s) is longer than "
            "sinks.s.retry.max_delay (3600s from [retry]); expected initial <= max_delay",
        ),
    ],
)
def test_a_wrong_delivery_setting_is_named(tmp_path: Path, table: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(config_with(tmp_path, table))
    assert expected in str(error.value)


def test_concurrency_is_refused_for_a_sink_that_keeps_order(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        vt.build_sink("file", {"path": "x.jsonl", "concurrency": 4}, config_dir=tmp_path)
    assert "sinks.test.concurrency: sink type 'file' sends one event at a time" in str(error.value)


class Concurrent(voltd.Sink):
    """Counts how many sends overlap; each takes `delay`."""

    allows_concurrency = True
    default_rate = "1000/s"

    def __init__(self, options: Any, context: voltd.SinkContext) -> None:
        super().__init__(options, context)
        self.delay = 0.05
        self.now = 0
        self.most = 0
        self.at: list[float] = []
        self.order: list[str] = []

    async def send(self, event: voltd.Event) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        self.at.append(trio.current_time())
        try:
            await trio.sleep(self.delay)
        finally:
            self.now -= 1
        self.order.append(event.text or "")


def test_rate_defaults_to_the_sink_types_and_the_config_overrides(tmp_path: Path) -> None:
    config = load(config_with(tmp_path, ""))
    sink = vt.build_sink(Concurrent)
    assert sink_rate(config, "s", sink) == 1000.0
    config = load(config_with(tmp_path, 'rate = "2/s"'))
    assert sink_rate(config, "s", sink) == 2.0


# --------------------------------------------------------------------------------------------
# The worker


async def run_worker(tmp_path: Path, sink: voltd.Sink, n: int, **settings: Any) -> SinkWorker:
    events = [vt.make_event(text=str(i)) for i in range(n)]
    db = SpoolDB(tmp_path / "spool.db")
    db.insert([(e, ["s"]) for e in events])
    db.close()
    spool = Spool(tmp_path / "spool.db")
    worker = SinkWorker("s", sink, spool, RetryPolicy(0.05, 0.2, 60), FAST, **settings)
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.writer)
            await nursery.start(run_workers, {"s": worker}, stop, 1.0)
            with trio.fail_after(20):
                while (await spool.status())["s"]["delivered"] < n:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            stop.set()
            nursery.cancel_scope.cancel()
    finally:
        spool.close()
    return worker


async def test_concurrency_overlaps_sends_up_to_the_setting(tmp_path: Path) -> None:
    sink = vt.build_sink(Concurrent)
    assert isinstance(sink, Concurrent)
    await run_worker(tmp_path, sink, 40, concurrency=8)
    assert sink.most == 8


async def test_concurrency_1_keeps_the_order(tmp_path: Path) -> None:
    sink = vt.build_sink(Concurrent)
    assert isinstance(sink, Concurrent)
    sink.delay = 0.0
    await run_worker(tmp_path, sink, 30)
    assert sink.most == 1 and sink.order == [str(i) for i in range(30)]


async def test_rate_spaces_the_calls_even_with_concurrency(tmp_path: Path) -> None:
    sink = vt.build_sink(Concurrent)
    assert isinstance(sink, Concurrent)
    sink.delay = 0.0
    await run_worker(tmp_path, sink, 11, concurrency=4, rate=20.0)
    gaps = [b - a for a, b in zip(sink.at, sink.at[1:], strict=False)]
    assert min(gaps) >= 0.045  # 20/s: 50 ms apart, never a burst
    assert sink.at[-1] - sink.at[0] >= 0.45


class GoneUntilFixed(voltd.Sink):
    def __init__(self, options: Any, context: voltd.SinkContext) -> None:
        super().__init__(options, context)
        self.fixed = False
        self.calls = 0

    async def send(self, event: voltd.Event) -> None:
        self.calls += 1
        if not self.fixed:
            raise voltd.EndpointGone("HTTP 410 Gone")


async def test_disabled_is_in_the_spool_and_spool_retry_enables_it(tmp_path: Path) -> None:
    sink = vt.build_sink(GoneUntilFixed)
    assert isinstance(sink, GoneUntilFixed)
    db = SpoolDB(tmp_path / "spool.db")
    db.insert([(vt.make_event(), ["s"]) for _ in range(5)])
    spool = Spool(tmp_path / "spool.db")
    policy = RetryPolicy(0.05, 0.2, give_up_after=0.5)  # would expire them, if time counted
    worker = SinkWorker("s", sink, spool, policy, FAST)
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.writer)
            await nursery.start(run_workers, {"s": worker}, stop, 1.0)
            with trio.fail_after(5):
                while db.sink_status().get("s", {}).get("state") != "disabled":  # noqa: ASYNC110
                    await trio.sleep(0.02)
            status = db.sink_status()["s"]
            assert status["reason"] == "EndpointGone: HTTP 410 Gone"
            await trio.sleep(1.0)  # past give_up_after: nothing expires while disabled
            assert sink.calls == 1 and db.status()["s"]["dead"] == 0
            sink.fixed = True
            assert db.request_retry("s") == 5  # what `voltd spool retry --sink s` does
            with trio.fail_after(5):
                while db.status()["s"]["delivered"] < 5:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            assert worker.state == "ok"
            stop.set()
            nursery.cancel_scope.cancel()
    finally:
        spool.close()
        db.close()


class FailsAfterEnable(voltd.Sink):
    async def send(self, event: voltd.Event) -> None:
        raise voltd.RetryableError("still down")


async def test_after_an_enable_waiting_events_get_a_full_give_up_after(tmp_path: Path) -> None:
    """Events that waited while the sink was disabled are older than give_up_after, but the
    repaired sink gets that long again before they become dead letters."""
    db = SpoolDB(tmp_path / "spool.db")
    db.insert([(vt.make_event(), ["s"]) for _ in range(3)])
    db.conn.execute("UPDATE events SET received_at = received_at - 3600")
    spool = Spool(tmp_path / "spool.db")
    worker = SinkWorker(
        "s", vt.build_sink(FailsAfterEnable), spool, RetryPolicy(0.05, 0.1, 0.6), FAST
    )
    worker.disabled = "EndpointGone: earlier"
    worker.enable("test")
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.writer)
            await nursery.start(run_workers, {"s": worker}, stop, 1.0)
            await trio.sleep(0.3)
            assert db.status()["s"]["dead"] == 0  # within give_up_after of the enable
            with trio.fail_after(5):
                while db.status()["s"]["dead"] < 3:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert time.time() - (worker._enabled_at or 0) >= 0.6
            stop.set()
            nursery.cancel_scope.cancel()
    finally:
        spool.close()
        db.close()


# --------------------------------------------------------------------------------------------
# What an operator sees, from a real daemon: /healthz, `voltd spool status`, SIGHUP

GONE_PLUGIN = """
import pathlib, voltd

class Gone(voltd.Sink):
    '''Disabled (410) until the file `fixed` exists beside the config.'''

    async def send(self, event):
        if not (self.context.config_dir / "fixed").exists():
            raise voltd.EndpointGone("POST https://crm.example.com: 410 Gone")
        with open(self.context.config_dir / "got.txt", "a") as f:
            f.write(event.id + "\\n")

@voltd.hookimpl
def register_sink_types(register):
    register("gone", Gone)
"""


def test_a_disabled_sink_is_shown_everywhere_and_a_reload_enables_it(daemon: Daemon) -> None:
    (daemon.root / "plugins").mkdir()
    (daemon.root / "plugins" / "gone.py").write_text(GONE_PLUGIN)
    daemon.configure(
        body='[[routes]]\nsinks = ["crm"]\n[sinks.crm]\ntype = "gone"\n', plugin_dirs=True
    )
    daemon.start()
    bodies = [make_event() for _ in range(3)]
    for body in bodies:
        assert daemon.post(body).status_code == 200

    def status() -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "voltd", "spool", "status", "--json", "-c", daemon.config],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["sinks"]["crm"]  # type: ignore[no-any-return]

    daemon.wait_for(lambda: status()["state"] == "disabled")
    crm = status()
    assert crm["reason"] == "EndpointGone: POST https://crm.example.com: 410 Gone"
    assert crm["pending"] == 3 and crm["dead"] == 0
    health = httpx.get(daemon.admin_url + "/healthz").json()
    assert health["ok"] is True  # ingest is fine; the sink's state is a detail
    assert health["sinks"]["crm"]["state"] == "disabled"
    assert any("sink crm: disabled, its endpoint is gone" in line for line in daemon.log)

    (daemon.root / "fixed").touch()
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGHUP)
    daemon.wait_for(lambda: (daemon.root / "got.txt").exists())
    daemon.wait_for(lambda: len((daemon.root / "got.txt").read_text().split()) == 3)
    daemon.wait_for(lambda: status()["state"] == "ok")
    assert status()["pending"] == 0
    assert daemon.stop() == 0


# --------------------------------------------------------------------------------------------
# A digest's window (`Sink.batch_window`, plugin API 1.1)


class Digest(voltd.Sink):
    """Collects for `batch_window` seconds; records each call and when it came."""

    max_batch = 50

    def __init__(self, options: Any, context: voltd.SinkContext) -> None:
        super().__init__(options, context)
        self.calls: list[tuple[float, list[str]]] = []
        self.batch_window = 1.0

    async def send(self, event: voltd.Event) -> None:
        self.calls.append((time.time(), [event.text or ""]))

    async def send_batch(self, events: Any) -> None:
        self.calls.append((time.time(), [e.text or "" for e in events]))


async def test_a_batch_window_collects_from_arrival_then_sends_everything_at_once(
    tmp_path: Path,
) -> None:
    sink = vt.build_sink(Digest)
    assert isinstance(sink, Digest)
    db = SpoolDB(tmp_path / "spool.db")
    db.insert([(vt.make_event(text="first"), ["s"])])
    db.close()
    arrived = time.time()
    spool = Spool(tmp_path / "spool.db")
    worker = SinkWorker("s", sink, spool, RetryPolicy(0.05, 0.2, 60), FAST)
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.writer)
            await nursery.start(run_workers, {"s": worker}, stop, 1.0)
            await trio.sleep(0.3)
            # Later events, each waking the worker: they join the window, none ends it.
            for i in range(3):
                await spool.store(vt.make_event(text=f"later {i}"), ["s"])
                await trio.sleep(0.1)
            assert sink.calls == []
            with trio.fail_after(10):
                while (await spool.status())["s"]["delivered"] < 4:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            stop.set()
            nursery.cancel_scope.cancel()
    finally:
        spool.close()
    assert [texts for _, texts in sink.calls] == [["first", "later 0", "later 1", "later 2"]]
    assert sink.calls[0][0] - arrived >= 1.0 - 0.05  # from the first event's arrival


async def test_a_full_batch_does_not_wait_for_the_window_and_stopping_ends_the_wait(
    tmp_path: Path,
) -> None:
    sink = vt.build_sink(Digest)
    assert isinstance(sink, Digest)
    sink.batch_window = 3600.0
    db = SpoolDB(tmp_path / "spool.db")
    db.insert([(vt.make_event(text=str(i)), ["s"]) for i in range(55)])
    db.close()
    spool = Spool(tmp_path / "spool.db")
    worker = SinkWorker("s", sink, spool, RetryPolicy(0.05, 0.2, 60), FAST)
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.writer)
            async with trio.open_nursery() as workers:
                await workers.start(run_workers, {"s": worker}, stop, 30.0)
                with trio.fail_after(10):
                    while (await spool.status())["s"]["delivered"] < 50:  # noqa: ASYNC110
                        await trio.sleep(0.02)
                await trio.sleep(0.2)
                started = trio.current_time()
                stop.set()  # the worker waits out an hour's window: stopping ends it at once
            assert trio.current_time() - started < 5.0
            assert (await spool.status())["s"]["pending"] == 5
            nursery.cancel_scope.cancel()
    finally:
        spool.close()
    assert [len(texts) for _, texts in sink.calls] == [50]
