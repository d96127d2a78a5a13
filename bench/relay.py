"""Relay phases: voltd's `http` sink (`plugins/voltd_http`) against a minimal local receiver.

The receiver is `bench/receiver.c`, built here with the system C compiler: one epoll thread
that answers every request with an empty 200 at once and appends `<envelope id> <arrival time>`
per request to a file (CLOCK_MONOTONIC, the clock of Python's `time.monotonic()`), or, in stall
mode, accepts connections and never answers. It speaks plain HTTP on 127.0.0.1 and is pinned to
the CPU that voltd does not use (the client CPU, with wrk and the runner), so it never takes
voltd's CPU; it needs 10-30 µs of CPU per request.

- `run_relay` (relay): for `concurrency` 1, 4 and 16, the receiver's own ceiling (wrk with
  `-t1 -c N`, the same bodies, on voltd's CPU in voltd's place) and then voltd draining a
  backlog of `--relay-events` deliveries written into a fresh spool with `SpoolDB.insert`
  (as the drain phase does) to the receiver: deliveries/s from the receiver's first to last
  arrival. Target: voltd >= 0.8x what a plain client (httpx on trio, N tasks, nothing else:
  bench/relay_client.py) gets from the receiver at the same concurrency; wrk's ceiling is
  shown too.
- `run_relay_ingest` (relaylatency, stalled): voltd with the http sink added to the archive
  route (every event goes to the receiver too). Idle: a probe sends one event at a time at
  20/s for a few seconds; 200 -> arrival at the receiver per event (target p50 <= 20 ms).
  Then the standard wrk ingest load with the probe alongside: the same latency under load.
  The stalled run is the same daemon, config and load with the receiver stalled; its accepted
  req/s against the healthy run's is the `stalled` target (>= 0.9x).
"""

from __future__ import annotations

import functools
import json
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base import (
    BENCH_DIR,
    DRAIN_TIMEOUT,
    HOST,
    NOISY_SHARE,
    OUT_DIR,
    WARMUP_SECONDS,
    WEBHOOK_PATH,
    BenchError,
    indent,
    tail,
)
from load import WrkRun, ensure_tool, percentiles, run_wrk, summarize, wrk_load
from probe import Probe, Sample
from report import check, fmt, noisy_note, print_load_notes, ratio_check, server_exit_problems
from servers import (
    Server,
    cpu_busy_seconds,
    cpu_seconds,
    finish_server,
    free_port,
    launch_voltd,
    pin_to,
    send_sanity,
)
from sinks import (
    SinkReader,
    expected_deliveries,
    read_appended,
    spool_items,
    spool_pending,
    wait_drained,
)
from stages import RELAY_STAGES, profile_finish, profile_report, profile_start
from workload import RELAY_SINK, Setup, make_events, voltd_config, write_requests_file

from voltd.spool import SpoolDB

RECEIVER_SOURCE = BENCH_DIR / "receiver.c"
RELAY_CLIENT = BENCH_DIR / "relay_client.py"
RELAY_PATH = "/relay"
CONCURRENCIES = (1, 4, 16)
RELAY_TARGET_RATIO = 0.8
IDLE_P50_TARGET_MS = 20.0
STALLED_TARGET_RATIO = 0.9
PROBE_RATE = 20.0  # relay latency probe, events per second, one at a time
IDLE_SECONDS = 5
# The http sink's `timeout` in the ingest runs: short, so that during the stalled run's load
# the sink times out, is paused, retried and times out again several times (the whole
# failure path runs under load, not just one request hanging); the healthy run has the same.
LOAD_TIMEOUT = "2s"
PREFILL_CHUNK = 5000
POLL = 0.02
ARRIVAL_WAIT = 30.0  # after a probe, how long its events may take to reach the receiver
# wrk sends each body with this header in place of the signature (the sink sends none).
TAG_HEADER = "X-Bench-Tag"
RECEIVER_NOTE = (
    "bench/receiver.c (C, one epoll thread, plain HTTP/1.1 keep-alive, answers an empty 200 at "
    "once, logs envelope id + arrival time)"
)


# -- the receiver -----------------------------------------------------------------------------


@functools.cache
def build_receiver(workdir: Path) -> Path:
    """Compile bench/receiver.c into the run's directory (once per run)."""
    cc = shutil.which("cc") or ensure_tool("gcc", ["gcc", "libc6-dev"])
    binary = workdir / "receiver"
    cmd = [cc, "-O2", "-Wall", "-o", str(binary), str(RECEIVER_SOURCE)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(
            f"could not build the relay receiver: {shlex.join(cmd)}\n{indent(done.stderr[-2000:])}"
        )
    return binary


def _listening(port: int) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return True
        except OSError:
            return False

    return probe


@dataclass
class Receiver:
    """One receiver process: `ok` (answers 200 at once, logs arrivals) or `stall`."""

    binary: Path
    mode: str
    directory: Path
    tag: str
    cpu: int | None
    port: int = 0
    log: Path | None = None
    server: Server | None = None

    def start(self) -> Receiver:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cmd = [str(self.binary), str(self.port), self.mode]
        if self.mode == "ok":
            self.log = self.directory / f"{self.tag}.arrivals"
            cmd.append(str(self.log))
        self.server = Server(
            name=f"receiver ({self.mode})",
            cmd=cmd,
            cwd=self.directory,
            log_path=self.directory / f"{self.tag}.out",
        )
        self.server.start(self.cpu)
        self.server.wait_ready(_listening(self.port), timeout=10)
        return self

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{RELAY_PATH}"

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def stop(self) -> int | None:
        if self.server is None:
            return None
        self.server.stop()
        return self.server.exit_code


@dataclass
class Arrivals:
    """Reads the receiver's arrival log as it grows: first arrival per envelope id (in
    `time.monotonic()` seconds), requests and repeats."""

    path: Path | None
    offsets: dict[Path, int] = field(default_factory=dict)
    at: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    repeats: int = 0
    first: float | None = None
    last: float | None = None
    #: When the last new id arrived (the drain's end when all are in).
    last_new: float | None = None

    def poll(self) -> int:
        """Read what was appended; return how many distinct ids have arrived."""
        if self.path is None:
            return 0
        data = read_appended(self.path, self.offsets)
        at = self.at
        for line in data.splitlines():
            eid, _, ns = line.partition(b" ")
            t = int(ns) / 1e9
            self.requests += 1
            if self.first is None:
                self.first = t
            self.last = t
            key = eid.decode()
            if key in at:
                self.repeats += 1
            else:
                at[key] = t
                self.last_new = t
        return len(at)

    def count_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.at.values() if start <= t <= end)

    def wait_for(self, ids: Sequence[str], timeout: float) -> list[str]:
        """Poll until every id has arrived or `timeout`; return the ids still missing."""
        deadline = time.monotonic() + timeout
        missing = list(ids)
        while True:
            self.poll()
            missing = [i for i in missing if i not in self.at]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(POLL)


def relay_sink(url: str, concurrency: int, timeout: str | None = None) -> str:
    """The `[sinks.relay]` table (DESIGN.md §6): the envelope POSTed byte for byte to `url`."""
    lines = ['type = "http"', f'url = "{url}"', f"concurrency = {concurrency}"]
    if timeout is not None:
        lines.append(f'timeout = "{timeout}"')
    return "\n".join(lines)


def _count_lines(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


# -- relay: throughput ------------------------------------------------------------------------


def run_relay(setup: Setup) -> dict[str, Any]:
    """Per concurrency: the receiver's ceiling with wrk, then voltd draining a backlog to it."""
    args = setup.args
    binary = build_receiver(setup.workdir)
    directory = setup.workdir / "relay"
    template = directory / "template"
    template.mkdir(parents=True)
    n = args.relay_events
    print(f"\n[relay] writing a backlog of {n} events for the http sink into a spool", flush=True)
    t0 = time.monotonic()
    now = time.time()
    events = []
    db = SpoolDB(template / "spool.db")
    try:
        for i in range(0, n, PREFILL_CHUNK):
            chunk = make_events(min(PREFILL_CHUNK, n - i), (args.seed + 11) * 1_000_003 + i, now)
            db.insert(spool_items(chunk, (RELAY_SINK,)))
            events.extend(chunk)
    finally:
        db.close()
    requests_file = directory / "relay.requests"
    write_requests_file(requests_file, events, ["-"] * n)
    out: dict[str, Any] = {
        "events": n,
        "prefill_s": time.monotonic() - t0,
        "avg_body_bytes": round(sum(len(e.body) for e in events) / n),
        "receiver": RECEIVER_NOTE,
        "receiver_cpu": setup.client_cpu,
        "voltd_cpu": setup.server_cpu,
        "ceiling_seconds": args.duration,
        "concurrency": {},
    }
    ids = [e.id for e in events]
    for c in CONCURRENCIES:
        row: dict[str, Any] = {}
        out["concurrency"][str(c)] = row
        for key, fn in (
            ("ceiling", lambda c=c: _ceiling(setup, binary, directory, requests_file, c)),
            ("voltd", lambda c=c: _drain(setup, binary, directory, template, ids, c)),
            ("httpx", lambda c=c: _client_alone(setup, binary, directory, events, c)),
        ):
            try:
                row[key] = fn()
            except BenchError as exc:
                print(f"[relay] concurrency {c}: {key}: error: {exc}", flush=True)
                row[key] = {"error": str(exc)}
        rate = row["voltd"].get("per_s")
        ceiling = row["ceiling"].get("accepted_per_s")
        row["ratio"] = rate / ceiling if rate and ceiling else None
        alone = row["httpx"].get("per_s")
        row["ratio_to_client_alone"] = rate / alone if rate and alone else None
    return out


def _ceiling(
    setup: Setup, binary: Path, directory: Path, requests_file: Path, c: int
) -> dict[str, Any]:
    """wrk in voltd's place (voltd's CPU), the same bodies, `c` connections: the most this
    receiver answers on its CPU. Its CPU share says whether it or the client was the limit."""
    print(
        f"[relay] receiver ceiling: wrk -t1 -c{c} for {setup.args.duration} s "
        f"(wrk on CPU {setup.server_cpu}, receiver on CPU {setup.client_cpu})",
        flush=True,
    )
    receiver = Receiver(binary, "ok", directory, f"ceiling-c{c}", setup.client_cpu).start()
    try:
        run = run_wrk(
            setup.wrk,
            receiver.url,
            requests_file,
            setup.args.duration,
            c,
            setup.server_cpu,
            setup.workdir,
            f"relay-ceiling-c{c}",
            receiver.pid,
            setup.client_cpu,
            sig_header=TAG_HEADER,
        )
    finally:
        exit_code = receiver.stop()
    out = summarize(run)
    out["receiver_exit_code"] = exit_code
    out["receiver_lines"] = _count_lines(receiver.log)
    if receiver.log is not None:
        receiver.log.unlink(missing_ok=True)  # a million lines at these rates
    return out


def _drain(
    setup: Setup, binary: Path, directory: Path, template: Path, ids: list[str], c: int
) -> dict[str, Any]:
    """voltd started on a copy of the pre-filled spool, its http sink at `concurrency = c`,
    timed at the receiver until every event has arrived."""
    n = len(ids)
    d = directory / f"c{c}"
    d.mkdir()
    for f in template.glob("spool.db*"):
        shutil.copyfile(f, d / f.name)
    receiver = Receiver(binary, "ok", d, "receiver", setup.client_cpu).start()
    port, admin_port = free_port(), free_port()
    config = voltd_config(
        port, admin_port, keys_dir=setup.voltd_dir, relay=relay_sink(receiver.url, c)
    )
    arrivals = Arrivals(receiver.log)
    out: dict[str, Any] = {"concurrency": c, "events": n}
    server: Server | None = None
    profiler = None
    profile_file = OUT_DIR / f"voltd-relay-c{c}-profile.txt"
    timeout = DRAIN_TIMEOUT + n / 100
    print(
        f"[relay] voltd, http sink concurrency {c}: draining {n} events (up to {timeout:.0f} s)",
        flush=True,
    )
    try:
        started = time.monotonic()
        server = launch_voltd(
            f"voltd (relay, concurrency {c})", d, config, admin_port, setup.server_cpu
        )
        out["server_command"] = shlex.join(server.cmd)
        out["ready_s"] = time.monotonic() - started
        if setup.args.profile:
            OUT_DIR.mkdir(parents=True, exist_ok=True)
            profiler = profile_start(server.pid, None, profile_file)
        mark: tuple[float, float | None, tuple[float, float] | None, float | None, int] | None
        mark = None  # at the first arrival seen: time, voltd CPU, its core, receiver CPU, reqs
        done: float | None = None
        while time.monotonic() - started < timeout:
            got = arrivals.poll()
            if mark is None and got:
                mark = (
                    time.monotonic(),
                    cpu_seconds(server.pid),
                    cpu_busy_seconds(setup.server_cpu),
                    cpu_seconds(receiver.pid),
                    arrivals.requests,
                )
            if got >= n:
                done = time.monotonic()
                break
            if server.proc is not None and server.proc.poll() is not None:
                raise BenchError(f"voltd died while draining:\n{indent(tail(server.log_path))}")
            time.sleep(POLL)
        end = done if done is not None else time.monotonic()
        if profiler is not None:
            out["profile"] = profile_finish(profiler, profile_file, stop=True, stages=RELAY_STAGES)
        if mark is not None and end > mark[0]:
            seconds = end - mark[0]
            voltd_cpu, core, recv_cpu = (
                cpu_seconds(server.pid),
                cpu_busy_seconds(setup.server_cpu),
                cpu_seconds(receiver.pid),
            )
            sent = arrivals.requests - mark[4]
            if voltd_cpu is not None and mark[1] is not None:
                out["voltd_cpu_busy"] = (voltd_cpu - mark[1]) / seconds
                out["voltd_cpu_ms_per_delivery"] = (
                    (voltd_cpu - mark[1]) * 1000 / sent if sent else None
                )
                if core is not None and mark[2] is not None:
                    out["server_core_other_share"] = (
                        max(0.0, (core[0] - mark[2][0]) - (voltd_cpu - mark[1])) / seconds
                    )
            if recv_cpu is not None and mark[3] is not None:
                out["receiver_cpu_busy"] = (recv_cpu - mark[3]) / seconds
        got = len(arrivals.at)
        first, last = arrivals.first, arrivals.last_new
        out.update(
            {
                "complete": done is not None,
                "arrived": got,
                "missing": n - got if got < n else 0,
                "requests": arrivals.requests,
                "repeats": arrivals.repeats,
                "first_arrival_s": None if first is None else first - started,
                "drain_s": None if first is None or last is None else last - first,
                "per_s": (
                    (got - 1) / (last - first)
                    if done is not None and first is not None and last and last > first
                    else None
                ),
                # With start-up (process start to the last arrival): what an operator sees.
                "per_s_from_start": (
                    got / (last - started) if done is not None and last is not None else None
                ),
            }
        )
    except BenchError as exc:
        print(f"[relay] concurrency {c}: error: {exc}", flush=True)
        out["error"] = str(exc)
    finally:
        finish_server(server, out, f"voltd-relay-c{c}")
        out["receiver_exit_code"] = receiver.stop()
    try:
        out["spool_after_stop"] = spool_pending(d / "spool.db", RELAY_SINK)["status"].get(
            RELAY_SINK, {}
        )
    except Exception as exc:  # noqa: BLE001 - a look afterwards must not lose the numbers
        out["spool_after_stop"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _client_alone(
    setup: Setup, binary: Path, directory: Path, events: list[Any], c: int
) -> dict[str, Any]:
    """For reading the ratio: what voltd's HTTP client stack alone (`voltd.http.HttpClient`
    over httpx on trio, no spool, no delivery worker) reaches on voltd's CPU with `c` tasks."""
    seconds = min(setup.args.duration, 5)
    body_file = directory / "relay-client.body"
    body_file.write_bytes(events[0].body)
    receiver = Receiver(binary, "ok", directory, f"client-c{c}", setup.client_cpu).start()
    cmd = [sys.executable, str(RELAY_CLIENT), receiver.url, str(body_file), str(c), str(seconds)]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            preexec_fn=pin_to(setup.server_cpu),
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{RELAY_CLIENT.name} did not finish") from exc
    finally:
        receiver.stop()
        if receiver.log is not None:
            receiver.log.unlink(missing_ok=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RELAY_CLIENT ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(
            f"{shlex.join(cmd)} failed ({done.returncode}):\n{indent(done.stderr[-2000:])}"
        )
    result: dict[str, Any] = json.loads(line.removeprefix("RELAY_CLIENT "))
    result["command"] = shlex.join(cmd)
    return result


# -- relaylatency and stalled: ingest with the relay ------------------------------------------


def _samples(probe: Probe, window: tuple[float, float] | None) -> list[Sample]:
    """Acknowledged probe samples, those sent inside `window` (unix times) if given. Call
    once the probe stopped sending (no lock needed then)."""
    return [
        s
        for s in probe.samples.values()
        if s.status is not None
        and 200 <= s.status < 300
        and s.acked is not None
        and (window is None or window[0] <= s.sent_unix <= window[1])
    ]


def _latency(
    probe: Probe, arrivals: Arrivals | None, window: tuple[float, float] | None
) -> dict[str, Any]:
    """200 -> arrival at the receiver for each acknowledged probe event."""
    every = list(probe.samples.values())
    if window is not None:
        every = [s for s in every if window[0] <= s.sent_unix <= window[1]]
    acked = _samples(probe, window)
    out: dict[str, Any] = {
        "rate_per_s": PROBE_RATE,
        "sent": len(every),
        "acked": len(acked),
        "first_error": next((s.error for s in every if s.error), None),
        "statuses": sorted({str(s.status) for s in every}),
        "ack_ms": percentiles([((s.acked or 0) - s.sent) * 1000 for s in acked], (50, 99)),
        "ran_out_of_events": probe.ran_out,
    }
    if arrivals is None:
        return out
    missing = arrivals.wait_for([s.id for s in acked], ARRIVAL_WAIT)
    lat = [(arrivals.at[s.id] - (s.acked or 0)) * 1000 for s in acked if s.id in arrivals.at]
    spread = percentiles(lat, (50, 90, 99))
    if lat:
        spread["min"] = min(lat)
    out.update(
        {
            "arrived": len(lat),
            "missing": len(missing),
            "ack_to_receiver_ms": spread,
            "sent_to_receiver_ms": percentiles(
                [(arrivals.at[s.id] - s.sent) * 1000 for s in acked if s.id in arrivals.at],
                (50, 99),
            ),
        }
    )
    return out


def run_relay_ingest(setup: Setup, mode: str) -> dict[str, Any]:
    """voltd with the http sink on the archive route and the receiver in `mode` (`ok`:
    healthy, `stall`: never answers): the idle probe, then the standard load with the probe."""
    args = setup.args
    binary = build_receiver(setup.workdir)
    name = "relaylatency" if mode == "ok" else "stalled"
    directory = setup.workdir / name
    receiver = Receiver(binary, mode, directory, "receiver", setup.client_cpu).start()
    port, admin_port = free_port(), free_port()
    url = f"https://{HOST}:{port}{WEBHOOK_PATH}"
    c = args.relay_concurrency
    config = voltd_config(
        port,
        admin_port,
        keys_dir=setup.voltd_dir,
        relay=relay_sink(receiver.url, c, LOAD_TIMEOUT),
    )
    out: dict[str, Any] = {
        "receiver_mode": mode,
        "receiver": RECEIVER_NOTE,
        "receiver_cpu": setup.client_cpu,
        "relay_concurrency": c,
        "relay_timeout": LOAD_TIMEOUT,
    }
    what = "healthy" if mode == "ok" else "stalled (accepts, never answers)"
    print(f"\n[{name}] voltd with the http sink on every event; receiver {what}", flush=True)
    server: Server | None = None
    idle: Probe | None = None
    probe: Probe | None = None
    arrivals = Arrivals(receiver.log)
    try:
        server = launch_voltd(f"voltd ({name})", directory, config, admin_port, setup.server_cpu)
        out["server_command"] = shlex.join(server.cmd)
        sanity_id = send_sanity(setup, port, server)
        print(
            f"[{name}] idle: {PROBE_RATE:g} events/s, one at a time, for {IDLE_SECONDS} s",
            flush=True,
        )
        idle = Probe(
            port,
            setup.certfile,
            setup.relay_idle_events,
            setup.relay_idle_signatures,
            PROBE_RATE,
            None,
        )
        idle.start()
        time.sleep(IDLE_SECONDS)
        idle.stop_sending()
        out["idle"] = _latency(idle, arrivals if mode == "ok" else None, None)
        print(f"[{name}] warm-up {WARMUP_SECONDS} s", flush=True)
        warm = wrk_load(setup, url, setup.warmup_file, WARMUP_SECONDS, f"{name}-warmup", server)
        probe = Probe(
            port,
            setup.certfile,
            setup.relay_probe_events,
            setup.relay_probe_signatures,
            PROBE_RATE,
            None,
        )
        print(
            f"[{name}] measuring {args.duration} s with {args.connections} connections, "
            f"relay probe at {PROBE_RATE:g}/s",
            flush=True,
        )
        probe.start()
        run = wrk_load(setup, url, setup.main_file, args.duration, name, server)
        probe.stop_sending()
        out.update(summarize(run))
        if mode == "stall":
            out["relay_backlog_at_load_end"] = spool_pending(directory / "spool.db", RELAY_SINK)
        if server.proc is not None and server.proc.poll() is not None:
            raise BenchError(f"voltd died during the load:\n{indent(tail(server.log_path))}")
        window = (run.load_end - out["duration_s"], run.load_end)
        out["load"] = _latency(probe, arrivals if mode == "ok" else None, window)
        if mode == "ok":
            out["relay"] = _relay_delivered(arrivals, run, sanity_id, idle, warm, probe)
        reader = SinkReader(directory)
        wanted = expected_deliveries(run.accepted_ids, setup.main_events)
        drain = wait_drained(reader, wanted, run.result["ok"], DRAIN_TIMEOUT)
        out["file_sinks"] = {
            "all_delivered": drain.complete,
            "wait_s": drain.seconds,
            "missing": {s: len(m) for s, m in drain.missing.items()},
        }
    except BenchError as exc:
        print(f"[{name}] error: {exc}", flush=True)
        out["error"] = str(exc)
    finally:
        for p in (idle, probe):
            if p is not None:
                p.close()
        finish_server(server, out, f"voltd-{name}")
        out["receiver_exit_code"] = receiver.stop()
    return out


def _relay_delivered(
    arrivals: Arrivals, run: WrkRun, sanity_id: str, idle: Probe, warm: WrkRun, probe: Probe
) -> dict[str, Any]:
    """After the load: did every acknowledged event reach the receiver, and how long after
    the load ended? (The relay may fall behind ingest; then the backlog drains here.)"""
    offset = time.time() - time.monotonic()  # load_end is unix time; arrivals are monotonic
    load_end = run.load_end - offset
    load_start = load_end - run.result["duration_us"] / 1e6
    wanted = list(
        dict.fromkeys(
            [
                sanity_id,
                *idle.acked_ids(),
                *warm.accepted_ids,
                *run.accepted_ids,
                *probe.acked_ids(),
            ]
        )
    )
    arrivals.poll()
    during = arrivals.count_between(load_start, load_end)
    at_end = sum(1 for i in run.accepted_ids if arrivals.at.get(i, float("inf")) <= load_end)
    missing = arrivals.wait_for(wanted, DRAIN_TIMEOUT)
    last = max((arrivals.at[i] for i in wanted if i in arrivals.at), default=None)
    return {
        "acked": len(wanted),
        "missing": len(missing),
        "repeats": arrivals.repeats,
        "arrivals_per_s_during_load": during / (load_end - load_start),
        "load_events_in_at_load_end": at_end,
        "load_events_acked": len(set(run.accepted_ids)),
        "drained_s_after_load": None if missing or last is None else max(0.0, last - load_end),
    }


# -- reporting --------------------------------------------------------------------------------


def report_relay(r: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Print the relay throughput table; return (problems, checks)."""
    print()
    if "concurrency" not in r:
        print(f"relay: FAILED: {r.get('error', '?').splitlines()[0]}")
        return [f"relay: {r.get('error')}"], [
            check("relay", "deliveries/s vs receiver ceiling", "-", "", None)
        ]
    print(
        f"relay: voltd's http sink (CPU {r['voltd_cpu']}) draining a backlog of {r['events']} "
        f"events (~{r['avg_body_bytes']} B each)\n  to {r['receiver']}\n  on CPU "
        f"{r['receiver_cpu']}; receiver ceiling: wrk -t1 -cN in voltd's place, the same bodies, "
        f"{r['ceiling_seconds']} s"
    )
    header = (
        f"{'concurrency':>11} {'receiver req/s':>15} {'(its CPU)':>9} {'voltd deliv/s':>14} "
        f"{'ratio':>7} {'voltd CPU':>10} {'CPU ms/deliv':>13} {'receiver CPU':>13} "
        f"{'HttpClient alone/s':>19}"
    )
    print(header)
    print("-" * len(header))
    problems: list[str] = []
    checks: list[dict[str, Any]] = []
    for c, row in r["concurrency"].items():
        ceil, v, h = row.get("ceiling", {}), row.get("voltd", {}), row.get("httpx", {})
        busy = v.get("voltd_cpu_busy")
        rbusy = v.get("receiver_cpu_busy")
        cbusy = ceil.get("server_cpu_busy")
        print(
            f"{c:>11} {fmt(ceil.get('accepted_per_s'), ',.0f'):>15} "
            f"{fmt(cbusy * 100 if cbusy is not None else None, '.0f') + '%':>9} "
            f"{fmt(v.get('per_s'), ',.0f'):>14} {fmt(row.get('ratio'), '.3f') + 'x':>7} "
            f"{fmt(busy * 100 if busy is not None else None, '.0f') + '%':>10} "
            f"{fmt(v.get('voltd_cpu_ms_per_delivery'), '.3f'):>13} "
            f"{fmt(rbusy * 100 if rbusy is not None else None, '.1f') + '%':>13} "
            f"{fmt(h.get('per_s'), ',.0f'):>19}"
        )
        for key, part in (("ceiling", ceil), ("voltd", v), ("HttpClient alone", h)):
            if "error" in part:
                print(f"  concurrency {c}, {key}: FAILED: {part['error'].splitlines()[0]}")
                if key != "HttpClient alone":  # informational only
                    problems.append(f"relay concurrency {c} {key}: {part['error']}")
        if ceil.get("non2xx") or any(ceil.get("socket_errors", {}).values()):
            problems.append(
                f"relay concurrency {c}: receiver ceiling run had non-2xx {ceil.get('non2xx')} "
                f"or socket errors {ceil.get('socket_errors')}"
            )
        if v.get("missing"):
            problems.append(
                f"relay concurrency {c}: {v['missing']} of {v['events']} events never reached "
                f"the receiver"
            )
        if v and "error" not in v:
            problems += server_exit_problems(f"relay concurrency {c}", v)
        sp = v.get("spool_after_stop") or {}
        if v.get("complete") and sp and "error" not in sp and sp.get("pending", 0):
            print(
                f"  concurrency {c}: after a clean stop the spool still had {sp['pending']} "
                f"relay deliveries pending though every event had arrived (sent, outcome not "
                f"recorded: they would be sent again)"
            )
        if v.get("repeats"):
            print(f"  concurrency {c}: {v['repeats']} events arrived more than once")
        note = noisy_note(ceil) or (
            "noisy: other work on voltd's CPU"
            if (v.get("server_core_other_share") or 0) > NOISY_SHARE
            else ""
        )
        # The target compares with a plain client at the same concurrency: the same HTTP stack
        # (httpx on trio) with N tasks and nothing else. wrk, in C, shows the receiver's own
        # ceiling, which no Python client comes near (informational).
        ratio = row.get("ratio_to_client_alone")
        checks.append(
            ratio_check(
                "relay",
                f"deliveries/s vs a plain client, concurrency {c}",
                ratio,
                RELAY_TARGET_RATIO,
                note,
                spec=".3f",
            )
        )
    print(
        "  (its CPU): the receiver's CPU share under wrk. voltd deliv/s: from the receiver's\n"
        "  first to last arrival (start-up excluded); voltd CPU, receiver CPU: shares of one core\n"
        "  meanwhile. HttpClient alone: voltd.http.HttpClient on trio with N tasks, no spool, no\n"
        "  delivery worker, on voltd's CPU (bench/relay_client.py)"
    )
    print(
        "  voltd deliveries/s vs HttpClient alone: "
        + ", ".join(
            f"{fmt(row.get('ratio_to_client_alone'), '.2f')}x at {c}"
            for c, row in r["concurrency"].items()
        )
        + " (what the spool and the delivery worker leave of the client stack's rate)"
    )
    for c, row in r["concurrency"].items():
        v = row.get("voltd", {})
        if v.get("profile"):
            print(f"  concurrency {c}: " + "\n  ".join(profile_report(v["profile"])))
    return problems, checks


def _lat_line(label: str, p: dict[str, Any]) -> str:
    lat = p.get("ack_to_receiver_ms") or {}
    return (
        f"  {label:<31} {p.get('arrived', 0):>4} events  min {fmt(lat.get('min'), '.1f'):>6}"
        f"  p50 {fmt(lat.get('p50'), '.1f'):>6}  p90 {fmt(lat.get('p90'), '.1f'):>6}"
        f"  p99 {fmt(lat.get('p99'), '.1f'):>6}  max {fmt(lat.get('max'), '.1f'):>6} ms"
    )


def _ingest_problems(name: str, r: dict[str, Any]) -> list[str]:
    problems = server_exit_problems(name, r)
    if "accepted_per_s" in r:
        if r["non2xx"]:
            problems.append(f"{name}: {r['non2xx']} non-2xx answers {r['status_codes']}")
        errs = {k: v for k, v in r["socket_errors"].items() if v}
        if errs:
            problems.append(f"{name}: socket errors {errs}")
    fs = r.get("file_sinks")
    if fs and not fs["all_delivered"]:
        problems.append(f"{name}: file sinks missing acknowledged events: {fs['missing']}")
    for part in ("idle", "load"):
        p = r.get(part) or {}
        bad = [s for s in p.get("statuses", []) if not s.startswith("2")]
        if bad:
            problems.append(
                f"{name}: {part} probe answers other than 2xx: {bad}; first error: "
                f"{p.get('first_error')}"
            )
    return problems


def report_relaylatency(
    r: dict[str, Any], with_checks: bool = True
) -> tuple[list[str], list[dict[str, Any]]]:
    """Print the relay latency section (the healthy ingest run); return (problems, checks)."""
    print()
    problems = _ingest_problems("relaylatency", r)
    if "idle" not in r:
        print(f"relaylatency: FAILED: {r.get('error', '?').splitlines()[0]}")
        return problems, [check("relaylatency", "idle p50, 200 -> receiver", "-", "", None)]
    if not with_checks:
        print("relaylatency (not selected; run as the stalled phase's healthy baseline):")
    print(
        f"relaylatency: voltd's 200 -> the request at the receiver (http sink on every event, "
        f"concurrency {r['relay_concurrency']};\n  receiver on CPU {r.get('receiver_cpu')}; "
        f"both times CLOCK_MONOTONIC)"
    )
    idle, load = r["idle"], r.get("load") or {}
    print(_lat_line(f"idle ({PROBE_RATE:g}/s, one at a time)", idle))
    if load:
        print(_lat_line("under the ingest load (probe)", load))
    for label, p in (("idle", idle), ("under load", load)):
        if p.get("missing"):
            problems.append(
                f"relaylatency: {p['missing']} acknowledged {label} probe events never reached "
                f"the receiver"
            )
    if "accepted_per_s" in r:
        print_load_notes("relaylatency", r)
        lat = r.get("latency_ms") or r.get("wrk_latency_ms") or {}
        busy = r.get("server_cpu_busy")
        print(
            f"  ingest meanwhile: {r['accepted_per_s']:.1f} accepted req/s, ack p50 "
            f"{fmt(lat.get('p50'))} ms, p99 {fmt(lat.get('p99'))} ms, voltd CPU "
            f"{fmt(busy * 100 if busy else None, '.0f')}%, CPU ms/req "
            f"{fmt(r.get('server_cpu_ms_per_request'), '.3f')}"
        )
    relay = r.get("relay")
    if relay:
        drained = relay["drained_s_after_load"]
        print(
            f"  relay during the load: {relay['arrivals_per_s_during_load']:.0f} arrivals/s; "
            f"{relay['load_events_in_at_load_end']} of {relay['load_events_acked']} "
            f"acknowledged load events were at the receiver when the load ended; "
            + (
                f"all {relay['acked']} acknowledged events there {drained:.2f} s after it"
                if drained is not None
                else f"{relay['missing']} acknowledged events NEVER arrived"
            )
        )
        if relay["missing"]:
            problems.append(
                f"relaylatency: {relay['missing']} acknowledged events never reached the receiver"
            )
        if relay["repeats"]:
            print(f"  {relay['repeats']} events arrived more than once")
    fs = r.get("file_sinks")
    if fs:
        print(
            "  the file sinks had every acknowledged event"
            if fs["all_delivered"]
            else f"  the file sinks were MISSING events: {fs['missing']}"
        )
    p50 = (idle.get("ack_to_receiver_ms") or {}).get("p50")
    checks = [
        check(
            "relaylatency",
            "idle p50, voltd's 200 -> request at the receiver",
            fmt(p50, ".1f") + " ms",
            f"<= {IDLE_P50_TARGET_MS:g} ms",
            None if p50 is None else p50 <= IDLE_P50_TARGET_MS,
        )
    ]
    return problems, checks if with_checks else []


def report_stalled(
    r: dict[str, Any], healthy: dict[str, Any] | None, normal: dict[str, Any] | None
) -> tuple[list[str], list[dict[str, Any]]]:
    """Print the stalled-receiver section; return (problems, checks)."""
    print()
    problems = _ingest_problems("stalled", r)
    if "accepted_per_s" not in r:
        print(f"stalled: FAILED: {r.get('error', '?').splitlines()[0]}")
        return problems, [check("stalled", "req/s, receiver stalled vs healthy", "-", "", None)]
    base = (healthy or {}).get("accepted_per_s")
    ratio = r["accepted_per_s"] / base if base else None
    lat = r.get("latency_ms") or r.get("wrk_latency_ms") or {}
    print(
        f"stalled: the same config and load with the receiver stalled (accepts, never "
        f"answers); http sink timeout {r['relay_timeout']}, concurrency {r['relay_concurrency']}"
    )
    print_load_notes("stalled", r)
    print(
        f"  accepted req/s {r['accepted_per_s']:.1f}"
        + (
            f" vs {base:.1f} with a healthy receiver = {ratio:.2f}x"
            if ratio is not None
            else " (no healthy-receiver run to compare with)"
        )
        + f"; p50 {fmt(lat.get('p50'))} ms, p99 {fmt(lat.get('p99'))} ms, "
        f"CPU ms/req {fmt(r.get('server_cpu_ms_per_request'), '.3f')}"
    )
    normal_rate = (normal or {}).get("accepted_per_s")
    if normal_rate:
        print(
            f"  (the ingest phase's voltd, without the relay sink: {normal_rate:.1f} req/s; "
            f"healthy relay {fmt(base / normal_rate if base else None)}x of that, stalled "
            f"{r['accepted_per_s'] / normal_rate:.2f}x)"
        )
    backlog = r.get("relay_backlog_at_load_end")
    if backlog:
        print(
            f"  relay backlog at the end of the load: {backlog['pending']} pending deliveries, "
            f"{backlog['attempts_made']} failed attempts so far"
        )
    fs = r.get("file_sinks")
    if fs:
        print(
            "  the file sinks had every acknowledged event meanwhile (not held up)"
            if fs["all_delivered"]
            else f"  the file sinks were MISSING events: {fs['missing']}"
        )
    return problems, [
        ratio_check(
            "stalled",
            "req/s, relay receiver stalled vs healthy",
            ratio,
            STALLED_TARGET_RATIO,
            noisy_note(r, healthy),
        )
    ]
