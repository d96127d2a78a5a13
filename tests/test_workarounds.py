"""voltd/workarounds.py: fixes for library bugs, applied at daemon start-up and never on import.

The keep-alive test runs bare hypercorn + quart-trio WITHOUT the fix and expects the bug: when
it fails, upstream has fixed it and the workaround can go. Anything that patches runs in a
subprocess, so no patch leaks into the other tests.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import pytest
from hypercorn.trio import worker_context

from voltd import workarounds

KEEP_ALIVE_TIMEOUT = 1  # seconds, hypercorn's keep_alive_timeout in the probe below
WAIT = 3.0  # how long the probe waits for the server to close the idle connection


def run_python(code: str, *args: str, timeout: float = 60) -> dict[str, object]:
    """Run `code` in a fresh interpreter; it prints one JSON object as its last line."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_voltd_patches_nothing() -> None:
    found = run_python(
        """
        import json, logging
        import voltd, voltd.server, voltd.daemon
        from hypercorn.trio import worker_context

        restart = worker_context.TrioSingleTask.__dict__["restart"]
        print(json.dumps({
            "qualname": restart.__qualname__,
            "module": restart.__module__,
            "patched": hasattr(restart, "_voltd_original"),
            "filters": [repr(f) for f in logging.getLogger("trio.serve_listeners").filters],
        }))
        """
    )
    assert found == {
        "qualname": "TrioSingleTask.restart",
        "module": "hypercorn.trio.worker_context",
        "patched": False,
        "filters": [],
    }


# A bare quart-trio app on hypercorn's trio `serve`, plain HTTP: one keep-alive request over a
# raw socket, then: does the server close the idle connection within WAIT seconds?
KEEP_ALIVE_PROBE = """
import json, sys, time
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio

from voltd import workarounds

if sys.argv[1] == "fixed":
    workarounds.keep_alive_timer_fix()

app = QuartTrio(__name__)


@app.get("/")
async def index():
    return "ok"


async def main():
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.keep_alive_timeout = float(sys.argv[2])
    config.graceful_timeout = 1
    config.accesslog = None
    shutdown = trio.Event()
    result = {}
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, config, shutdown_trigger=shutdown.wait))
        host, port = binds[0].removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"GET / HTTP/1.1\\r\\nHost: test\\r\\n\\r\\n")
        answer = b""
        while not (b"\\r\\n\\r\\n" in answer and answer.endswith(b"ok")):
            data = await stream.receive_some()
            if not data:
                break
            answer += data
        result["answer"] = answer.split(b"\\r\\n", 1)[0].decode()
        start = time.monotonic()
        result["closed_after"] = None
        with trio.move_on_after(float(sys.argv[3])):
            while await stream.receive_some():
                pass
            result["closed_after"] = round(time.monotonic() - start, 2)
        await stream.aclose()
        shutdown.set()
    print(json.dumps(result))


trio.run(main)
"""


def keep_alive_probe(mode: str) -> dict[str, object]:
    return run_python(KEEP_ALIVE_PROBE, mode, str(KEEP_ALIVE_TIMEOUT), str(WAIT))


def test_hypercorn_still_has_the_keep_alive_bug() -> None:
    """Tells us when upstream has fixed the bug that `keep_alive_timer_fix` works around."""
    found = keep_alive_probe("bare")
    assert found["answer"] == "HTTP/1.1 200 ", found
    version = workarounds.hypercorn_version()
    assert found["closed_after"] is None, (
        f"hypercorn {version} has fixed the keep-alive timer bug: without voltd's fix it closed "
        f"an idle keep-alive connection after {found['closed_after']} s (keep_alive_timeout = "
        f"{KEEP_ALIVE_TIMEOUT}). The workaround (workarounds.keep_alive_timer_fix) and "
        f"KEEP_ALIVE_BUG_CONFIRMED_IN (now {workarounds.KEEP_ALIVE_BUG_CONFIRMED_IN}) can be "
        f"removed once voltd requires hypercorn >= {version}."
    )


def test_keep_alive_timer_fix_closes_an_idle_connection() -> None:
    found = keep_alive_probe("fixed")
    assert found["answer"] == "HTTP/1.1 200 ", found
    closed_after = found["closed_after"]
    assert isinstance(closed_after, float | int), f"still open after {WAIT} s: {found}"
    assert KEEP_ALIVE_TIMEOUT - 0.2 <= closed_after < WAIT, found


def test_apply_is_idempotent_and_the_fix_can_be_taken_out(monkeypatch: pytest.MonkeyPatch) -> None:
    single_task = worker_context.TrioSingleTask
    logger = logging.getLogger("trio.serve_listeners")
    # Put back whatever was there before, at teardown: nothing leaks into other tests.
    monkeypatch.setattr(single_task, "restart", single_task.restart)
    monkeypatch.setattr(logger, "filters", list(logger.filters))
    current = single_task.restart
    original = getattr(current, "_voltd_original", current)

    assert workarounds.keep_alive_timer_fix(False) is False
    assert single_task.restart is original
    first = workarounds.apply()
    assert first == ["hypercorn keep-alive timer", "trio accept-error log throttle"]
    patched = single_task.restart
    assert patched is not original and patched._voltd_original is original  # type: ignore[attr-defined]
    throttles = [f for f in logger.filters if isinstance(f, workarounds._OncePer)]
    assert len(throttles) == 1

    assert workarounds.apply() == first
    assert single_task.restart is patched  # not wrapped twice
    assert [f for f in logger.filters if isinstance(f, workarounds._OncePer)] == throttles
    assert workarounds.keep_alive_timer_fix() is True
    assert single_task.restart is patched

    assert workarounds.keep_alive_timer_fix(False) is False
    assert single_task.restart is original
    assert workarounds.keep_alive_timer_fix(False) is False
    assert single_task.restart is original
