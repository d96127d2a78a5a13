"""The PostgreSQL spool phases: voltd with `[spool] url = "postgresql://…"`, the spool several
instances can share (voltd/spool_pg).

- `pg-ingest`: the ingest load (the same wrk, requests, warm-up, pinning and checks as the
  `ingest` phase's voltd half) against voltd with a SQLite spool and then with a PostgreSQL
  spool, in the same invocation. Target: accepted req/s PostgreSQL/SQLite >= 0.8x.
- `pg-two`: two voltd instances on one PostgreSQL database, the load split between them (two
  wrk processes with half the connections each, disjoint halves of the events), against one
  instance with all the connections (the `pg-ingest` PostgreSQL run, or one of its own).
  Informational: on a 2-CPU machine the instances compete for the same core(s).
- `pg-drain`: the `drain` phase (`backlog.run_drain`) on a PostgreSQL spool, beside the SQLite
  drain (the `drain` phase's figure when it ran in this invocation, else a run of its own).

PostgreSQL is the one in tests/pg.py (`PostgresServer`: initdb and pg_ctl in a temporary
folder, as the `postgres` user when root, trust authentication on 127.0.0.1), started once per
invocation on first use with durability on: `fsync=on`, `synchronous_commit=on`,
`full_page_writes=on`, the counterpart of the SQLite spool's `synchronous=FULL`. Each run gets
a fresh database, migrated with `voltd.spool_pg.migrate`. The server runs pinned to the CPU
`--pg-cpu` names: `server` (default: with voltd, so both spools get the same one core for
everything, as SQLite works inside voltd's process) or `client` (with wrk: a database with a
core of its own, shared with the load generator).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import resource
import shlex
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, ParamSpec, TypeVar

import psycopg
from backlog import report_drain, run_drain
from base import (
    DRAIN_TIMEOUT,
    HOST,
    NOISY_SHARE,
    REPO_DIR,
    WARMUP_DRAIN_TIMEOUT,
    WARMUP_SECONDS,
    WEBHOOK_PATH,
    BenchError,
    indent,
    tail,
)
from load import WrkRun, summarize, wrk_load
from report import (
    check,
    fmt,
    load_problems,
    noisy_note,
    print_load_notes,
    ratio_check,
    server_exit_problems,
)
from servers import (
    Server,
    cpu_busy_seconds,
    cpu_seconds,
    finish_server,
    free_port,
    launch_voltd,
    memory_mb,
    send_sanity,
    tree_cpu_seconds,
)
from sinks import SinkReader, SinkReaders, expected_deliveries, wait_drained
from workload import SINK_DIRS, Setup, voltd_config

from voltd.spool import SpoolError
from voltd.spool_pg import migrate

PG_INGEST_TARGET_RATIO = 0.8
P = ParamSpec("P")
T = TypeVar("T")
PG_MODULE = REPO_DIR / "tests" / "pg.py"


# -- the PostgreSQL server ----------------------------------------------------------------


def _db_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """A phase's database errors (outside voltd) end the phase with a message, not the run."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except psycopg.Error as exc:
            raise BenchError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc

    return wrapper


def _tests_pg() -> ModuleType:
    """tests/pg.py, loaded by its path (bench/ is not a package, tests/ is not installed)."""
    spec = importlib.util.spec_from_file_location("voltd_bench_tests_pg", PG_MODULE)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot load {PG_MODULE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Postgres:
    """The invocation's PostgreSQL server: started on first use, durable, pinned to `cpu`."""

    def __init__(self, cpu: int | None, where: str) -> None:
        self.cpu = cpu
        self.where = where  # "server" or "client": whose CPU it shares
        self.server: Any = None  # tests/pg.py's PostgresServer
        self.info: dict[str, Any] = {}
        self.failed: str | None = None  # why it could not start (not tried again)

    def start(self) -> Any:
        if self.server is not None:
            return self.server
        if self.failed is not None:
            raise BenchError(self.failed)
        module = _tests_pg()
        print(
            f"\n[postgres] initdb and start (durable: fsync=on, synchronous_commit=on, "
            f"full_page_writes=on), pinned to CPU {self.cpu} (--pg-cpu {self.where})",
            flush=True,
        )
        # Every PostgreSQL process inherits the affinity of whoever started pg_ctl: pin the
        # runner while it starts the server, then give the runner its own CPU back.
        saved = os.sched_getaffinity(0)
        try:
            if self.cpu is not None:
                os.sched_setaffinity(0, {self.cpu})
            self.server = module.PostgresServer(durable=True)
        except module.PostgresUnavailable as exc:
            self.failed = (
                f"PostgreSQL could not be started: {exc}\n  (leave these phases out with "
                f"--skip pg-ingest,pg-two,pg-drain)"
            )
            raise BenchError(self.failed) from exc
        finally:
            os.sched_setaffinity(0, saved)
        self.info = self._settings()
        print(
            f"[postgres] {self.info.get('server_version')} on port {self.server.port}, data in "
            f"{self.server.datadir} ({self.info.get('data_filesystem')}); "
            f"fsync={self.info.get('fsync')}, synchronous_commit="
            f"{self.info.get('synchronous_commit')}, full_page_writes="
            f"{self.info.get('full_page_writes')}, wal_sync_method="
            f"{self.info.get('wal_sync_method')}",
            flush=True,
        )
        if self.info.get("fsync") != "on" or self.info.get("synchronous_commit") != "on":
            raise BenchError(f"PostgreSQL is not durable: {self.info}")
        return self.server

    def _settings(self) -> dict[str, Any]:
        """What the comparison depends on, as the server reports it (for the JSON)."""
        names = (
            "server_version",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
            "shared_buffers",
            "max_connections",
        )
        out: dict[str, Any] = {}
        with psycopg.connect(self.server.url, autocommit=True, connect_timeout=10) as conn:
            for name in names:
                row = conn.execute(f"SHOW {name}").fetchone()
                out[name] = row[0] if row else None
        try:
            out["data_filesystem"] = subprocess.run(
                ["findmnt", "-no", "FSTYPE", "-T", str(self.server.datadir)],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out["data_filesystem"] = None
        out["pinned_to_cpu"] = self.cpu
        out["shares_cpu_with"] = "voltd" if self.where == "server" else "wrk"
        return out

    def database(self, name: str) -> str:
        """A fresh, migrated spool database; returns its URL."""
        server = self.start()
        try:
            url: str = server.create_database(name)
            migrate(url)
        except (psycopg.Error, SpoolError) as exc:
            raise BenchError(f"cannot create the spool database {name}: {exc}") from exc
        return url

    def size_mb(self, url: str) -> float:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) / 2**20 if row else 0.0

    def cpu_seconds(self) -> float | None:
        """The postmaster's (with backends that exited) and every process it runs now."""
        pid = None if self.server is None else self.server._read_pid()
        return None if pid is None else tree_cpu_seconds(pid)

    def close(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None


# -- one instance under the ingest load -------------------------------------------------------


def _db_share(out: dict[str, Any], db_seconds: float | None, pg: Postgres) -> None:
    """Put the database's CPU beside voltd's, and take it out of "other work" on the CPU it
    shares (it is part of the system under test, not a disturbance)."""
    seconds = out.get("duration_s") or 0.0
    if db_seconds is None or not seconds:
        return
    out["pg_cpu_s"] = db_seconds
    out["pg_cpu_busy"] = db_seconds / seconds
    key = "server_core_other_share" if pg.where == "server" else "client_core_other_share"
    if out.get(key) is not None:
        out[key] = max(0.0, out[key] - db_seconds / seconds)
    if out.get("server_cpu_s") is not None and out.get("completed"):
        out["cpu_ms_per_request_with_pg"] = (
            (out["server_cpu_s"] + db_seconds) * 1000 / out["completed"]
        )


def _sinks_after(
    sinks: SinkReaders, accepted_ids: list[str], setup: Setup, load_end: float
) -> dict[str, Any]:
    """After the load: every acknowledged event in every sink it is routed to (across all
    instances' sink files), how long after the load, and duplicates."""
    wanted = expected_deliveries(accepted_ids, setup.main_events)
    drain = wait_drained(sinks, wanted, 0, DRAIN_TIMEOUT)
    main_ids = {e.id for e in setup.main_events}
    out: dict[str, Any] = {
        "all_acked_delivered": drain.complete,
        "drain_s_after_load": max(0.0, time.time() - load_end) if drain.complete else None,
        "acked": len(set(accepted_ids)),
        "missing": {s: len(m) for s, m in drain.missing.items()},
        "duplicates": {
            s: sum(c - 1 for i, c in ids.items() if c > 1 and i in main_ids)
            for s, ids in sinks.ids.items()
        },
    }
    readers = sinks.readers
    if len(readers) > 1:
        # Which instance delivered what (each writes its own sink files), and events that
        # more than one instance delivered (a claim taken twice).
        per = [sum(r.lines(s) for s in SINK_DIRS) for r in readers]
        out["lines_per_instance"] = per
        archive = [set(r.ids.get("archive", Counter())) & main_ids for r in readers]
        out["archive_by_more_than_one"] = len(set.intersection(*archive)) if archive else 0
    return out


def ingest_once(setup: Setup, pg: Postgres, name: str, spool_url: str | None) -> dict[str, Any]:
    """One voltd (fresh spool) under the ingest phase's warm-up and load; its sinks after."""
    args = setup.args
    directory = setup.workdir / name
    port, admin_port = free_port(), free_port()
    url = f"https://{HOST}:{port}{WEBHOOK_PATH}"
    config = voltd_config(port, admin_port, keys_dir=setup.voltd_dir, spool_url=spool_url)
    kind = "PostgreSQL" if spool_url else "SQLite"
    out: dict[str, Any] = {"spool": kind}
    server: Server | None = None
    print(f"\n[{name}] voltd with a {kind} spool", flush=True)
    try:
        server = launch_voltd(f"voltd ({name})", directory, config, admin_port, setup.server_cpu)
        out["server_command"] = shlex.join(server.cmd)
        out["rss_mb"] = {"ready": memory_mb(server.pid)}
        send_sanity(setup, port, server)
        print(f"[{name}] warm-up {WARMUP_SECONDS} s", flush=True)
        warm = wrk_load(setup, url, setup.warmup_file, WARMUP_SECONDS, f"{name}-warmup", server)
        sinks = SinkReaders([SinkReader(directory)])
        warm_drain = wait_drained(
            sinks,
            expected_deliveries(warm.accepted_ids, setup.warmup_events),
            0,
            WARMUP_DRAIN_TIMEOUT,
        )
        out["warmup"] = {
            "accepted": warm.result["ok"],
            "non2xx": warm.result["non2xx"],
            "accepted_per_s": summarize(warm)["accepted_per_s"],
            "drain_s": warm_drain.seconds,
            "drained": warm_drain.complete,
        }
        print(f"[{name}] measuring {args.duration} s with {args.connections} connections")
        db_before = pg.cpu_seconds() if spool_url else None
        run = wrk_load(setup, url, setup.main_file, args.duration, name, server)
        db_after = pg.cpu_seconds() if spool_url else None
        out.update(summarize(run))
        if db_before is not None and db_after is not None:
            _db_share(out, db_after - db_before, pg)
        if server.proc is not None and server.proc.poll() is not None:
            raise BenchError(f"voltd died during the load:\n{indent(tail(server.log_path))}")
        out["sinks"] = _sinks_after(sinks, run.accepted_ids, setup, run.load_end)
        out["rss_mb"]["after_drain"] = memory_mb(server.pid)
    except BenchError as exc:
        print(f"[{name}] error: {exc}", flush=True)
        out["error"] = str(exc)
    finally:
        finish_server(server, out, f"voltd-{name}")
    return out


# -- pg-ingest --------------------------------------------------------------------------------


@_db_errors
def run_pg_ingest(setup: Setup, pg: Postgres) -> dict[str, Any]:
    """SQLite, then PostgreSQL: the same voltd config, load and events, fresh spools."""
    pg.start()
    out: dict[str, Any] = {"postgres": pg.info}
    out["sqlite"] = ingest_once(setup, pg, "pg-ingest-sqlite", None)
    out["pg"] = ingest_once(setup, pg, "pg-ingest-pg", pg.database("ingest"))
    s, p = out["sqlite"], out["pg"]
    if "accepted_per_s" in s and "accepted_per_s" in p and s["accepted_per_s"]:
        s99 = (s.get("latency_ms") or s["wrk_latency_ms"])["p99"]
        p99 = (p.get("latency_ms") or p["wrk_latency_ms"])["p99"]
        out["ratio"] = {
            "req_per_s": p["accepted_per_s"] / s["accepted_per_s"],
            "p99": p99 / s99 if s99 else None,
        }
    return out


def _load_problems(name: str, r: dict[str, Any], connections: int) -> list[str]:
    problems = server_exit_problems(name, r)
    if "accepted_per_s" in r:
        problems += load_problems(name, r, connections)
    return problems


def _sink_lines(name: str, sinks: dict[str, Any] | None) -> list[str]:
    """Print what the sinks got after a load; return problems (acknowledged events missing)."""
    if not sinks:
        return []
    missing = {s: n for s, n in sinks["missing"].items() if n}
    dups = {s: n for s, n in sinks["duplicates"].items() if n}
    if sinks["all_acked_delivered"]:
        print(
            f"  {name}: all {sinks['acked']} acknowledged events reached every sink they were "
            f"routed to, {sinks['drain_s_after_load']:.2f} s after the load ended"
            + (f"; duplicate lines {dups}" if dups else "")
        )
        return []
    print(f"  {name}: acknowledged events MISSING after {DRAIN_TIMEOUT:.0f} s: {missing}")
    return [f"{name}: acknowledged events missing from sinks {missing}"]


def _pct(v: float | None) -> str:
    return fmt(v * 100 if v is not None else None, ".0f") + "%"


def _pg_line(info: dict[str, Any]) -> str:
    return (
        f"PostgreSQL {info.get('server_version')} on CPU {info.get('pinned_to_cpu')} (with "
        f"{info.get('shares_cpu_with')}), fsync={info.get('fsync')}, synchronous_commit="
        f"{info.get('synchronous_commit')}, full_page_writes={info.get('full_page_writes')}, "
        f"wal_sync_method={info.get('wal_sync_method')}, data on {info.get('data_filesystem')}"
    )


def report_pg_ingest(r: dict[str, Any], connections: int) -> tuple[list[str], list[dict[str, Any]]]:
    print()
    problems: list[str] = []
    if "sqlite" not in r:
        print(f"pg-ingest: FAILED: {r.get('error', '?').splitlines()[0]}")
        return [f"pg-ingest: {r.get('error')}"], [
            check("pg-ingest", "accepted req/s, PostgreSQL/SQLite spool", "-", "", None)
        ]
    print("pg-ingest: voltd with a SQLite spool, then with a PostgreSQL spool; same load")
    print(f"  {_pg_line(r.get('postgres') or {})}")
    header = (
        f"{'spool':<10} {'accepted req/s':>15} {'non-2xx':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99.9 ms':>9} {'voltd CPU':>10} {'PG CPU':>7} {'CPU ms/req':>11}"
    )
    print(header)
    print("-" * len(header))
    for key, label in (("sqlite", "SQLite"), ("pg", "PostgreSQL")):
        run = r[key]
        name = f"pg-ingest {label}"
        problems += _load_problems(name, run, connections)
        if "accepted_per_s" not in run:
            print(f"{label:<10} FAILED: {run.get('error', '?').splitlines()[0]}")
            continue
        lat = run.get("latency_ms") or run.get("wrk_latency_ms") or {}
        ms = run.get("cpu_ms_per_request_with_pg") or run.get("server_cpu_ms_per_request")
        print(
            f"{label:<10} {fmt(run['accepted_per_s'], '.1f'):>15} {run['non2xx']:>8} "
            f"{fmt(lat.get('p50')):>8} {fmt(lat.get('p99')):>8} {fmt(lat.get('p99.9')):>9} "
            f"{_pct(run.get('server_cpu_busy')):>10} "
            f"{(_pct(run.get('pg_cpu_busy')) if 'pg_cpu_busy' in run else '-'):>7} "
            f"{fmt(ms, '.3f'):>11}"
        )
    print("  (CPU ms/req: voltd's, plus PostgreSQL's for the PostgreSQL spool)")
    for key, label in (("sqlite", "SQLite"), ("pg", "PostgreSQL")):
        print_load_notes(f"  pg-ingest {label}", r[key])
        problems += _sink_lines(f"{label} spool", r[key].get("sinks"))
    ratio = r.get("ratio") or {}
    req = ratio.get("req_per_s")
    if ratio:
        print(
            f"  PostgreSQL/SQLite: req/s {fmt(req, '.2f')}x, p99 {fmt(ratio.get('p99'), '.2f')}x"
            f"  (req/s: higher is better; p99: lower is better)"
        )
    return problems, [
        ratio_check(
            "pg-ingest",
            "accepted req/s, PostgreSQL/SQLite spool",
            req,
            PG_INGEST_TARGET_RATIO,
            noisy_note(*(r[k] for k in ("sqlite", "pg") if "accepted_per_s" in r[k])),
        )
    ]


# -- pg-two -------------------------------------------------------------------------------------


def split_requests(src: Path, a: Path, b: Path) -> tuple[int, int]:
    """Deal a requests file (signature line, body line) alternately into two: disjoint
    events for two instances. Returns the number of requests in each."""
    lines = src.read_bytes().split(b"\n")
    pairs = [lines[i] + b"\n" + lines[i + 1] + b"\n" for i in range(0, len(lines) - 1, 2)]
    a.write_bytes(b"".join(pairs[0::2]))
    b.write_bytes(b"".join(pairs[1::2]))
    return len(pairs[0::2]), len(pairs[1::2])


def _wrk_pair(
    setup: Setup,
    urls: list[str],
    files: list[Path],
    seconds: int,
    connections: list[int],
    tag: str,
    servers: list[Server],
) -> list[WrkRun]:
    """One wrk per instance, started together, each on the client CPU."""
    results: list[WrkRun | BaseException | None] = [None, None]

    def one(i: int) -> None:
        try:
            results[i] = wrk_load(
                setup, urls[i], files[i], seconds, f"{tag}-{'ab'[i]}", servers[i], connections[i]
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runs: list[WrkRun] = []
    for r in results:
        if isinstance(r, BaseException):
            raise r
        assert r is not None
        runs.append(r)
    return runs


@contextlib.contextmanager
def _cpu_window(
    setup: Setup, servers: list[Server], pg: Postgres, into: dict[str, Any]
) -> Iterator[None]:
    """CPU accounting around the two concurrent loads: each instance, PostgreSQL, wrk (both),
    the runner, and whatever else ran on the two CPUs."""
    cpus = [c for c in (setup.server_cpu, setup.client_cpu) if c is not None]
    before_v = [cpu_seconds(s.pid) for s in servers]
    before_db = pg.cpu_seconds()
    before_cores = [cpu_busy_seconds(c) for c in cpus]
    before_self = resource.getrusage(resource.RUSAGE_SELF)
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    yield
    seconds = time.monotonic() - t0
    after_v = [cpu_seconds(s.pid) for s in servers]
    after_db = pg.cpu_seconds()
    after_cores = [cpu_busy_seconds(c) for c in cpus]
    after_self = resource.getrusage(resource.RUSAGE_SELF)
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    voltd = [
        (a - b) if a is not None and b is not None else None
        for a, b in zip(after_v, before_v, strict=True)
    ]
    db = after_db - before_db if after_db is not None and before_db is not None else None
    wrk = (after_children.ru_utime - before_children.ru_utime) + (
        after_children.ru_stime - before_children.ru_stime
    )
    runner = (after_self.ru_utime - before_self.ru_utime) + (
        after_self.ru_stime - before_self.ru_stime
    )
    busy: float | None = 0.0
    for core_after, core_before in zip(after_cores, before_cores, strict=True):
        if busy is None or core_after is None or core_before is None:
            busy = None
        else:
            busy += core_after[0] - core_before[0]
    known = [*voltd, db]
    into["window_s"] = seconds
    into["voltd_cpu_busy"] = [None if v is None else v / seconds for v in voltd]
    into["pg_cpu_busy"] = None if db is None else db / seconds
    into["wrk_cpu_busy"] = wrk / seconds
    into["cpu_s_total_voltd_and_pg"] = (
        sum(k for k in known if k is not None) if all(k is not None for k in known) else None
    )
    into["other_share"] = (
        max(0.0, busy - sum(k for k in known if k is not None) - wrk - runner) / seconds
        if busy is not None and all(k is not None for k in known)
        else None
    )


@_db_errors
def run_pg_two(setup: Setup, pg: Postgres, pg_ingest: dict[str, Any] | None) -> dict[str, Any]:
    """Two instances, one database, the load split across them; one instance to compare."""
    args = setup.args
    pg.start()
    out: dict[str, Any] = {"postgres": pg.info}
    one = (pg_ingest or {}).get("pg")
    if one and "accepted_per_s" in one:
        out["one"] = {"from": "pg-ingest", "accepted_per_s": one["accepted_per_s"]}
        keys = ("latency_ms", "pg_cpu_busy", "non2xx", "cpu_ms_per_request_with_pg")
        out["one"].update({k: one.get(k) for k in keys})
    else:
        own = ingest_once(setup, pg, "pg-two-one", pg.database("two_one"))
        out["one"] = {"from": "own run", **own}
    url = pg.database("two")
    directory = setup.workdir / "pg-two"
    directory.mkdir()
    files = {
        kind: [directory / f"{kind}-a.requests", directory / f"{kind}-b.requests"]
        for kind in ("warmup", "main")
    }
    split_requests(setup.warmup_file, *files["warmup"])
    out["events_per_instance"] = split_requests(setup.main_file, *files["main"])
    conns = [max(1, (args.connections + 1) // 2), max(1, args.connections // 2)]
    cpu_b = setup.client_cpu if args.pg_two_spread else setup.server_cpu
    out.update(
        {
            "connections": conns,
            "instance_cpus": [setup.server_cpu, cpu_b],
            "wrk_cpu": setup.client_cpu,
            "cpus": os.cpu_count(),
        }
    )
    servers: list[Server] = []
    ports: list[int] = []
    print(
        f"\n[pg-two] two voltd instances on one PostgreSQL database (CPUs {setup.server_cpu} and "
        f"{cpu_b}), wrk {conns[0]}+{conns[1]} connections",
        flush=True,
    )
    try:
        for i, instance_cpu in enumerate((setup.server_cpu, cpu_b)):
            port, admin_port = free_port(), free_port()
            config = voltd_config(port, admin_port, keys_dir=setup.voltd_dir, spool_url=url)
            servers.append(
                launch_voltd(
                    f"voltd (pg-two {'ab'[i]})",
                    directory / "ab"[i],
                    config,
                    admin_port,
                    instance_cpu,
                )
            )
            ports.append(port)
        for port, server in zip(ports, servers, strict=True):
            send_sanity(setup, port, server)  # the second one is a duplicate: still a 200
        urls = [f"https://{HOST}:{p}{WEBHOOK_PATH}" for p in ports]
        print(f"[pg-two] warm-up {WARMUP_SECONDS} s", flush=True)
        warm = _wrk_pair(
            setup, urls, files["warmup"], WARMUP_SECONDS, conns, "pg-two-warmup", servers
        )
        sinks = SinkReaders([SinkReader(directory / "ab"[i]) for i in range(2)])
        warm_drain = wait_drained(
            sinks,
            expected_deliveries([i for w in warm for i in w.accepted_ids], setup.warmup_events),
            0,
            WARMUP_DRAIN_TIMEOUT,
        )
        out["warmup"] = {
            "accepted_per_s": sum(summarize(w)["accepted_per_s"] for w in warm),
            "drain_s": warm_drain.seconds,
            "drained": warm_drain.complete,
        }
        print(f"[pg-two] measuring {args.duration} s", flush=True)
        cpu: dict[str, Any] = {}
        with _cpu_window(setup, servers, pg, cpu):
            runs = _wrk_pair(setup, urls, files["main"], args.duration, conns, "pg-two", servers)
        out["cpu"] = cpu
        out["instances"] = []
        for server, run in zip(servers, runs, strict=True):
            summary = summarize(run)
            # These per-run shares count the other instance and PostgreSQL as "other work":
            # the pair's accounting is in "cpu".
            for key in ("server_core_other_share", "client_core_other_share", "wrk_cpu_busy"):
                summary.pop(key, None)
            out["instances"].append(summary)
            if server.proc is not None and server.proc.poll() is not None:
                raise BenchError(
                    f"{server.name} died during the load:\n{indent(tail(server.log_path))}"
                )
        total = sum(i["accepted_per_s"] for i in out["instances"])
        completed = sum(i["completed"] for i in out["instances"])
        out["total"] = {
            "accepted_per_s": total,
            "completed": completed,
            "non2xx": sum(i["non2xx"] for i in out["instances"]),
            "cpu_ms_per_request_with_pg": (
                cpu["cpu_s_total_voltd_and_pg"] * 1000 / completed
                if cpu.get("cpu_s_total_voltd_and_pg") is not None and completed
                else None
            ),
        }
        base = out["one"].get("accepted_per_s")
        out["ratio_two_over_one"] = total / base if base else None
        out["sinks"] = _sinks_after(
            sinks,
            [i for r in runs for i in r.accepted_ids],
            setup,
            max(r.load_end for r in runs),
        )
    except BenchError as exc:
        print(f"[pg-two] error: {exc}", flush=True)
        out["error"] = str(exc)
    finally:
        out["servers"] = []
        for i, server in enumerate(servers):
            stopped: dict[str, Any] = {}
            finish_server(server, stopped, f"voltd-pg-two-{'ab'[i]}")
            out["servers"].append(stopped)
    return out


def report_pg_two(r: dict[str, Any], connections: int) -> tuple[list[str], list[dict[str, Any]]]:
    print()
    problems: list[str] = []
    if "error" in r and "instances" not in r:
        print(f"pg-two: FAILED: {r['error'].splitlines()[0]}")
        problems.append(f"pg-two: {r['error']}")
    for i, s in enumerate(r.get("servers", [])):
        problems += server_exit_problems(f"pg-two instance {'ab'[i]}", s)
    one = r.get("one") or {}
    if one.get("from") == "own run":
        problems += _load_problems("pg-two one instance", one, connections)
    if "instances" not in r:
        return problems, []
    cpus = r["instance_cpus"]
    same = cpus[0] == cpus[1]
    pg_cpu = (r.get("postgres") or {}).get("pinned_to_cpu")
    print(
        f"pg-two: two voltd instances on one PostgreSQL database, wrk split "
        f"{r['connections'][0]}+{r['connections'][1]} connections (disjoint halves of the "
        f"events), vs one instance with {connections} ({one.get('from')})"
    )
    print(f"  {_pg_line(r.get('postgres') or {})}")
    print(
        f"  NOTE: this machine has {r.get('cpus')} CPUs. "
        + (
            f"Both instances and PostgreSQL run on CPU {cpus[0]} (wrk on CPU {r['wrk_cpu']}): "
            f"they compete for one core, the same CPU budget the one instance had, so this "
            f"shows what sharing the spool costs, not how instances scale."
            if same
            else f"Instance a runs on CPU {cpus[0]}, instance b on CPU {cpus[1]} together with "
            f"wrk (--pg-two-spread), PostgreSQL on CPU {pg_cpu}: they compete for the "
            f"machine's cores with each other and with the load generator."
        )
    )
    if one.get("from") == "own run":
        print_load_notes("  pg-two one instance", one)
        problems += _sink_lines("one instance", one.get("sinks"))
    header = (
        f"{'instance':<13} {'accepted req/s':>15} {'non-2xx':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99.9 ms':>9} {'voltd CPU':>10}"
    )
    print(header)
    print("-" * len(header))
    cpu = r.get("cpu") or {}
    for i, s in enumerate(r["instances"]):
        name = f"pg-two instance {'ab'[i]}"
        problems += _load_problems(name, s, r["connections"][i])
        lat = s.get("latency_ms") or s.get("wrk_latency_ms") or {}
        busy = (cpu.get("voltd_cpu_busy") or [None, None])[i]
        print(
            f"{'ab'[i]:<13} {fmt(s['accepted_per_s'], '.1f'):>15} {s['non2xx']:>8} "
            f"{fmt(lat.get('p50')):>8} {fmt(lat.get('p99')):>8} {fmt(lat.get('p99.9')):>9} "
            f"{_pct(busy):>10}"
        )
        if s.get("cycled"):
            print(f"  instance {'ab'[i]}: WARNING: the run cycled its events (use --events)")
    t = r["total"]
    print(f"{'two, total':<13} {fmt(t['accepted_per_s'], '.1f'):>15} {t['non2xx']:>8}")
    olat = one.get("latency_ms") or {}
    print(
        f"{'one instance':<13} {fmt(one.get('accepted_per_s'), '.1f'):>15} "
        f"{fmt(one.get('non2xx'), 'd') if one.get('non2xx') is not None else '-':>8} "
        f"{fmt(olat.get('p50')):>8} {fmt(olat.get('p99')):>8} {fmt(olat.get('p99.9')):>9}"
    )
    print(
        f"  two/one: total req/s {fmt(r.get('ratio_two_over_one'), '.2f')}x; PostgreSQL used "
        f"{_pct(cpu.get('pg_cpu_busy'))} of a CPU (one instance: {_pct(one.get('pg_cpu_busy'))}), "
        f"wrk {_pct(cpu.get('wrk_cpu_busy'))}; voltd+PostgreSQL CPU ms/req "
        f"{fmt(t.get('cpu_ms_per_request_with_pg'), '.3f')} (one instance: "
        f"{fmt(one.get('cpu_ms_per_request_with_pg'), '.3f')})"
    )
    if (cpu.get("other_share") or 0.0) > NOISY_SHARE:
        print(
            f"  NOTE: other work took {100 * cpu['other_share']:.0f}% of a CPU during the load: "
            f"expect noise"
        )
    sinks = r.get("sinks")
    if sinks:
        problems += _sink_lines("pg-two", sinks)
        per = sinks.get("lines_per_instance") or []
        if per:
            print(
                f"  deliveries: instance a wrote {per[0]} sink lines, b {per[1]}; events in "
                f"the archive of both: {sinks.get('archive_by_more_than_one')}. The file sinks "
                f"keep their order (concurrency 1), so one instance at a time delivers to each "
                f"(the holder of its advisory lock): a lopsided split is by design"
            )
    return problems, []


# -- pg-drain -----------------------------------------------------------------------------------


@_db_errors
def run_pg_drain(
    setup: Setup, pg: Postgres, backlog: int, sqlite_drain: dict[str, Any] | None
) -> dict[str, Any]:
    """The drain phase on a PostgreSQL spool; the SQLite drain beside it."""
    pg.start()
    url = pg.database("drain")
    out: dict[str, Any] = {"postgres": pg.info}
    out["pg"] = run_drain(
        setup,
        backlog,
        spool_url=url,
        name="pg-drain",
        spool_mb=lambda: pg.size_mb(url),
        db_cpu=pg.cpu_seconds,
        db_on_daemon_cpu=pg.where == "server",
    )
    if sqlite_drain is not None and sqlite_drain.get("backlog") == backlog:
        out["sqlite"] = {"from": "drain phase", "per_s": sqlite_drain.get("per_s")}
    else:
        out["sqlite"] = {"from": "own run", **run_drain(setup, backlog, name="pg-drain-sqlite")}
    p, s = out["pg"].get("per_s"), out["sqlite"].get("per_s")
    out["ratio_pg_over_sqlite"] = p / s if p and s else None
    return out


def report_pg_drain(r: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    if "pg" not in r:
        print(f"\npg-drain: FAILED: {r.get('error', '?').splitlines()[0]}")
        return [f"pg-drain: {r.get('error')}"], []
    problems, checks = report_drain(
        r["pg"], "pg-drain", rate_target=None, detail=_pg_line(r.get("postgres") or {})
    )
    s = r["sqlite"]
    if s.get("from") == "own run":
        # Only its problems: its rate is judged by the drain phase, not here.
        more, _ = report_drain(s, "pg-drain (SQLite, for comparison)", rate_target=None)
        problems += more
    print(
        f"  drain events/s: PostgreSQL {fmt(r['pg'].get('per_s'), ',.0f')}, SQLite "
        f"{fmt(s.get('per_s'), ',.0f')} ({s.get('from')}): PostgreSQL/SQLite "
        f"{fmt(r.get('ratio_pg_over_sqlite'), '.2f')}x (informational, no target)"
    )
    return problems, checks
