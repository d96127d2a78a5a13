"""The spool on a real SQLite file: group commit, dedup, outcomes, purge, replay, failures."""

from __future__ import annotations

import json
import resource
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
import trio

from tests.helpers import Daemon, make_event
from voltd.events import Event, parse
from voltd.spool import Outcome, Spool, SpoolDB, SpoolLocked, State


def ev(**kw: object) -> Event:
    e = parse(make_event(**kw))  # type: ignore[arg-type]
    assert isinstance(e, Event)
    return e


async def with_spool(path: Path, fn) -> None:
    spool = Spool(path)
    try:
        async with trio.open_nursery() as n:
            await n.start(spool.writer)
            await fn(spool)
            n.cancel_scope.cancel()
    finally:
        spool.close()


async def test_concurrent_stores_share_commits(tmp_path: Path) -> None:
    calls: list[int] = []

    async def body(spool: Spool) -> None:
        real = spool._wdb.apply

        def counting(ingests, records):  # observe batch sizes, change nothing
            calls.append(len(ingests))
            return real(ingests, records)

        spool._wdb.apply = counting  # type: ignore[method-assign]
        results = []

        async def one(e: Event) -> None:
            results.append(await spool.store(e, ["a", "b"]))

        async with trio.open_nursery() as n:
            for _ in range(300):
                n.start_soon(one, ev())
        assert len(results) == 300 and not any(r.duplicate for r in results)
        assert sum(calls) == 300
        assert len(calls) < 100, calls  # group commit: far fewer transactions than events
        status = await spool.status()
        assert status["a"]["pending"] == status["b"]["pending"] == 300

    await with_spool(tmp_path / "s.db", body)


async def test_dedup_by_id_and_content(tmp_path: Path) -> None:
    async def body(spool: Spool) -> None:
        e = ev()
        first = await spool.store(e, ["a"])
        again = await spool.store(parse(e.raw), ["a"])  # type: ignore[arg-type]
        assert not first.duplicate and again.duplicate
        # Same envelope id, different message: a different event (the vendor's examples do it).
        env = json.loads(e.raw)
        env["payload"]["status"] = "failed"
        other = await spool.store(parse(json.dumps(env).encode()), ["a"])  # type: ignore[arg-type]
        assert not other.duplicate and other.seq != first.seq
        # Re-serialized and re-timed: same event.
        env = json.loads(e.raw)
        env["time"] += 60
        redo = await spool.store(parse(json.dumps(env, indent=1).encode()), ["a"])  # type: ignore[arg-type]
        assert redo.duplicate
        assert (await spool.status())["a"]["pending"] == 2

    await with_spool(tmp_path / "s.db", body)


async def test_due_outcomes_purge_and_replay(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def body(spool: Spool) -> None:
        events = [ev() for _ in range(5)]
        seqs = [(await spool.store(e, ["a"])).seq for e in events]
        due = await spool.due("a", time.time(), 10)
        assert [d.event.seq for d in due] == seqs  # arrival order
        assert due[0].event.raw == events[0].raw and due[0].attempts == 0
        assert await spool.due("nobody", time.time(), 10) == []
        later = time.time() + 3600
        await spool.record(
            [
                Outcome("a", seqs[0], State.DELIVERED, 1),
                Outcome("a", seqs[1], State.DEAD, 3, time.time(), "boom"),
                Outcome("a", seqs[2], State.PENDING, 1, later, "retry"),
            ]
        )
        assert [d.event.seq for d in await spool.due("a", time.time(), 10)] == seqs[3:]
        assert await spool.next_due_at("a") is not None
        assert (await spool.status())["a"] == {"pending": 3, "delivered": 1, "dead": 1}
        # Purge forgets only events whose every delivery succeeded.
        assert await spool.purge(time.time() + 1) == 1

    await with_spool(path, body)
    db = SpoolDB(path)
    try:
        assert db.event_count() == 4
        dead = db.dead()
        assert [(d["sink"], d["attempts"], d["error"]) for d in dead] == [("a", 3, "boom")]
        assert db.replay("a") == 1
        assert db.dead() == []
        assert db.status()["a"]["pending"] == 4
    finally:
        db.close()


def test_one_daemon_per_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path / "s.db")
    try:
        with pytest.raises(SpoolLocked, match="another voltd process"):
            Spool(tmp_path / "s.db")
    finally:
        first.close()
    Spool(tmp_path / "s.db").close()  # released on close


def test_a_failed_commit_answers_503_and_loses_nothing_acknowledged(daemon: Daemon) -> None:
    """A real write failure: the daemon may not grow any file past 1 MiB (RLIMIT_FSIZE)."""
    daemon.configure()
    limit = 1 << 20
    daemon.start(
        preexec_fn=lambda: resource.setrlimit(
            resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY)
        )
    )
    acked, refused = [], 0
    for i in range(200):
        body = make_event(text="x" * 60000, seqno=i)
        r = daemon.post(body)
        if r.status_code == 200:
            acked.append(json.loads(body)["id"])
        else:
            assert r.status_code == 503, r.text
            assert "cannot store" in r.json()["error"]
            refused += 1
            if refused >= 3:
                break
    assert refused >= 3 and acked, (len(acked), refused)
    # Still running and answering (health depends on whether a small commit still fits).
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert httpx.get(daemon.admin_url + "/healthz").status_code in (200, 503)
    assert daemon.post(b"not json").status_code == 400
    assert daemon.stop() == 0
    db = sqlite3.connect(daemon.root / "spool.db")
    try:
        stored = {json.loads(b)["id"] for (b,) in db.execute("SELECT body FROM events")}
    finally:
        db.close()
    assert stored == set(acked)  # every 200 is there, nothing refused was half-written
