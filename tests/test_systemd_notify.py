"""What the daemon tells systemd, seen on a real AF_UNIX datagram socket set as NOTIFY_SOCKET
(tests/helpers.py `Daemon`): READY=1 with where it listens, WATCHDOG=1 pings while the loop
turns and the spool commits (none while the loop is blocked), RELOADING=1 + MONOTONIC_USEC
then READY=1 around a SIGHUP reload, STATUS= lines with the pending count, STOPPING=1."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import textwrap
import threading
import time
from pathlib import Path

import trio

from tests.helpers import Daemon, make_event
from voltd import systemd

BLOCKING_PLUGIN = """
import time
import voltd


class Blocker(voltd.Sink):
    async def send(self, event):
        time.sleep(2.0)  # blocks the event loop on purpose


@voltd.hookimpl
def register_sink_types(register):
    register("blocker", Blocker)
"""


def _watch(daemon: Daemon, seconds: float) -> list[tuple[float, str]]:
    """Every datagram that arrives within `seconds`, with when it arrived."""
    seen = len(daemon.notifications)
    out: list[tuple[float, str]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = daemon.notifications
        out.extend((time.monotonic(), m) for m in now[seen:])
        seen = len(now)
        time.sleep(0.02)
    return out


def test_watchdog_pings_reload_status_and_stopping(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path)
    daemon.start(env={"WATCHDOG_USEC": "400000"})  # a ping every 0.2 s
    try:
        ready = [m for m in daemon.notifications if m.startswith("READY=1")]
        assert ready and "serving webhooks on https://127.0.0.1:" in ready[0]
        pings = [t for t, m in _watch(daemon, 1.5) if m == "WATCHDOG=1"]
        assert len(pings) >= 5
        assert max(b - a for a, b in itertools.pairwise(pings)) < 0.4

        for _ in range(3):
            assert daemon.post(make_event()).status_code == 200
        daemon.wait_for(
            lambda: any(m.startswith("STATUS=") and "pending" in m for m in daemon.notifications)
        )

        assert daemon.proc is not None
        before = len(daemon.notifications)
        os.kill(daemon.proc.pid, signal.SIGHUP)
        daemon.wait_for(lambda: any("configuration reloaded" in line for line in daemon.log))
        daemon.wait_for(
            lambda: any(m.startswith("READY=1") for m in daemon.notifications[before:])
        )
        after = [m for m in daemon.notifications[before:] if m != "WATCHDOG=1"]
        reloading = next(i for i, m in enumerate(after) if m.startswith("RELOADING=1"))
        fields = dict(line.split("=", 1) for line in after[reloading].split("\n"))
        usec = int(fields["MONOTONIC_USEC"])
        assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 30
        assert any(m.startswith("READY=1") for m in after[reloading + 1 :])
    finally:
        assert daemon.stop() == 0
    assert any(m.startswith("STOPPING=1") for m in daemon.notifications)


def test_a_blocked_event_loop_sends_no_watchdog_pings(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "blocker.py").write_text(textwrap.dedent(BLOCKING_PLUGIN))
    daemon.configure(
        plugin_dirs=True, body='[[routes]]\nsinks = ["b"]\n[sinks.b]\ntype = "blocker"\n'
    )
    daemon.start(env={"WATCHDOG_USEC": "400000"})
    try:
        _watch(daemon, 0.5)
        # The sink blocks the loop for 2 s once the event is committed (perhaps before the
        # answer goes out): post from another thread while this one watches.
        answers: list[int] = []
        poster = threading.Thread(target=lambda: answers.append(daemon.post(body).status_code))
        body = make_event()
        start = time.monotonic()
        poster.start()
        pings = [t for t, m in _watch(daemon, 4.0) if m == "WATCHDOG=1"]
        poster.join()
        assert answers == [200]
        gaps = [b - a for a, b in itertools.pairwise([start, *pings])]
        assert any("blocked" in line for line in daemon.log), daemon.log[-20:]
        assert max(gaps) >= 1.5  # nothing while the loop was blocked
        assert pings[-1] > time.monotonic() - 1.0  # and pinging again after
    finally:
        daemon.stop(signal.SIGKILL)


def test_no_watchdog_without_watchdog_usec_or_for_another_pid() -> None:
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "x"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}) is None
    mine = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert systemd.watchdog_interval(mine) == 0.5


def _socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    return sock


def test_a_long_start_up_asks_for_more_time(tmp_path: Path, monkeypatch) -> None:
    sock = _socket(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    with systemd.StartupExtender(every=0.1, extend=30):
        first = sock.recv(4096).decode()
    assert first == "EXTEND_TIMEOUT_USEC=30000000"
    assert sock.recv(4096).decode().startswith("STATUS=starting: opening and checking the spool")
    sock.close()


async def test_the_watchdog_waits_for_the_spool_commit(tmp_path: Path, monkeypatch) -> None:
    sock = _socket(tmp_path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    stuck = trio.Event()

    async def alive() -> None:
        if stuck.is_set():
            await trio.sleep_forever()  # a writer that no longer commits

    async with trio.open_nursery() as nursery:
        nursery.start_soon(systemd.watchdog, 0.05, alive)
        await trio.sleep(0.3)
        stuck.set()
        await trio.sleep(0.1)
        got = []
        while True:
            try:
                got.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    assert got.count("WATCHDOG=1") >= 3
    try:
        later = sock.recv(4096)
    except BlockingIOError:
        later = None
    assert later is None  # nothing since the spool stopped committing
    sock.close()
