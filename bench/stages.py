"""Where voltd's time goes under load: py-spy samples of the daemon, summed by pipeline stage.

`run.py --profile` attaches py-spy (`uv run --with py-spy python bench/run.py --profile`) to
voltd for the measured load and writes the raw samples to bench/out/voltd-profile.txt. Each
sample is one thread's stack; a sample counts for the first stage below whose marker is on
the stack, so "HTTP stack" is only what is left once voltd's own stages are taken out.
Waiting is left out: the event loop in epoll, idle worker threads, and threads in
`threading.Condition.wait` (voltd's stall watch between its checks). A thread in `fsync` or
in SQLite's C code counts as busy, which is why the thread stages can add up beyond one core's
worth of CPU when they overlap with the loop.

Sampling costs the daemon a few percent, so a profiled run's req/s is not one to compare.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

#: (stage, markers): a frame whose text contains any marker puts the sample in that stage.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("spool commit (SQLite + fsync, writer thread)", ("SpoolDB.apply",)),
    ("spool reads for delivery (thread)", ("SpoolDB.due", "SpoolDB.next_due_at")),
    ("file sink write + fsync (thread)", ("FileSink._write",)),
    ("delivery (event loop)", ("SinkWorker.", "FileSink.")),
    ("RSA verify", ("Verifier.verify",)),
    ("parse + dedup digest", ("voltd/events.py",)),
    ("routing", ("voltd/routing.py",)),
    ("spool queue + group-commit writer (event loop)", ("Spool.writer", "Spool.store")),
    ("webhook handler, other", ("Ingest.",)),
    (
        "HTTP stack (hypercorn, h11, quart, TLS)",
        ("hypercorn/", "h11/", "quart/", "quart_trio/", "trio/_ssl.py", "ssl.py"),
    ),
]
#: The relay phase's stages: voltd draining a backlog to the `http` sink (bench/relay.py).
#: Only delivery runs then, so the stages split its work: the HTTP client library, voltd's
#: wrapper around it and the sink, the delivery worker, and the spool on both sides.
RELAY_STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("spool commit of outcomes (SQLite, writer thread)", ("SpoolDB.apply",)),
    ("spool reads of due deliveries (thread)", ("SpoolDB.due", "SpoolDB.next_due_at")),
    ("anyio (httpx's trio backend)", ("anyio/",)),
    ("h11 (HTTP/1.1 client protocol)", ("h11/",)),
    ("httpcore (connection pool, HTTP/1.1 connection)", ("httpcore/",)),
    ("httpx (client, request and response objects)", ("httpx/",)),
    ("voltd.http (HttpClient: request, answer checks)", ("voltd/http.py",)),
    ("http sink plugin", ("voltd_http/",)),
    ("delivery worker (event loop)", ("voltd/delivery.py",)),
    ("spool queue + group-commit writer (event loop)", ("Spool.writer", "Spool.record")),
]
IDLE_LEAVES = ("EpollIOManager.get_events", "WorkerThread._work", "Condition.wait")
OTHER = "trio scheduler, thread hand-offs, other"


def profile_start(pid: int, seconds: float | None, out: Path) -> subprocess.Popen[bytes] | None:
    """Start sampling `pid` for `seconds` (None: until `profile_finish(..., stop=True)`);
    None (and a note) when py-spy is not there."""
    exe = shutil.which("py-spy")
    if exe is None:
        print(
            "[profile] py-spy not found: run `uv run --with py-spy python bench/run.py "
            "--profile`; continuing without a profile",
            flush=True,
        )
        return None
    cmd = [exe, "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", str(out)]
    if seconds is not None:
        cmd += ["-d", str(max(1, int(seconds)))]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def profile_finish(
    proc: subprocess.Popen[bytes],
    out: Path,
    *,
    stop: bool = False,
    stages: list[tuple[str, tuple[str, ...]]] | None = None,
) -> dict[str, object]:
    """Wait for py-spy (`stop`: end its sampling now, as Ctrl-C does, which still writes the
    file) and summarize; a failure (e.g. no ptrace rights) is reported, not raised."""
    if stop and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"error": "py-spy did not finish within 60 s"}
    if proc.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed ({proc.returncode}): {err.decode()[-300:]}"}
    return summarize(out, stages)


def summarize(
    raw: Path, stages_list: list[tuple[str, tuple[str, ...]]] | None = None
) -> dict[str, object]:
    """Busy samples per stage, as shares of all busy samples, largest first."""
    stages: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES):
            continue
        stages[_stage(frames, stages_list or STAGES)] += int(count)
    total = sum(stages.values())
    return {
        "busy_samples": total,
        "stages": {k: v / total for k, v in stages.most_common()} if total else {},
        "raw_file": str(raw),
    }


def _stage(frames: list[str], stages: list[tuple[str, tuple[str, ...]]]) -> str:
    text = ";".join(re.sub(r":\d+\)", ")", f) for f in frames)
    for stage, markers in stages:
        if any(m in text for m in markers):
            return stage
    return OTHER


def profile_report(summary: dict[str, object]) -> list[str]:
    if "error" in summary:
        return [f"profile: {summary['error']}"]
    stages = summary.get("stages") or {}
    assert isinstance(stages, dict)
    lines = [
        f"profile (py-spy, {summary['busy_samples']} busy samples during the load; "
        f"raw: {summary['raw_file']}):"
    ]
    lines += [f"  {share * 100:5.1f}%  {stage}" for stage, share in stages.items()]
    return lines
