"""The spool in PostgreSQL, shared by several voltd instances (`[spool] url = "postgresql://…"`).

The same interface as the SQLite `voltd.spool.Spool`, with what sharing needs:

- Ingest: one writer task per instance commits whatever is queued in one transaction (group
  commit); an event's `200` follows that COMMIT, and any database error is a `SpoolError` (a
  503). Dedup across instances is the unique (envelope id, digest) with `ON CONFLICT DO
  NOTHING`: two instances storing one event at once store it once, the second answer says
  `duplicate`.
- Delivery: `due()` claims the rows it returns (`FOR UPDATE SKIP LOCKED`, then a lease:
  `lease_owner`, `lease_until`), so instances never get the same delivery while its lease
  runs; recording an outcome clears the lease; the rows of an instance that died (no session
  of it left on the database) are taken over at once, those of one that hangs when their
  lease expires.
- Order: a sink with `concurrency = 1` delivers from one instance at a time. Its worker calls
  `acquire_sink()` before `due()`: a session advisory lock on a connection of its own, held
  until `release_sink()` or until that connection closes (the instance died). The holder's
  `due()` takes the sink's due rows without claiming them (nobody else delivers to it),
  including rows an earlier holder had claimed, in order.
- Wake-ups: `store` wakes local workers after the commit and NOTIFYs in the same
  transaction; a listener connection (inside `writer`) wakes this instance's workers when
  another instance, or `voltd spool replay|retry`, commits work for a sink.

Every database call runs in `trio.to_thread.run_sync` under a `CapacityLimiter`, on a
connection from a `psycopg_pool.ConnectionPool`. After the database restarts, broken pooled
connections are dropped on the first failure (that batch answers 503) and replaced.

The schema is created and upgraded only by `migrate(url)` (`voltd spool migrate`); a spool
that is not migrated, or was migrated by a newer voltd, is refused at start-up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, TypeVar

import psycopg
import psycopg_pool
import trio

from voltd.spool import (
    Due,
    GroupCommit,
    SpoolError,
    Stored,
    _Ingest,
    _Record,
)
from voltd.spool_pg.db import PgSpoolDB
from voltd.spool_pg.sql import (
    CHANNEL,
    PG_SCHEMA_VERSION,
    Conn,
    _app_name,
    _apply,
    _due,
    _gauges,
    _get_state,
    _instance_id,
    _lock_key,
    _next_due_at,
    _purge,
    _release_claims,
    _renew,
    _report,
    _retry_requested,
    _status,
    _touch_instance,
    check_version,
    error_text,
    migrate,
    safe_url,
    schema_version,
)

__all__ = [
    "PG_SCHEMA_VERSION",
    "PgSpool",
    "PgSpoolDB",
    "check_version",
    "migrate",
    "safe_url",
    "schema_version",
]

log = logging.getLogger("voltd.spool")

T = TypeVar("T")


# -- the trio face ---------------------------------------------------------------------------


class PgSpool(GroupCommit):
    """The trio face of the PostgreSQL spool, a drop-in for `voltd.spool.Spool`. Run `writer`
    in the daemon's nursery before ingesting: it also runs the LISTEN side."""

    def __init__(
        self,
        url: str,
        *,
        max_batch: int = 512,
        queue_size: int = 4096,
        linger: float = 0.002,
        lease: float = 120.0,
        renew_every: float | None = None,
        commit_wait: float = 2.0,
        pool_size: int = 8,
        connect_timeout: float = 5.0,
        listen_poll: float = 0.5,
    ) -> None:
        self.url = url
        self.where = safe_url(url)
        #: This instance's name: lease owner, NOTIFY sender, `sink_status` row, and (as
        #: `voltd <id>`) its sessions' application_name, by which others see it running.
        self.instance = _instance_id()
        self.lease = lease
        #: How often claims are renewed (`_renew_leases`): a quarter of the lease by default.
        self.renew_every = renew_every if renew_every is not None else lease / 4
        self._connect_timeout = connect_timeout
        #: How long a commit waits for a connection: while the database is away, requests
        #: get their 503 after this, not after a whole connect timeout each.
        self._commit_wait = commit_wait
        self._listen_poll = listen_poll
        self.started_at = time.time()
        kwargs: dict[str, Any] = {
            "application_name": _app_name(self.instance),
            "connect_timeout": max(1, round(connect_timeout)),
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        self._kwargs = kwargs
        try:
            # Once by hand first: a refused connection, a wrong password or a missing
            # database is said as such, at once (the pool would only say it timed out).
            psycopg.connect(url, **kwargs).close()
        except psycopg.Error as exc:
            raise SpoolError(
                f"{self.where}: cannot open the spool: {error_text(exc, url)}"
            ) from exc
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=kwargs,
            timeout=connect_timeout,
            # A connection that cannot be made is not retried with a backoff growing to
            # minutes (the default): after a database restart, the next request asks for a
            # new one, so ingest is back as soon as the database is.
            reconnect_timeout=connect_timeout,
            open=False,
            name=f"voltd-{self.instance}",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
            with self._pool.connection() as conn:
                check_version(conn, self.where)
                _touch_instance(conn, self.instance, self.started_at)
        except psycopg.Error as exc:
            self._pool.close()
            raise SpoolError(
                f"{self.where}: cannot open the spool: {error_text(exc, url)}"
            ) from exc
        except BaseException:
            self._pool.close()
            raise
        #: Threads for the pool: the writer, delivery reads, metrics, purge, at once.
        self._limit = trio.CapacityLimiter(pool_size)
        self._wlimit = trio.CapacityLimiter(1)
        self._queue(max_batch, queue_size, linger)
        # The LISTEN connection (used by one thread at a time, under `_llimit`).
        self._lconn: Conn | None = None
        self._llimit = trio.CapacityLimiter(1)
        # The advisory locks of ordered sinks live on this connection.
        self._lock_conn: Conn | None = None
        self._lock_mutex = threading.Lock()
        self._lock_limit = trio.CapacityLimiter(1)
        self._held: set[str] = set()
        self._closed = False

    def close(self) -> None:
        """Close every connection: the advisory locks free, this instance's status rows go.
        Call after `writer` has ended (its nursery exited): no thread is left running."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._pool.connection(timeout=2.0) as conn:
                conn.execute("DELETE FROM sink_status WHERE instance = %s", (self.instance,))
                conn.execute("DELETE FROM instances WHERE instance = %s", (self.instance,))
                _release_claims(conn, self.instance)
        except psycopg.Error as exc:
            log.warning("%s: could not tidy up on close: %s", self.where, error_text(exc, self.url))
        with self._lock_mutex:
            for other in (self._lconn, self._lock_conn):
                if other is not None:
                    other.close()
            self._lconn = self._lock_conn = None
            self._held.clear()
        self._pool.close(timeout=5.0)

    # -- running database calls -----------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., T], *args: Any, wait: float | None = None) -> T:
        """`fn(conn, *args)` in one transaction on a pooled connection (a worker thread),
        waiting at most `wait` seconds for the connection (default: `connect_timeout`)."""
        try:
            with self._pool.connection(timeout=wait) as conn:
                return fn(conn, *args)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) and not isinstance(
                exc, psycopg_pool.PoolTimeout
            ):
                # The server restarted or the network broke: every idle pooled connection is
                # probably broken too; drop those now rather than fail once per connection.
                try:
                    self._pool.check()
                except psycopg.Error:
                    pass
            raise SpoolError(f"{self.where}: {what}: {error_text(exc, self.url)}") from exc

    async def _run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(self._call, what, fn, *args, limiter=self._limit)

    # -- write side: group commit (the queue is `GroupCommit`'s) -------------------------

    async def writer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED):
        """The one task that writes (group commit), with the listener beside it."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listener)
            nursery.start_soon(self._renew_leases)
            task_status.started()
            await self._write_loop()

    async def _renew_leases(self) -> None:
        """Keep this instance's claims while it lives: an attempt (or a digest's window) may
        take longer than the lease, and a claim that ran out could be taken over and sent
        twice. An instance that died stops renewing, and its claims run out."""
        while True:
            await trio.sleep(self.renew_every)
            try:
                await self._run("cannot renew claims", _renew, self.instance, self.lease)
            except SpoolError as exc:
                log.warning("%s", exc)

    async def _commit(
        self, ingests: list[_Ingest], records: list[_Record]
    ) -> tuple[Sequence[Stored], Iterable[str]]:
        result: tuple[list[Stored], set[str]] = await trio.to_thread.run_sync(
            partial(self._call, wait=self._commit_wait),
            "spool commit failed",
            _apply,
            self.instance,
            ingests,
            records,
            limiter=self._wlimit,
        )
        return result

    async def check_writable(self) -> None:
        """Prove that a commit goes through right now (for /healthz)."""
        await self._run("spool is not writable", _touch_instance, self.instance, self.started_at)

    async def purge(self, older_than: float, limit: int = 5000) -> int:
        return await self._run("spool purge failed", _purge, older_than, limit)

    # -- read side (due claims) --------------------------------------------------------------

    async def due(self, sink: str, now: float, limit: int) -> list[Due]:
        """Claim up to `limit` deliveries due by `now` for this instance (see `_due`)."""
        held = sink in self._held
        return await self._run(
            "cannot claim deliveries", _due, self.instance, self.lease, sink, now, limit, held
        )

    async def next_due_at(self, sink: str) -> float | None:
        return await self._run("cannot read the spool", _next_due_at, self.instance, sink)

    async def status(self) -> dict[str, dict[str, int]]:
        return await self._run("cannot read the spool", _status)

    async def gauges(self) -> dict[str, tuple[int, int, float | None]]:
        return await self._run("cannot count deliveries", _gauges)

    async def report(self) -> dict[str, dict[str, Any]]:
        return await self._run("cannot read the spool", _report, time.time())

    # -- sink state ----------------------------------------------------------------------------

    async def retry_requested(self, sink: str) -> float | None:
        return await self._run("cannot read the spool", _retry_requested, sink)

    async def state_get(self, sink: str, key: str) -> str | None:
        return await self._run("cannot read the spool", _get_state, sink, key)

    # -- ordered sinks: one instance at a time -------------------------------------------------

    async def acquire_sink(self, sink: str) -> bool:
        """Whether this instance may deliver to `sink` now, for a sink that keeps its order
        (`concurrency = 1`); call before every `due()`.

        True: this instance holds the sink's session advisory lock (taken now, or still held:
        checked with a round trip on the lock connection). While it holds it, its `due()` takes
        every due row, also rows an earlier holder had claimed: a holder that died lost the
        lock with its connection. False: another instance holds it; wait and ask again.
        SpoolError: the database cannot be reached (a lock held is gone with the connection);
        ask later."""
        return await trio.to_thread.run_sync(self._acquire, sink, limiter=self._lock_limit)

    async def release_sink(self, sink: str) -> None:
        """Give the sink's lock up (the worker stops), and this instance's claims on it."""
        await trio.to_thread.run_sync(self._release, sink, limiter=self._lock_limit)

    def _acquire(self, sink: str) -> bool:
        with self._lock_mutex:
            if self._closed:
                return False
            try:
                conn: Conn | None = self._lock_conn
                if conn is None or conn.closed:
                    self._held.clear()
                    conn = self._lock_conn = psycopg.connect(
                        self.url, autocommit=True, **self._kwargs
                    )
                if sink in self._held:
                    conn.execute("SELECT 1")
                    return True
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(sink),)).fetchone()
            except psycopg.Error as exc:
                self._drop_lock_conn()
                why = error_text(exc, self.url)
                raise SpoolError(f"{self.where}: cannot take sink {sink}'s lock: {why}") from exc
            if row and row[0]:
                self._held.add(sink)
                return True
            return False

    def _release(self, sink: str) -> None:
        with self._lock_mutex:
            if sink in self._held:
                self._held.discard(sink)
                conn = self._lock_conn
                try:
                    if conn is not None and not conn.closed:
                        conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(sink),))
                except psycopg.Error as exc:
                    log.warning(
                        "sink %s: cannot release its lock: %s", sink, error_text(exc, self.url)
                    )
                    self._drop_lock_conn()
        try:
            self._call("cannot release claims", _release_claims, self.instance, sink)
        except SpoolError as exc:
            log.warning("sink %s: %s", sink, exc)

    def _drop_lock_conn(self) -> None:
        """The lock connection broke: whatever it held is gone (the server freed it)."""
        if self._lock_conn is not None:
            self._lock_conn.close()
        self._lock_conn = None
        self._held.clear()

    # -- wake-ups ------------------------------------------------------------------------------

    async def _listener(self) -> None:
        """LISTEN for other instances' commits. Each wait is a short thread call (at most
        `listen_poll` seconds), so cancelling it never leaves a thread behind. After a lost
        connection every waiting worker is woken: notifications may have been missed."""
        backoff = 0.5
        connected_before = False
        try:
            while True:
                try:
                    sinks = await trio.to_thread.run_sync(self._listen_once, limiter=self._llimit)
                except psycopg.Error as exc:
                    log.warning(
                        "%s: LISTEN connection lost: %s", self.where, error_text(exc, self.url)
                    )
                    self._close_listener()
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                backoff = 0.5
                if sinks is None:
                    # Reconnected: anything may have happened meanwhile. (At the first
                    # connection there is nothing to catch up: workers start with a query.)
                    sinks = list(self._wakeups) if connected_before else []
                    connected_before = True
                for sink in sinks:
                    self.wake(sink)
        finally:
            self._close_listener()

    def _close_listener(self) -> None:
        if self._lconn is not None:
            self._lconn.close()
            self._lconn = None

    def _listen_once(self) -> list[str] | None:
        conn = self._lconn
        if conn is None or conn.closed:
            self._lconn = None
            conn = psycopg.connect(self.url, autocommit=True, **self._kwargs)
            conn.execute(f"LISTEN {CHANNEL}")
            self._lconn = conn
            return None
        sinks: list[str] = []
        for note in conn.notifies(timeout=self._listen_poll):
            owner, _, sink = note.payload.partition(" ")
            if owner != self.instance and sink:
                sinks.append(sink)
        return sinks
