"""What was delivered and what waits: reading the file sinks' lines as they are appended,
waiting for every acknowledged event to land, and read-only looks at the spool.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base import ENVELOPE_ID, BenchError
from workload import SINK_DIRS, BenchEvent

from voltd.events import Event
from voltd.events import parse as parse_envelope
from voltd.spool import SpoolDB
from voltd.spool_pg import PgSpoolDB

# -- sink files -----------------------------------------------------------------------------


def read_appended(path: Path, offsets: dict[Path, int]) -> bytes:
    """The complete lines appended to `path` since the last call (`offsets` remembers where
    each file was read up to); b"" when there are none or the file cannot be read."""
    offset = offsets.get(path, 0)
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return b""
    end = data.rfind(b"\n") + 1  # a line being written is read next time
    offsets[path] = offset + end
    return data[:end]


class _SinkIds:
    """Envelope ids per sink, each with its number of lines: what landed, and what is missing."""

    ids: dict[str, Counter[str]]

    def lines(self, sink: str) -> int:
        return sum(self.ids.get(sink, Counter()).values())

    def missing(self, sink: str, wanted: Iterable[str]) -> list[str]:
        have = self.ids.get(sink, Counter())
        return [i for i in wanted if i not in have]


@dataclass
class SinkReader(_SinkIds):
    """Incrementally reads the file sinks' JSON lines and collects envelope ids per sink."""

    root: Path
    offsets: dict[Path, int] = field(default_factory=dict)
    ids: dict[str, Counter[str]] = field(default_factory=dict)

    def poll(self) -> None:
        for sink, sub in SINK_DIRS.items():
            seen = self.ids.setdefault(sink, Counter())
            base = self.root / sub
            if not base.exists():
                continue
            for path in base.rglob("*.jsonl"):
                for line in read_appended(path, self.offsets).splitlines():
                    m = ENVELOPE_ID.search(line)
                    seen[m.group().decode() if m else "?"] += 1


@dataclass
class SinkReaders(_SinkIds):
    """Several instances' sink files (each instance writes its own) read as one: per sink,
    the ids of all of them together. Polled like a SinkReader (`wait_drained`)."""

    readers: list[SinkReader]
    ids: dict[str, Counter[str]] = field(default_factory=dict)

    def poll(self) -> None:
        merged: dict[str, Counter[str]] = {sink: Counter() for sink in SINK_DIRS}
        for reader in self.readers:
            reader.poll()
            for sink in SINK_DIRS:
                merged[sink].update(reader.ids.get(sink, Counter()))
        self.ids = merged


def expected_deliveries(
    accepted: Iterable[str], events: Sequence[BenchEvent]
) -> dict[str, list[str]]:
    """Per sink, the acknowledged events the routes must deliver there (unique ids)."""
    by_id = {e.id: e for e in events}
    out: dict[str, list[str]] = {sink: [] for sink in SINK_DIRS}
    for i in dict.fromkeys(accepted):
        event = by_id.get(i)
        if event is not None:
            for sink in event.sinks:
                out[sink].append(i)
    return out


@dataclass
class Drain:
    """Outcome of waiting for the sinks: what is still missing, and how long it took."""

    complete: bool
    seconds: float
    polls: int
    missing: dict[str, list[str]]


def wait_drained(
    reader: SinkReader | SinkReaders,
    wanted: dict[str, list[str]],
    fallback_count: int,
    timeout: float,
) -> Drain:
    """Poll the sink files until every sink holds every acknowledged event routed to it.

    Sinks are delivered independently, so each is waited for on its own. When voltd's answers
    carried no ids, the archive's line count reaching the acknowledged count is the target.
    """
    start = time.monotonic()
    pending = {sink: list(ids) for sink, ids in wanted.items()}
    use_ids = any(pending.values())
    polls = 0
    while True:
        polls += 1
        reader.poll()
        if use_ids:
            pending = {sink: reader.missing(sink, ids) for sink, ids in pending.items()}
            complete = not any(pending.values())
        else:
            complete = reader.lines("archive") >= fallback_count
        elapsed = time.monotonic() - start
        if complete or elapsed > timeout:
            return Drain(complete, elapsed, polls, pending)
        time.sleep(0.05)


@dataclass
class LineCounter:
    """Counts complete lines under one sink directory, reading only what was appended.

    Much cheaper than SinkReader (no id parsing), so it can be polled every few milliseconds
    while a large backlog drains without taking much CPU from the daemon's machine.
    """

    root: Path
    offsets: dict[Path, int] = field(default_factory=dict)
    count: int = 0

    def poll(self) -> int:
        if self.root.is_dir():
            for path in self.root.rglob("*.jsonl"):
                self.count += read_appended(path, self.offsets).count(b"\n")
        return self.count


# -- spool ----------------------------------------------------------------------------------


def spool_pending(spool: Path | str, sink: str) -> dict[str, Any]:
    """Read-only look at one sink's deliveries in a spool that a daemon may be using: a SQLite
    file (a Path) or a PostgreSQL spool (its URL, a str; bench/shared.py).

    The same numbers as `voltd spool status`, plus the attempts made so far, how many
    deliveries the backoff has scheduled for later than now, and how far ahead the latest is.
    """
    now = time.time()
    if isinstance(spool, str):
        pg = PgSpoolDB(spool)
        try:
            status = pg.status()
            with pg.conn.transaction():
                row = pg.conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(attempts), 0),"
                    " COALESCE(SUM((next_at > %s)::int), 0), MAX(next_at)"
                    " FROM deliveries WHERE sink = %s AND state = 0",
                    (now, sink),
                ).fetchone()
            assert row is not None
            n, attempts, later, latest = row
        finally:
            pg.close()
    else:
        db = SpoolDB(spool, readonly=True)
        try:
            status = db.status()
            n, attempts, later, latest = db.conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(attempts), 0), COALESCE(SUM(next_at > ?), 0),"
                " MAX(next_at) FROM deliveries WHERE sink = ? AND state = 0",
                (now, sink),
            ).fetchone()
        finally:
            db.close()
    return {
        "status": status,
        "pending": n,
        "attempts_made": attempts,
        "scheduled_later": later,
        "latest_retry_in_s": None if latest is None else latest - now,
    }


def spool_items(
    events: Iterable[BenchEvent], sinks: tuple[str, ...] | None = None
) -> list[tuple[Event, tuple[str, ...]]]:
    """Bench events as `SpoolDB.insert` items, parsed as voltd parses at ingest (so the stored
    digest is voltd's own) and up front (not part of any measurement).

    `sinks` overrides the routes' choice (the drain phase fills one sink's backlog).
    """
    items = []
    for e in events:
        parsed = parse_envelope(e.body)
        if not isinstance(parsed, Event):
            raise BenchError(f"not a messaging envelope: {e.body[:80]!r}")
        parsed.digest  # noqa: B018 - computed now, outside any timing
        items.append((parsed, e.sinks if sinks is None else sinks))
    return items
