"""Fixes for bugs in the libraries under voltd, applied explicitly at start-up, never on import.

Each fix names the bug, the versions it was seen in, and the test that tells us when upstream
has fixed it (tests/test_workarounds.py runs the bare library without the fix and expects the
bug; when that test fails, the fix can go). `apply()` is what the daemon calls; it is
idempotent and returns the names of the fixes now in place.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger("voltd.workarounds")

#: The newest hypercorn release the keep-alive bug was confirmed in. On a newer release the
#: fix still applies (it is harmless if the bug is gone), and tests/test_workarounds.py
#: says whether it is still needed.
KEEP_ALIVE_BUG_CONFIRMED_IN = "0.18.0"


def hypercorn_version() -> str:
    return importlib.metadata.version("hypercorn")


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def keep_alive_timer_fix(enable: bool = True) -> bool:
    """hypercorn 0.17/0.18's trio worker re-arms a connection's keep-alive timer from the
    request's task, which quart-trio has cancelled by then: the timer never runs again, so an
    idle keep-alive connection stays open for good and holds up shutdown. Re-arming under a
    shield makes `keep_alive_timeout` apply after every request (tests/test_abuse.py).

    Returns whether the fix is in place afterwards; `enable=False` takes it out (tests).
    """
    from hypercorn.trio import worker_context

    single_task: Any = worker_context.TrioSingleTask
    current = single_task.restart
    original = getattr(current, "_voltd_original", None)
    if not enable:
        if original is not None:
            single_task.restart = original
        return False
    if original is not None:
        return True

    async def shielded(self: Any, task_group: Any, action: Callable[..., Any]) -> None:
        with trio.CancelScope(shield=True):
            await current(self, task_group, action)

    shielded._voltd_original = current  # type: ignore[attr-defined]
    single_task.restart = shielded
    return True


class _OncePer(logging.Filter):
    """At most one record per `seconds`. trio logs an accept failure (too many open files)
    with a traceback every 0.1 s per listener; one line now and then says it."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.last = -seconds
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self.last < self.seconds:
            self.dropped += 1
            return False
        if self.dropped:
            record.msg = f"{record.msg} ({self.dropped} more like it not logged)"
            self.dropped = 0
        self.last = now
        return True


def accept_error_throttle() -> bool:
    """Throttle trio's accept-failure log (see `_OncePer`); idempotent."""
    logger = logging.getLogger("trio.serve_listeners")
    if not any(isinstance(f, _OncePer) for f in logger.filters):
        logger.addFilter(_OncePer(10.0))
    return True


def apply() -> list[str]:
    """Put every fix in place (daemon start-up); the names of those applied."""
    applied = []
    if keep_alive_timer_fix():
        applied.append("hypercorn keep-alive timer")
        if _release(hypercorn_version()) > _release(KEEP_ALIVE_BUG_CONFIRMED_IN):
            log.debug(
                "hypercorn %s is newer than %s, the last release known to need the keep-alive "
                "fix; tests/test_workarounds.py tells whether it still does",
                hypercorn_version(),
                KEEP_ALIVE_BUG_CONFIRMED_IN,
            )
    if accept_error_throttle():
        applied.append("trio accept-error log throttle")
    return applied
