"""sd_notify: tell systemd (Type=notify) how the daemon is doing.

The protocol is one datagram on the AF_UNIX socket named by $NOTIFY_SOCKET; a leading `@`
means the abstract namespace. The `sdnotify` package is unmaintained, and this is all of it:

- `READY=1` once listening, `STOPPING=1` when shutting down, `STATUS=` lines in between;
- `RELOADING=1` with `MONOTONIC_USEC=` before a SIGHUP reload and `READY=1` after it, which is
  what `Type=notify-reload` (systemd 253+) expects and what `ExecReload=kill -HUP` on 252
  tolerates (it ignores them);
- `WATCHDOG=1` pings (`WatchdogSec=`), sent by `watchdog` only while the event loop turns
  and the spool takes a commit, so a wedged loop or a hung disk gets the service restarted;
- `EXTEND_TIMEOUT_USEC=` while start-up takes long (a large spool to open).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping

import trio

log = logging.getLogger("voltd.systemd")


def notify(message: str) -> bool:
    """Send e.g. "READY=1"; False (and nothing else) when not run under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify %s failed: %s", message.split("\n", 1)[0], exc)
        return False
    return True


def status(text: str) -> bool:
    """One `STATUS=` line (what `systemctl status` shows): no line breaks."""
    return notify("STATUS=" + " ".join(text.split()))


def reloading() -> bool:
    """Before a reload: `RELOADING=1` with the monotonic time systemd 253+ asks for."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def extend_timeout(seconds: float) -> bool:
    """Ask systemd for `seconds` more before it gives up on start-up (or stop)."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between `WATCHDOG=1` pings: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3)
    advises; None when systemd set no watchdog for this process."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1_000_000 / 2


async def watchdog(interval: float, alive: Callable[[], Awaitable[object]]) -> None:
    """Ping every `interval` seconds, each time only after `alive()` (a spool commit) has
    finished within the interval: a stalled loop sends nothing (this task never runs), and
    neither does a spool whose writer is stuck. Runs until cancelled."""
    missed = False
    while True:
        started = trio.current_time()
        done = False
        with trio.move_on_after(interval):
            await alive()
            done = True
        if done:
            notify("WATCHDOG=1")
            if missed:
                log.warning("watchdog: the spool commits again; pinging systemd again")
            missed = False
        elif not missed:
            missed = True
            log.error(
                "watchdog: the spool took no commit within %.3gs; not pinging systemd (it "
                "restarts the service when the watchdog runs out)",
                interval,
            )
        await trio.sleep_until(started + interval)


class StartupExtender:
    """While start-up runs long (a large spool being opened and checked), ask systemd for more
    time every `every` seconds, so `TimeoutStartSec=` measures a start that hangs, not one
    that works through a big spool. A thread, because the slow part blocks the event loop;
    a normal start ends before its first message and sends nothing."""

    def __init__(self, every: float = 10.0, extend: float = 30.0) -> None:
        self.every, self.extend = every, extend
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = time.monotonic()

    def __enter__(self) -> StartupExtender:
        if os.environ.get("NOTIFY_SOCKET"):
            self._thread = threading.Thread(target=self._run, name="voltd start-up", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self.every):
            took = time.monotonic() - self.started
            extend_timeout(self.extend)
            status(f"starting: opening and checking the spool ({took:.0f} s so far)")
