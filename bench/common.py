"""Shared pieces of the benchmark: events and signing, voltd's configuration, the servers
under test, wrk, reading the sink files, and /proc readings (CPU, memory).

Imported by run.py (the runner and the ingest comparison) and by the phase modules probe.py,
backlog.py and commit.py, so that every phase drives voltd the same way.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime as dt
import http.client
import json
import math
import os
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
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from voltd.events import Event
from voltd.events import parse as parse_envelope
from voltd.spool import SpoolDB

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
PROFILE_FILE = OUT_DIR / "voltd-profile.txt"
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


ARCHIVE_PATH = "archive/{our_number}/{date}.jsonl"


def voltd_config(
    port: int,
    admin_port: int,
    *,
    keys_dir: Path | None = None,
    archive_path: str | None = ARCHIVE_PATH,
) -> str:
    """A realistic configuration (DESIGN.md §4): named numbers, fan-out, a final route.

    The ingest comparison uses it as is. The backlog phases vary only the archive sink: a
    path that cannot be written (the sink is down) or no archive sink at all (its deliveries
    wait in the spool), so that everything else about the daemon stays the same. `keys_dir`
    is where the certificate and public key are when the config lives in another directory.
    """
    keys = "" if keys_dir is None else f"{keys_dir}/"
    archive_route = archive_sink = ""
    if archive_path is not None:
        archive_route = """
[[routes]]
name = "archive everything"
match = { direction = ["inbound", "outbound"] }
sinks = ["archive"]
"""
        archive_sink = f"""
[sinks.archive]
type = "file"
path = "{archive_path}"
"""
    return f"""\
# Written by bench/run.py for one benchmark run.
[server]
bind = ["{HOST}:{port}"]
path = "{WEBHOOK_PATH}"
certfile = "{keys}tls/cert.pem"
keyfile = "{keys}tls/key.pem"

[admin]
bind = "{HOST}:{admin_port}"

[verify]
public_keys = ["{keys}volt_id_rsa.pub"]

[spool]
path = "spool.db"

[numbers]
front-desk = "+1 (212) 555-0123"
sales = "+1 (415) 555-0142"
support = "+1 (312) 555-0199"
{archive_route}
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
{archive_sink}
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
                    f"  last lines of its output ({self.log_path}):\n{indent(tail(self.log_path))}"
                )
            if probe():
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise BenchError(
                    f"{self.name} was not ready after {timeout:.0f} s.\n"
                    f"  command: {shlex.join(self.cmd)}\n"
                    f"  last lines of its output ({self.log_path}):\n{indent(tail(self.log_path))}"
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


def indent(text: str, prefix: str = "    ") -> str:
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
            raise BenchError(f"could not install wrk:\n{indent(done.stderr[-2000:])}")
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
                for line in read_appended(path, self.offsets).splitlines():
                    m = ENVELOPE_ID.search(line)
                    seen[m.group().decode() if m else "?"] += 1

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
    # The e2e probe's own events (archive only), signed like the load; empty without probe.
    probe_events: list[BenchEvent] = field(default_factory=list)
    probe_signatures: list[str] = field(default_factory=list)


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


# -- memory, percentiles, line counts, spool ---------------------------------------------------


def memory_mb(pid: int) -> dict[str, float] | None:
    """VmRSS (resident now) and VmHWM (the peak resident size so far) in MB, from /proc."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024  # kB
    return out if len(out) == 2 else None


class RssSampler:
    """Samples a process's VmRSS in a thread, so short peaks between two reports are seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (monotonic, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            mem = memory_mb(self.pid)
            if mem is not None:
                self.samples.append((time.monotonic(), mem["VmRSS"]))
            self._stop.wait(self.interval)

    def peak(self, start: float, end: float) -> float | None:
        """Largest sample in [start, end] (monotonic times)."""
        inside = [mb for t, mb in self.samples if start <= t <= end]
        return max(inside) if inside else None


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


def spool_pending(spool_path: Path, sink: str) -> dict[str, Any]:
    """Read-only look at one sink's deliveries in a spool that a daemon may be using.

    The same numbers as `voltd spool status`, plus the attempts made so far, how many
    deliveries the backoff has scheduled for later than now, and how far ahead the latest is.
    """
    now = time.time()
    db = SpoolDB(spool_path, readonly=True)
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


def launch_voltd(
    name: str, directory: Path, config_text: str, admin_port: int, cpu: int | None
) -> Server:
    """Write the config and start `voltd serve` in `directory`; return once /healthz is 200."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "voltd.toml"
    config_path.write_text(config_text)
    server = Server(
        name=name,
        cmd=[sys.executable, "-m", "voltd", "serve", "-c", str(config_path)],
        cwd=directory,
        log_path=directory / "voltd.log",
    )
    server.start(cpu)
    try:
        server.wait_ready(healthz_probe(admin_port))
    except BaseException:
        server.stop()
        raise
    return server


def keep_log(server: Server, name: str) -> str | None:
    """Copy a server's output to bench/out/NAME.log; return that path for the JSON."""
    if not server.log_path.exists():
        return None
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(server.log_path, OUT_DIR / f"{name}.log")
    return str((OUT_DIR / f"{name}.log").relative_to(REPO_DIR))


def send_sanity(setup: Setup, port: int, server: Server) -> str:
    """One signed event before any load, so a config or key mismatch fails at once, clearly.

    Returns the event's id (it is acknowledged, so it must reach its sinks like any other).
    """
    body, signature = setup.sanity
    status, answer = post_signed(port, setup.certfile, body, signature)
    if not 200 <= status < 300:
        raise BenchError(
            f"{server.name} answered {status} to one correctly signed event before the load "
            f"(expected 200): {answer[:300]!r}\n  last lines of its output:\n"
            f"{indent(tail(server.log_path))}"
        )
    m = ENVELOPE_ID.search(body)
    assert m is not None
    return m.group().decode()


def wrk_load(
    setup: Setup, url: str, requests_file: Path, seconds: int, tag: str, server: Server
) -> WrkRun:
    """run_wrk with the run's settings: its connections, pinning and work directory."""
    return run_wrk(
        setup.wrk,
        url,
        requests_file,
        seconds,
        setup.args.connections,
        setup.client_cpu,
        setup.workdir,
        tag,
        server.pid,
        setup.server_cpu,
    )


# -- reporting ------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def check(
    phase: str, what: str, shown: str, target: str, passed: bool | None, note: str = ""
) -> dict[str, Any]:
    """One target judged: PASS, FAIL, or n/a when this run could not measure it. `note` says
    why a verdict may not be trusted (the machine was busy)."""
    verdict = "n/a" if passed is None else "PASS" if passed else "FAIL"
    return {
        "phase": phase,
        "what": what,
        "value": shown,
        "target": target,
        "verdict": verdict,
        "note": note,
    }


def server_exit_problems(name: str, r: dict[str, Any]) -> list[str]:
    """A daemon that failed or did not exit 0 on SIGTERM is a problem whatever it measured."""
    problems = []
    if "error" in r:
        problems.append(f"{name}: {r['error']}")
    if r.get("exit_code") not in (0, None):
        problems.append(
            f"{name}: exited with status {r['exit_code']} after SIGTERM"
            + (" (killed after timeout)" if r.get("killed_after_sigterm_timeout") else "")
            + f"\n{indent(r.get('log_tail', ''))}"
        )
    return problems


def is_noisy(r: dict[str, Any]) -> bool:
    """Did other work take a noticeable share of the server's or the client's CPU?"""
    other = r.get("server_core_other_share") or 0.0
    steal = r.get("server_core_steal_share") or 0.0
    client_other = r.get("client_core_other_share") or 0.0
    return max(other + steal, client_other) > NOISY_SHARE


def print_load_notes(name: str, r: dict[str, Any]) -> None:
    """Say when a load run was disturbed by other work on the machine, or ran out of events."""
    other = r.get("server_core_other_share") or 0.0
    steal = r.get("server_core_steal_share") or 0.0
    client_other = r.get("client_core_other_share") or 0.0
    if is_noisy(r):
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
