"""One-command benchmark of voltd, in phases that share one set of keys, events and settings.

    uv run python bench/run.py [--duration 10] [--connections 16] [--events N] [--only bare|voltd]
                               [--phases PHASES] [--skip PHASES] [--probe-rate 15]
                               [--backlog 100000] [--relay-events N] [--relay-concurrency 4]
                               [--pg-cpu server|client] [--pg-two-spread]

PHASES: comma-separated from ingest,e2e,sinkdown,drain,commit,relay,relaylatency,stalled,
pg-ingest,pg-two,pg-drain.

- ingest: voltd against the bare web stack it is built on (hypercorn + quart-trio), the same
  pre-signed, unique Volt webhooks over HTTPS from wrk (1 thread, keep-alive), each after a
  short warm-up, server pinned to one CPU and wrk to another. The ratio voltd/bare says what
  voltd's own work (verify, parse, route, durable commit) costs on top of the stack.
- e2e (probe.py): during voltd's load, a light probe times ack -> line in the file sink.
- sinkdown (backlog.py): the same load with the archive sink failing; then repair and drain.
- drain (backlog.py): a large pre-filled backlog drained to the file sink; RSS throughout.
- commit (commit.py): one fsync'd transaction per event vs group commit, on the spool alone.
- relay (relay.py): the http sink draining a backlog to a fast local receiver at concurrency
  1, 4 and 16, against that receiver's own ceiling under wrk.
- relaylatency (relay.py): voltd's 200 -> the request at the receiver, idle and under load.
- stalled (relay.py): ingest with the relay's receiver stalled vs healthy.
- pg-ingest (shared.py): the ingest load against voltd with a PostgreSQL spool vs a SQLite
  spool, in the same run (durable PostgreSQL from tests/pg.py, pinned with voltd by default).
- pg-two (shared.py): two voltd instances on one PostgreSQL database, the load split across
  them, vs one instance.
- pg-drain (shared.py): the drain phase on a PostgreSQL spool, beside the SQLite drain.

Results go to the terminal and to bench/out/latest.json; the exit status is 0 when all is
well, 1 when something was wrong (errors, lost events, non-2xx), 3 when only a performance
target was missed. See bench/README.md for how to read them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backlog import report_drain, report_sinkdown, run_drain, run_sinkdown
from base import (
    BARE_APP,
    DRAIN_TIMEOUT,
    EXPECTED_RATE,
    HEADROOM,
    HOST,
    OUT_DIR,
    PROFILE_FILE,
    REPO_DIR,
    WARMUP_DRAIN_TIMEOUT,
    WARMUP_SECONDS,
    WEBHOOK_PATH,
    WRK_TIMEOUT_SECONDS,
    BenchError,
    indent,
    tail,
)
from commit import report_commit, run_commit
from load import WrkRun, ensure_wrk, summarize, wrk_load
from probe import Probe, make_probe_events, report_e2e
from relay import (
    IDLE_SECONDS,
    PROBE_RATE,
    report_relay,
    report_relaylatency,
    report_stalled,
    run_relay,
    run_relay_ingest,
)
from report import (
    check,
    fmt,
    load_problems,
    noisy_note,
    print_load_notes,
    ratio_check,
    server_exit_problems,
)
from servers import Server, free_port, healthz_probe, http_get, https_probe, memory_mb, send_sanity
from shared import (
    Postgres,
    report_pg_drain,
    report_pg_ingest,
    report_pg_two,
    run_pg_drain,
    run_pg_ingest,
    run_pg_two,
)
from sinks import SinkReader, expected_deliveries, wait_drained
from stages import profile_finish, profile_report, profile_start
from workload import (
    SINK_DIRS,
    Setup,
    check_signature,
    make_events,
    sign_all,
    voltd_config,
    write_requests_file,
)

from voltd.keys import generate_signing_pair, make_self_signed_cert
from voltd.spool import SpoolError


def run_target(setup: Setup, name: str, probe_rate: float | None = None) -> dict[str, Any]:
    """Start one server, warm it up, measure it, (for voltd) wait for its backlog, stop it.

    With `probe_rate` (voltd only), the e2e probe runs next to wrk during the measured load.
    """
    args = setup.args
    port = free_port()
    url = f"https://{HOST}:{port}{WEBHOOK_PATH}"
    log_path = setup.workdir / f"{name}.log"
    reader: SinkReader | None = None
    if name == "bare":
        server = Server(
            name="bare app",
            cmd=[
                sys.executable,
                str(BARE_APP),
                "--bind",
                f"{HOST}:{port}",
                "--certfile",
                str(setup.certfile),
                "--keyfile",
                str(setup.certfile.parent / "key.pem"),
            ],
            cwd=setup.workdir,
            log_path=log_path,
        )
        probe = https_probe(port, setup.certfile)
        admin_port = None
    else:
        admin_port = free_port()
        config_path = setup.voltd_dir / "voltd.toml"
        config_path.write_text(voltd_config(port, admin_port))
        server = Server(
            name="voltd",
            cmd=[sys.executable, "-m", "voltd", "serve", "-c", str(config_path)],
            cwd=setup.voltd_dir,
            log_path=log_path,
        )
        probe = healthz_probe(admin_port)
        reader = SinkReader(setup.voltd_dir)
    out: dict[str, Any] = {"server_command": shlex.join(server.cmd), "url": url}
    e2e_probe: Probe | None = None
    print(f"\n[{name}] starting: {shlex.join(server.cmd)}", flush=True)
    server.start(setup.server_cpu)
    try:
        out["ready_s"] = server.wait_ready(probe)
        send_sanity(setup, port, server)
        print(f"[{name}] ready in {out['ready_s']:.1f} s; warm-up {WARMUP_SECONDS} s", flush=True)
        if reader is not None:
            out["rss_mb"] = {"ready": memory_mb(server.pid)}
        warm = wrk_load(setup, url, setup.warmup_file, WARMUP_SECONDS, f"{name}-warmup", server)
        out["warmup"] = {
            "accepted": warm.result["ok"],
            "non2xx": warm.result["non2xx"],
            "accepted_per_s": summarize(warm)["accepted_per_s"],
        }
        if reader is not None:
            warm_drain = wait_drained(
                reader,
                expected_deliveries(warm.accepted_ids, setup.warmup_events),
                warm.result["ok"],
                WARMUP_DRAIN_TIMEOUT,
            )
            out["warmup"]["drain_s"] = warm_drain.seconds
            out["warmup"]["drained"] = warm_drain.complete
        if reader is not None and probe_rate:
            e2e_probe = Probe(
                port,
                setup.certfile,
                setup.probe_events,
                setup.probe_signatures,
                probe_rate,
                setup.voltd_dir / SINK_DIRS["archive"],
            )
        print(
            f"[{name}] measuring {args.duration} s with {args.connections} connections"
            + (f", e2e probe at {probe_rate:g}/s" if e2e_probe else ""),
            flush=True,
        )
        if e2e_probe is not None:
            e2e_probe.start()
        profiler = None
        if reader is not None and args.profile:
            OUT_DIR.mkdir(parents=True, exist_ok=True)
            profiler = profile_start(server.pid, args.duration, PROFILE_FILE)
        run = wrk_load(setup, url, setup.main_file, args.duration, name, server)
        if e2e_probe is not None:
            e2e_probe.stop_sending()
        out.update(summarize(run))
        if profiler is not None:
            out["profile"] = profile_finish(profiler, PROFILE_FILE)
            print("\n".join(profile_report(out["profile"])), flush=True)
        if server.proc is not None and server.proc.poll() is not None:
            raise BenchError(f"{server.name} died during the load:\n{indent(tail(log_path))}")
        if reader is not None:
            out["sinks"] = drain_report(reader, run, setup, admin_port)
            out["rss_mb"]["after_drain"] = memory_mb(server.pid)
        if e2e_probe is not None:
            e2e_probe.wait_landed()
            out["e2e"] = e2e_probe.report((run.load_end - out["duration_s"], run.load_end))
    except BenchError as exc:
        # Keep what was measured so far (and the server's exit below) next to the error.
        print(f"[{name}] error: {exc}", file=sys.stderr, flush=True)
        out["error"] = str(exc)
    finally:
        if e2e_probe is not None:
            e2e_probe.close()
        server.stop()
        out["exit_code"] = server.exit_code
        out["stop_s"] = server.stop_seconds
        out["killed_after_sigterm_timeout"] = server.killed
        out["log_lines"] = sum(1 for _ in log_path.open("rb")) if log_path.exists() else 0
        out["log_tail"] = tail(log_path, 10)
        if log_path.exists():
            OUT_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_path, OUT_DIR / f"{name}.log")
            out["log_file"] = str((OUT_DIR / f"{name}.log").relative_to(REPO_DIR))
    return out


def drain_report(
    reader: SinkReader, run: WrkRun, setup: Setup, admin_port: int | None
) -> dict[str, Any]:
    """After the load: did every acknowledged event reach its sinks, and how fast?"""
    wanted = expected_deliveries(run.accepted_ids, setup.main_events)
    drain = wait_drained(reader, wanted, run.result["ok"], DRAIN_TIMEOUT)
    drained_at = time.time()
    main_ids = {e.id for e in setup.main_events}
    acked = set(wanted["archive"])  # every event is routed to the archive
    per_sink: dict[str, Any] = {}
    for sink in SINK_DIRS:
        ids = reader.ids.get(sink, Counter())
        landed = {i for i in ids if i in main_ids}
        per_sink[sink] = {
            "lines": sum(ids.values()),
            "main_run_events": len(landed),
            "expected_from_acked": len(wanted[sink]),
            "acked_missing": len(drain.missing.get(sink, [])),
            "duplicates": sum(c - 1 for c in ids.values() if c > 1),
            "landed_not_acked": len(landed - acked),
        }
    report: dict[str, Any] = {
        "all_acked_delivered": drain.complete,
        "drain_s": max(0.0, drained_at - run.load_end) if drain.complete else None,
        # Already complete at the first look: the drain took at most drain_s (which is then
        # mostly wrk's exit and the runner's bookkeeping), not exactly drain_s.
        "drain_s_is_upper_bound": drain.complete and drain.polls == 1,
        "acked_with_id": len(acked),
        "per_sink": per_sink,
        "total_lines": sum(reader.lines(s) for s in SINK_DIRS),
    }
    if admin_port is not None:
        try:
            status, body = http_get(admin_port, "/metrics", timeout=5)
            if status == 200:
                OUT_DIR.mkdir(parents=True, exist_ok=True)
                (OUT_DIR / "voltd-metrics.txt").write_bytes(body)
                report["metrics_file"] = str(OUT_DIR / "voltd-metrics.txt")
            else:
                report["metrics_file"] = f"(GET /metrics answered {status})"
        except OSError as exc:
            report["metrics_file"] = f"(GET /metrics failed: {exc})"
    return report


# -- main -----------------------------------------------------------------------------------


def choose_cpus() -> tuple[int | None, int | None, str]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, f"not pinned: only {len(cpus)} CPU available"
    return (
        cpus[0],
        cpus[1],
        f"server pinned to CPU {cpus[0]}, wrk to CPU {cpus[1]} (sched_setaffinity)",
    )


def environment(wrk: str | None, workdir: Path) -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    def run(cmd: list[str]) -> str | None:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=REPO_DIR)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return (done.stdout or done.stderr).strip() or None

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fs = run(["findmnt", "-no", "FSTYPE", "-T", str(workdir)]) or run(
        ["stat", "-f", "-c", "%T", str(workdir)]
    )
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "workdir_filesystem": fs,
        "wrk": run([wrk, "-v"]).splitlines()[0] if wrk and run([wrk, "-v"]) else None,
        "packages": {
            d: version(d)
            for d in ("hypercorn", "quart", "quart-trio", "trio", "cryptography", "h11", "voltd")
        },
        "git_commit": run(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(run(["git", "status", "--porcelain", "--untracked-files=no"])),
    }


def default_events(duration: int) -> int:
    return math.ceil(duration * EXPECTED_RATE * HEADROOM)


PHASES = (
    "ingest",
    "e2e",
    "sinkdown",
    "drain",
    "commit",
    "relay",
    "relaylatency",
    "stalled",
    "pg-ingest",
    "pg-two",
    "pg-drain",
)
# The ones that need wrk and signed events (relay needs wrk only).
LOAD_PHASES = {"ingest", "e2e", "sinkdown", "relaylatency", "stalled", "pg-ingest", "pg-two"}
PG_PHASES = {"pg-ingest", "pg-two", "pg-drain"}
RELAY_INGEST_PHASES = {"relaylatency", "stalled"}  # both need the healthy-receiver run


def _phase_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PHASES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown phase {', '.join(unknown)} (choose from {', '.join(PHASES)})"
        )
    return names


INGEST_TARGET_RATIO = 0.9
P99_TARGET_RATIO = 1.2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark voltd: against the bare quart-trio stack, end to end, with a sink "
        "down, draining a backlog, and its group commit. See bench/README.md.",
    )
    p.add_argument("--duration", type=int, default=10, help="measured seconds per load (10)")
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections (16)")
    p.add_argument(
        "--events",
        type=int,
        default=None,
        help="unique signed events to pre-generate (default: duration x 3000/s x 1.5)",
    )
    p.add_argument("--only", choices=["bare", "voltd"], help="ingest phase: one target only")
    p.add_argument(
        "--phases",
        type=_phase_list,
        default=list(PHASES),
        help=f"comma-separated phases to run (default: all: {','.join(PHASES)})",
    )
    p.add_argument(
        "--skip", type=_phase_list, default=[], help="comma-separated phases to leave out"
    )
    p.add_argument(
        "--probe-rate", type=float, default=15.0, help="e2e probe requests per second (15)"
    )
    p.add_argument(
        "--backlog",
        type=int,
        default=100_000,
        help="drain and pg-drain phases: events in the backlog (100000)",
    )
    p.add_argument(
        "--relay-events",
        type=int,
        default=None,
        help="relay phase: events in the http sink's backlog (default: duration x 1000)",
    )
    p.add_argument(
        "--relay-concurrency",
        type=int,
        default=4,
        help="relaylatency and stalled: the http sink's concurrency setting (4)",
    )
    p.add_argument(
        "--commit-events",
        type=int,
        default=20_000,
        help="commit phase: most events per group size (20000)",
    )
    p.add_argument(
        "--commit-seconds",
        type=float,
        default=2.0,
        help="commit phase: most seconds per group size (2)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample voltd with py-spy during its load and sum the time by stage "
        "(`uv run --with py-spy ...`; the profiled run's req/s is not one to compare)",
    )
    p.add_argument(
        "--pg-cpu",
        choices=["server", "client"],
        default="server",
        help="pg phases: pin PostgreSQL to voltd's CPU (server, default: the same one core as "
        "the SQLite spool gets) or to wrk's (client)",
    )
    p.add_argument(
        "--pg-two-spread",
        action="store_true",
        help="pg-two: run the second instance on wrk's CPU instead of the first one's",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--seed", type=int, default=1, help="seed for the event mix (1)")
    args = p.parse_args(argv)
    if args.duration < 1 or args.connections < 1:
        p.error("--duration and --connections must be at least 1")
    if args.events is not None and args.events < 1:
        p.error("--events must be at least 1")
    if args.probe_rate <= 0 or args.backlog < 1 or args.commit_events < 1:
        p.error("--probe-rate, --backlog and --commit-events must be positive")
    if args.commit_seconds <= 0:
        p.error("--commit-seconds must be positive")
    if args.relay_events is None:
        args.relay_events = args.duration * 1000
    if args.relay_events < 2 or args.relay_concurrency < 1:
        p.error("--relay-events must be at least 2 and --relay-concurrency at least 1")
    args.phases = [ph for ph in PHASES if ph in args.phases and ph not in args.skip]
    if not args.phases:
        p.error("no phase left to run")
    return args


def probe_count(args: argparse.Namespace) -> int:
    """Enough probe events for one load with margin; the same ones serve every daemon."""
    return math.ceil(args.probe_rate * (args.duration + 10))


def prepare(args: argparse.Namespace, workdir: Path) -> Setup:
    """Keys, certificate, events. Without a load phase only the one sanity event is made."""
    load = bool(LOAD_PHASES & set(args.phases))
    wrk = ensure_wrk() if load or "relay" in args.phases else ""
    server_cpu, client_cpu, _ = choose_cpus()
    voltd_dir = workdir / "voltd"
    certfile, _ = make_self_signed_cert(voltd_dir / "tls", hosts=(HOST, "localhost"))
    private_key, public_key = generate_signing_pair(voltd_dir, name="volt")
    n_main = n_warm = n_probe = 0
    if load:
        n_main = args.events or default_events(args.duration)
        n_warm = default_events(WARMUP_SECONDS) if args.events is None else max(1, n_main // 5)
    if {"e2e", "sinkdown"} & set(args.phases):
        n_probe = probe_count(args)
    n_relay_idle = n_relay_load = 0
    if RELAY_INGEST_PHASES & set(args.phases):
        n_relay_idle = math.ceil(PROBE_RATE * (IDLE_SECONDS + 2))
        n_relay_load = math.ceil(PROBE_RATE * (args.duration + 10))
    t0 = time.monotonic()
    now = time.time()
    events = make_events(n_main + n_warm + 1, args.seed, now)
    probes = make_probe_events(n_probe, args.seed + 3, now) if n_probe else []
    relay_probes = (
        make_probe_events(n_relay_idle + n_relay_load, args.seed + 5, now) if n_relay_idle else []
    )
    bodies = [e.body for e in events] + [e.body for e in probes + relay_probes]
    signatures = sign_all(private_key, bodies, len(os.sched_getaffinity(0)))
    check_signature(public_key, events[0].body, signatures[0])
    sanity, warm, main = events[0], events[1 : n_warm + 1], events[n_warm + 1 :]
    warmup_file = workdir / "warmup.requests"
    main_file = workdir / "main.requests"
    if load:
        write_requests_file(warmup_file, warm, signatures[1 : n_warm + 1])
        write_requests_file(main_file, main, signatures[n_warm + 1 : len(events)])
        avg = sum(len(e.body) for e in main) / len(main)
        print(
            f"generated and signed {len(events)} events ({n_main} measured + {n_warm} warm-up, "
            f"~{avg:.0f} B each) and {n_probe} probe events in {time.monotonic() - t0:.1f} s",
            flush=True,
        )
    return Setup(
        args=args,
        workdir=workdir,
        voltd_dir=voltd_dir,
        certfile=certfile,
        public_key=public_key,
        warmup_file=warmup_file,
        main_file=main_file,
        warmup_events=warm,
        main_events=main,
        sanity=(sanity.body, signatures[0]),
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        wrk=wrk,
        probe_events=probes,
        probe_signatures=signatures[len(events) : len(events) + n_probe],
        relay_idle_events=relay_probes[:n_relay_idle],
        relay_idle_signatures=signatures[len(events) + n_probe :][:n_relay_idle],
        relay_probe_events=relay_probes[n_relay_idle:],
        relay_probe_signatures=signatures[len(events) + n_probe + n_relay_idle :],
    )


def ingest_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The ingest targets: voltd keeps >= 0.9x of the bare stack's req/s, p99 <= 1.2x."""
    ratio = results.get("ratio")
    if not ratio:
        return []
    targets = results["targets"]
    note = noisy_note(*targets.values())
    req, p99 = ratio.get("req_per_s"), ratio.get("p99")
    return [
        ratio_check("ingest", "accepted req/s, voltd/bare", req, INGEST_TARGET_RATIO, note),
        check(
            "ingest",
            "p99 ack latency, voltd/bare",
            fmt(p99, ".2f") + "x",
            f"<= {P99_TARGET_RATIO:.2f}x",
            None if p99 is None else p99 <= P99_TARGET_RATIO,
            note,
        ),
    ]


def report_ingest(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Print the bare/voltd table; return the problems that make the exit status non-zero."""
    problems: list[str] = []
    if not results["targets"]:
        return problems
    print()
    header = (
        f"{'target':<7} {'accepted req/s':>15} {'non-2xx':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99.9 ms':>9} {'server CPU':>11} {'CPU ms/req':>11}"
    )
    print(header)
    print("-" * len(header))
    for name in ("bare", "voltd"):
        r = results["targets"].get(name)
        if r is None:
            continue
        if "error" in r and "accepted_per_s" not in r:
            print(f"{name:<7} FAILED: {r['error'].splitlines()[0]}")
            problems.append(f"{name}: {r['error']}")
            continue
        lat = r.get("latency_ms") or r.get("wrk_latency_ms") or {}
        busy = r.get("server_cpu_busy")
        print(
            f"{name:<7} {fmt(r['accepted_per_s'], '.1f'):>15} {r['non2xx']:>8} "
            f"{fmt(lat.get('p50')):>8} {fmt(lat.get('p99')):>8} {fmt(lat.get('p99.9')):>9} "
            f"{fmt(busy * 100 if busy is not None else None, '.0f') + '%':>11} "
            f"{fmt(r.get('server_cpu_ms_per_request'), '.3f'):>11}"
        )
        if r.get("latency_note"):
            print(f"        (latency from wrk's corrected histogram: {r['latency_note']})")
        problems += load_problems(name, r, args.connections)
        problems += server_exit_problems(name, r)
    ratio = results.get("ratio")
    if ratio:
        print()
        print(
            f"voltd/bare: req/s {fmt(ratio['req_per_s'], '.2f')}x, "
            f"p99 {fmt(ratio['p99'], '.2f')}x  (req/s: higher is better; p99: lower is better)"
        )
    for name, r in results["targets"].items():
        if "wrk_latency_ms" in r:
            w = r["wrk_latency_ms"]
            print(
                f"{name}: wrk's own coordinated-omission-corrected p99 {w['p99']:.2f} ms, "
                f"p99.9 {w['p99.9']:.2f} ms (JSON: wrk_latency_ms)"
            )
        print_load_notes(name, r)
    v = results["targets"].get("voltd", {})
    sinks = v.get("sinks")
    if sinks:
        print()
        if sinks["all_acked_delivered"]:
            bound = "within " if sinks["drain_s_is_upper_bound"] else ""
            print(
                f"voltd sinks: all {sinks['acked_with_id']} acknowledged events reached every "
                f"sink they were routed to; backlog drained {bound}{sinks['drain_s']:.2f} s "
                f"after the load ended"
            )
        else:
            print(f"voltd sinks: NOT drained after {DRAIN_TIMEOUT:.0f} s")
        print(
            f"  lines written: {sinks['total_lines']} in total "
            f"(includes warm-up, the one sanity event and any e2e probes)"
        )
        for sink, s in sinks["per_sink"].items():
            print(
                f"  {sink:<17} {s['main_run_events']:>7} measured events "
                f"(expected from acked: {s['expected_from_acked']}, missing {s['acked_missing']}, "
                f"duplicate lines {s['duplicates']}, landed but unacked {s['landed_not_acked']})"
            )
            if s["acked_missing"]:
                problems.append(
                    f"voltd: {s['acked_missing']} acknowledged events missing from sink {sink}"
                )
        if not sinks["acked_with_id"] and v.get("accepted"):
            print("  (voltd's answers carried no event id; drain was judged by line count)")
    rss = v.get("rss_mb") or {}
    if rss.get("ready") and rss.get("after_drain"):
        print(
            f"voltd RSS: {rss['ready']['VmRSS']:.1f} MB when ready, "
            f"{rss['after_drain']['VmRSS']:.1f} MB after the load and drain "
            f"(VmHWM {rss['after_drain']['VmHWM']:.1f} MB)"
        )
    if v.get("log_lines"):
        print(f"voltd wrote {v['log_lines']} log lines during the run")
    return problems


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so the servers under test are stopped, not orphaned."""
    raise KeyboardInterrupt


def run_phase(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one phase; a failure is recorded in its result and the next phase still runs."""
    try:
        return fn()
    except (BenchError, SpoolError, OSError) as exc:
        print(f"[{name}] error: {exc}", file=sys.stderr, flush=True)
        text = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        return {"error": text}


def print_checks(checks: list[dict[str, Any]]) -> None:
    if not checks:
        return
    print()
    print("targets:")
    width = max(len(c["what"]) for c in checks)
    phase_width = max(9, *(len(c["phase"]) for c in checks))
    for c in checks:
        print(
            f"  {c['phase']:<{phase_width}} {c['what']:<{width}}  {c['value']:>12}  "
            f"target {c['target']:<12} {c['verdict']}"
            + (f"  ({c['note']})" if c.get("note") else "")
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    command = shlex.join(["uv", "run", "python", "bench/run.py", *sys.argv[1:]])
    _, _, pinning = choose_cpus()
    phases = set(args.phases)
    targets: list[str] = []
    if "ingest" in phases:
        targets = [args.only] if args.only else ["bare", "voltd"]
    elif "e2e" in phases:
        targets = ["voltd"]  # the probe rides on voltd's normal load
    probe_rate = args.probe_rate if "e2e" in phases else None
    results: dict[str, Any] = {
        "command": command,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "phases": args.phases,
        "settings": {
            "duration_s": args.duration,
            "connections": args.connections,
            "warmup_s": WARMUP_SECONDS,
            "wrk_threads": 1,
            "wrk_timeout_s": WRK_TIMEOUT_SECONDS,
            "pinning": pinning,
            "probe_rate_per_s": probe_rate,
            "backlog": args.backlog if {"drain", "pg-drain"} & phases else None,
            "commit_events": args.commit_events if "commit" in phases else None,
            "commit_seconds": args.commit_seconds if "commit" in phases else None,
            "relay_events": args.relay_events if "relay" in phases else None,
            "relay_concurrency": (args.relay_concurrency if RELAY_INGEST_PHASES & phases else None),
            "pg_cpu": args.pg_cpu if PG_PHASES & phases else None,
            "pg_two_spread": args.pg_two_spread if "pg-two" in phases else None,
        },
        "targets": {},
    }
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="voltd-bench-"))
    postgres: Postgres | None = None
    try:
        try:
            setup = prepare(args, workdir)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if setup.main_events:
            results["settings"]["events"] = len(setup.main_events)
            results["settings"]["warmup_events"] = len(setup.warmup_events)
            results["settings"]["avg_body_bytes"] = round(
                sum(len(e.body) for e in setup.main_events) / len(setup.main_events)
            )
        results["environment"] = environment(setup.wrk or None, workdir)
        if setup.client_cpu is not None:
            # The runner itself (probes, drain polling) stays off the server's CPU.
            os.sched_setaffinity(0, {setup.client_cpu})
        for name in targets:
            try:
                results["targets"][name] = run_target(
                    setup, name, probe_rate if name == "voltd" else None
                )
            except BenchError as exc:
                print(f"[{name}] error: {exc}", file=sys.stderr, flush=True)
                results["targets"].setdefault(name, {})["error"] = str(exc)
        bare, volt = results["targets"].get("bare"), results["targets"].get("voltd")
        if bare and volt and "accepted_per_s" in bare and "accepted_per_s" in volt:
            b99 = (bare.get("latency_ms") or bare["wrk_latency_ms"])["p99"]
            v99 = (volt.get("latency_ms") or volt["wrk_latency_ms"])["p99"]
            results["ratio"] = {
                "req_per_s": volt["accepted_per_s"] / bare["accepted_per_s"]
                if bare["accepted_per_s"]
                else None,
                "p99": v99 / b99 if b99 else None,
            }
        if "e2e" in phases:
            results["e2e"] = (volt or {}).pop("e2e", None) or {
                "error": "no e2e result: the voltd half did not run or failed"
            }
        if "sinkdown" in phases:
            results["sinkdown"] = run_phase("sinkdown", lambda: run_sinkdown(setup, probe_rate))
        if "drain" in phases:
            results["drain"] = run_phase("drain", lambda: run_drain(setup, args.backlog))
        if "commit" in phases:
            results["commit"] = run_phase(
                "commit",
                lambda: run_commit(workdir, args.commit_events, args.commit_seconds, args.seed),
            )
        if "relay" in phases:
            results["relay"] = run_phase("relay", lambda: run_relay(setup))
        if RELAY_INGEST_PHASES & phases:
            # The healthy-receiver run is relaylatency's measurement and stalled's baseline.
            results["relaylatency"] = run_phase(
                "relaylatency", lambda: run_relay_ingest(setup, "ok")
            )
        if "stalled" in phases:
            results["stalled"] = run_phase("stalled", lambda: run_relay_ingest(setup, "stall"))
        if PG_PHASES & phases:
            # One durable PostgreSQL server for the pg phases, started by the first of them.
            pg_cpu = setup.server_cpu if args.pg_cpu == "server" else setup.client_cpu
            pg = postgres = Postgres(pg_cpu, args.pg_cpu)
            if "pg-ingest" in phases:
                results["pg-ingest"] = run_phase("pg-ingest", lambda: run_pg_ingest(setup, pg))
            if "pg-two" in phases:
                results["pg-two"] = run_phase(
                    "pg-two", lambda: run_pg_two(setup, pg, results.get("pg-ingest"))
                )
            if "pg-drain" in phases:
                results["pg-drain"] = run_phase(
                    "pg-drain",
                    lambda: run_pg_drain(setup, pg, args.backlog, results.get("drain")),
                )
            results["postgres"] = pg.info or None
            pg.close()
        results["runtime_s"] = time.monotonic() - started

        print()
        print(f"command: {command}")
        print(f"phases: {', '.join(args.phases)}; {pinning}")
        if LOAD_PHASES & phases:
            print(
                f"load: wrk, 1 thread, {args.connections} keep-alive connections, HTTPS, "
                f"{args.duration} s measured after a {WARMUP_SECONDS} s warm-up"
            )
        problems = report_ingest(results, args)
        checks = ingest_checks(results)
        for key, reporter in (
            ("e2e", lambda r: report_e2e(r)),
            ("sinkdown", lambda r: report_sinkdown(r, volt)),
            ("drain", lambda r: report_drain(r)),
            (
                "commit",
                lambda r: report_commit(r, results["environment"].get("workdir_filesystem")),
            ),
            ("relay", lambda r: report_relay(r)),
            ("relaylatency", lambda r: report_relaylatency(r, "relaylatency" in phases)),
            ("stalled", lambda r: report_stalled(r, results.get("relaylatency"), volt)),
            ("pg-ingest", lambda r: report_pg_ingest(r, args.connections)),
            ("pg-two", lambda r: report_pg_two(r, args.connections)),
            ("pg-drain", lambda r: report_pg_drain(r)),
        ):
            if key in results:
                more_problems, more_checks = reporter(results[key])
                problems += more_problems
                checks += more_checks
        print_checks(checks)
        print(f"\ntotal runtime {results['runtime_s']:.0f} s")
        results["checks"] = checks
        results["problems"] = problems
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        out_file = OUT_DIR / "latest.json"
        out_file.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"results: {out_file.relative_to(REPO_DIR)}")
        if problems:
            print("\nPROBLEMS:", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            return 1
        missed = [c for c in checks if c["verdict"] == "FAIL"]
        if missed:
            print(
                "\nTARGETS MISSED: " + "; ".join(f"{c['phase']}: {c['what']}" for c in missed),
                file=sys.stderr,
            )
            return 3
        return 0
    finally:
        if postgres is not None:
            postgres.close()
        if args.keep:
            print(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        sys.exit(130)
