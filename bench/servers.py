"""The servers under test: starting, probing and stopping them, ports and CPU pinning, and
/proc readings (CPU time, memory).
"""

from __future__ import annotations

import http.client
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base import (
    ENVELOPE_ID,
    HOST,
    OUT_DIR,
    READY_TIMEOUT,
    REPO_DIR,
    SIG_HEADER,
    STOP_TIMEOUT,
    WEBHOOK_PATH,
    BenchError,
    indent,
    tail,
)
from workload import Setup

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


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (field 3 on), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process and all its threads, from /proc."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of a server that runs child processes (PostgreSQL): the parent (with its
    reaped children's time: those that exited) and every child it runs now."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        child = _stat_fields(int(entry.name))
        if child is not None and child[1] == str(pid):
            total += int(child[11]) + int(child[12])
    return total / tick


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


# -- probes ---------------------------------------------------------------------------------


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


# -- voltd ----------------------------------------------------------------------------------


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


def finish_server(server: Server | None, out: dict[str, Any], log_name: str) -> None:
    """Stop a daemon as systemd would and keep what the JSON needs about its exit, its output
    as bench/out/LOG_NAME.log. Nothing when it was never started."""
    if server is None:
        return
    server.stop()
    out["exit_code"] = server.exit_code
    out["stop_s"] = server.stop_seconds
    out["killed_after_sigterm_timeout"] = server.killed
    out["log_tail"] = tail(server.log_path, 10)
    out["log_file"] = keep_log(server, log_name)


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
