"""Abusive clients against the real daemon over real HTTPS on loopback.

Slow clients, oversized requests, many idle connections and a full file-descriptor table must
not stop well-behaved clients (Volt) from being served, nor SIGTERM from ending the daemon.

What ends a bad connection, stage by stage (hypercorn 0.18's trio worker, voltd's settings):

- TCP open, TLS never finished: `ssl_handshake_timeout` (10 s), a deadline for the whole
  handshake.
- TLS done, first request's headers never finished: the keep-alive idle timer, armed when the
  connection opens and not reset by partial data: `keep_alive_timeout` (5 s).
- headers done, body trickled: quart's `BODY_TIMEOUT` (60 s) for the whole body, then 408.
- request line plus headers: 431 once more than `h11_max_incomplete_size` (16 KiB) of an
  unfinished head is buffered; data arrive a TLS record (16 KiB) at a time, so heads of up to
  about 32 KiB get through.
- idle keep-alive after a request, or its next request trickled: `keep_alive_timeout` again.
  hypercorn 0.18 re-arms that timer from a task quart-trio has cancelled, so it never ran
  again; voltd.server re-arms it under a shield (the keep-alive trickle test).
- a client that stops reading the answers: hypercorn's write has no timeout; voltd sets
  TCP_USER_TIMEOUT (SEND_TIMEOUT, 10 s) so the kernel aborts the connection (the last test).
- any single read: `read_timeout` (120 s).

The 60-120 s bounds are checked as settings; the live tests wait out only the short ones.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Iterable
from contextlib import AsyncExitStack
from functools import partial
from ssl import SSLContext
from types import SimpleNamespace
from typing import cast
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from tests.helpers import Daemon, make_event
from voltd.server import Ingest, hypercorn_config, make_webhook_app

LIVENESS = 10.0  # a well-behaved request is answered within this, whatever else goes on
STOP_MARGIN = 10.0  # SIGTERM: exit within graceful_timeout plus this
HC = hypercorn_config(["127.0.0.1:0"])

Addr = tuple[str, int]
TLSStream = trio.SSLStream[trio.SocketStream]
GONE = (trio.BrokenResourceError, trio.ClosedResourceError)

PROBE = (
    b"POST /webhooks HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)
# Headers that never end: one byte every TRICKLE seconds outlasts any test.
SLOW_HEAD = b"POST /webhooks HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 10_000
TRICKLE = 0.3


def _addr(url: str) -> Addr:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def _room(wanted: int) -> int:
    """How many connections to hold: both ends live under the same `ulimit -n`, so stay well
    below it (1024 is common) rather than test what happens at the limit by accident."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(20, min(wanted, soft - 300))


def _open_fds(d: Daemon) -> int:
    assert d.proc is not None
    return len(os.listdir(f"/proc/{d.proc.pid}/fd"))


def _signed_post(d: Daemon, body: bytes, extra: bytes = b"", target: bytes = b"/webhooks") -> bytes:
    head = (
        b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"X-Respond-Flow-Signature: %s\r\n%sContent-Length: %d\r\n\r\n"
    )
    return head % (target, d.signer.sign(body).encode(), extra, len(body)) + body


async def _tls(ctx: SSLContext, addr: Addr) -> TLSStream:
    tcp = await trio.open_tcp_stream(*addr)
    stream = trio.SSLStream(tcp, ctx, server_hostname=addr[0])
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def _read_response(stream: TLSStream) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length; EOFError if the server hangs up first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError(buf)
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError(buf)
        body += chunk
    return int(status_line.split()[1]), headers, body


async def _until_closed(stream: TLSStream | trio.SocketStream) -> None:
    """Return when the server ends the connection (EOF, reset or TLS torn down)."""
    try:
        while await stream.receive_some(65536):
            pass
    except GONE:
        pass


async def _trickle(stream: TLSStream, data: bytes, every: float) -> None:
    """Send `data` one byte at a time; stop quietly once the server has hung up."""
    try:
        for i in range(len(data)):
            await stream.send_all(data[i : i + 1])
            await trio.sleep(every)
    except GONE:
        pass


async def _exchange(
    ctx: SSLContext, addr: Addr, head: bytes, body: Iterable[bytes] = ()
) -> tuple[int | None, dict[str, str]]:
    """Send a request while reading the answer; (None, {}) when the server just hangs up.

    Reading concurrently matters: a server refusing a request stops reading it, so a sender
    that waits to finish first could block on a full socket buffer."""

    async def send() -> None:
        try:
            await stream.send_all(head)
            for chunk in body:
                await stream.send_all(chunk)
        except GONE:
            pass

    with trio.fail_after(LIVENESS):
        stream = await _tls(ctx, addr)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                try:
                    status, headers, _ = await _read_response(stream)
                except (EOFError, *GONE):
                    return None, {}
                finally:
                    nursery.cancel_scope.cancel()
            return status, headers
        finally:
            await trio.aclose_forcefully(stream)


def _post_event(d: Daemon, client: httpx.Client) -> str:
    """A fresh signed event that must be answered 200; its id."""
    body = make_event()
    headers = {"Content-Type": "application/json", "X-Respond-Flow-Signature": d.signer.sign(body)}
    r = client.post(d.url, content=body, headers=headers)
    assert r.status_code == 200, r.text
    return json.loads(body)["id"]


def _well_behaved(d: Daemon, n: int) -> list[str]:
    """`n` signed events over one keep-alive connection and `n` over fresh ones, then
    /healthz: every answer must be a 200 within LIVENESS. Returns the event ids."""
    ctx = d.tls()
    ids = []
    with httpx.Client(verify=ctx, timeout=LIVENESS) as keep:
        for _ in range(n):
            ids.append(_post_event(d, keep))
            with httpx.Client(verify=ctx, timeout=LIVENESS) as fresh:
                ids.append(_post_event(d, fresh))
    r = httpx.get(d.admin_url + "/healthz", timeout=LIVENESS)
    assert r.status_code == 200, r.text
    return ids


async def _landed(d: Daemon, ids: list[str]) -> None:
    """Every id reaches the file sink within LIVENESS."""
    want = set(ids)

    def landed() -> bool:
        return want <= {json.loads(x)["id"] for x in d.lines("out/all.jsonl")}

    await trio.to_thread.run_sync(d.wait_for, landed, LIVENESS)


async def _stop(d: Daemon) -> int:
    """SIGTERM; the exit code, which must come within graceful_timeout + STOP_MARGIN."""
    limit = HC.graceful_timeout + STOP_MARGIN
    try:
        return await trio.to_thread.run_sync(partial(d.stop, signal.SIGTERM, limit))
    except subprocess.TimeoutExpired:
        log = "\n".join(d.log[-20:])
        raise AssertionError(f"no exit {limit:.0f} s after SIGTERM:\n{log}") from None


async def _header_slowloris(
    ctx: SSLContext,
    addr: Addr,
    lifetimes: list[float],
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Headers one byte at a time, reconnecting whenever the server hangs up, until `stop`:
    each connection's lifetime (connect to the server's hang-up) goes into `lifetimes`."""
    started = False
    while not (started and stop.is_set()):
        t0 = trio.current_time()
        stream = await _tls(ctx, addr)
        try:
            if not started:
                task_status.started()
                started = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_trickle, stream, SLOW_HEAD, TRICKLE)
                await _until_closed(stream)
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)
        lifetimes.append(trio.current_time() - t0)


async def _body_slowloris(
    ctx: SSLContext, addr: Addr, head: bytes, *, task_status: trio.TaskStatus[None]
) -> None:
    """Complete headers, then the body one byte at a time."""
    stream = await _tls(ctx, addr)
    try:
        await stream.send_all(head)
        task_status.started()
        await _trickle(stream, b" " * 1000, 0.5)
        await trio.sleep_forever()
    finally:
        await trio.aclose_forcefully(stream)


async def _silent_tcp(addr: Addr, *, task_status: trio.TaskStatus[None]) -> None:
    """A TCP connection that never starts the TLS handshake."""
    stream = await trio.open_tcp_stream(*addr)
    try:
        task_status.started()
        await trio.sleep_forever()
    finally:
        await trio.aclose_forcefully(stream)


def test_every_slow_stage_has_a_bound() -> None:
    """The stages whose bound is too long to wait out in a test are bounded by these."""
    assert 0 < HC.ssl_handshake_timeout <= 10  # TCP open, TLS handshake never finished
    assert 0 < HC.keep_alive_timeout <= 10  # first request's headers never finished
    assert HC.read_timeout is not None and 0 < HC.read_timeout <= 120  # idle keep-alive
    assert HC.h11_max_incomplete_size <= 16 * 1024  # request line + headers, then 431
    assert 0 < HC.graceful_timeout <= 10  # what cuts in-flight and idle ones at SIGTERM

    async def unused() -> None: ...

    stub = cast(Ingest, SimpleNamespace(handle=unused, counters=Counter()))
    app = make_webhook_app(stub, "/webhooks", 65536)
    assert 0 < app.config["BODY_TIMEOUT"] <= 60  # body trickled: 408 and closed


@pytest.mark.slow
async def test_slow_clients_do_not_starve_well_behaved_ones(daemon: Daemon) -> None:
    """Slowloris on headers, on the body and on the TLS handshake, all held open while
    well-behaved clients are served; the header ones are cut within keep_alive_timeout."""
    daemon.start()
    ctx, addr = daemon.tls(), _addr(daemon.url)
    n_head, n_body, n_raw = _room(200), 20, 20
    lifetimes: list[float] = []
    stop = trio.Event()
    bound = HC.keep_alive_timeout + LIVENESS
    body_head = _signed_post(daemon, b" " * 1000)[:-1000]
    async with trio.open_nursery() as holders:
        try:
            for _ in range(n_raw):
                await holders.start(_silent_tcp, addr)
            for _ in range(n_body):
                await holders.start(_body_slowloris, ctx, addr, body_head)
            async with trio.open_nursery() as heads:
                for _ in range(n_head):
                    await heads.start(_header_slowloris, ctx, addr, lifetimes, stop)
                held = _open_fds(daemon)
                assert held >= n_raw + n_body + n_head // 2, held  # the attack is real
                ids = await trio.to_thread.run_sync(_well_behaved, daemon, 5)
                await _landed(daemon, ids)
                stop.set()
                heads.cancel_scope.deadline = trio.current_time() + bound
            assert not heads.cancel_scope.cancelled_caught, (
                f"slow-header connections still open {bound:.0f} s after the last reconnect"
            )
            assert len(lifetimes) >= n_head
            assert max(lifetimes) <= bound, max(lifetimes)
            # Silent TCP and trickled bodies (60 s bounds) are still open: SIGTERM cuts them.
            code = await _stop(daemon)
            assert code == 0, "\n".join(daemon.log[-20:])
        finally:
            holders.cancel_scope.cancel()


@pytest.mark.slow
async def test_a_keep_alive_connection_trickling_its_next_request_is_closed(
    daemon: Daemon,
) -> None:
    """After one request, the next request's headers trickled must be cut like the first's.

    Without voltd's fix, hypercorn 0.18 + quart-trio re-arm the idle timer from the app task
    as quart-trio cancels it, so it never runs again, and `read_timeout` is per read: one byte
    every < 120 s holds the connection for as long as 16 KiB of headers last (weeks)."""
    daemon.start()
    stream = await _tls(daemon.tls(), _addr(daemon.url))
    try:
        await stream.send_all(PROBE)
        status, _, _ = await _read_response(stream)
        assert status == 200
        bound = HC.keep_alive_timeout + 5
        with trio.move_on_after(bound) as still_open:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_trickle, stream, SLOW_HEAD, TRICKLE)
                await _until_closed(stream)
                nursery.cancel_scope.cancel()
        assert not still_open.cancelled_caught, f"still open after {bound:.0f} s of trickling"
    finally:
        await trio.aclose_forcefully(stream)


async def test_oversized_requests_are_refused_and_the_daemon_keeps_serving(
    daemon: Daemon,
) -> None:
    """Header bytes are capped (431), bodies past max_body_bytes are 413, garbage is 400."""
    daemon.start()
    ctx, addr = daemon.tls(), _addr(daemon.url)
    exchange = partial(_exchange, ctx, addr)
    event = make_event()

    # h11 answers 431 once an unfinished head (request line and headers) over
    # h11_max_incomplete_size is buffered; data come a TLS record (<= 16 KiB) at a time.
    refused = {  # 431, or a hang-up before it arrives (the rest of the request is unread)
        "one 100 KB header": _signed_post(daemon, event, b"X-Big: " + b"a" * 100_000 + b"\r\n"),
        "1000 headers, 100 KB": _signed_post(
            daemon, event, b"".join(b"X-Pad-%04d: %s\r\n" % (i, b"v" * 88) for i in range(1000))
        ),
        "100 KB URL": _signed_post(daemon, event, target=b"/webhooks?" + b"q" * 100_000),
    }
    for name, raw in refused.items():
        status, _ = await exchange(raw)
        assert status in (None, 431), (name, status)

    # The cap is on bytes, not on the count: 1000 short headers (10 KB) are fine.
    few_bytes = b"".join(b"X-%d: v\r\n" % i for i in range(1000))
    status, _ = await exchange(_signed_post(daemon, make_event(), few_bytes))
    assert status == 200

    status, _ = await exchange(b"POST /webhooks HTTP/1.1\r\nHost: localhost\r\nno colon\r\n\r\n")
    assert status == 400

    huge = b"POST /webhooks HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % 10**12
    status, headers = await exchange(huge)
    assert (status, headers.get("connection")) == (413, "close")

    chunked = b"POST /webhooks HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = (b"4000\r\n" + b"a" * 0x4000 + b"\r\n" for _ in range(128))  # 2 MiB, never ends
    status, headers = await exchange(chunked, chunks)
    assert (status, headers.get("connection")) == (413, "close")

    ids = await trio.to_thread.run_sync(_well_behaved, daemon, 2)
    await _landed(daemon, ids)
    code = await _stop(daemon)
    assert code == 0
    assert not [x for x in daemon.log if "Traceback" in x or "level=error" in x]


async def test_many_idle_connections_neither_block_service_nor_shutdown(daemon: Daemon) -> None:
    """Hundreds of idle TLS connections (most after one request, kept alive; some silent
    since the handshake): others are served, and SIGTERM still exits 0 in time."""
    daemon.start()
    ctx, addr = daemon.tls(), _addr(daemon.url)
    n = _room(500)
    n_silent = n // 5
    limiter = trio.CapacityLimiter(16)
    async with AsyncExitStack() as stack:

        async def connect(after_request: bool) -> None:
            async with limiter:
                stream = await _tls(ctx, addr)
                stack.push_async_callback(trio.aclose_forcefully, stream)
                if after_request:
                    await stream.send_all(PROBE)
                    status, _, _ = await _read_response(stream)
                    assert status == 200

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(connect, i >= n_silent)
        # Each closes keep_alive_timeout after its last request or its handshake; opening
        # them all takes a few seconds, so the early ones may be gone: many are still here.
        held = _open_fds(daemon)
        assert held >= min(100, n // 4), held
        ids = await trio.to_thread.run_sync(_well_behaved, daemon, 3)
        await _landed(daemon, ids)
        code = await _stop(daemon)
        assert code == 0, "\n".join(daemon.log[-20:])


async def test_a_full_descriptor_table_is_survived(daemon: Daemon) -> None:
    """At `ulimit -n` the daemon cannot accept (trio retries every 0.1 s), open connections
    go on, an acknowledged event waits in the spool until the file sink can open its file."""
    limit = 64  # the daemon alone; it starts with about 16 descriptors open
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    daemon.start(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard)))
    addr = _addr(daemon.url)
    with httpx.Client(verify=daemon.tls(), timeout=LIVENESS) as keep:
        ids = [await trio.to_thread.run_sync(_post_event, daemon, keep)]
        socks = []
        try:
            for _ in range(limit + 16):
                socks.append(socket.create_connection(addr, timeout=LIVENESS))
            await trio.to_thread.run_sync(
                daemon.wait_for, lambda: any("EMFILE" in x for x in daemon.log), LIVENESS
            )
            ids.append(await trio.to_thread.run_sync(_post_event, daemon, keep))
        finally:
            for s in socks:
                s.close()
    ids += await trio.to_thread.run_sync(_well_behaved, daemon, 2)
    await _landed(daemon, ids)
    code = await _stop(daemon)
    assert code == 0


@pytest.mark.slow
async def test_sigterm_is_not_held_up_by_a_client_that_stops_reading(daemon: Daemon) -> None:
    """A client pipelining requests without reading the answers fills the socket buffers.

    hypercorn 0.18's trio worker writes under a shielded cancel scope with no timeout, so
    `graceful_timeout` cannot end that write; without TCP_USER_TIMEOUT the daemon would never
    exit (nor free the connection while running)."""
    daemon.start()
    addr = _addr(daemon.url)
    raw = trio.socket.socket()
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # full after a few answers
        await raw.connect(addr)
    except BaseException:
        raw.close()
        raise
    stream = trio.SSLStream(trio.SocketStream(raw), daemon.tls(), server_hostname=addr[0])
    try:
        await stream.do_handshake()
        batch = b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n" * 100
        with trio.fail_after(30):  # until the daemon stops reading this connection
            while True:
                with trio.move_on_after(2) as blocked:
                    await stream.send_all(batch)
                if blocked.cancelled_caught:
                    break
        ids = await trio.to_thread.run_sync(_well_behaved, daemon, 1)
        await _landed(daemon, ids)
        code = await _stop(daemon)
        assert code == 0
    finally:
        await trio.aclose_forcefully(stream)
