"""One-command benchmark: voltd against the bare web stack it is built on, in the same run.

    uv run python bench/run.py [--duration 10] [--connections 16] [--events N] [--only bare|voltd]

Both servers get the same pre-signed, unique Volt webhooks over HTTPS from wrk (1 thread,
keep-alive connections), each after a short warm-up, with the server pinned to one CPU and wrk
to another. The ratio voltd/bare is what the numbers are for: absolute figures depend on the
machine, the ratio says what voltd's own work (verify, parse, route, durable commit) costs on
top of hypercorn + quart-trio. Results go to the terminal and to bench/out/latest.json.
See bench/README.md for how to read them.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime as dt
import http.client
import importlib.metadata
import json
import math
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import ssl
import string
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from voltd.keys import generate_signing_pair, make_self_signed_cert

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
LUA_SCRIPT = BENCH_DIR / "requests.lua"
BARE_APP = BENCH_DIR / "bare_app.py"

HOST = "127.0.0.1"
WEBHOOK_PATH = "/webhooks"
SIG_HEADER = "X-Respond-Flow-Signature"
WARMUP_SECONDS = 2
# Sizing of the unique-event pool: a run that outlasts it cycles and then measures dedup.
EXPECTED_RATE = 3000
HEADROOM = 1.5
READY_TIMEOUT = 30.0
DRAIN_TIMEOUT = 60.0
WARMUP_DRAIN_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
# wrk leaves slower answers out of its histogram (counted as timeouts); keep the tail in view.
WRK_TIMEOUT_SECONDS = 10
TARGET_BODY_BYTES = 900
# Share of the server's CPU used by anything else above which a half is reported as disturbed.
NOISY_SHARE = 0.10

ENVELOPE_ID = re.compile(rb"rfw_[0-9a-f]{8}_[0-9a-f]{32}")


class BenchError(Exception):
    """A failure that ends one half of the run, with a message meant for the person running it."""


# -- events ---------------------------------------------------------------------------------

OUR_NUMBERS = {
    "front-desk": "+12125550123",
    "sales": "+14155550142",
    "support": "+13125550199",
}
OUR_WEIGHTS = (0.4, 0.35, 0.25)
THEIR_AREAS = ("212", "646", "718", "415", "510", "312", "773", "617", "206", "303", "512")
CARRIERS = (
    "T-MOBILE USA, INC.",
    "VERIZON WIRELESS",
    "AT&T WIRELESS",
    "US CELLULAR",
    "GOOGLE (GRASSHOPPER)",
)
WORDS = (
    "hi there thanks for reaching out your appointment is confirmed for tomorrow at 10am "
    "please reply YES to confirm or call us to reschedule we have received your order and "
    "it will ship within two business days can you send a photo of the receipt the tracking "
    "number is in the link below our office is closed on monday see you soon have a great day "
    "sorry we missed your call when is a good time to talk reminder your balance is due friday "
    "text STOP to opt out café déjà vu 👍 🙂"
).split()
FAILURES = (
    (
        "702",
        "40002",
        "Blocked as spam - temporary",
        "The message was flagged by a SPAM filter and was not delivered. This is a temporary "
        "condition.",
    ),
    (
        "703",
        "40008",
        "Unreachable destination",
        "The destination handset is unreachable or switched off.",
    ),
    (
        "704",
        "40300",
        "Blocked due to STOP message",
        "The recipient has opted out of messages from this number.",
    ),
)
# (direction, event_type, status, weight)
KINDS = (
    ("inbound", "message.received", "received", 0.40),
    ("outbound", "message.sent", "sent", 0.20),
    ("outbound", "message.finalized", "delivered", 0.30),
    ("outbound", "message.finalized", "failed", 0.10),
)


@dataclass(frozen=True, slots=True)
class BenchEvent:
    """One unsigned event, with the sinks that the generated routes should send it to."""

    id: str
    body: bytes
    sinks: tuple[str, ...]


def _iso(t: float) -> str:
    """Volt's timestamp style: millisecond precision, explicit +00:00."""
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


def _text(rng: random.Random, length: int) -> str:
    words: list[str] = []
    size = 0
    while size < length:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words).capitalize()


def expected_sinks(our_name: str, direction: str, event_type: str, status: str) -> tuple[str, ...]:
    """What the routes in `voltd_config` must deliver this event to (kept next to them)."""
    sinks = ["archive"]
    if our_name == "front-desk" and event_type == "message.received":
        sinks.append("front-desk-inbox")
    if status == "failed" and our_name != "support":
        sinks.append("failures")
        return tuple(sinks)  # that route is final
    if our_name == "sales" and direction == "outbound":
        sinks.append("sales-outbound")
    return tuple(sinks)


def make_events(count: int, seed: int, now: float) -> list[BenchEvent]:
    """Unique, realistic messaging envelopes of about TARGET_BODY_BYTES compact JSON each.

    The mix (direction, status, event type, our number) is random but seeded, so runs are
    comparable; ids are random so that events never collide with a spool from another run.
    """
    rng = random.Random(seed)
    kinds = [k[:3] for k in KINDS]
    kind_weights = [k[3] for k in KINDS]
    names = list(OUR_NUMBERS)
    out: list[BenchEvent] = []
    t = int(now)
    alnum = string.ascii_letters + string.digits
    for _ in range(count):
        direction, event_type, status = rng.choices(kinds, kind_weights)[0]
        our_name = rng.choices(names, OUR_WEIGHTS)[0]
        ours = OUR_NUMBERS[our_name]
        theirs = f"+1{rng.choice(THEIR_AREAS)}55501{rng.randrange(100):02d}"
        to_number, from_number = (ours, theirs) if direction == "inbound" else (theirs, ours)
        mms = rng.random() < 0.08
        occurred = now - rng.uniform(0.2, 3.0)
        failure = rng.choice(FAILURES) if status == "failed" else (None, None, None, None)
        payload: dict[str, Any] = {
            "message_app_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "id": "rf_" + "".join(rng.choices(alnum, k=20)),
            "to_number": to_number,
            "from_number": from_number,
            "valid_until": _iso(occurred + 3600),
            "type": "MMS" if mms else "SMS",
            "text": "",
            "sent_at": None if direction == "inbound" else _iso(occurred - 1.1),
            "received_at": _iso(occurred - 0.4) if direction == "inbound" else None,
            "provider_error_code": failure[1],
            "provider_error_detail": failure[3],
            "provider_error_title": failure[2],
            "carrier_name": rng.choice(CARRIERS),
            "error_code": failure[0],
            "status": status,
            "parts": 1,
            "messaging_profile_id": "40017bf5-8809-4640-9925-da5c732667b7",
            "media": (
                [
                    {
                        "url": f"https://media.respondflow.com/{uuid.uuid4().hex}.jpg",
                        "content_type": "image/jpeg",
                        "size": rng.randrange(20_000, 900_000),
                    }
                ]
                if mms
                else []
            ),
            "encoding": "GSM-7",
            "direction": direction,
            "completed_at": _iso(occurred) if event_type == "message.finalized" else None,
            "occurred_at": _iso(occurred),
            "event_type": event_type,
        }
        env_id = f"rfw_{t:08x}_{uuid.uuid4().hex}"
        envelope = {"type": "messaging", "id": env_id, "payload": payload, "time": t}
        base = len(json.dumps(envelope, separators=(",", ":")).encode())
        text = _text(rng, max(20, TARGET_BODY_BYTES - base + rng.randrange(-80, 80)))
        payload["text"] = text
        if not text.isascii():
            payload["encoding"] = "UCS-2"
        body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
        sinks = expected_sinks(our_name, direction, event_type, status)
        out.append(BenchEvent(env_id, body, sinks))
    return out


def _sign_chunk(private_pem: bytes, bodies: list[bytes]) -> list[str]:
    """Worker: sign bodies as our default says Volt does (PKCS#1 v1.5, SHA-256, base64).

    Signing is done here with `cryptography` directly, not with voltd's own signer, so that a
    shared mistake cannot make the benchmark pass against a broken verifier.
    """
    key = serialization.load_pem_private_key(private_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return [
        base64.b64encode(key.sign(b, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")
        for b in bodies
    ]


def sign_all(private_key_path: Path, bodies: Sequence[bytes], workers: int) -> list[str]:
    """RSA signing is the slow part of setup (~3,500/s per core): spread it over all CPUs."""
    pem = private_key_path.read_bytes()
    if len(bodies) < 2000 or workers < 2:
        return _sign_chunk(pem, list(bodies))
    chunk = math.ceil(len(bodies) / (workers * 4))
    parts = [list(bodies[i : i + chunk]) for i in range(0, len(bodies), chunk)]
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_sign_chunk, [pem] * len(parts), parts)
        return [sig for part in results for sig in part]


def write_requests_file(
    path: Path, events: Sequence[BenchEvent], signatures: Sequence[str]
) -> None:
    """The format requests.lua reads: a signature line, then the body line, per request."""
    with path.open("wb") as f:
        for event, sig in zip(events, signatures, strict=True):
            if b"\n" in event.body:
                raise BenchError("a generated body contains a line break")
            f.write(sig.encode("ascii") + b"\n" + event.body + b"\n")


def check_signature(public_key_path: Path, body: bytes, signature: str) -> None:
    """Self-test of the bench's own signing against the public key voltd will be given."""
    key = serialization.load_ssh_public_key(public_key_path.read_bytes())
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(base64.b64decode(signature), body, padding.PKCS1v15(), hashes.SHA256())


# -- voltd configuration --------------------------------------------------------------------


def voltd_config(port: int, admin_port: int) -> str:
    """A realistic configuration (DESIGN.md §4): named numbers, fan-out, a final route."""
    return f"""\
# Written by bench/run.py for one benchmark run.
[server]
bind = ["{HOST}:{port}"]
path = "{WEBHOOK_PATH}"
certfile = "tls/cert.pem"
keyfile = "tls/key.pem"

[admin]
bind = "{HOST}:{admin_port}"

[verify]
public_keys = ["volt_id_rsa.pub"]

[spool]
path = "spool.db"

[numbers]
front-desk = "+1 (212) 555-0123"
sales = "+1 (415) 555-0142"
support = "+1 (312) 555-0199"

[[routes]]
name = "archive everything"
match = {{ direction = ["inbound", "outbound"] }}
sinks = ["archive"]

[[routes]]
name = "front desk inbound"
match = {{ number = ["front-desk"], event = ["message.received"] }}
sinks = ["front-desk-inbox"]

[[routes]]
name = "delivery failures"
match = {{ status = ["failed"] }}
exclude = {{ number = ["support"] }}
sinks = ["failures"]
final = true

[[routes]]
name = "sales outbound"
match = {{ number = ["sales"], direction = ["outbound"] }}
sinks = ["sales-outbound"]

[sinks.archive]
type = "file"
path = "archive/{{our_number}}/{{date}}.jsonl"

[sinks.front-desk-inbox]
type = "file"
path = "inbox/front-desk/{{date}}.jsonl"

[sinks.failures]
type = "file"
path = "failures/{{date}}.jsonl"

[sinks.sales-outbound]
type = "file"
path = "sales/{{event}}/{{date}}.jsonl"
"""


SINK_DIRS = {
    "archive": "archive",
    "front-desk-inbox": "inbox",
    "failures": "failures",
    "sales-outbound": "sales",
}


# -- processes ------------------------------------------------------------------------------


def pin_to(cpu: int | None) -> Callable[[], None] | None:
    """preexec_fn that pins the child (and every thread it starts) to one CPU."""
    if cpu is None:
        return None

    def _pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return _pin


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process and all its threads, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_busy_seconds(cpu: int | None) -> tuple[float, float] | None:
    """(busy, steal) seconds of one CPU since boot, from /proc/stat: every task's work on it.

    Interrupt and softirq time is left out: that is mostly the loopback network carrying the
    benchmark's own traffic, not a disturbance.
    """
    if cpu is None:
        return None
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"cpu{cpu} "):
            f = [int(x) for x in line.split()[1:]] + [0] * 8
            user, nice, system, _idle, _iowait, _irq, _softirq, steal = f[:8]
            tick = os.sysconf("SC_CLK_TCK")
            return (user + nice + system) / tick, steal / tick
    return None


@dataclass
class Server:
    """A server under test, started in its own session so that Ctrl-C reaches only the runner."""

    name: str
    cmd: list[str]
    cwd: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    stop_seconds: float | None = None
    killed: bool = False

    def start(self, cpu: int | None) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=pin_to(cpu),
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, probe: Callable[[], bool], timeout: float = READY_TIMEOUT) -> float:
        """Poll `probe` until it says yes; fail fast, with the server's output, if it exits."""
        assert self.proc is not None
        start = time.monotonic()
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise BenchError(
                    f"{self.name} exited with status {rc} before it was ready.\n"
                    f"  command: {shlex.join(self.cmd)}\n"
                    f"  last lines of its output ({self.log_path}):\n{_indent(tail(self.log_path))}"
                )
            if probe():
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise BenchError(
                    f"{self.name} was not ready after {timeout:.0f} s.\n"
                    f"  command: {shlex.join(self.cmd)}\n"
                    f"  last lines of its output ({self.log_path}):\n{_indent(tail(self.log_path))}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM and wait, as systemd would; SIGKILL only if it does not stop in time."""
        if self.proc is None or self.exit_code is not None:
            return
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.killed = True
            self.proc.kill()
            self.exit_code = self.proc.wait()
        self.stop_seconds = time.monotonic() - start


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def https_probe(port: int, cafile: Path) -> Callable[[], bool]:
    """Ready when the TLS listener answers HTTP at all (any status), with the bench's cert."""
    context = ssl.create_default_context(cafile=str(cafile))

    def probe() -> bool:
        conn = http.client.HTTPSConnection(HOST, port, context=context, timeout=2)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
            return True
        except OSError:
            return False
        finally:
            conn.close()

    return probe


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def healthz_probe(admin_port: int) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return http_get(admin_port, "/healthz")[0] == 200
        except OSError:
            return False

    return probe


def post_signed(port: int, cafile: Path, body: bytes, signature: str) -> tuple[int, bytes]:
    """One request outside the load, to fail early and clearly (bad signature, wrong path)."""
    context = ssl.create_default_context(cafile=str(cafile))
    conn = http.client.HTTPSConnection(HOST, port, context=context, timeout=10)
    try:
        conn.request(
            "POST",
            WEBHOOK_PATH,
            body=body,
            headers={"Content-Type": "application/json", SIG_HEADER: signature},
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- wrk --------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """wrk from Debian; installed on the spot when running as root, else say how."""
    found = shutil.which("wrk")
    if found:
        return found
    command = ["apt-get", "install", "-y", "wrk"]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchError(f"wrk is not installed; install it with: sudo {shlex.join(command)}")
    print(f"wrk is not installed; running: {shlex.join(command)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(command, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"could not install wrk:\n{_indent(done.stderr[-2000:])}")
    found = shutil.which("wrk")
    if not found:
        raise BenchError("wrk was installed but is not on PATH")
    return found


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
) -> WrkRun:
    """Run wrk once and return its BENCH_RESULT, cross-checked and with raw percentiles."""
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
        BENCH_PATH=WEBHOOK_PATH,
        BENCH_IDS_OUT=str(ids_out),
        BENCH_HIST_OUT=str(hist_out),
        BENCH_SIG_HEADER=SIG_HEADER,
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
            f"  stdout:\n{_indent(done.stdout[-3000:])}\n  stderr:\n{_indent(done.stderr[-3000:])}"
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


# -- sink files -----------------------------------------------------------------------------


@dataclass
class SinkReader:
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
                offset = self.offsets.get(path, 0)
                try:
                    with path.open("rb") as f:
                        f.seek(offset)
                        data = f.read()
                except OSError:
                    continue
                end = data.rfind(b"\n") + 1  # only complete lines
                for line in data[:end].splitlines():
                    m = ENVELOPE_ID.search(line)
                    seen[m.group().decode() if m else "?"] += 1
                self.offsets[path] = offset + end

    def lines(self, sink: str) -> int:
        return sum(self.ids.get(sink, Counter()).values())

    def missing(self, sink: str, wanted: Iterable[str]) -> list[str]:
        have = self.ids.get(sink, Counter())
        return [i for i in wanted if i not in have]


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
    reader: SinkReader, wanted: dict[str, list[str]], fallback_count: int, timeout: float
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


# -- the two halves -------------------------------------------------------------------------


@dataclass
class Setup:
    """Everything both halves share: files, keys, events, pinning, wrk."""

    args: argparse.Namespace
    workdir: Path
    voltd_dir: Path
    certfile: Path
    public_key: Path
    warmup_file: Path
    main_file: Path
    warmup_events: list[BenchEvent]
    main_events: list[BenchEvent]
    sanity: tuple[bytes, str]
    server_cpu: int | None
    client_cpu: int | None
    wrk: str


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


def run_target(setup: Setup, name: str) -> dict[str, Any]:
    """Start one server, warm it up, measure it, (for voltd) wait for its backlog, stop it."""
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
    print(f"\n[{name}] starting: {shlex.join(server.cmd)}", flush=True)
    server.start(setup.server_cpu)
    try:
        out["ready_s"] = server.wait_ready(probe)
        status, body = post_signed(port, setup.certfile, *setup.sanity)
        if not 200 <= status < 300:
            raise BenchError(
                f"{server.name} answered {status} to one correctly signed event before the load "
                f"(expected 200): {body[:300]!r}\n  last lines of its output:\n"
                f"{_indent(tail(log_path))}"
            )
        print(f"[{name}] ready in {out['ready_s']:.1f} s; warm-up {WARMUP_SECONDS} s", flush=True)
        warm = run_wrk(
            setup.wrk,
            url,
            setup.warmup_file,
            WARMUP_SECONDS,
            args.connections,
            setup.client_cpu,
            setup.workdir,
            f"{name}-warmup",
            server.pid,
            setup.server_cpu,
        )
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
        print(
            f"[{name}] measuring {args.duration} s with {args.connections} connections", flush=True
        )
        run = run_wrk(
            setup.wrk,
            url,
            setup.main_file,
            args.duration,
            args.connections,
            setup.client_cpu,
            setup.workdir,
            name,
            server.pid,
            setup.server_cpu,
        )
        out.update(summarize(run))
        if server.proc is not None and server.proc.poll() is not None:
            raise BenchError(f"{server.name} died during the load:\n{_indent(tail(log_path))}")
        if reader is not None:
            out["sinks"] = drain_report(reader, run, setup, admin_port)
    except BenchError as exc:
        # Keep what was measured so far (and the server's exit below) next to the error.
        print(f"[{name}] error: {exc}", file=sys.stderr, flush=True)
        out["error"] = str(exc)
    finally:
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py", description="Benchmark voltd against the bare quart-trio stack."
    )
    p.add_argument("--duration", type=int, default=10, help="measured seconds per target (10)")
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections (16)")
    p.add_argument(
        "--events",
        type=int,
        default=None,
        help="unique signed events to pre-generate (default: duration x 3000/s x 1.5)",
    )
    p.add_argument("--only", choices=["bare", "voltd"], help="run one target only")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--seed", type=int, default=1, help="seed for the event mix (1)")
    args = p.parse_args(argv)
    if args.duration < 1 or args.connections < 1:
        p.error("--duration and --connections must be at least 1")
    if args.events is not None and args.events < 1:
        p.error("--events must be at least 1")
    return args


def prepare(args: argparse.Namespace, workdir: Path) -> Setup:
    wrk = ensure_wrk()
    server_cpu, client_cpu, _ = choose_cpus()
    voltd_dir = workdir / "voltd"
    certfile, _ = make_self_signed_cert(voltd_dir / "tls", hosts=(HOST, "localhost"))
    private_key, public_key = generate_signing_pair(voltd_dir, name="volt")
    n_main = args.events or default_events(args.duration)
    n_warm = default_events(WARMUP_SECONDS) if args.events is None else max(1, n_main // 5)
    t0 = time.monotonic()
    events = make_events(n_main + n_warm + 1, args.seed, time.time())
    signatures = sign_all(private_key, [e.body for e in events], len(os.sched_getaffinity(0)))
    check_signature(public_key, events[0].body, signatures[0])
    sanity, warm, main = events[0], events[1 : n_warm + 1], events[n_warm + 1 :]
    warmup_file = workdir / "warmup.requests"
    main_file = workdir / "main.requests"
    write_requests_file(warmup_file, warm, signatures[1 : n_warm + 1])
    write_requests_file(main_file, main, signatures[n_warm + 1 :])
    avg = sum(len(e.body) for e in main) / len(main)
    print(
        f"generated and signed {len(events)} events ({n_main} measured + {n_warm} warm-up, "
        f"~{avg:.0f} B each) in {time.monotonic() - t0:.1f} s",
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
    )


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def report(
    results: dict[str, Any], command: str, pinning: str, args: argparse.Namespace
) -> list[str]:
    """Print the table; return the problems that make the exit status non-zero."""
    problems: list[str] = []
    print()
    print(f"command: {command}")
    print(
        f"load: wrk, 1 thread, {args.connections} keep-alive connections, HTTPS, "
        f"{args.duration} s measured after a {WARMUP_SECONDS} s warm-up; {pinning}"
    )
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
        if r["non2xx"]:
            problems.append(
                f"{name}: {r['non2xx']} non-2xx answers {r['status_codes']}; "
                f"first: {r['first_error']}"
            )
        if r["in_flight_at_end"] > args.connections:
            problems.append(
                f"{name}: {r['sent']} requests sent but only {r['completed']} answered; more "
                f"than the {args.connections} that can be in flight when wrk stops"
            )
        errs = {k: v for k, v in r["socket_errors"].items() if v}
        if errs:
            problems.append(f"{name}: socket errors {errs}")
        if "error" in r:
            problems.append(f"{name}: {r['error']}")
        if r.get("exit_code") not in (0, None):
            problems.append(
                f"{name}: exited with status {r['exit_code']} after SIGTERM"
                + (" (killed after timeout)" if r.get("killed_after_sigterm_timeout") else "")
                + f"\n{_indent(r.get('log_tail', ''))}"
            )
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
        other = r.get("server_core_other_share") or 0.0
        steal = r.get("server_core_steal_share") or 0.0
        client_other = r.get("client_core_other_share") or 0.0
        if max(other + steal, client_other) > NOISY_SHARE:
            print(
                f"{name}: NOTE: the machine was not quiet: {100 * other:.0f}% of the server's "
                f"CPU went to other processes or kernel threads (for voltd partly the journal "
                f"doing its fsyncs), {100 * steal:.0f}% to the hypervisor, and "
                f"{100 * client_other:.0f}% of wrk's CPU to other processes; expect noise"
            )
        if r.get("cycled"):
            print(
                f"{name}: WARNING: the run outlasted the {r['events_in_pool']} unique events "
                f"and cycled; repeats are dedup answers for voltd. Use --events."
            )
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
            f"(includes warm-up and the one sanity event)"
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
    if v.get("log_lines"):
        print(f"voltd wrote {v['log_lines']} log lines during the run")
    return problems


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so the servers under test are stopped, not orphaned."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    command = shlex.join(["uv", "run", "python", "bench/run.py", *sys.argv[1:]])
    _, _, pinning = choose_cpus()
    targets = [args.only] if args.only else ["bare", "voltd"]
    results: dict[str, Any] = {
        "command": command,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {
            "duration_s": args.duration,
            "connections": args.connections,
            "warmup_s": WARMUP_SECONDS,
            "wrk_threads": 1,
            "wrk_timeout_s": WRK_TIMEOUT_SECONDS,
            "pinning": pinning,
        },
        "targets": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="voltd-bench-"))
    try:
        try:
            setup = prepare(args, workdir)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        results["settings"]["events"] = len(setup.main_events)
        results["settings"]["warmup_events"] = len(setup.warmup_events)
        results["settings"]["avg_body_bytes"] = round(
            sum(len(e.body) for e in setup.main_events) / len(setup.main_events)
        )
        results["environment"] = environment(setup.wrk, workdir)
        if setup.client_cpu is not None:
            # The runner itself (probes, drain polling) stays off the server's CPU.
            os.sched_setaffinity(0, {setup.client_cpu})
        for name in targets:
            try:
                results["targets"][name] = run_target(setup, name)
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
        problems = report(results, command, pinning, args)
        results["problems"] = problems
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        out_file = OUT_DIR / "latest.json"
        out_file.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"\nresults: {out_file.relative_to(REPO_DIR)}")
        if problems:
            print("\nPROBLEMS:", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            return 1
        return 0
    finally:
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
