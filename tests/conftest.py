"""Shared fixtures: a real `voltd serve` process on loopback HTTPS with a throwaway key pair."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, settings

from voltd.keys import generate_signing_pair, make_self_signed_cert
from voltd.verify import Signer, load_private_key_file

# Property tests run a bounded number of examples in CI; `fuzz/run.py` (or
# HYPOTHESIS_PROFILE=fuzz) runs the same properties for as long as you let it.
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "fuzz",
    deadline=None,
    max_examples=1_000_000,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
path = "spool.db"

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


def make_event(
    *,
    eid: str | None = None,
    direction: str = "inbound",
    our: str = "+15555550123",
    their: str = "+15555550199",
    status: str = "received",
    event_type: str = "message.received",
    when: int | None = None,
    text: str = "hello",
    **extra: object,
) -> bytes:
    """A fresh, realistic messaging envelope as compact JSON bytes."""
    frm, to = (their, our) if direction == "inbound" else (our, their)
    payload = {
        "message_app_id": "40318006-1cae-4997-acbc-fe9a4aadb7dd",
        "id": "rf_" + uuid.uuid4().hex[:20],
        "to_number": to,
        "from_number": frm,
        "type": "SMS",
        "text": text,
        "status": status,
        "event_type": event_type,
        "direction": direction,
        "carrier_name": "T-MOBILE USA, INC.",
        "error_code": None,
        "media": [],
        "parts": 1,
        **extra,
    }
    env = {
        "type": "messaging",
        "id": eid or "rfw_" + uuid.uuid4().hex,
        "payload": payload,
        "time": int(time.time()) if when is None else when,
    }
    return json.dumps(env, separators=(",", ":")).encode()


class Daemon:
    """One deployment directory and the `voltd serve` process running on it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.private_key, self.public_key = generate_signing_pair(root / "keys")
        self.cert, _ = make_self_signed_cert(root / "tls")
        self.signer = Signer(load_private_key_file(self.private_key))
        self.config = root / "config.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.admin_url = ""
        self.log: list[str] = []
        self._client: httpx.Client | None = None

    def configure(
        self,
        body: str = DEFAULT_BODY,
        verify_extra: str = 'max_age = "7d"',
        give_up_after: str = "1h",
    ) -> Path:
        self.config.write_text(
            BASE_CONFIG.format(body=body, verify_extra=verify_extra, give_up_after=give_up_after)
        )
        return self.config

    def start(self, timeout: float = 30.0, preexec_fn: Callable[[], None] | None = None) -> None:
        if not self.config.exists():
            self.configure()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "voltd", "serve", "-c", str(self.config)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            preexec_fn=preexec_fn,
            env=env,
        )
        ready = threading.Event()
        urls: dict[str, str] = {}
        log = self.log
        stream = self.proc.stderr
        assert stream is not None

        def reader() -> None:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip()
                log.append(line)
                m = re.search(r"serving webhooks on (\S+)", line)
                if m:
                    urls["url"] = m.group(1)
                m = re.search(r"admin \(healthz\) on (\S+)", line)
                if m:
                    urls["admin"] = m.group(1)
                if "url" in urls and "admin" in urls:
                    ready.set()

        threading.Thread(target=reader, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)
                raise RuntimeError("voltd did not start:\n" + "\n".join(self.log[-40:]))
        self.url, self.admin_url = urls["url"], urls["admin"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code

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


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()
