"""The PostgreSQL spool's synchronous face, for the `voltd spool` commands."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg

from voltd.events import Event
from voltd.spool import SpoolError, Stored, _Ingest
from voltd.spool_pg.sql import (
    PG_SCHEMA_VERSION,
    Conn,
    _apply,
    _dead,
    _event_count,
    _gauges,
    _get_state,
    _live_instances,
    _purge,
    _replay,
    _report,
    _request_retry,
    _retry_requested,
    _sink_status,
    _status,
    check_version,
    error_text,
    safe_url,
)

# -- the sync face, for `voltd spool …` -------------------------------------------------------


class PgSpoolDB:
    """Synchronous access for the `voltd spool` commands (one connection, one transaction
    per call), mirroring what they use of `SpoolDB`. Works while instances run."""

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.where = safe_url(url)
        #: Who NOTIFYs: "-" is not an instance, so every instance wakes.
        self.me = "-"
        try:
            self.conn: Conn = psycopg.connect(
                url, connect_timeout=max(1, round(connect_timeout)), application_name="voltd-cli"
            )
        except psycopg.Error as exc:
            raise SpoolError(
                f"{self.where}: cannot open the spool: {error_text(exc, url)}"
            ) from exc
        try:
            with self._tx("cannot open the spool") as conn:
                check_version(conn, self.where)
        except BaseException:
            self.conn.close()
            raise
        self.version = PG_SCHEMA_VERSION

    def close(self) -> None:
        self.conn.close()

    def _tx(self, what: str) -> AbstractContextManager[Conn]:
        return _transaction(self.conn, f"{self.where}: {what}", self.url)

    def report(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """As `SpoolDB.report`, over all instances; each row also says how many pending
        deliveries an instance has claimed now (`claimed`)."""
        with self._tx("cannot read the spool") as conn:
            return _report(conn, time.time() if now is None else now)

    def status(self) -> dict[str, dict[str, int]]:
        with self._tx("cannot read the spool") as conn:
            return _status(conn)

    def sink_status(self) -> dict[str, dict[str, Any]]:
        with self._tx("cannot read the spool") as conn:
            return _sink_status(conn)

    def running(self) -> list[str]:
        """The instances serving this spool now (the CLI's "daemon running")."""
        with self._tx("cannot read the spool") as conn:
            return sorted(_live_instances(conn))

    def event_count(self) -> int:
        with self._tx("cannot read the spool") as conn:
            return _event_count(conn)

    def dead(self, sink: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        with self._tx("cannot read the spool") as conn:
            return _dead(conn, sink, limit)

    def replay(self, sink: str | None = None, seqs: Sequence[int] | None = None) -> int:
        """Dead letters become pending, due now; running instances are woken (NOTIFY)."""
        with self._tx("replay failed") as conn:
            return _replay(conn, self.me, sink, seqs)

    def request_retry(self, sink: str) -> int:
        """`voltd spool retry --sink`: every instance enables the sink (it polls
        `retry_requested`), its waiting deliveries are due now. Returns how many wait."""
        with self._tx("retry failed") as conn:
            return _request_retry(conn, self.me, sink)

    def retry_requested(self, sink: str) -> float | None:
        with self._tx("cannot read the spool") as conn:
            return _retry_requested(conn, sink)

    def get_state(self, sink: str, key: str) -> str | None:
        with self._tx("cannot read the spool") as conn:
            return _get_state(conn, sink, key)

    def gauges(self) -> dict[str, tuple[int, int, float | None]]:
        with self._tx("cannot read the spool") as conn:
            return _gauges(conn)

    def insert(self, events: Iterable[tuple[Event, Sequence[str]]]) -> list[Stored]:
        """Store events without a daemon (tools, tests); the daemon uses `PgSpool.store`."""
        with self._tx("spool commit failed") as conn:
            return _apply(conn, self.me, [_Ingest(e, s) for e, s in events], [])[0]

    def purge(self, older_than: float, limit: int = 5000) -> int:
        with self._tx("spool purge failed") as conn:
            return _purge(conn, older_than, limit)


@contextmanager
def _transaction(conn: Conn, what: str, conninfo: str) -> Iterator[Conn]:
    """One transaction on one connection; psycopg errors become SpoolError."""
    try:
        with conn.transaction():
            yield conn
    except psycopg.Error as exc:
        raise SpoolError(f"{what}: {error_text(exc, conninfo)}") from exc
