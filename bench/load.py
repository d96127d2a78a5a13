"""The load: wrk with requests.lua, the latencies it saw (its coordinated-omission correction
undone), and the numbers one load run is reported with.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shlex
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base import LUA_SCRIPT, SIG_HEADER, WEBHOOK_PATH, WRK_TIMEOUT_SECONDS, BenchError, indent
from servers import Server, cpu_busy_seconds, cpu_seconds, pin_to
from workload import Setup


def ensure_tool(tool: str, packages: Sequence[str]) -> str:
    """A program from Debian's packages; installed on the spot when running as root, else
    say how."""
    found = shutil.which(tool)
    if found:
        return found
    command = ["apt-get", "install", "-y", *packages]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchError(f"{tool} is not installed; install it with: sudo {shlex.join(command)}")
    print(f"{tool} is not installed; running: {shlex.join(command)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(command, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"could not install {tool}:\n{indent(done.stderr[-2000:])}")
    found = shutil.which(tool)
    if not found:
        raise BenchError(f"{tool} was installed but is not on PATH")
    return found


def ensure_wrk() -> str:
    """wrk from Debian; installed on the spot when running as root, else say how."""
    return ensure_tool("wrk", ["wrk"])


@dataclass
class WrkRun:
    """What one wrk invocation reported, plus the raw files it left behind."""

    command: list[str]
    result: dict[str, Any]
    accepted_ids: list[str]
    latency_ms: dict[str, float] | None
    latency_note: str | None
    wrk_cpu_seconds: float
    server_cpu_seconds: float | None
    # Everything that ran on the server's CPU during the window, and the hypervisor's steal.
    core_busy_seconds: float | None
    core_steal_seconds: float | None
    # Everything else on wrk's CPU: on a VM a busy neighbour core can slow the server's too.
    client_core_other_seconds: float | None
    load_end: float  # unix time


def run_wrk(
    wrk: str,
    url: str,
    requests_file: Path,
    duration: int,
    connections: int,
    cpu: int | None,
    workdir: Path,
    tag: str,
    server_pid: int,
    server_cpu: int | None,
    sig_header: str = SIG_HEADER,
) -> WrkRun:
    """Run wrk once and return its BENCH_RESULT, cross-checked and with raw percentiles.

    `sig_header` names the header that carries each request's first line (the relay phase
    sends unsigned bodies to its receiver under a header of its own).
    """
    ids_out = workdir / f"{tag}.accepted-ids"
    hist_out = workdir / f"{tag}.histogram"
    for p in (ids_out, hist_out):
        p.unlink(missing_ok=True)
    command = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        f"{WRK_TIMEOUT_SECONDS}s",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]
    env = dict(
        os.environ,
        BENCH_EVENTS=str(requests_file),
        BENCH_PATH=urllib.parse.urlsplit(url).path or WEBHOOK_PATH,
        BENCH_IDS_OUT=str(ids_out),
        BENCH_HIST_OUT=str(hist_out),
        BENCH_SIG_HEADER=sig_header,
    )
    cpu_before = cpu_seconds(server_pid)
    core_before = cpu_busy_seconds(server_cpu)
    client_before = cpu_busy_seconds(cpu)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=duration + 120,
            preexec_fn=pin_to(cpu),
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {duration + 120} s") from exc
    exit_time = time.time()
    cpu_after = cpu_seconds(server_pid)
    core_after = cpu_busy_seconds(server_cpu)
    client_after = cpu_busy_seconds(cpu)
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    runner_cpu = (self_after.ru_utime - self_before.ru_utime) + (
        self_after.ru_stime - self_before.ru_stime
    )
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(
            f"wrk failed (exit {done.returncode}).\n  command: {shlex.join(command)}\n"
            f"  stdout:\n{indent(done.stdout[-3000:])}\n  stderr:\n{indent(done.stderr[-3000:])}"
        )
    result = json.loads(line.removeprefix("BENCH_RESULT "))
    if done.stderr.strip():
        result["wrk_stderr"] = done.stderr.strip()[-2000:]
    # wrk's own count must equal what the script saw: every completed request, 2xx or not.
    if result["requests"] != result["ok"] + result["non2xx"]:
        raise BenchError(
            f"wrk counted {result['requests']} completed requests but the script saw "
            f"{result['ok']} 2xx + {result['non2xx']} other; refusing to report a wrong count"
        )
    accepted_ids = ids_out.read_text().split() if ids_out.exists() else []
    latency, note = raw_latency(hist_out, result, connections)
    end_us = result.get("load_end_unix_us")
    return WrkRun(
        command=command,
        result=result,
        accepted_ids=accepted_ids,
        latency_ms=latency,
        latency_note=note,
        wrk_cpu_seconds=wrk_cpu,
        server_cpu_seconds=(
            cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
        ),
        core_busy_seconds=core_after[0] - core_before[0] if core_before and core_after else None,
        core_steal_seconds=core_after[1] - core_before[1] if core_before and core_after else None,
        client_core_other_seconds=(
            max(0.0, client_after[0] - client_before[0] - wrk_cpu - runner_cpu)
            if client_before and client_after
            else None
        ),
        load_end=end_us / 1e6 if end_us else exit_time,
    )


def raw_latency(
    hist_path: Path, result: dict[str, Any], connections: int
) -> tuple[dict[str, float] | None, str | None]:
    """Percentiles of the latencies wrk actually observed.

    wrk "corrects" its histogram for coordinated omission before reporting: for every sample
    slower than twice the mean per-connection interval it adds synthetic samples. That models an
    open-loop client; ours is closed-loop (a webhook sender waits for the 200), so the bench
    undoes the correction exactly — the interval is derived from wrk's own summary — and
    checks that the recovered histogram holds exactly the completed requests. wrk's corrected
    figures stay in the JSON as `wrk_latency_ms`.
    """
    if result.get("histogram_note"):
        return None, result["histogram_note"]
    if not hist_path.exists():
        return None, "wrk wrote no histogram"
    final: dict[int, int] = {}
    for line in hist_path.read_text().splitlines():
        value, count = line.split()
        final[int(value)] = int(count)
    expected = result["requests"] - result["errors"]["timeout"]
    if sum(final.values()) == expected:
        observed = final
    else:
        per_conn = result["requests"] // connections
        if per_conn == 0:
            return None, "too few requests to undo wrk's latency correction"
        interval = result["duration_us"] // per_conn
        observed = {}
        # Within one residue class modulo the interval, each value > interval received the
        # counts of every larger value of the class; undo from the top down.
        running: dict[int, int] = {}
        for value in sorted(final, reverse=True):
            klass = value % interval
            above = running.get(klass, 0)
            count = final[value] - above if value > interval else final[value]
            observed[value] = count
            running[klass] = above + count
        if sum(observed.values()) != expected or min(observed.values()) < 0:
            return None, "could not undo wrk's latency correction; see wrk_latency_ms"
    values = sorted(v for v, c in observed.items() if c > 0)
    total = sum(observed[v] for v in values)
    out: dict[str, float] = {}
    for name, p in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)):
        rank = max(1, round(p / 100 * total + 0.5))  # wrk's own rank rule
        seen = 0
        for v in values:
            seen += observed[v]
            if seen >= rank:
                out[name] = v / 1000
                break
    out["mean"] = sum(v * observed[v] for v in values) / total / 1000
    out["max"] = values[-1] / 1000
    return out, None


def wrk_load(
    setup: Setup,
    url: str,
    requests_file: Path,
    seconds: int,
    tag: str,
    server: Server,
    connections: int | None = None,
) -> WrkRun:
    """run_wrk with the run's settings: its connections (unless given), pinning and work
    directory."""
    return run_wrk(
        setup.wrk,
        url,
        requests_file,
        seconds,
        setup.args.connections if connections is None else connections,
        setup.client_cpu,
        setup.workdir,
        tag,
        server.pid,
        setup.server_cpu,
    )


def summarize(run: WrkRun) -> dict[str, Any]:
    """The per-target numbers that go into the table and the JSON."""
    r = run.result
    seconds = r["duration_us"] / 1e6
    return {
        "accepted_per_s": r["ok"] / seconds if seconds else 0.0,
        "completed": r["requests"],
        "accepted": r["ok"],
        "non2xx": r["non2xx"],
        "status_codes": r["status_codes"],
        "first_error": r["first_error"],
        "socket_errors": {k: v for k, v in r["errors"].items() if k != "status"},
        "sent": r["sent"],
        "in_flight_at_end": r["sent"] - r["requests"],
        "events_in_pool": r["events"],
        "cycled": r["cycles"] > 0,
        "duration_s": seconds,
        "latency_ms": run.latency_ms,
        "latency_note": run.latency_note,
        "wrk_latency_ms": r["wrk_latency_ms"],
        "server_cpu_s": run.server_cpu_seconds,
        "server_cpu_busy": (
            run.server_cpu_seconds / seconds if run.server_cpu_seconds and seconds else None
        ),
        "server_cpu_ms_per_request": (
            run.server_cpu_seconds * 1000 / r["requests"]
            if run.server_cpu_seconds and r["requests"]
            else None
        ),
        "wrk_cpu_busy": run.wrk_cpu_seconds / seconds if seconds else None,
        # Other processes on the server's CPU (approximate: the window is slightly longer
        # than the load). Above a few percent the run was disturbed and is noisy.
        "server_core_other_share": (
            max(0.0, run.core_busy_seconds - run.server_cpu_seconds) / seconds
            if run.core_busy_seconds is not None and run.server_cpu_seconds is not None and seconds
            else None
        ),
        "client_core_other_share": (
            run.client_core_other_seconds / seconds
            if run.client_core_other_seconds is not None and seconds
            else None
        ),
        "server_core_steal_share": (
            run.core_steal_seconds / seconds
            if run.core_steal_seconds is not None and seconds
            else None
        ),
        "wrk_command": shlex.join(run.command),
    }


def percentiles(values: Iterable[float], points: Sequence[float] = (50, 99)) -> dict[str, float]:
    """Nearest-rank percentiles plus max, in the units given; empty input gives {}."""
    ordered = sorted(values)
    if not ordered:
        return {}
    out = {
        f"p{p:g}": ordered[min(len(ordered), max(1, math.ceil(p / 100 * len(ordered)))) - 1]
        for p in points
    }
    out["max"] = ordered[-1]
    return out
