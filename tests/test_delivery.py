"""Delivery workers against a real spool, with small sinks written for the test."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from tests.helpers import make_event
from voltd.delivery import DeliveryOptions, RetryPolicy, SinkWorker, run_workers
from voltd.events import Event, parse
from voltd.sink import PermanentError, RetryableError, Sink
from voltd.spool import Spool, SpoolDB

FAST = DeliveryOptions(batch_size=50, attempt_timeout=2.0, idle_poll=0.2)
QUICK_RETRY = RetryPolicy(initial=0.05, max_delay=0.2, give_up_after=60)


def ev(**kw: object) -> Event:
    e = parse(make_event(**kw))  # type: ignore[arg-type]
    assert isinstance(e, Event)
    return e


class Recorder(Sink):
    def __init__(self) -> None:
        self.got: list[str] = []

    async def send(self, event: Event) -> None:
        self.got.append(event.id)


class Flaky(Recorder):
    """Fails the first `failures` calls, then works."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    async def send(self, event: Event) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RetryableError("try later")
        await super().send(event)


class PickyBatch(Recorder):
    """Refuses whole batches that contain a poisoned event; `send` refuses just that one."""

    async def send(self, event: Event) -> None:
        if event.payload.get("poison"):
            raise PermanentError("this one can never be delivered")
        await super().send(event)

    async def send_batch(self, events: Sequence[Event]) -> None:
        if any(e.payload.get("poison") for e in events):
            raise PermanentError("batch refused")
        for e in events:
            await super().send(e)


class Stuck(Recorder):
    async def send(self, event: Event) -> None:
        await trio.sleep_forever()


async def store_all(spool: Spool, events: list[Event], sinks: list[str]) -> None:
    async with trio.open_nursery() as n:
        await n.start(spool.writer)
        for e in events:
            await spool.store(e, sinks)
        n.cancel_scope.cancel()


async def run_until(spool: Spool, workers: dict[str, SinkWorker], done, limit: float = 10):
    stop = trio.Event()
    async with trio.open_nursery() as n:
        await n.start(spool.writer)
        await n.start(run_workers, workers, stop, 0.5)
        with trio.fail_after(limit):
            while not await done():  # noqa: ASYNC110 - the condition lives in the spool
                await trio.sleep(0.02)
        stop.set()
        n.cancel_scope.cancel()


def test_retry_policy_doubles_with_bounded_jitter() -> None:
    p = RetryPolicy(initial=2, max_delay=60, give_up_after=3600)
    rng = random.Random(7)
    for attempts, base in [(1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (40, 60), (10**6, 60)]:
        for _ in range(50):
            d = p.delay(attempts, rng)
            assert base / 2 <= d <= base, (attempts, d)


async def test_flaky_sink_is_retried_until_delivered(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    sink = Flaky(failures=2)
    e = ev()
    try:
        await store_all(spool, [e], ["flaky"])

        async def done() -> bool:
            return (await spool.status())["flaky"]["delivered"] == 1

        await run_until(spool, {"flaky": SinkWorker("flaky", sink, spool, QUICK_RETRY, FAST)}, done)
    finally:
        spool.close()
    assert sink.got == [e.id] and sink.calls == 3
    db = SpoolDB(tmp_path / "s.db")
    # Delivered on the third attempt; the error of the failed ones is not kept.
    assert db.conn.execute("SELECT attempts, last_error FROM deliveries").fetchone() == (3, None)
    db.close()


async def test_one_poisoned_event_does_not_dead_letter_its_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    sink = PickyBatch()
    good = [ev() for _ in range(5)]
    bad = ev(poison=True)
    try:
        await store_all(spool, [*good[:2], bad, *good[2:]], ["picky"])

        async def done() -> bool:
            s = (await spool.status())["picky"]
            return s["delivered"] == 5 and s["dead"] == 1

        await run_until(spool, {"picky": SinkWorker("picky", sink, spool, QUICK_RETRY, FAST)}, done)
    finally:
        spool.close()
    assert sorted(sink.got) == sorted(e.id for e in good)
    db = SpoolDB(tmp_path / "s.db")
    assert [d["id"] for d in db.dead()] == [bad.id]
    assert "can never be delivered" in db.dead()[0]["error"]
    db.close()


async def test_give_up_after_makes_a_dead_letter(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    policy = RetryPolicy(initial=0.05, max_delay=0.1, give_up_after=0.3)
    try:
        await store_all(spool, [ev()], ["down"])

        async def done() -> bool:
            return (await spool.status())["down"]["dead"] == 1

        started = time.monotonic()
        await run_until(
            spool, {"down": SinkWorker("down", Flaky(10**9), spool, policy, FAST)}, done
        )
        assert time.monotonic() - started >= 0.3
    finally:
        spool.close()


async def test_a_stuck_sink_holds_up_nobody(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    fast = Recorder()
    opts = DeliveryOptions(batch_size=50, attempt_timeout=30, idle_poll=0.2)
    try:
        await store_all(spool, [ev() for _ in range(20)], ["stuck", "fast"])

        async def done() -> bool:
            return len(fast.got) == 20

        await run_until(
            spool,
            {
                "stuck": SinkWorker("stuck", Stuck(), spool, QUICK_RETRY, opts),
                "fast": SinkWorker("fast", fast, spool, QUICK_RETRY, opts),
            },
            done,
        )
        status = await spool.status()
    finally:
        spool.close()
    # The stuck sink's deliveries were cut off at shutdown and are still pending.
    assert status["stuck"]["pending"] == 20 and status["fast"]["delivered"] == 20


async def test_a_hung_attempt_times_out_and_is_retried(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    opts = DeliveryOptions(batch_size=50, attempt_timeout=0.2, idle_poll=0.2)
    try:
        await store_all(spool, [ev()], ["stuck"])

        async def done() -> bool:
            row = spool._rdb.conn.execute("SELECT attempts, last_error FROM deliveries").fetchone()
            return row[0] >= 2 and "no answer within" in row[1]

        await run_until(
            spool, {"stuck": SinkWorker("stuck", Stuck(), spool, QUICK_RETRY, opts)}, done
        )
    finally:
        spool.close()


async def test_a_failing_batch_logs_one_line_not_one_per_event(tmp_path: Path, caplog) -> None:
    spool = Spool(tmp_path / "s.db")
    policy = RetryPolicy(initial=0.1, max_delay=0.1, give_up_after=0.5)
    try:
        await store_all(spool, [ev() for _ in range(50)], ["down"])

        def logged_dead() -> int:
            found = (re.match(r"sink down: (\d+) deliver", r.getMessage()) for r in caplog.records)
            return sum(int(m.group(1)) for m in found if m and "dead letters" in m.string)

        async def done() -> bool:
            # The line about dead letters follows their commit: wait for both, or a slow
            # machine stops the worker between the two.
            return (await spool.status())["down"]["dead"] == 50 and logged_dead() == 50

        with caplog.at_level("WARNING", logger="voltd.delivery"):
            await run_until(
                spool, {"down": SinkWorker("down", Flaky(10**9), spool, policy, FAST)}, done
            )
    finally:
        spool.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "voltd.delivery"]
    # The first attempt reports the batch in one line, or two when part of it was already
    # past give_up_after (a slow machine).
    first = [int(n) for n in re.findall(r"sink down: (\d+) deliver", " ".join(lines[:2]))]
    assert first[0] == 50 or sum(first) == 50, lines[:2]
    dead = [re.match(r"sink down: (\d+) deliver", x) for x in lines if "dead letters" in x]
    assert sum(int(m.group(1)) for m in dead if m) == 50  # jitter may split them over batches
    assert len(lines) < 20, lines  # a handful of attempts, one line each, not 50 per attempt


class Down(Recorder):
    """Fails every batch while `down`; counts the calls that reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.calls = 0

    async def send(self, event: Event) -> None:
        await self.send_batch([event])

    async def send_batch(self, events: Sequence[Event]) -> None:
        self.calls += 1
        if self.down:
            raise RetryableError("connection refused")
        self.got.extend(e.id for e in events)


async def test_a_down_sink_is_paused_not_tried_for_every_new_event(tmp_path: Path) -> None:
    """Ingest goes on while the sink is down; only a probe now and then reaches the sink, the
    events that arrive meanwhile are not attempted one commit at a time, and once the sink is
    back every waiting event goes at once instead of after its own backoff."""
    spool = Spool(tmp_path / "s.db")
    sink = Down()
    policy = RetryPolicy(initial=30, max_delay=600, give_up_after=3600)
    opts = DeliveryOptions(batch_size=500, idle_poll=0.2, linger=0.01, max_pause=0.3)
    events = [ev() for _ in range(200)]
    stop = trio.Event()
    try:
        async with trio.open_nursery() as n:
            await n.start(spool.writer)
            await n.start(
                run_workers, {"down": SinkWorker("down", sink, spool, policy, opts)}, stop, 0.5
            )
            started = trio.current_time()
            for i in range(0, 200, 10):  # 20 commits over about a second
                for e in events[i : i + 10]:
                    await spool.store(e, ["down"])
                await trio.sleep(0.05)
            calls_while_down = sink.calls
            probes_allowed = (trio.current_time() - started) / opts.max_pause + 2
            pending = spool._rdb.conn.execute(
                "SELECT COUNT(*), SUM(attempts = 0) FROM deliveries WHERE state = 0"
            ).fetchone()
            sink.down = False
            with trio.fail_after(10):
                while len(sink.got) < 200:  # noqa: ASYNC110 - a plain counter
                    await trio.sleep(0.02)
            stop.set()
            n.cancel_scope.cancel()
    finally:
        spool.close()
    assert 1 <= calls_while_down <= min(probes_allowed, 12), calls_while_down  # not 20
    # All waited in the spool; each probe took what was waiting in one call, so how many were
    # never tried depends on when the last probe fell (on a loaded machine: none).
    assert pending[0] == 200
    assert sorted(sink.got) == sorted(e.id for e in events)


async def test_a_sink_down_past_give_up_after_dead_letters_what_waited(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    policy = RetryPolicy(initial=0.05, max_delay=0.1, give_up_after=0.3)
    opts = DeliveryOptions(batch_size=5, idle_poll=0.2, linger=0.01, max_pause=0.1)
    try:
        await store_all(spool, [ev() for _ in range(40)], ["down"])

        async def done() -> bool:
            return (await spool.status())["down"]["dead"] == 40

        await run_until(spool, {"down": SinkWorker("down", Down(), spool, policy, opts)}, done)
        errors = {d["error"] for d in SpoolDB(tmp_path / "s.db").dead()}
    finally:
        spool.close()
    # Batches of 5: most of the 40 were never attempted, yet all gave up on time, saying why.
    assert all("connection refused" in e for e in errors), errors


async def test_a_new_worker_sends_what_an_earlier_one_scheduled_for_later(tmp_path: Path) -> None:
    """After a restart or a reload that replaced the sink, deliveries that failed before and
    wait out a long backoff go as soon as the new worker's first attempt works."""
    spool = Spool(tmp_path / "s.db")
    policy = RetryPolicy(initial=600, max_delay=3600, give_up_after=86400)
    events = [ev() for _ in range(30)]
    sink = Down()
    try:
        await store_all(spool, events, ["s"])
        await run_until(  # one failed attempt: all 30 now wait 5 to 10 minutes
            spool,
            {"s": SinkWorker("s", sink, spool, policy, FAST)},
            lambda: _attempted(spool),
        )
        await store_all(spool, [ev()], ["s"])  # something new, due now
        sink.down = False

        async def done() -> bool:
            return (await spool.status())["s"]["delivered"] == 31

        await run_until(spool, {"s": SinkWorker("s", sink, spool, policy, FAST)}, done)
    finally:
        spool.close()


async def _attempted(spool: Spool) -> bool:
    row = spool._rdb.conn.execute("SELECT MIN(attempts) FROM deliveries").fetchone()
    return row[0] >= 1


def test_a_sink_may_take_bigger_batches(tmp_path: Path) -> None:
    class Big(Recorder):
        max_batch = 2048

    spool = Spool(tmp_path / "s.db")
    try:
        assert SinkWorker("b", Big(), spool, QUICK_RETRY, FAST).batch_size == 2048
        assert SinkWorker("r", Recorder(), spool, QUICK_RETRY, FAST).batch_size == 50
    finally:
        spool.close()
