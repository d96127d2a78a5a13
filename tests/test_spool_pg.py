"""The PostgreSQL spool with several instances on one database: shared dedup, claims and
leases, the ordered sinks' lock, NOTIFY wake-ups, schema versions, a database restart."""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
import pytest
import trio

from tests.helpers import spool_event as ev
from tests.helpers import writing
from voltd.events import Event, parse
from voltd.spool import Outcome, SpoolError, State, Stored
from voltd.spool_pg import PG_SCHEMA_VERSION, PgSpool, PgSpoolDB, migrate


@pytest.fixture
def url(pg_url: str) -> str:
    migrate(pg_url)
    return pg_url


def running(url: str, **kw: Any) -> AbstractAsyncContextManager[PgSpool]:
    """An instance on `url` with its writer running."""
    return writing(PgSpool(url, **kw))


async def test_same_envelope_through_two_instances_stored_once(url: str) -> None:
    async with running(url) as a, running(url) as b:
        for _ in range(20):
            e = ev()
            results: list[Stored] = []

            async def one(spool: PgSpool, x: Event, out: list[Stored] = results) -> None:
                out.append(await spool.store(x, ["s"]))

            async with trio.open_nursery() as n:
                n.start_soon(one, a, e)
                n.start_soon(one, b, parse(e.raw))
            assert sorted(r.duplicate for r in results) == [False, True]
        assert (await a.status())["s"]["pending"] == 20


async def test_concurrent_due_never_shares_a_delivery(url: str) -> None:
    async with running(url) as a, running(url) as b:
        for i in range(60):
            await a.store(ev(text=f"m{i}"), ["s"])
        got: dict[str, list[int]] = {"a": [], "b": []}

        async def claim(name: str, spool: PgSpool) -> None:
            # As a delivery worker does: claim a batch, record it, claim the next.
            while True:
                due = await spool.due("s", time.time() + 1, 7)
                if not due:
                    return
                seqs = [d.event.seq for d in due if d.event.seq is not None]
                got[name].extend(seqs)
                await spool.record([Outcome("s", q, State.DELIVERED, 1) for q in seqs])

        async with trio.open_nursery() as n:
            n.start_soon(claim, "a", a)
            n.start_soon(claim, "b", b)
        assert not set(got["a"]) & set(got["b"])
        assert len(got["a"]) + len(got["b"]) == 60
        assert len(set(got["a"] + got["b"])) == 60
        assert (await a.status())["s"]["delivered"] == 60
        # A claim not recorded yet is this instance's own: asked again, it gets it back (as
        # the SQLite spool offers a delivery until its outcome is recorded).
        seq = (await a.store(ev(), ["s"])).seq
        assert [d.event.seq for d in await a.due("s", time.time() + 1, 10)] == [seq]
        assert await b.due("s", time.time() + 1, 10) == []
        assert [d.event.seq for d in await a.due("s", time.time() + 1, 10)] == [seq]


async def test_claims_are_renewed_while_the_instance_lives(url: str) -> None:
    """An attempt longer than the lease keeps its claim: no second instance sends it too."""
    async with running(url, lease=1.0) as a, running(url, lease=1.0) as b:
        seq = (await a.store(ev(), ["s"])).seq
        assert [d.event.seq for d in await a.due("s", time.time() + 1, 10)] == [seq]
        await trio.sleep(2.0)  # twice the lease; `a` renews every 0.25 s
        assert await b.due("s", time.time() + 1, 10) == []
        await a.record([Outcome("s", seq, State.DELIVERED, 1)])
        assert (await b.status())["s"] == {"pending": 0, "delivered": 1, "dead": 0}


async def test_expired_lease_is_taken_over(url: str) -> None:
    # `a` stops renewing its claims, as an instance that died (or hangs) does.
    async with running(url, lease=1.0, renew_every=3600) as a, running(url, lease=1.0) as b:
        seq = (await a.store(ev(), ["s"])).seq
        assert [d.event.seq for d in await a.due("s", time.time() + 1, 10)] == [seq]
        assert await b.due("s", time.time() + 1, 10) == []
        taken_at = await b.next_due_at("s")
        assert taken_at is not None and taken_at > time.time()  # not before the lease ends
        await trio.sleep(1.2)
        assert [d.event.seq for d in await b.due("s", time.time() + 1, 10)] == [seq]
        # A's late outcome does not undo B's claim; B's outcome counts.
        await a.record([Outcome("s", seq, State.PENDING, 1, next_at=time.time() + 99)])
        assert (await a.status())["s"]["pending"] == 1
        await b.record([Outcome("s", seq, State.DELIVERED, 1)])
        assert (await a.status())["s"] == {"pending": 0, "delivered": 1, "dead": 0}


async def test_outcome_clears_the_lease(url: str) -> None:
    async with running(url) as a, running(url) as b:
        seq = (await a.store(ev(), ["s"])).seq
        await a.due("s", time.time() + 1, 10)
        await a.record([Outcome("s", seq, State.PENDING, 1, next_at=time.time())])
        assert [d.event.seq for d in await b.due("s", time.time() + 1, 10)] == [seq]


async def test_advisory_lock_one_holder(url: str) -> None:
    async with running(url) as a, running(url) as b:
        assert await a.acquire_sink("ordered")
        assert await a.acquire_sink("ordered")  # still held
        assert not await b.acquire_sink("ordered")
        assert await b.acquire_sink("other")  # a lock per sink
        await a.release_sink("ordered")
        assert await b.acquire_sink("ordered")
        assert not await a.acquire_sink("ordered")
    # The holder's connection closed: the lock is free, and the next holder takes over its
    # claims at once, without waiting for their lease.
    async with running(url) as c:
        seq = (await c.store(ev(), ["ordered"])).seq
        d = PgSpool(url)
        try:
            assert await d.acquire_sink("ordered")
            assert [x.event.seq for x in await d.due("ordered", time.time() + 1, 10)] == [seq]
            assert not await c.acquire_sink("ordered")
        finally:
            d._closed = True  # die without tidying up: the claim stays, the lock goes
            for conn in (d._lock_conn, d._lconn):
                if conn is not None:
                    conn.close()
            d._pool.close()
        assert await c.acquire_sink("ordered")
        assert [x.event.seq for x in await c.due("ordered", time.time() + 1, 10)] == [seq]


async def test_notify_wakes_the_other_instance(url: str) -> None:
    async with running(url, listen_poll=0.1) as a, running(url, listen_poll=0.1) as b:
        await trio.sleep(0.5)  # both LISTENing
        woken = b.wakeup("s")
        quiet = b.wakeup("t")
        await a.store(ev(), ["s"])
        with trio.fail_after(5):
            await woken.wait()
        assert not quiet.is_set()
        # `voltd spool replay` from the CLI wakes them too.
        seq = (await a.store(ev(), ["t"])).seq
        await a.record([Outcome("t", seq, State.DEAD, 1, error="x")])
        quiet = b.wakeup("t")
        db = PgSpoolDB(url)
        try:
            assert db.replay("t") == 1
            assert [r["seq"] for r in db.dead()] == []
        finally:
            db.close()
        with trio.fail_after(5):
            await quiet.wait()


async def test_cli_face(url: str) -> None:
    async with running(url) as a:
        seq = (await a.store(ev(), ["s"])).seq
        await a.record([Outcome("s", seq, State.DEAD, 3, error="boom")])
        a.record_soon((), status=("s", _status("paused")))
        await a.flush()
        db = PgSpoolDB(url)
        try:
            assert db.running() == [a.instance]
            assert db.event_count() == 1
            report = db.report()
            assert report["s"]["dead"] == 1 and report["s"]["worker"]["state"] == "paused"
            assert [(r["seq"], r["error"]) for r in db.dead("s")] == [(seq, "boom")]
            assert db.replay("s", [seq]) == 1
            assert db.request_retry("s") == 1
            asked = await a.retry_requested("s")
            assert asked is not None and asked <= time.time()
        finally:
            db.close()
    db = PgSpoolDB(url)
    try:
        assert db.running() == [] and db.sink_status() == {}  # closed: its status row went
    finally:
        db.close()


def _status(state: str) -> dict[str, Any]:
    return {
        "state": state,
        "reason": "503",
        "since": time.time(),
        "next_attempt": None,
        "in_flight": 0,
        "last_error": "503",
    }


def test_schema_versions(pg_url: str) -> None:
    with pytest.raises(SpoolError, match="migrate"):
        PgSpool(pg_url)
    assert migrate(pg_url) == 0
    assert migrate(pg_url) == PG_SCHEMA_VERSION  # nothing to do
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE voltd_schema SET version = %s", (PG_SCHEMA_VERSION + 1,))
    with pytest.raises(SpoolError, match="newer voltd"):
        PgSpool(pg_url)
    with pytest.raises(SpoolError, match="newer voltd"):
        PgSpoolDB(pg_url)
    with pytest.raises(SpoolError, match="newer voltd"):
        migrate(pg_url)


async def test_database_restart(url: str, postgres: Any) -> None:
    async with running(url, connect_timeout=2.0) as spool:
        assert not (await spool.store(ev(), ["s"])).duplicate
        postgres.stop()
        try:
            with trio.fail_after(30):
                with pytest.raises(SpoolError):
                    await spool.store(ev(), ["s"])
                with pytest.raises(SpoolError):
                    await spool.store(ev(), ["s"])
        finally:
            postgres.start()
        with trio.fail_after(60):
            while True:
                try:
                    stored = await spool.store(ev(), ["s"])
                    break
                except SpoolError:
                    await trio.sleep(0.5)
        assert not stored.duplicate
        assert (await spool.status())["s"]["pending"] == 2
