"""Helpers shared by the tests (and by `fuzz/run.py`, which runs the properties without pytest):
a real `voltd serve` process on loopback HTTPS (`Daemon`), a plain-HTTP endpoint that records
what a daemon's http sinks relay to it (`RecordingReceiver`), realistic events (`make_event`),
the vendor's example bodies (`EXAMPLES`) and the per-property example budget (`examples`).

Fixtures and the hypothesis profiles live in tests/conftest.py.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx
import trio
from hypothesis import HealthCheck, settings

from voltd.events import Event, parse
from voltd.keys import generate_signing_pair, make_self_signed_cert
from voltd.spool import SpoolLike
from voltd.testing import make_body
from voltd.verify import Signer, load_private_key_file


def examples(n: int) -> settings:
    """`n` examples in CI; a profile that asks for more (HYPOTHESIS_PROFILE=fuzz) keeps its
    number, so fuzzing is never capped by a test's CI budget. Slow examples are fine here."""
    loaded = settings.default.max_examples
    return settings(
        max_examples=n if loaded <= settings.get_profile("ci").max_examples else max(n, loaded),
        suppress_health_check={
            *settings.default.suppress_health_check,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        },
    )


EXAMPLES = Path(__file__).resolve().parent.parent / "voltd" / "examples"

BASE_CONFIG = """\
[server]
bind = ["127.0.0.1:0"]
path = "/webhooks"
certfile = "tls/cert.pem"
keyfile = "tls/key.pem"
max_body_bytes = 65536

[admin]
bind = "127.0.0.1:0"

[verify]
public_keys = ["keys/volt_id_rsa.pub"]
{verify_extra}

[spool]
{spool}

[retry]
initial = "100ms"
max_delay = "500ms"
give_up_after = "{give_up_after}"

[numbers]
front-desk = "+1 (555) 555-0123"
sales = "+1 555 555 0145"

{body}
"""

DEFAULT_BODY = """\
[[routes]]
name = "all"
sinks = ["all"]

[[routes]]
name = "front desk"
match = { number = ["front-desk"] }
sinks = ["front-desk"]

[[routes]]
name = "sales"
match = { number = ["sales"] }
sinks = ["sales"]

[sinks.all]
type = "file"
path = "out/all.jsonl"

[sinks.front-desk]
type = "file"
path = "out/front-desk/{our_number}-{direction}.jsonl"

[sinks.sales]
type = "file"
path = "out/sales/{our_number}-{direction}.jsonl"
"""


#: A fresh, realistic messaging envelope as compact JSON bytes (the plugin SDK's own).
make_event = make_body


# --------------------------------------------------------------------------------------------
# Key material: made once per session (RSA key generation takes 50-100 ms), copied per daemon

_material: Path | None = None


def session_material() -> Path:
    """A directory holding one signing key pair (`keys/volt_signing_key.pem`,
    `keys/volt_id_rsa.pub`) and one self-signed certificate (`tls/cert.pem`, `tls/key.pem`),
    made on first use and shared by the whole session (this process); removed at exit.

    Copy the files, never use them in place: every test gets its own files on disk. A test
    that needs a key or certificate distinct from every other test's makes its own with
    `voltd.keys` (e.g. the "wrong key" cases in test_e2e.py and test_cli.py).
    """
    global _material
    if _material is None:
        root = Path(tempfile.mkdtemp(prefix="voltd-test-keys-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        generate_signing_pair(root / "keys")
        make_self_signed_cert(root / "tls")
        _material = root
    return _material


def copy_material(subdir: str, into: Path) -> None:
    """The session's `keys` or `tls` files into directory `into` (made if missing), modes kept."""
    into.mkdir(parents=True, exist_ok=True)
    for path in sorted((session_material() / subdir).iterdir()):
        shutil.copy2(path, into / path.name)


# --------------------------------------------------------------------------------------------
# The daemon

#: The sd_notify socket a started Daemon listens on, in its directory.
NOTIFY_SOCKET_NAME = "notify.sock"
#: The longest path an AF_UNIX socket can be bound to (sun_path is 108 bytes with its NUL).
_UNIX_PATH_MAX = 107


def _status_urls(message: str) -> tuple[list[str], list[str]]:
    """Webhook and admin URLs from a `READY=1\\nSTATUS=serving webhooks on URL [URL...];
    admin on URL` notification (see `voltd.daemon.Daemon._ready_message`)."""
    status = ""
    for line in message.split("\n"):
        if line.startswith("STATUS="):
            status = line.removeprefix("STATUS=")
    webhooks, _, admin = status.partition("; admin on ")
    return webhooks.removeprefix("serving webhooks on ").split(), admin.split()


class Daemon:
    """One deployment directory and the `voltd serve` process running on it.

    The signing keys and TLS certificate are copies of the session's (`session_material`).
    `start()` gives the process a NOTIFY_SOCKET of its own and returns when the daemon sends
    READY=1 (as systemd would see it); its STATUS= says where it listens (`urls`, `url`,
    `admin_url`). Everything the daemon sent there since the last start is in `notifications`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        copy_material("keys", root / "keys")
        copy_material("tls", root / "tls")
        self.private_key = root / "keys" / "volt_signing_key.pem"
        self.public_key = root / "keys" / "volt_id_rsa.pub"
        self.cert = root / "tls" / "cert.pem"
        self.signer = Signer(load_private_key_file(self.private_key))
        self.config = root / "config.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.urls: list[str] = []
        self.url = ""
        self.admin_url = ""
        self.log: list[str] = []
        self._client: httpx.Client | None = None
        self._reader: threading.Thread | None = None
        self._notify: socket.socket | None = None
        self._notify_path: Path | None = None
        self._notify_dir: Path | None = None  # a short temp directory when root's path is long
        self._notifications: list[str] = []

    def configure(
        self,
        body: str = DEFAULT_BODY,
        verify_extra: str = 'max_age = "7d"',
        give_up_after: str = "1h",
        plugin_dirs: bool = False,
        spool: str = 'path = "spool.db"',
    ) -> Path:
        """Write the config; `plugin_dirs` adds the deployment's `plugins/` directory (a
        top-level key, so it goes before the first table); `spool` is the body of `[spool]`
        (e.g. `url = "postgresql://…"` for a spool shared by several deployments)."""
        text = BASE_CONFIG.format(
            body=body,
            verify_extra=verify_extra,
            give_up_after=give_up_after,
            spool=spool,
        )
        if plugin_dirs:
            text = 'plugin_dirs = ["plugins"]\n' + text
        self.config.write_text(text)
        return self.config

    def start(
        self,
        timeout: float = 30.0,
        preexec_fn: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start `voltd serve` and wait for READY=1 on its NOTIFY_SOCKET (set for the child
        only; `env` adds to its environment, e.g. WATCHDOG_USEC); fail with the last log
        lines if it exits or times out first."""
        if not self.config.exists():
            self.configure()
        self._close_notify()
        self._notifications = []
        notify = self._open_notify()
        env = dict(
            os.environ, **(env or {}), PYTHONUNBUFFERED="1", NOTIFY_SOCKET=str(self._notify_path)
        )
        self.proc = proc = subprocess.Popen(
            [sys.executable, "-m", "voltd", "serve", "-c", str(self.config)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            preexec_fn=preexec_fn,
            env=env,
        )
        log = self.log
        stream = proc.stderr
        assert stream is not None

        def reader() -> None:
            for raw in stream:
                log.append(raw.decode(errors="replace").rstrip())

        self._reader = threading.Thread(target=reader, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        notify.settimeout(0.05)
        ready = None
        while ready is None:
            try:
                message = notify.recv(65536).decode(errors="replace")
            except TimeoutError:
                message = None
            if message is not None:
                self._notifications.append(message)
                if "READY=1" in message.split("\n"):
                    ready = message
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    time.sleep(0.2)  # its last lines
                self._finish_log(1.0)
                raise RuntimeError("voltd did not start:\n" + "\n".join(self.log[-40:]))
        notify.setblocking(False)
        self.urls, admin = _status_urls(ready)
        if not self.urls:
            raise RuntimeError(f"voltd said READY=1 without its webhook URLs: {ready!r}")
        self.url = self.urls[0]
        self.admin_url = admin[0] if admin else ""

    @property
    def notifications(self) -> list[str]:
        """What the daemon sent to NOTIFY_SOCKET since the last start, oldest first (after
        `stop()`, including what it sent while stopping)."""
        self._receive_notifications()
        return list(self._notifications)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._finish_log(5.0)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self._close_notify()
        return code

    def close(self) -> None:
        """Kill the process if it still runs and release the notify socket (fixture teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._client is not None:
            self._client.close()
            self._client = None
        self._close_notify()

    def _finish_log(self, timeout: float) -> None:
        """Let the stderr reader take in the last lines of a process that has exited."""
        if self._reader is not None and self.proc is not None and self.proc.poll() is not None:
            self._reader.join(timeout)

    def _open_notify(self) -> socket.socket:
        path = self.root / NOTIFY_SOCKET_NAME
        if len(os.fsencode(path)) > _UNIX_PATH_MAX:
            self._notify_dir = Path(tempfile.mkdtemp(prefix="voltd-", dir="/tmp"))
            path = self._notify_dir / NOTIFY_SOCKET_NAME
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        self._notify, self._notify_path = sock, path
        return sock

    def _receive_notifications(self) -> None:
        """Take in the datagrams waiting on the notify socket."""
        if self._notify is None:
            return
        self._notify.setblocking(False)
        while True:
            try:
                self._notifications.append(self._notify.recv(65536).decode(errors="replace"))
            except BlockingIOError:
                return

    def _close_notify(self) -> None:
        if self._notify is not None:
            self._receive_notifications()
            self._notify.close()
            self._notify = None
        if self._notify_path is not None:
            self._notify_path.unlink(missing_ok=True)
            self._notify_path = None
        if self._notify_dir is not None:
            shutil.rmtree(self._notify_dir, ignore_errors=True)
            self._notify_dir = None

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(verify=self.tls(), timeout=30)
        return self._client

    def post(
        self,
        body: bytes,
        *,
        signature: str | Callable[[bytes], str] | None = "sign",
        headers: dict[str, str] | None = None,
        url: str | None = None,
    ) -> httpx.Response:
        h: dict[str, str | bytes] = {"Content-Type": "application/json", **(headers or {})}
        if signature == "sign":
            h["X-Respond-Flow-Signature"] = self.signer.sign(body)
        elif callable(signature):
            h["X-Respond-Flow-Signature"] = signature(body)
        elif signature is not None:
            h["X-Respond-Flow-Signature"] = signature
        return self.client.post(url or self.url, content=body, headers=h)

    def lines(self, relpath: str) -> list[bytes]:
        path = self.root / relpath
        return path.read_bytes().splitlines() if path.exists() else []

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("timed out; daemon log:\n" + "\n".join(self.log[-30:]))
            time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# A recording HTTP receiver


@dataclass(frozen=True)
class Received:
    """One request a `RecordingReceiver` read whole, and the status it answered."""

    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    status: int

    @cached_property  # parsed once: a crash test polls tens of thousands of them
    def envelope_id(self) -> str:
        """The `id` of the envelope that is the body (an http sink relays envelopes as JSON)."""
        return str(json.loads(self.body)["id"])


class RecordingReceiver:
    """The endpoint a daemon's http sinks relay to, on plain HTTP at 127.0.0.1: it records
    every POST it reads whole, in arrival order, *before* it answers, so a delivery counts once
    the receiver has read it, whether or not the sender lived to read the answer (a real
    receiver would have acted on it). HTTP/1.1 keep-alive; the answer comes at once, with an
    empty body: `status` (200), or the status `set_status` gave the request's path.

    It is one class because the tests that relay through real daemons (test_crash.py,
    test_shared_spool.py, test_shared_spool_ops.py) each had their own copy of it.

    The port is bound at once, so `url()` is known before a config is written; connections
    are accepted from `start()` on, which the constructor calls unless `listen=False`: until
    then a connection is refused, as at a closed port. A request cut off by a killed sender is
    neither recorded nor answered, and the resets a `kill -9` causes are not logged. A context
    manager (`stop()` at exit); the accessors may be called from any thread.
    """

    def __init__(self, *, status: int = 200, listen: bool = True) -> None:
        self._status = status
        self._statuses: dict[str, int] = {}
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._server = _RecordingServer(self)
        if listen:
            self.start()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def set_status(self, path: str, status: int | None) -> None:
        """Answer requests to `path` with `status` from now on (None: the default again)."""
        with self._lock:
            if status is None:
                self._statuses.pop(path, None)
            else:
                self._statuses[path] = status

    def requests(self, path: str | None = None) -> list[Received]:
        """What arrived (at `path`, or anywhere), in arrival order, whatever the answer."""
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def ids(self, path: str) -> list[str]:
        """The envelope ids of the requests to `path` answered 2xx (delivered), in arrival
        order, repeats included."""
        return [r.envelope_id for r in self.requests(path) if 200 <= r.status < 300]

    def counts(self, path: str) -> Counter[str]:
        """How many times each envelope id was delivered to `path`."""
        return Counter(self.ids(path))

    def start(self) -> None:
        """Accept connections and answer them (in a thread of their own)."""
        if self._thread is None:
            self._server.server_activate()
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.05,), daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        """Record a request read whole; the status to answer it with."""
        with self._lock:
            status = self._statuses.get(path, self._status)
            self._received.append(Received(path, headers, body, status))
        return status


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, receiver: RecordingReceiver) -> None:
        self.receiver = receiver
        super().__init__(("127.0.0.1", 0), _RecordingHandler, bind_and_activate=False)
        self.server_bind()  # the port is taken; no listen() until start()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a killed daemon resets its connections: expected, not worth a traceback


class _RecordingHandler(BaseHTTPRequestHandler):
    server: _RecordingServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        if len(body) < length:
            return  # cut off by a kill: never read whole, so never delivered
        headers = {k.lower(): v for k, v in self.headers.items()}
        status = self.server.receiver._answer(self.path, headers, body)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Spools in-process, as the daemon runs them

S = TypeVar("S", bound=SpoolLike)


def spool_event(**kw: Any) -> Event:
    """`make_event(**kw)` parsed, as a spool stores it."""
    e = parse(make_event(**kw))
    assert isinstance(e, Event)
    return e


@asynccontextmanager
async def writing(spool: S) -> AsyncIterator[S]:
    """`spool` with its writer task running, as the daemon runs it; closed after."""
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.writer)
            yield spool
            nursery.cancel_scope.cancel()
    finally:
        spool.close()
