"""The durable spool: every accepted event and one delivery row per target sink, in SQLite.

Two layers:

- `SpoolDB` is plain synchronous SQLite. The daemon uses it only from worker threads (two
  connections, each behind its own one-slot limiter); the `voltd spool` commands use it
  directly.
- `Spool` is the trio face of it. All writes go through one writer task that takes whatever
  is queued — new events from many concurrent requests *and* delivery outcomes — and commits
  them in one transaction, so one fsync acknowledges many requests (group commit).

An event's `200` is only sent after the transaction holding it and its delivery rows has
committed with `synchronous=FULL`, so an acknowledged event survives `kill -9` and power loss.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Protocol

import trio

from voltd.events import Event, from_spool

log = logging.getLogger("voltd.spool")

#: The spool's schema version, kept in `meta`. A spool written by any earlier release opens,
#: migrates (one step per version, in one transaction) and delivers what it holds; a spool
#: from a newer release is refused rather than misread.
SCHEMA_VERSION = 2

#: Version 1, as the first release wrote it; every spool starts here and takes each step.
_BASE = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        envelope_id TEXT NOT NULL,
        digest BLOB NOT NULL,
        received_at REAL NOT NULL,
        body BLOB NOT NULL,
        UNIQUE (envelope_id, digest)
    )""",
    "CREATE INDEX events_received ON events (received_at)",
    """CREATE TABLE deliveries (
        event_seq INTEGER NOT NULL,
        sink TEXT NOT NULL,
        state INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_error TEXT,
        PRIMARY KEY (event_seq, sink)
    ) WITHOUT ROWID""",
    "CREATE INDEX deliveries_due ON deliveries (sink, next_at, event_seq) WHERE state = 0",
    "INSERT INTO meta (key, value) VALUES ('schema', '1')",
)

#: version -> the statements that turn the previous version into it.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        # The plugin SDK's per-sink key-value state (voltd.state).
        """CREATE TABLE sink_state (
            sink TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (sink, key)
        ) WITHOUT ROWID""",
        # Volt's signature header, for relays that pass it on (NULL for older events).
        "ALTER TABLE events ADD COLUMN signature TEXT",
        # What each sink's worker is doing, for `voltd spool status` from another process,
        # and `retry_requested`, set by `voltd spool retry --sink` to enable it again.
        """CREATE TABLE sink_status (
            sink TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            reason TEXT,
            since REAL NOT NULL,
            next_attempt REAL,
            last_error TEXT,
            in_flight INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL,
            retry_requested REAL
        ) WITHOUT ROWID""",
    ),
}


class State(IntEnum):
    PENDING = 0
    DELIVERED = 1
    DEAD = 2


class SpoolError(Exception):
    """The spool could not commit (disk full, I/O error, locked): answer 503, keep running."""


class SpoolLocked(SpoolError):
    """Another voltd process already serves this spool file."""


@dataclass(slots=True)
class Due:
    """A delivery ready to be attempted."""

    event: Event
    attempts: int
    received_at: float


@dataclass(slots=True)
class Outcome:
    """What happened to one delivery attempt."""

    sink: str
    seq: int
    state: State
    attempts: int
    next_at: float = 0.0
    error: str | None = None


@dataclass(slots=True)
class Stored:
    """The spool's answer for one event: its row number, or that it was a duplicate."""

    seq: int | None
    duplicate: bool


@dataclass(slots=True)
class _Ingest:
    event: Event
    sinks: Sequence[str]
    done: trio.Event = field(default_factory=trio.Event)
    result: Stored | SpoolError | None = None


@dataclass(slots=True)
class SinkChange:
    """A change to all of one sink's pending deliveries, made without reading them.

    `expire_before`: deliveries of events received before this time become dead letters with
    `error` (a sink that stays down still gives up on time). `release`: every pending delivery
    is due now (a sink that came back need not wait out each delivery's own backoff).
    """

    sink: str
    expire_before: float | None = None
    error: str | None = None
    release: bool = False


@dataclass(slots=True)
class _Record:
    outcomes: Sequence[Outcome]
    change: SinkChange | None = None
    #: (sink, key, value) writes of sink state (voltd.state); value None deletes.
    state: Sequence[tuple[str, str, str | None]] = ()
    #: (sink, what its worker is doing) for the `sink_status` table.
    status: tuple[str, Mapping[str, Any]] | None = None
    done: trio.Event = field(default_factory=trio.Event)
    error: SpoolError | None = None
    expired: int = 0


class SpoolDB:
    """Synchronous access to the spool file. Not thread-safe: callers serialize."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        try:
            if not readonly:
                path.parent.mkdir(parents=True, exist_ok=True)
            uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
            self.conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self.conn.execute("PRAGMA busy_timeout = 10000")
            if not readonly:
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = FULL")
            self._full = True
            self.version = self._migrate(readonly)
        except sqlite3.Error as exc:
            raise SpoolError(f"{path}: cannot open the spool: {exc}") from exc

    def _schema_version(self) -> int | None:
        """The version a spool says it has; None for a new, empty file."""
        c = self.conn
        if c.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
            return None
        row = c.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        try:
            return int(row[0]) if row else 1
        except ValueError:
            raise SpoolError(f"{self.path}: schema version {row[0]!r} is not a number") from None

    def _migrate(self, readonly: bool) -> int:
        """Bring the file to SCHEMA_VERSION in one transaction (all steps or none)."""
        version = self._schema_version()
        if version is not None and version > SCHEMA_VERSION:
            raise SpoolError(
                f"{self.path}: the spool has schema version {version}, written by a newer voltd; "
                f"this one understands up to {SCHEMA_VERSION}: upgrade voltd to use it"
            )
        if readonly or version == SCHEMA_VERSION:
            return version or SCHEMA_VERSION
        with self._transaction("spool migration failed") as c:
            version = self._schema_version()  # another connection may have done it meanwhile
            new = version is None
            if version is None:
                for statement in _BASE:
                    c.execute(statement)
                version = 1
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    c.execute(statement)
                if not new:
                    log.info("%s: spool schema migrated to version %d", self.path, step)
            c.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)",
                (str(SCHEMA_VERSION),),
            )
        return SCHEMA_VERSION

    def close(self) -> None:
        self.conn.close()

    def _set_synchronous(self, *, full: bool) -> None:
        if full != self._full:
            self.conn.execute(f"PRAGMA synchronous = {'FULL' if full else 'NORMAL'}")
            self._full = full

    # -- writes ----------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT; any failure rolls back and becomes a SpoolError."""
        c = self.conn
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
                c.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as exc:
            raise SpoolError(f"{what}: {exc}") from exc

    def _rollback(self) -> None:
        # SQLite rolls back by itself after some errors (disk full, I/O); don't mask those.
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.error("rollback failed: %s", exc)

    def apply(self, ingests: Sequence[_Ingest], records: Sequence[_Record]) -> list[Stored]:
        """One transaction for a whole group of new events and delivery outcomes."""
        now = time.time()
        # Only new events need their commit on disk before we answer. A batch of nothing but
        # delivery outcomes skips the fsync: if power fails before the next durable commit,
        # those deliveries are simply made again (at-least-once allows it).
        try:
            self._set_synchronous(full=bool(ingests))
        except sqlite3.Error as exc:
            raise SpoolError(f"spool commit failed: {exc}") from exc
        with self._transaction("spool commit failed"):
            results = self._insert(ingests, now)
            for rec in records:
                if rec.state:
                    self._put_state(rec.state, now)
                if rec.status is not None:
                    self._put_status(*rec.status, now)
                self._record(rec.outcomes, now)
                if rec.change is not None:
                    rec.expired = self._change(rec.change, now)
        return results

    def insert(self, events: Iterable[tuple[Event, Sequence[str]]]) -> list[Stored]:
        """Store events with their target sinks in one durable commit, without a daemon
        (tools, the benchmark, tests); the daemon goes through `Spool.store`."""
        return self.apply([_Ingest(event, sinks) for event, sinks in events], [])

    def _insert(self, ingests: Sequence[_Ingest], now: float) -> list[Stored]:
        """Insert new events; one already stored (same id, same payload) is a duplicate.

        This runs once per acknowledged event, so it is kept to one statement per event plus
        one for all delivery rows of the batch.
        """
        insert = self.conn.execute
        results: list[Stored] = []
        rows: list[tuple[int, str, float, float]] = []
        for item in ingests:
            event = item.event
            cur = insert(
                "INSERT OR IGNORE INTO events (envelope_id, digest, received_at, body, signature)"
                " VALUES (?, ?, ?, ?, ?)",
                (event.id, event.digest, now, event.raw, event.volt_signature),
            )
            if cur.rowcount == 0:
                results.append(Stored(seq=None, duplicate=True))
                continue
            seq = cur.lastrowid
            assert seq is not None
            results.append(Stored(seq=seq, duplicate=False))
            rows.extend((seq, sink, now, now) for sink in item.sinks)
        if rows:
            self.conn.executemany(
                "INSERT INTO deliveries (event_seq, sink, state, attempts, next_at, updated_at)"
                " VALUES (?, ?, 0, 0, ?, ?)",
                rows,
            )
        return results

    def _record(self, outcomes: Iterable[Outcome], now: float) -> None:
        self.conn.executemany(
            "UPDATE deliveries SET state = ?, attempts = ?, next_at = ?, last_error = ?,"
            " updated_at = ? WHERE sink = ? AND event_seq = ?",
            [(int(o.state), o.attempts, o.next_at, o.error, now, o.sink, o.seq) for o in outcomes],
        )

    def _put_state(self, writes: Iterable[tuple[str, str, str | None]], now: float) -> None:
        for sink, key, value in writes:
            if value is None:
                self.conn.execute("DELETE FROM sink_state WHERE sink = ? AND key = ?", (sink, key))
            else:
                self.conn.execute(
                    "INSERT OR REPLACE INTO sink_state (sink, key, value, updated_at)"
                    " VALUES (?, ?, ?, ?)",
                    (sink, key, value, now),
                )

    def _put_status(self, sink: str, s: Mapping[str, Any], now: float) -> None:
        self.conn.execute(
            "INSERT INTO sink_status (sink, state, reason, since, next_attempt, last_error,"
            " in_flight, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (sink) DO UPDATE SET state = excluded.state, reason = excluded.reason,"
            " since = excluded.since, next_attempt = excluded.next_attempt,"
            " last_error = excluded.last_error, in_flight = excluded.in_flight,"
            " updated_at = excluded.updated_at",
            (
                sink,
                s["state"],
                s["reason"],
                s["since"],
                s["next_attempt"],
                s["last_error"],
                s["in_flight"],
                now,
            ),
        )

    def request_retry(self, sink: str) -> int:
        """`voltd spool retry --sink`: ask the daemon to enable the sink (it polls), and make
        its waiting deliveries due now. Returns how many are waiting."""
        now = time.time()
        with self._transaction("retry failed") as c:
            c.execute(
                "INSERT INTO sink_status (sink, state, since, updated_at, retry_requested)"
                " VALUES (?, 'ok', ?, ?, ?)"
                " ON CONFLICT (sink) DO UPDATE SET retry_requested = excluded.retry_requested",
                (sink, now, now, now),
            )
            return c.execute(
                "UPDATE deliveries SET next_at = ? WHERE sink = ? AND state = 0", (now, sink)
            ).rowcount

    def retry_requested(self, sink: str) -> float | None:
        row = self.conn.execute(
            "SELECT retry_requested FROM sink_status WHERE sink = ?", (sink,)
        ).fetchone()
        return row[0] if row else None

    def report(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Per sink, for `voltd spool status`: pending, retrying (tried and failed, waiting)
        with the next retry, dead, delivered in the last hour, the oldest pending event's age
        and the last error recorded, plus what its worker last said (`sink_status`)."""
        now = time.time() if now is None else now
        out: dict[str, dict[str, Any]] = {}
        rows = self.conn.execute(
            "SELECT d.sink, SUM(d.state = 0), SUM(d.state = 0 AND d.attempts > 0),"
            " MIN(CASE WHEN d.state = 0 AND d.attempts > 0 THEN d.next_at END), SUM(d.state = 2),"
            " SUM(d.state = 1 AND d.updated_at >= ?),"
            " MIN(CASE WHEN d.state = 0 THEN e.received_at END)"
            " FROM deliveries d JOIN events e ON e.seq = d.event_seq GROUP BY d.sink",
            (now - 3600,),
        )
        for sink, *counts in rows:
            last = self.conn.execute(
                "SELECT last_error FROM deliveries WHERE sink = ? AND last_error IS NOT NULL"
                " ORDER BY updated_at DESC LIMIT 1",
                (sink,),
            ).fetchone()
            out[sink] = sink_report(now, *counts, last_error=last[0] if last else None)
        for sink, worker in self.sink_status().items():
            out.setdefault(sink, empty_report())["worker"] = worker
        return out

    def sink_status(self) -> dict[str, dict[str, Any]]:
        """What each sink's worker last said it was doing (`sink_status`), by sink."""
        if self.version < 2:  # a spool not migrated yet (opened read-only)
            return {}
        keys = ("state", "reason", "since", "next_attempt", "last_error", "in_flight", "updated_at")
        rows = self.conn.execute(f"SELECT sink, {', '.join(keys)} FROM sink_status")
        return {row[0]: dict(zip(keys, row[1:], strict=True)) for row in rows}

    def get_state(self, sink: str, key: str) -> str | None:
        row = self.conn.execute(
            "SELECT value FROM sink_state WHERE sink = ? AND key = ?", (sink, key)
        ).fetchone()
        return row[0] if row else None

    def _change(self, change: SinkChange, now: float) -> int:
        """Apply a SinkChange; returns how many deliveries became dead letters."""
        expired = 0
        if change.expire_before is not None:
            expired = self.conn.execute(
                "UPDATE deliveries SET state = 2, updated_at = ?, last_error = ?"
                " WHERE sink = ? AND state = 0 AND event_seq IN"
                " (SELECT seq FROM events WHERE received_at < ?)",
                (now, change.error, change.sink, change.expire_before),
            ).rowcount
        if change.release:
            self.conn.execute(
                "UPDATE deliveries SET next_at = ? WHERE sink = ? AND state = 0 AND next_at > ?",
                (now, change.sink, now),
            )
        return expired

    def check_writable(self) -> None:
        """Prove that a commit goes through right now (for /healthz)."""
        with self._transaction("spool is not writable") as c:
            c.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('health', ?)",
                (repr(time.time()),),
            )

    def purge(self, older_than: float, limit: int = 5000) -> int:
        """Forget events past retention whose every delivery succeeded (dead letters stay)."""
        with self._transaction("spool purge failed") as c:
            seqs = [
                (r[0],)
                for r in c.execute(
                    "SELECT seq FROM events e WHERE received_at < ? AND NOT EXISTS ("
                    " SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.state != 1)"
                    " LIMIT ?",
                    (older_than, limit),
                )
            ]
            c.executemany("DELETE FROM deliveries WHERE event_seq = ?", seqs)
            c.executemany("DELETE FROM events WHERE seq = ?", seqs)
        return len(seqs)

    def replay(self, sink: str | None = None, seqs: Sequence[int] | None = None) -> int:
        """Turn dead letters back into pending deliveries, due now."""
        sql = "UPDATE deliveries SET state = 0, attempts = 0, next_at = ?, updated_at = ?"
        sql += " WHERE state = 2"
        now = time.time()
        args: list[Any] = [now, now]
        if sink is not None:
            sql += " AND sink = ?"
            args.append(sink)
        if seqs:
            sql += f" AND event_seq IN ({','.join('?' * len(seqs))})"
            args.extend(seqs)
        with self._transaction("replay failed") as c:
            return c.execute(sql, args).rowcount

    # -- reads -----------------------------------------------------------------------------

    def due(self, sink: str, now: float, limit: int) -> list[Due]:
        rows = self.conn.execute(
            "SELECT d.event_seq, d.attempts, e.envelope_id, e.body, e.received_at, e.signature"
            " FROM deliveries d JOIN events e ON e.seq = d.event_seq"
            " WHERE d.sink = ? AND d.state = 0 AND d.next_at <= ?"
            " ORDER BY d.next_at, d.event_seq LIMIT ?",
            (sink, now, limit),
        ).fetchall()
        out = []
        for seq, attempts, eid, body, received_at, signature in rows:
            out.append(Due(from_spool(seq, eid, bytes(body), signature), attempts, received_at))
        return out

    def next_due_at(self, sink: str) -> float | None:
        row = self.conn.execute(
            "SELECT MIN(next_at) FROM deliveries WHERE sink = ? AND state = 0", (sink,)
        ).fetchone()
        return row[0] if row else None

    def status(self) -> dict[str, dict[str, int]]:
        """Deliveries per sink and state (`voltd spool status`, start-up checks, tests)."""
        return status_counts(self.conn.execute(STATUS_SQL))

    def gauges(self) -> dict[str, tuple[int, int, float | None]]:
        """Per sink: pending deliveries, dead letters and when the oldest pending event
        arrived, for every scrape of /metrics (so not `report`, which joins every delivery
        with its event). Pending comes from the due index, which holds pending rows only;
        dead letters take one pass over the deliveries without a join (both together: about
        50 ms for 800,000 deliveries, where `status` takes 0.5 s). Events are numbered as they
        arrive, so the lowest pending number is the oldest."""
        c = self.conn
        pending = []
        for sink, n, first in c.execute(
            "SELECT sink, COUNT(*), MIN(event_seq) FROM deliveries WHERE state = 0 GROUP BY sink"
        ).fetchall():
            row = c.execute("SELECT received_at FROM events WHERE seq = ?", (first,)).fetchone()
            pending.append((sink, n, row[0] if row else None))
        return gauge_counts(pending, c.execute(DEAD_COUNT_SQL).fetchall())

    def event_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def dead(self, sink: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        sql, args = dead_query(sink, limit, "?")
        return dead_rows(self.conn.execute(sql, args))


# -- what both spools (here and `voltd.spool_pg`) read the same way -----------------------

#: Deliveries per sink and state, for `status_counts`.
STATUS_SQL = "SELECT sink, state, COUNT(*) FROM deliveries GROUP BY sink, state"
#: Dead letters per sink, for `gauge_counts`.
DEAD_COUNT_SQL = "SELECT sink, COUNT(*) FROM deliveries WHERE state = 2 GROUP BY sink"
_DEAD_KEYS = ("sink", "seq", "id", "attempts", "failed_at", "error")


def status_counts(rows: Iterable[tuple[str, int, int]]) -> dict[str, dict[str, int]]:
    """`status` from the rows of STATUS_SQL: every state named, with 0 where none."""
    out: dict[str, dict[str, int]] = {}
    for sink, state, n in rows:
        out.setdefault(sink, {s.name.lower(): 0 for s in State})[State(state).name.lower()] = n
    return out


def gauge_counts(
    pending: Iterable[tuple[str, int, float | None]], dead: Iterable[tuple[str, int]]
) -> dict[str, tuple[int, int, float | None]]:
    """`gauges` from (sink, pending, oldest arrival) and DEAD_COUNT_SQL's rows."""
    out: dict[str, tuple[int, int, float | None]] = {
        sink: (n, 0, oldest) for sink, n, oldest in pending
    }
    for sink, n in dead:
        n_pending, _, oldest = out.get(sink, (0, 0, None))
        out[sink] = (n_pending, n, oldest)
    return out


def dead_query(sink: str | None, limit: int, mark: str) -> tuple[str, list[Any]]:
    """`voltd spool dead`'s query and arguments, with `mark` the driver's placeholder."""
    sql = (
        "SELECT d.sink, d.event_seq, e.envelope_id, d.attempts, d.updated_at, d.last_error"
        " FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.state = 2"
    )
    args: list[Any] = []
    if sink is not None:
        sql += f" AND d.sink = {mark}"
        args.append(sink)
    sql += f" ORDER BY d.updated_at LIMIT {mark}"
    args.append(limit)
    return sql, args


def dead_rows(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """`dead_query`'s rows as the dicts `voltd spool dead` prints."""
    return [dict(zip(_DEAD_KEYS, row, strict=True)) for row in rows]


def sink_report(
    now: float,
    pending: int,
    retrying: int,
    next_retry: float | None,
    dead: int,
    recent: int,
    oldest: float | None,
    *,
    last_error: str | None,
) -> dict[str, Any]:
    """One sink's `report` from its counts (the same for both spools): `oldest` is when the
    oldest pending event arrived, `recent` the deliveries of the last hour."""
    return {
        "pending": pending,
        "retrying": retrying,
        "next_retry": next_retry,
        "dead": dead,
        "delivered_last_hour": recent,
        "oldest_pending_age": now - oldest if oldest is not None else None,
        "last_error": last_error,
    }


def empty_report() -> dict[str, Any]:
    """`SpoolDB.report` for a sink with no deliveries yet."""
    return {
        "pending": 0,
        "retrying": 0,
        "next_retry": None,
        "dead": 0,
        "delivered_last_hour": 0,
        "oldest_pending_age": None,
        "last_error": None,
    }


class _ProcessLock:
    """One daemon per spool file: a second `voltd serve` on it would double-deliver."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise SpoolLocked(
                f"{path}: another voltd process is using this spool (lock {self.path})"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        os.close(self.fd)


class GroupCommit:
    """The queueing face both spools share (SQLite here, PostgreSQL in `voltd.spool_pg`):
    `store`, `record_soon`, `record` and `flush` queue items for one writer task, which
    commits whatever is queued as one transaction (`_commit`), and the per-sink wake-ups
    for delivery tasks. A subclass sets up the queue with `_queue` and writes `_commit`."""

    def _queue(self, max_batch: int, queue_size: int, linger: float) -> None:
        self._max_batch = max_batch
        self._linger = linger
        #: Requests that are on their way to `store` (counted by the HTTP handler). While
        #: more are coming than are queued, the writer waits up to `linger` for them: every
        #: commit costs a thread hop and an fsync, so one commit per handful of events is
        #: what keeps durability cheap.
        self.incoming = 0
        self._send, self._recv = trio.open_memory_channel[_Ingest | _Record](queue_size)
        self._wakeups: dict[str, trio.Event] = {}  # one per sink, replaced once set

    async def _commit(
        self, ingests: list[_Ingest], records: list[_Record]
    ) -> tuple[Sequence[Stored], Iterable[str]]:
        """Commit one batch: what each ingest stored, and the sinks to wake."""
        raise NotImplementedError

    # -- write side: group commit ----------------------------------------------------------

    async def store(self, event: Event, sinks: Sequence[str]) -> Stored:
        """Queue the event for the next group commit and wait until it is durable."""
        item = _Ingest(event, sinks)
        try:
            self._send.send_nowait(item)  # the common case: no extra trip through the scheduler
        except trio.WouldBlock:
            await self._send.send(item)
        await item.done.wait()
        if isinstance(item.result, SpoolError):
            raise item.result
        assert item.result is not None
        return item.result

    def record_soon(
        self,
        outcomes: Sequence[Outcome],
        status: tuple[str, Mapping[str, Any]] | None = None,
    ) -> trio.Event | None:
        """Queue outcomes (and a sink's status) for the next group commit without waiting for
        it: the event is set once committed (or failed); None when the queue is full (then
        record them with `record`). A confirmed delivery queued here is on disk within a
        commit, so a crash re-sends little; should that commit fail, the delivery is simply
        made again (at least once)."""
        rec = _Record(outcomes, status=status)
        try:
            self._send.send_nowait(rec)
        except trio.WouldBlock:
            return None
        return rec.done

    async def record(
        self,
        outcomes: Sequence[Outcome],
        change: SinkChange | None = None,
        state: Sequence[tuple[str, str, str | None]] = (),
    ) -> int:
        """Commit delivery outcomes (and a SinkChange, and sink state writes), sharing the
        transaction with concurrent ingest. Returns how many deliveries the change made dead
        letters."""
        if not outcomes and change is None and not state:
            return 0
        rec = _Record(outcomes, change, state)
        await self._send.send(rec)
        await rec.done.wait()
        if rec.error is not None:
            raise rec.error
        return rec.expired

    async def state_put(self, sink: str, key: str, value: str | None) -> None:
        """A sink's state write (voltd.state.StateBackend), committed with the next group
        commit, in order with delivery outcomes."""
        await self.record((), state=[(sink, key, value)])

    async def flush(self) -> None:
        """Wait until everything queued so far is committed (or has failed): the writer takes
        its queue in order."""
        rec = _Record(())
        await self._send.send(rec)
        await rec.done.wait()

    async def _write_loop(self) -> None:
        """The one writer: drains everything queued, commits it as one batch (`_commit`)."""
        recv = self._recv
        while True:
            batch = [await recv.receive()]
            self._drain(batch)
            if self.incoming > len(batch):
                with trio.move_on_after(self._linger):
                    while self.incoming > len(batch) and len(batch) < self._max_batch:
                        batch.append(await recv.receive())
                        self._drain(batch)
            ingests = [b for b in batch if isinstance(b, _Ingest)]
            records = [b for b in batch if isinstance(b, _Record)]
            try:
                results, woken = await self._commit(ingests, records)
            except Exception as exc:  # a bug costs this batch a 503, not the daemon its life
                if not isinstance(exc, SpoolError):
                    log.exception("unexpected error in the spool commit")
                    exc = SpoolError(f"unexpected {type(exc).__name__}: {exc}")
                log.error("%s (%d events answered 503)", exc, len(ingests))
                for item in ingests:
                    item.result = exc
                for rec in records:
                    rec.error = exc
            else:
                for item, res in zip(ingests, results, strict=True):
                    item.result = res
                for sink in woken:
                    self.wake(sink)
            for b in batch:
                b.done.set()

    def _drain(self, batch: list[_Ingest | _Record]) -> None:
        while len(batch) < self._max_batch:
            try:
                batch.append(self._recv.receive_nowait())
            except trio.WouldBlock:
                return

    # -- wake-ups for delivery tasks -------------------------------------------------------

    def wakeup(self, sink: str) -> trio.Event:
        """An event that is set the next time new deliveries for `sink` commit."""
        ev = self._wakeups.get(sink)
        if ev is None:
            ev = self._wakeups[sink] = trio.Event()
        return ev

    def wake(self, sink: str) -> None:
        ev = self._wakeups.pop(sink, None)
        if ev is not None:
            ev.set()


class SpoolLike(Protocol):
    """What the stages (ingest, delivery, sink state, /healthz, /metrics) use of a spool: the
    SQLite `Spool` below, or `voltd.spool_pg.PgSpool`, which the composition root picks from
    `[spool]` at start-up."""

    #: Requests on their way to `store` (the HTTP handler counts them; see `GroupCommit`).
    incoming: int
    #: The spool for messages: the file, or the database URL without its password.
    where: str

    async def writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...
    def close(self) -> None: ...
    async def store(self, event: Event, sinks: Sequence[str]) -> Stored: ...
    def record_soon(
        self, outcomes: Sequence[Outcome], status: tuple[str, Mapping[str, Any]] | None = None
    ) -> trio.Event | None: ...
    async def record(
        self,
        outcomes: Sequence[Outcome],
        change: SinkChange | None = None,
        state: Sequence[tuple[str, str, str | None]] = (),
    ) -> int: ...
    async def flush(self) -> None: ...
    def wakeup(self, sink: str) -> trio.Event: ...
    def wake(self, sink: str) -> None: ...
    async def check_writable(self) -> None: ...
    async def purge(self, older_than: float) -> int: ...
    async def due(self, sink: str, now: float, limit: int) -> list[Due]: ...
    async def next_due_at(self, sink: str) -> float | None: ...
    async def status(self) -> dict[str, dict[str, int]]: ...
    async def gauges(self) -> dict[str, tuple[int, int, float | None]]: ...
    async def retry_requested(self, sink: str) -> float | None: ...
    async def state_get(self, sink: str, key: str) -> str | None: ...
    async def state_put(self, sink: str, key: str, value: str | None) -> None: ...
    async def acquire_sink(self, sink: str) -> bool:
        """Whether this process may deliver to an ordered sink (`concurrency = 1`) now."""
        ...

    async def release_sink(self, sink: str) -> None:
        """The sink's worker stopped: give up its turn and its claims."""
        ...


class Spool(GroupCommit):
    """The trio face of the spool. Run `writer` in the daemon's nursery before ingesting."""

    def __init__(
        self,
        path: Path,
        *,
        max_batch: int = 512,
        queue_size: int = 4096,
        linger: float = 0.002,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _ProcessLock(path)
        try:
            self._wdb = SpoolDB(path)
            self._rdb = SpoolDB(path)
        except BaseException:
            self._lock.release()
            raise
        self._wlimit = trio.CapacityLimiter(1)
        self._rlimit = trio.CapacityLimiter(1)
        self._queue(max_batch, queue_size, linger)
        self.path = path
        self.where = str(path)
        #: A third connection, opened at the first scrape of /metrics, so that its counting
        #: never makes a delivery worker's read wait (nor the other way round).
        self._mdb: SpoolDB | None = None
        self._mlimit = trio.CapacityLimiter(1)

    def close(self) -> None:
        self._wdb.close()
        self._rdb.close()
        if self._mdb is not None:
            self._mdb.close()
        self._lock.release()

    async def writer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED):
        """The one task that writes: drains everything queued, commits it as one batch."""
        task_status.started()
        await self._write_loop()

    async def _commit(
        self, ingests: list[_Ingest], records: list[_Record]
    ) -> tuple[Sequence[Stored], Iterable[str]]:
        results = await trio.to_thread.run_sync(
            self._wdb.apply, ingests, records, limiter=self._wlimit
        )
        woken: set[str] = set()
        for item, res in zip(ingests, results, strict=True):
            if not res.duplicate:
                woken.update(item.sinks)
        return results, woken

    async def check_writable(self) -> None:
        await trio.to_thread.run_sync(self._wdb.check_writable, limiter=self._wlimit)

    async def purge(self, older_than: float) -> int:
        return await trio.to_thread.run_sync(self._wdb.purge, older_than, limiter=self._wlimit)

    # -- read side -------------------------------------------------------------------------

    async def due(self, sink: str, now: float, limit: int) -> list[Due]:
        return await trio.to_thread.run_sync(self._rdb.due, sink, now, limit, limiter=self._rlimit)

    async def next_due_at(self, sink: str) -> float | None:
        return await trio.to_thread.run_sync(self._rdb.next_due_at, sink, limiter=self._rlimit)

    async def status(self) -> dict[str, dict[str, int]]:
        return await trio.to_thread.run_sync(self._rdb.status, limiter=self._rlimit)

    async def gauges(self) -> dict[str, tuple[int, int, float | None]]:
        """`SpoolDB.gauges` on the metrics connection (see `_mdb`)."""

        def query() -> dict[str, tuple[int, int, float | None]]:
            if self._mdb is None:
                self._mdb = SpoolDB(self.path)
            try:
                return self._mdb.gauges()
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot count deliveries: {exc}") from exc

        return await trio.to_thread.run_sync(query, limiter=self._mlimit)

    # -- ordered sinks: this process holds the file (`_ProcessLock`), so it may always ----

    async def acquire_sink(self, sink: str) -> bool:
        return True

    async def release_sink(self, sink: str) -> None:
        return None

    # -- sink state (voltd.state.StateBackend) ------------------------------------------

    async def retry_requested(self, sink: str) -> float | None:
        return await trio.to_thread.run_sync(self._rdb.retry_requested, sink, limiter=self._rlimit)

    async def state_get(self, sink: str, key: str) -> str | None:
        return await trio.to_thread.run_sync(self._rdb.get_state, sink, key, limiter=self._rlimit)
