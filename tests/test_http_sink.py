"""The first-party `http` sink (plugins/voltd_http): relays to real receivers on 127.0.0.1.

No mocks of httpx: every request goes over loopback to a threaded HTTP(S) server (the scripted
server of tests/test_http_helper.py, with its private CA and client certificates) that records
what it got and answers as each test says. Most tests go through `voltd.testing` (the real
config loader and delivery worker); the ones about pauses, disabling, Volt's signature and
outages run the real daemon (`tests.helpers.Daemon`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from voltd_http import HttpSink

import voltd.testing as vt
from tests import test_http_helper as tls_helper
from tests.helpers import EXAMPLES, Daemon, make_event
from tests.test_http_helper import Pki, Reply, ScriptedServer, Seen, server_tls
from voltd.verify import Verifier, load_public_key_file

# The private CA, server and client certificates of the HTTP helper's tests (module scoped).
pki = tls_helper.pki

SECRET = "whsec_" + base64.b64encode(b"voltd http sink test secret, 32b").decode()
SECRET_2 = "whsec_" + base64.b64encode(b"the next secret of the rotation!").decode()
WRONG = "whsec_" + base64.b64encode(b"somebody else's secret, 32 bytes").decode()


# --------------------------------------------------------------------------------------------
# A receiver: the scripted server, with the time and answer of each request


@dataclass
class Hit:
    at: float  # time.monotonic() when the request was answered
    status: int
    seen: Seen

    @property
    def headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.seen.headers.items()}

    @property
    def body(self) -> bytes:
        return self.seen.body


class Receiver:
    """A local HTTP(S) endpoint: `answer(seen)` decides each reply (200 by default)."""

    def __init__(self, tls: Any = None) -> None:
        self.server = ScriptedServer(tls)
        self.hits: list[Hit] = []
        self.answer: Callable[[Seen], Reply] = lambda seen: Reply(200)
        self._lock = threading.Lock()
        self.server.script = self._script

    def _script(self, seen: Seen) -> Reply:
        reply = self.answer(seen)
        with self._lock:
            self.hits.append(Hit(time.monotonic(), reply.status, seen))
        return reply

    def url(self, path: str = "/hook") -> str:
        return self.server.url(path)

    def ok(self) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if 200 <= h.status < 300]

    def ok_bodies(self) -> list[bytes]:
        return [h.body for h in self.ok()]

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def other() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def verify(secret: str, hit: Hit) -> Any:
    return Webhook(secret).verify(hit.body, hit.headers, json_parse=False)


# --------------------------------------------------------------------------------------------
# What is sent


async def test_volt_examples_arrive_byte_for_byte(receiver: Receiver) -> None:
    sink = vt.build_sink("http", {"url": receiver.url()})
    assert isinstance(sink, HttpSink)
    events = vt.volt_examples()
    report = await vt.deliver(sink, events)
    await sink.aclose()
    assert len(report.delivered) == 2 and not report.dead and not report.pending
    assert receiver.ok_bodies() == [e.raw for e in events]  # the bytes Volt sent, unchanged
    for hit in receiver.hits:
        assert (hit.seen.method, hit.seen.path) == ("POST", "/hook")
        assert hit.headers["content-type"] == "application/json"
        assert hit.headers["user-agent"].startswith("voltd/")
        # Unsigned unless asked; Volt's signature only when asked (and these events have none).
        assert not {"webhook-id", "webhook-signature", "x-respond-flow-signature"} & set(
            hit.headers
        )


async def test_put_and_custom_headers_whose_secret_values_never_show(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    token = "tok-" + os.urandom(8).hex()
    monkeypatch.setenv("VOLTD_HTTP_TEST_TOKEN", token)
    options = {
        "url": receiver.url("/in"),
        "method": "put",  # case does not matter
        "headers": {"Authorization": "Bearer ${env:VOLTD_HTTP_TEST_TOKEN}", "X-Tenant": "acme"},
        "signing_secret": SECRET,
    }
    caplog.set_level(logging.DEBUG)
    sink = vt.build_sink("http", options)
    event = vt.make_event()
    assert (await vt.deliver(sink, [event])).delivered == [event]
    hit = receiver.hits[0]
    assert (hit.seen.method, hit.seen.path, hit.body) == ("PUT", "/in", event.raw)
    assert hit.headers["authorization"] == f"Bearer {token}"
    assert hit.headers["x-tenant"] == "acme"
    assert token not in repr(sink.options) and SECRET not in repr(sink.options)

    # A careless receiver quotes the request back: the error kept and logged never does.
    def echo(seen: Seen) -> Reply:
        return Reply(400, {}, json.dumps(dict(seen.headers.items())).encode())

    receiver.answer = echo
    report = await vt.deliver(sink, [vt.make_event()])
    await sink.aclose()
    ((_, error),) = report.dead
    assert error.startswith(f"PermanentError: PUT {receiver.server.origin}: 400 Bad Request")
    assert "[redacted]" in error
    texts = [error, *(r.getMessage() for r in caplog.records)]
    assert any("400 Bad Request" in t for t in texts[1:])  # the dead letter was logged
    for text in texts:
        assert token not in text and SECRET.removeprefix("whsec_") not in text


async def test_template_body_is_text_escaped_and_signed(receiver: Receiver) -> None:
    template = '{"from": {{ their_number | tojson }}, "text": {{ text | tojson }}}'
    sink = vt.build_sink(
        "http",
        {"url": receiver.url(), "body": "template", "template": template, "signing_secret": SECRET},
    )
    event = vt.make_event(text='say "hi" <b>& bye</b>\nnext line', their="+15555550111")
    # A template may fail for one event only: that one is a dead letter, never sent.
    tagged, untagged = vt.make_event(campaign="spring"), vt.make_event()
    picky = vt.build_sink(
        "http", {"url": receiver.url(), "body": "template", "template": "{{ payload.campaign }}"}
    )
    report = await vt.deliver(sink, [event])
    assert report.delivered == [event]
    hit = receiver.hits[0]
    assert json.loads(hit.body) == {
        "from": "+15555550111",
        "text": 'say "hi" <b>& bye</b>\nnext line',
    }
    assert hit.headers["content-type"] == "application/json"
    verify(SECRET, hit)  # the signature covers exactly the rendered bytes
    report = await vt.deliver(picky, [tagged, untagged])
    assert report.delivered == [tagged]
    assert report.dead == [
        (untagged, "PermanentError: template: line 1: 'dict object' has no attribute 'campaign'")
    ]
    assert [h.body for h in receiver.hits[1:]] == [b"spring"]

    plain = vt.build_sink(
        "http",
        {
            "url": receiver.url(),
            "body": "template",
            "template": "{{ their_number }}: {{ text }}",
            "headers": {"content-type": "text/plain; charset=utf-8"},
        },
    )
    await vt.deliver(plain, [event])
    assert receiver.hits[2].body == f"+15555550111: {event.text}".encode()
    assert receiver.hits[2].headers["content-type"] == "text/plain; charset=utf-8"
    for s in (sink, picky, plain):
        await s.aclose()


# --------------------------------------------------------------------------------------------
# Standard Webhooks


async def test_signature_verifies_with_the_reference_package(receiver: Receiver) -> None:
    sink = vt.build_sink("http", {"url": receiver.url(), "signing_secret": SECRET})
    events = vt.volt_examples()
    before = int(time.time())
    await vt.deliver(sink, events)
    await sink.aclose()
    assert len(receiver.hits) == 2
    for hit, event in zip(receiver.hits, events, strict=True):
        assert hit.body == event.raw
        verify(SECRET, hit)
        assert Webhook(SECRET).verify(hit.body, hit.headers) == json.loads(event.raw)
        with pytest.raises(WebhookVerificationError):
            verify(WRONG, hit)
        tampered = Hit(hit.at, hit.status, Seen("POST", "/", hit.seen.headers, hit.body + b" "))
        with pytest.raises(WebhookVerificationError):
            verify(SECRET, tampered)
        assert before <= int(hit.headers["webhook-timestamp"]) <= time.time() + 1
        assert hit.headers["webhook-id"].startswith("msg_")
        assert hit.headers["webhook-signature"].startswith("v1,")
    # The two examples share an envelope id but are two events: two ids.
    assert receiver.hits[0].headers["webhook-id"] != receiver.hits[1].headers["webhook-id"]


async def test_two_secrets_during_a_rotation_give_two_signatures(receiver: Receiver) -> None:
    sink = vt.build_sink("http", {"url": receiver.url(), "signing_secret": [SECRET, SECRET_2]})
    await vt.deliver(sink, [vt.make_event()])
    await sink.aclose()
    hit = receiver.hits[0]
    signatures = hit.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    verify(SECRET, hit)
    verify(SECRET_2, hit)
    with pytest.raises(WebhookVerificationError):
        verify(WRONG, hit)
    # Each signature is its own secret's: keep only one, and only that secret verifies.
    for keep, secret, other_secret in ((0, SECRET, SECRET_2), (1, SECRET_2, SECRET)):
        one = {**hit.seen.headers, "webhook-signature": signatures[keep]}
        alone = Hit(hit.at, hit.status, Seen("POST", "/", one, hit.body))
        verify(secret, alone)
        with pytest.raises(WebhookVerificationError):
            verify(other_secret, alone)


async def test_webhook_id_is_stable_across_retries_and_differs_per_sink(
    receiver: Receiver,
) -> None:
    event = vt.make_event()
    answers = iter([503, 200, 200])
    receiver.answer = lambda seen: Reply(next(answers))
    sink = vt.build_sink("http", {"url": receiver.url(), "signing_secret": SECRET})
    report = await vt.deliver(sink, [event])
    assert report.pending and "503 Service Unavailable" in report.pending[0][1]
    await sink.aclose()
    # A new sink on a new spool: as after a restart.
    sink = vt.build_sink("http", {"url": receiver.url(), "signing_secret": SECRET})
    assert (await vt.deliver(sink, [event])).delivered == [event]
    await sink.aclose()
    other_sink = vt.build_sink(
        "http", {"url": receiver.url(), "signing_secret": SECRET}, name="other"
    )
    assert (await vt.deliver(other_sink, [event], name="other")).delivered == [event]
    await other_sink.aclose()
    first, retry, elsewhere = receiver.hits
    assert [h.status for h in receiver.hits] == [503, 200, 200]
    assert first.headers["webhook-id"] == retry.headers["webhook-id"]
    assert elsewhere.headers["webhook-id"] != first.headers["webhook-id"]
    for hit in receiver.hits:
        verify(SECRET, hit)


async def test_forward_volt_signature_without_one_sends_without_it(receiver: Receiver) -> None:
    sink = vt.build_sink("http", {"url": receiver.url(), "forward_volt_signature": True})
    event = vt.make_event()
    assert event.volt_signature is None  # as for an event stored before voltd kept it
    assert (await vt.deliver(sink, [event])).delivered == [event]
    await sink.aclose()
    assert "x-respond-flow-signature" not in receiver.hits[0].headers


# --------------------------------------------------------------------------------------------
# Answers


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (400, "dead"),
        (422, "dead"),
        (401, "disabled"),
        (403, "disabled"),
        (404, "disabled"),
        (405, "disabled"),
        (410, "disabled"),
        (429, "pending"),
        (503, "pending"),
        (302, "pending"),
    ],
)
async def test_answers_become_outcomes(receiver: Receiver, status: int, outcome: str) -> None:
    receiver.answer = lambda seen: Reply(status, {"Retry-After": "30", "Location": "/x"})
    sink = vt.build_sink("http", {"url": receiver.url("/hook/T0KEN-in-path")})
    report = await vt.deliver(sink, vt.volt_examples()[:1])
    await sink.aclose()
    got = {"dead": report.dead, "pending": report.pending, "disabled": report.disabled}
    assert got[outcome], report
    errors = [e for _, e in report.dead + report.pending] + [report.disabled or ""]
    assert not any("T0KEN" in e for e in errors)
    if status in (401, 403, 404, 405):
        assert report.disabled is not None
        assert "the receiver refuses this sink's requests as configured" in report.disabled
        assert "voltd spool retry --sink test" in report.disabled


@pytest.mark.parametrize("status", [400, 500])
@pytest.mark.parametrize("ascii", [True, False])
async def test_a_receiver_echoing_the_sms_text_does_not_put_it_in_errors(
    receiver: Receiver, status: int, ascii: bool
) -> None:
    """A receiver that quotes what it got in its error (as many do) must not carry a
    customer's text into the log or `voltd spool dead`: voltd replaces it, as written or as
    JSON escapes it, also when the quote is cut off."""
    text = "My card number is 4111 1111 1111 1111, call me at \"home\" ☎ " + "x" * 300

    def answer(seen: Any) -> Reply:
        quoted = json.dumps(json.loads(seen.body)["payload"]["text"], ensure_ascii=ascii)
        return Reply(status, body=b'{"error": "refused", "text": ' + quoted.encode() + b"}")

    receiver.answer = answer
    sink = vt.build_sink("http", {"url": receiver.url()})
    report = await vt.deliver(sink, [vt.make_event(text=text)])
    await sink.aclose()
    errors = [e for _, e in report.dead + report.pending]
    assert errors and all("[message text]" in e for e in errors), errors
    assert not any("4111" in e for e in errors)


async def test_redirects_are_followed_only_when_asked(receiver: Receiver) -> None:
    receiver.answer = lambda seen: (
        Reply(307, {"Location": "/new"}) if seen.path == "/old" else Reply(200)
    )
    sink = vt.build_sink("http", {"url": receiver.url("/old"), "follow_redirects": True})
    event = vt.make_event()
    assert (await vt.deliver(sink, [event])).delivered == [event]
    await sink.aclose()
    assert [(h.seen.path, h.body) for h in receiver.hits] == [
        ("/old", event.raw),
        ("/new", event.raw),
    ]


# --------------------------------------------------------------------------------------------
# TLS


async def test_https_with_ca_file_mutual_tls_and_verify_tls_false(pki: Pki) -> None:
    https = Receiver(server_tls(pki))
    mtls = Receiver(server_tls(pki, require_client=True))
    try:
        event = vt.make_event()
        cases: list[tuple[Receiver, dict[str, Any]]] = [
            (https, {"ca_file": "ca.pem"}),  # relative to the config file's directory
            (https, {"verify_tls": False}),
            (mtls, {"ca_file": "ca.pem", "client_cert": "client.pem", "client_key": "client.key"}),
        ]
        for server, options in cases:
            sink = vt.build_sink("http", {"url": server.url(), **options}, config_dir=pki.dir)
            assert (await vt.deliver(sink, [event])).delivered == [event], options
            await sink.aclose()
        assert https.ok_bodies() == [event.raw] * 2 and mtls.ok_bodies() == [event.raw]

        # Without a client certificate the mTLS server refuses the handshake: a retry.
        sink = vt.build_sink("http", {"url": mtls.url(), "ca_file": "ca.pem"}, config_dir=pki.dir)
        report = await vt.deliver(sink, [event])
        await sink.aclose()
        ((_, error),) = report.pending
        assert "client certificate" in error
    finally:
        https.close()
        mtls.close()


async def test_a_wrong_ca_is_a_clear_tls_error_in_the_log_and_a_retry(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    https = Receiver(server_tls(pki))
    caplog.set_level(logging.WARNING, logger="voltd")
    try:
        sink = vt.build_sink(
            "http", {"url": https.url(), "ca_file": "other-ca.pem"}, config_dir=pki.dir
        )
        report = await vt.deliver(sink, [vt.make_event()])
        await sink.aclose()
    finally:
        https.close()
    ((_, error),) = report.pending  # retried later: not dead, not a crash
    expected = (
        f"POST {https.server.origin}: TLS certificate verify failed: unable to get local "
        f"issuer certificate (ca_file {pki.dir / 'other-ca.pem'})"
    )
    assert error == f"RetryableError: {expected}"
    assert any(expected in r.getMessage() for r in caplog.records if r.name == "voltd.delivery")
    assert not https.hits


# --------------------------------------------------------------------------------------------
# Configuration


def config_error(options: dict[str, Any]) -> str:
    with pytest.raises(vt.ConfigError) as info:
        vt.build_sink("http", options)
    return str(info.value)


def test_config_errors_are_clear_and_never_show_a_secret() -> None:
    url = "https://relay.example/hook"
    assert "sinks.test.url: missing; this key is required" in config_error({})
    assert "sinks.test.url: expected an http:// or https:// URL" in config_error(
        {"url": "ftp://relay.example/x"}
    )
    assert "sinks.test.method: expected 'POST' or 'PUT'" in config_error(
        {"url": url, "method": "GET"}
    )
    assert 'sinks.test: body = "template" needs a template option' in config_error(
        {"url": url, "body": "template"}
    )
    assert 'sinks.test: template is set but body is "envelope"' in config_error(
        {"url": url, "template": "{{ text }}"}
    )
    assert "sinks.test.template: line 1: unknown variable 'txet'" in config_error(
        {"url": url, "body": "template", "template": "{{ txet }}"}
    )
    assert "sinks.test.body: expected 'envelope' or 'template'" in config_error(
        {"url": url, "body": "json"}
    )
    for secret in [
        "not-a-whsec-at-all-secret",
        "whsec_c2hvcnQtc2VjcmV0",  # valid base64, only 12 bytes
        "whsec_%%%%notbase64%%%%",
        SECRET.replace("whsec_", "whsek_"),
    ]:
        for value in (secret, [SECRET, secret]):
            error = config_error({"url": url, "signing_secret": value})
            assert "sinks.test.signing_secret: " in error
            assert "expected a Standard Webhooks secret: whsec_ followed by the base64" in error
            assert secret not in error and secret.split("_", 1)[-1] not in error
    assert "expected one secret, or a list of two while rotating (got 3)" in config_error(
        {"url": url, "signing_secret": [SECRET, SECRET_2, SECRET]}
    )
    error = config_error({"url": url, "headers": {"X-Key": "line\nbreak-secret"}})
    assert "sinks.test.headers: header 'X-Key': the value has a character" in error
    assert "break-secret" not in error
    assert "set by the sink itself" in config_error(
        {"url": url, "headers": {"Webhook-Signature": "v1,x"}}
    )
    assert "is not a valid HTTP field name" in config_error({"url": url, "headers": {"X Y": "1"}})
    error = config_error({"url": url, "ca_file": "no-such-ca.pem"})
    assert "sinks.test: ca_file: cannot read" in error


def test_concurrency_is_accepted_and_every_option_is_described() -> None:
    sink = vt.build_sink("http", {"url": "https://relay.example/hook", "concurrency": 4})
    assert isinstance(sink, HttpSink) and HttpSink.allows_concurrency
    names = set(HttpSink.Options.model_fields)
    assert names == {
        "url",
        "method",
        "headers",
        "body",
        "template",
        "timeout",
        "signing_secret",
        "forward_volt_signature",
        "ca_file",
        "client_cert",
        "client_key",
        "verify_tls",
        "follow_redirects",
    }
    for name, info in HttpSink.Options.model_fields.items():
        assert info.description, name
    assert sink.options.timeout == 15.0 and sink.options.method == "POST"
    assert sink.options.body == "envelope" and not sink.options.forward_volt_signature


async def test_follows_the_plugin_contract(receiver: Receiver) -> None:
    await vt.check_sink(vt.build_sink("http", {"url": receiver.url(), "signing_secret": SECRET}))
    receiver.answer = lambda seen: Reply(500)
    await vt.check_sink(vt.build_sink("http", {"url": receiver.url()}))


# --------------------------------------------------------------------------------------------
# The real daemon


def relay_routes(*sinks: str) -> str:
    return f'[[routes]]\nname = "relay"\nsinks = {json.dumps(list(sinks))}\n\n'


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voltd", *args, "-c", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_daemon_relays_volt_signature_and_secrets_stay_secret(
    daemon: Daemon, receiver: Receiver, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "tok-" + os.urandom(8).hex()
    monkeypatch.setenv("VOLTD_HTTP_TEST_TOKEN", token)
    monkeypatch.setenv("VOLTD_HTTP_TEST_SECRET", SECRET)
    https = Receiver(server_tls(pki))
    body = (
        relay_routes("relay", "tls-good", "tls-bad")
        + f"""
[sinks.relay]
type = "http"
url = "{receiver.url("/volt")}"
headers = {{ Authorization = "Bearer ${{env:VOLTD_HTTP_TEST_TOKEN}}", X-Static = "plain" }}
signing_secret = "${{env:VOLTD_HTTP_TEST_SECRET}}"
forward_volt_signature = true

[sinks.tls-good]
type = "http"
url = "{https.url()}"
ca_file = "{pki.ca}"

[sinks.tls-bad]
type = "http"
url = "{https.url("/never")}"
ca_file = "{pki.dir / "other-ca.pem"}"
"""
    )
    try:
        daemon.configure(body=body, verify_extra='max_age = "0"')  # the examples are from 2022
        checked = cli(daemon, "check")
        assert checked.returncode == 0, checked.stderr
        relay_line = next(line for line in checked.stdout.splitlines() if "relay: http" in line)
        assert '"headers": "***"' in relay_line and '"signing_secret": "***"' in relay_line
        assert token not in checked.stdout + checked.stderr
        assert SECRET.removeprefix("whsec_") not in checked.stdout + checked.stderr

        daemon.start()
        bodies = [
            (EXAMPLES / n).read_bytes()
            for n in ("finalized-delivered.json", "finalized-failed.json")
        ]
        bodies.append(make_event())
        sent = {}
        for b in bodies:
            sent[b] = daemon.signer.sign(b)
            response = daemon.post(b, signature=sent[b])
            assert response.status_code == 200, response.text
        daemon.wait_for(lambda: len(receiver.ok()) == 3 and len(https.ok()) == 3, timeout=15)
        daemon.wait_for(
            lambda: any("TLS certificate verify failed" in line for line in daemon.log), timeout=10
        )
        verifier = Verifier([load_public_key_file(daemon.public_key)])
        assert sorted(receiver.ok_bodies()) == sorted(bodies)  # byte for byte
        for hit in receiver.ok():
            signature = hit.headers["x-respond-flow-signature"]
            assert signature == sent[hit.body]  # exactly what the daemon received
            assert verifier.verify(hit.body, signature)  # Volt itself, checked by the receiver
            assert hit.headers["authorization"] == f"Bearer {token}"
            assert hit.headers["x-static"] == "plain"
            verify(SECRET, hit)
        assert sorted(https.ok_bodies()) == sorted(bodies)
        assert all("x-respond-flow-signature" not in h.headers for h in https.hits)
        assert not [h for h in https.hits if h.seen.path == "/never"]
        tls_line = next(line for line in daemon.log if "TLS certificate verify failed" in line)
        assert "sink tls-bad:" in tls_line and "next retry in" in tls_line
        assert daemon.post(make_event()).status_code == 200  # still serving, not crashed
        daemon.wait_for(lambda: len(receiver.ok()) == 4)
        assert daemon.stop() == 0
        log = "\n".join(daemon.log)
        assert token not in log and SECRET.removeprefix("whsec_") not in log
    finally:
        https.close()


@pytest.mark.slow
def test_daemon_outage_then_recovery_delivers_everything_once(
    daemon: Daemon, receiver: Receiver
) -> None:
    down_until = [float("inf")]  # set once the daemon is up
    receiver.answer = lambda seen: Reply(503 if time.monotonic() < down_until[0] else 200)
    daemon.configure(
        body=relay_routes("relay")
        + f"""
[sinks.relay]
type = "http"
url = "{receiver.url()}"
signing_secret = "{SECRET}"
concurrency = 4
"""
    )
    daemon.start()
    down_until[0] = time.monotonic() + 1.5
    bodies = [make_event(text=f"event {i}") for i in range(6)]
    for b in bodies:
        assert daemon.post(b).status_code == 200
    daemon.wait_for(lambda: len(receiver.ok()) == len(bodies), timeout=20)
    time.sleep(0.5)  # would anything come twice?
    assert sorted(receiver.ok_bodies()) == sorted(bodies)  # everything, nothing twice
    assert any(h.status == 503 for h in receiver.hits)
    ids: dict[bytes, set[str]] = {}
    for hit in receiver.hits:
        ids.setdefault(hit.body, set()).add(hit.headers["webhook-id"])
        verify(SECRET, hit)
    assert all(len(v) == 1 for v in ids.values())  # one id per event, retries included
    assert len({next(iter(v)) for v in ids.values()}) == len(bodies)
    assert daemon.stop() == 0


def test_daemon_429_retry_after_pauses_only_that_sink(
    daemon: Daemon, receiver: Receiver, other: Receiver
) -> None:
    throttled: list[float] = []

    def answer(seen: Seen) -> Reply:
        if not throttled:
            throttled.append(time.monotonic())
            return Reply(429, {"Retry-After": "2"})
        return Reply(200)

    receiver.answer = answer
    # [retry] max_delay caps a Retry-After (it is 500ms in the test config): 5s for this sink.
    daemon.configure(
        body=relay_routes("throttled", "free")
        + f"""
[sinks.throttled]
type = "http"
url = "{receiver.url()}"
retry = {{ max_delay = "5s" }}

[sinks.free]
type = "http"
url = "{other.url()}"
"""
    )
    daemon.start()
    bodies = [make_event(text=f"event {i}") for i in range(3)]
    assert daemon.post(bodies[0]).status_code == 200
    daemon.wait_for(lambda: bool(throttled), timeout=10)
    for b in bodies[1:]:
        time.sleep(0.3)
        assert daemon.post(b).status_code == 200
    daemon.wait_for(lambda: len(other.ok()) == 3, timeout=10)
    free_done = max(h.at for h in other.ok())
    daemon.wait_for(lambda: len(receiver.ok()) == 3, timeout=15)
    t429 = throttled[0]
    assert free_done < t429 + 2.0  # the other sink kept receiving meanwhile
    later = [h.at - t429 for h in receiver.hits[1:]]
    assert later and min(later) >= 2.0, later  # no attempt before Retry-After said
    assert sorted(receiver.ok_bodies()) == sorted(bodies)
    assert daemon.stop() == 0


@pytest.mark.slow
def test_daemon_410_disables_until_spool_retry_or_reload(
    daemon: Daemon, receiver: Receiver
) -> None:
    gone = [True]
    receiver.answer = lambda seen: Reply(410, {}, b"removed by an admin") if gone[0] else Reply(200)
    daemon.configure(
        body=relay_routes("relay")
        + f"""
[sinks.relay]
type = "http"
url = "{receiver.url()}"
"""
    )
    daemon.start()
    bodies = [make_event(text=f"event {i}") for i in range(3)]
    assert daemon.post(bodies[0]).status_code == 200
    daemon.wait_for(lambda: bool(receiver.hits), timeout=10)
    first = receiver.hits[0].at
    for b in bodies[1:]:
        assert daemon.post(b).status_code == 200
    # A short window (5 s, not 30: the test's time) after the 410: at most a handful of tries.
    time.sleep(max(0.0, first + 5.0 - time.monotonic()))
    assert len(receiver.hits) <= 3, [h.at - first for h in receiver.hits]
    status = cli(daemon, "spool", "status")
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if line.startswith("relay "))
    assert row.split()[1] == "disabled" and row.split()[2] == "3", status.stdout
    assert (
        f"relay: disabled: EndpointGone: POST {receiver.server.origin}: 410 Gone: the endpoint "
        "is gone: removed by an admin; `voltd spool retry --sink relay`" in status.stdout
    )
    assert any("sink relay: disabled, its endpoint is gone" in line for line in daemon.log)

    # The receiver is back; `voltd spool retry --sink` enables the sink: everything arrives.
    gone[0] = False
    retried = cli(daemon, "spool", "retry", "--sink", "relay")
    assert retried.returncode == 0, retried.stderr
    daemon.wait_for(lambda: sorted(receiver.ok_bodies()) == sorted(bodies), timeout=10)

    # Gone again, then fixed and reloaded (SIGHUP): what waited arrives.
    gone[0] = True
    again = make_event(text="after the retry")
    seen = len(receiver.hits)
    assert daemon.post(again).status_code == 200
    daemon.wait_for(lambda: len(receiver.hits) > seen and receiver.hits[-1].status == 410)
    daemon.wait_for(
        lambda: sum("sink relay: disabled, its endpoint" in line for line in daemon.log) == 2
    )
    gone[0] = False
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: again in receiver.ok_bodies(), timeout=10)
    assert sorted(receiver.ok_bodies()) == sorted([*bodies, again])  # nothing twice
    assert daemon.stop() == 0
