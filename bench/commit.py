"""Micro-benchmark: what group commit buys over one fsync'd transaction per event.

voltd acknowledges an event only after the SQLite transaction holding it has committed with
synchronous=FULL, i.e. after an fsync. Its writer task therefore commits whatever requests
are waiting as one transaction. This measures the spool on its own, without HTTP: the same
SpoolDB code the writer uses (`insert` is `apply` with new events only), on a real file in
the benchmark's temporary directory (the disk the daemon phases use), with realistic events
(the load's generator, each with its routes' 1-3 delivery rows), one transaction per event
and per group of 8, 16, 64 and 256.

Each group size gets a fresh spool file and inserts until it has written `events` events or
spent `seconds`, whichever comes first (one event per fsync is slow; the budget keeps the
phase short). The events are parsed before the clock starts: this is the commit, not JSON.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from report import fmt
from sinks import spool_items
from workload import make_events

from voltd.spool import SpoolDB

GROUPS = (1, 8, 16, 64, 256)


def run_commit(workdir: Path, events: int, seconds: float, seed: int) -> dict[str, Any]:
    """events/s and µs per event for each group size, and the speed-up over per-event."""
    directory = workdir / "commit"
    directory.mkdir()
    print(
        f"\n[commit] SpoolDB.insert, synchronous=FULL, group sizes {', '.join(map(str, GROUPS))} "
        f"(up to {events} events or {seconds:g} s each)",
        flush=True,
    )
    items = spool_items(make_events(events, seed + 11, time.time()))
    modes: dict[str, Any] = {}
    for group in GROUPS:
        path = directory / f"spool-{group}.db"
        db = SpoolDB(path)
        done = commits = 0
        try:
            start = time.perf_counter()
            deadline = start + seconds
            while done < len(items) and time.perf_counter() < deadline:
                batch = items[done : done + group]
                db.insert(batch)
                done += len(batch)
                commits += 1
            elapsed = time.perf_counter() - start
        finally:
            db.close()
        modes[str(group)] = {
            "group": group,
            "events": done,
            "commits": commits,
            "seconds": elapsed,
            "events_per_s": done / elapsed,
            "us_per_event": elapsed / done * 1e6,
            "ms_per_commit": elapsed / commits * 1e3,
        }
        for p in directory.glob(f"spool-{group}.db*"):
            p.unlink()
        print(
            f"[commit] group {group:>3}: {modes[str(group)]['events_per_s']:>9.0f} events/s",
            flush=True,
        )
    single = modes["1"]["events_per_s"]
    for m in modes.values():
        m["speedup_vs_1"] = m["events_per_s"] / single if single else None
    return {"groups": modes, "directory": str(directory), "synchronous": "FULL"}


def report_commit(r: dict[str, Any], filesystem: str | None) -> tuple[list[str], list[Any]]:
    """Print the group-commit table (informational: no target was set)."""
    print()
    if "error" in r:
        print(f"commit: FAILED: {r['error'].splitlines()[0]}")
        return [f"commit: {r['error']}"], []
    print(
        f"commit: SpoolDB.insert with synchronous=FULL on a real file "
        f"({filesystem or 'unknown filesystem'}), one transaction per group"
    )
    heads = ("group", "events", "events/s", "us/event", "ms/commit", "speed-up")
    widths = (5, 7, 10, 9, 10, 9)
    print("  " + " ".join(f"{h:>{w}}" for h, w in zip(heads, widths, strict=True)))
    for m in r["groups"].values():
        print(
            f"  {m['group']:>5} {m['events']:>7} {m['events_per_s']:>10.0f} "
            f"{m['us_per_event']:>9.1f} {m['ms_per_commit']:>10.2f} "
            f"{fmt(m['speedup_vs_1'], '.1f') + 'x':>9}"
        )
    return [], []
