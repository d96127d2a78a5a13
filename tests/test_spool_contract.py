"""One contract, two spools: the same scenarios against the SQLite `Spool` and the PostgreSQL
`PgSpool`, so that the daemon can use either without knowing which."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import spool_event as ev
from tests.helpers import writing
from voltd.events import Event, parse
from voltd.spool import Outcome, SinkChange, Spool, State, Stored

OpenSpool = Callable[[], AbstractAsyncContextManager[Any]]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_spool(request: pytest.FixtureRequest, tmp_path: Path) -> OpenSpool:
    """A function that opens the spool under test, with its writer running."""
    if request.param == "sqlite":

        def make() -> Any:
            return Spool(tmp_path / "spool.db")

    else:
        from voltd.spool_pg import PgSpool, migrate

        url = request.getfixturevalue("pg_url")
        migrate(url)

        def make() -> Any:
            return PgSpool(url)

    return lambda: writing(make())


async def test_store_returns_stored(open_spool: OpenSpool) -> None:
    async with open_spool() as spool:
        a = await spool.store(ev(), ["a", "b"])
        b = await spool.store(ev(), ["a"])
        assert isinstance(a, Stored) and not a.duplicate and a.seq is not None
        assert not b.duplicate and b.seq is not None and b.seq > a.seq
        status = await spool.status()
        assert status["a"] == {"pending": 2, "delivered": 0, "dead": 0}
        assert status["b"]["pending"] == 1


async def test_dedup_same_envelope(open_spool: OpenSpool) -> None:
    async with open_spool() as spool:
        e = ev()
        first = await spool.store(e, ["a"])
        again = await spool.store(parse(e.raw), ["a"])  # type: ignore[arg-type]
        assert not first.duplicate and again.duplicate and again.seq is None
        # Same envelope id, another payload: another event.
        env = json.loads(e.raw)
        env["payload"]["status"] = "failed"
        other = await spool.store(parse(json.dumps(env).encode()), ["a"])  # type: ignore[arg-type]
        assert not other.duplicate
        # Both copies in one batch: one stored, one duplicate.
        twin = ev()
        results: list[Stored] = []

        async def one(x: Event) -> None:
            results.append(await spool.store(x, ["a"]))

        async with trio.open_nursery() as n:
            n.start_soon(one, twin)
            n.start_soon(one, parse(twin.raw))
        assert sorted(r.duplicate for r in results) == [False, True]
        assert (await spool.status())["a"]["pending"] == 3


async def test_due_and_outcomes(open_spool: OpenSpool) -> None:
    async with open_spool() as spool:
        events = [ev(text=f"m{i}") for i in range(3)]
        seqs = [(await spool.store(e, ["s"])).seq for e in events]
        now = time.time()
        due = await spool.due("s", now + 1, 10)
        assert [d.event.seq for d in due] == seqs
        assert [d.event.id for d in due] == [e.id for e in events]
        assert due[0].event.raw == events[0].raw and due[0].attempts == 0
        assert abs(due[0].received_at - now) < 30
        later = now + 3600
        await spool.record(
            [
                Outcome("s", seqs[0], State.DELIVERED, 1),
                Outcome("s", seqs[1], State.PENDING, 1, next_at=later, error="503"),
                Outcome("s", seqs[2], State.DEAD, 1, error="gone"),
            ]
        )
        assert await spool.due("s", now + 1, 10) == []
        assert await spool.next_due_at("s") == pytest.approx(later)
        retry = await spool.due("s", later + 1, 10)
        assert [(d.event.seq, d.attempts) for d in retry] == [(seqs[1], 1)]
        assert (await spool.status())["s"] == {"pending": 1, "delivered": 1, "dead": 1}
        gauges = await spool.gauges()
        assert gauges["s"][0] == 1 and gauges["s"][1] == 1 and gauges["s"][2] is not None


async def test_record_soon_and_flush(open_spool: OpenSpool) -> None:
    async with open_spool() as spool:
        seq = (await spool.store(ev(), ["s"])).seq
        await spool.due("s", time.time() + 1, 10)
        done = spool.record_soon([Outcome("s", seq, State.DELIVERED, 1)])
        assert done is not None
        await spool.flush()
        assert done.is_set()
        assert (await spool.status())["s"]["delivered"] == 1


async def test_sink_change(open_spool: OpenSpool) -> None:
    async with open_spool() as spool:
        seqs = [(await spool.store(ev(), ["s"])).seq for _ in range(2)]
        later = time.time() + 3600
        await spool.record([Outcome("s", q, State.PENDING, 1, next_at=later) for q in seqs])
        await spool.record([], SinkChange("s", release=True))
        assert len(await spool.due("s", time.time() + 1, 10)) == 2
        n = await spool.record([], SinkChange("s", expire_before=time.time() + 1, error="old"))
        assert n == 2
        assert (await spool.status())["s"]["dead"] == 2


async def test_state_get_put(open_spool: OpenSpool) -> None:
    async with open_spool() as spool:
        assert await spool.state_get("s", "k") is None
        await spool.state_put("s", "k", "v1")
        await spool.state_put("s", "k", "v2")
        await spool.state_put("t", "k", "other")
        assert await spool.state_get("s", "k") == "v2"
        assert await spool.state_get("t", "k") == "other"
        await spool.state_put("s", "k", None)
        assert await spool.state_get("s", "k") is None
        assert await spool.retry_requested("s") is None


async def test_purge_delivered(open_spool: OpenSpool) -> None:
    async with open_spool() as spool:
        done = (await spool.store(ev(), ["a", "b"])).seq
        half = (await spool.store(ev(), ["a", "b"])).seq
        dead = (await spool.store(ev(), ["a"])).seq
        await spool.record(
            [
                Outcome("a", done, State.DELIVERED, 1),
                Outcome("b", done, State.DELIVERED, 1),
                Outcome("a", half, State.DELIVERED, 1),
                Outcome("a", dead, State.DEAD, 1, error="x"),
            ]
        )
        assert await spool.purge(time.time() - 3600) == 0  # nothing old enough
        assert await spool.purge(time.time() + 1) == 1  # only the fully delivered one
        status = await spool.status()
        assert status["a"] == {"pending": 0, "delivered": 1, "dead": 1}
        assert status["b"] == {"pending": 1, "delivered": 0, "dead": 0}


async def test_wakeup_on_store(open_spool: OpenSpool) -> None:
    async with open_spool() as spool:
        woken = spool.wakeup("s")
        other = spool.wakeup("t")
        assert spool.wakeup("s") is woken
        await spool.store(ev(), ["s"])
        assert woken.is_set() and not other.is_set()
        assert spool.wakeup("s") is not woken  # a fresh one for the next commit
        spool.wake("t")
        assert other.is_set()


async def test_check_writable_and_incoming(open_spool: OpenSpool) -> None:
    async with open_spool() as spool:
        await spool.check_writable()
        assert spool.incoming == 0
