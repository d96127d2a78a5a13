"""Where voltd's time goes under load: py-spy samples of the daemon, summed by pipeline stage.

`run.py --profile` attaches py-spy (`uv run --with py-spy python bench/run.py --profile`) to
voltd for the measured load and writes the raw samples to bench/out/voltd-profile.txt. Each
sample is one thread's stack; a sample counts for the first stage below whose marker is on
the stack, so "HTTP stack" is only what is left once voltd's own stages are taken out.
Waiting is left out: the event loop in epoll and idle worker threads. A thread in `fsync` or
in SQLite's C code counts as busy, which is why the thread stages can add up beyond one core's
worth of CPU when they overlap with the loop.

Sampling costs the daemon a few percent, so a profiled run's req/s is not one to compare.
"""

from __future__ import annotations

import re
import shutil
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
IDLE_LEAVES = ("EpollIOManager.get_events", "WorkerThread._work")
OTHER = "trio scheduler, thread hand-offs, other"


def profile_start(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Start sampling `pid` for `seconds`; None (and a note) when py-spy is not there."""
    exe = shutil.which("py-spy")
    if exe is None:
        print(
            "[profile] py-spy not found: run `uv run --with py-spy python bench/run.py "
            "--profile`; continuing without a profile",
            flush=True,
        )
        return None
    cmd = [exe, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "200"]
    cmd += ["-f", "raw", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def profile_finish(proc: subprocess.Popen[bytes], out: Path) -> dict[str, object]:
    """Wait for py-spy and summarize; a failure (e.g. no ptrace rights) is reported, not raised."""
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"error": "py-spy did not finish within 60 s"}
    if proc.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed ({proc.returncode}): {err.decode()[-300:]}"}
    return summarize(out)


def summarize(raw: Path) -> dict[str, object]:
    """Busy samples per stage, as shares of all busy samples, largest first."""
    stages: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES):
            continue
        stages[_stage(frames)] += int(count)
    total = sum(stages.values())
    return {
        "busy_samples": total,
        "stages": {k: v / total for k, v in stages.most_common()} if total else {},
        "raw_file": str(raw),
    }


def _stage(frames: list[str]) -> str:
    text = ";".join(re.sub(r":\d+\)", ")", f) for f in frames)
    for stage, markers in STAGES:
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
