"""What every part of the benchmark shares: paths, settings, the error that ends a phase, and
two small text helpers for messages.
"""

from __future__ import annotations

import re
from pathlib import Path

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


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())
