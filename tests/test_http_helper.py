"""`voltd.http`: the HTTP delivery helper, against real servers on 127.0.0.1.

No mocks: a `ThreadingHTTPServer` in a plain thread answers as each test scripts it, over
plain HTTP or over TLS with a private CA made here (and a client certificate from that CA for
mutual TLS), and `HttpClient` talks to it with httpx under trio.
"""

from __future__ import annotations

import base64
import datetime as _dt
import email.utils
import gzip
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from voltd import EndpointGone, PermanentError, RetryableError, SinkContext, SinkError
from voltd.config import DURATION_EXPECTED
from voltd.http import (
    MAX_RESPONSE_BYTES,
    HttpClient,
    HttpOptions,
    _secrets,
    _transport_text,
    classify,
    parse_retry_after,
    safe_url,
)

# --------------------------------------------------------------------------------------------
# A scripted HTTP(S) server in a thread


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


Script = Callable[[Seen], Reply]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        sock.settimeout(10)
        if self.tls is not None:
            # The handshake happens in the request's thread (finish_request), so one bad
            # client never stalls the accept loop.
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            try:
                request.do_handshake()
            except OSError:
                # Read (raw) what the client still sends until it hangs up: closing with
                # unread data would reset the connection, and the client might never read
                # the TLS alert saying why, as a real server's client would.
                request.settimeout(2)
                try:
                    while socket.socket.recv(request, 65536):
                        pass
                except OSError:
                    pass
                raise
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # failed handshakes are what some tests are about


class ScriptedServer:
    """Answers every request with `script(seen)`; remembers what it saw."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.script: Script = lambda seen: Reply()
        self.seen: list[Seen] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(
                    self.command, self.path, dict(self.headers.items()), self.rfile.read(length)
                )
                owner.seen.append(seen)
                reply = owner.script(seen)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.tls = tls
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.httpd.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def origin(self) -> str:
        return self.url("")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class SilentServer:
    """Accepts connections and never says a word (a hung endpoint)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        for conn in self.held:
            conn.close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    yield s
    s.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    s = SilentServer()
    yield s
    s.close()


def client_for(config_dir: Path, **options: Any) -> HttpClient:
    return HttpClient(HttpOptions(**options), SinkContext(name="relay", config_dir=config_dir))


async def outcome(client: HttpClient, url: str, **kw: Any) -> SinkError:
    with pytest.raises(SinkError) as info:
        await client.request(kw.pop("method", "POST"), url, **kw)
    return info.value


# --------------------------------------------------------------------------------------------
# A private CA, a server certificate and a client certificate


@dataclass
class Pki:
    dir: Path
    ca: Path  # CA certificate
    server_cert: Path
    server_key: Path
    ip_only_cert: Path  # valid for 127.0.0.1 only, not for "localhost"
    ip_only_key: Path
    client_cert: Path
    client_key: Path
    client_both: Path  # client certificate and key in one file
    other_ca: Path  # a CA that signed nothing here
    stranger_cert: Path  # a client certificate from the other CA
    stranger_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _dt.datetime.now(_dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    *,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _dt.datetime.now(_dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    import ipaddress

    d = tmp_path_factory.mktemp("pki")
    pem = serialization.Encoding.PEM

    def write(name: str, data: bytes) -> Path:
        (d / name).write_bytes(data)
        return d / name

    ca_key, ca_cert = _ca("voltd test CA")
    other_key, other_cert = _ca("some other CA")
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    server_key, server_cert = _issue(
        ca_key,
        ca_cert,
        "relay.test",
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=[x509.DNSName("localhost"), loopback],
    )
    ip_key, ip_cert = _issue(
        ca_key, ca_cert, "ip only", usage=ExtendedKeyUsageOID.SERVER_AUTH, sans=[loopback]
    )
    client_key, client_cert = _issue(
        ca_key, ca_cert, "voltd client", usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    stranger_key, stranger_cert = _issue(
        other_key, other_cert, "stranger", usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    return Pki(
        dir=d,
        ca=write("ca.pem", ca_cert.public_bytes(pem)),
        server_cert=write("server.pem", server_cert.public_bytes(pem)),
        server_key=write("server.key", _key_pem(server_key)),
        ip_only_cert=write("ip.pem", ip_cert.public_bytes(pem)),
        ip_only_key=write("ip.key", _key_pem(ip_key)),
        client_cert=write("client.pem", client_cert.public_bytes(pem)),
        client_key=write("client.key", _key_pem(client_key)),
        client_both=write("client-both.pem", client_cert.public_bytes(pem) + _key_pem(client_key)),
        other_ca=write("other-ca.pem", other_cert.public_bytes(pem)),
        stranger_cert=write("stranger.pem", stranger_cert.public_bytes(pem)),
        stranger_key=write("stranger.key", _key_pem(stranger_key)),
    )


def server_tls(pki: Pki, *, require_client: bool = False, ip_only: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if ip_only:
        ctx.load_cert_chain(pki.ip_only_cert, pki.ip_only_key)
    else:
        ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki.ca)
    return ctx


@pytest.fixture
def https(pki: Pki) -> Iterator[ScriptedServer]:
    s = ScriptedServer(server_tls(pki))
    yield s
    s.close()


@pytest.fixture
def mtls(pki: Pki) -> Iterator[ScriptedServer]:
    s = ScriptedServer(server_tls(pki, require_client=True))
    yield s
    s.close()


# --------------------------------------------------------------------------------------------
# Success


async def test_200_returns_the_response_and_sends_what_it_was_given(
    server: ScriptedServer, tmp_path: Path
) -> None:
    server.script = lambda seen: Reply(200, {"Content-Type": "text/plain"}, b"ok")
    async with client_for(tmp_path) as client:
        response = await client.request(
            "POST", server.url(), content=b'{"a": 1}', headers={"X-Test": "yes"}
        )
        assert response.status_code == 200 and response.text == "ok"
        response = await client.request("PUT", server.url("/j"), json={"b": [1, 2]})
        assert response.status_code == 200
    first, second = server.seen
    assert (first.method, first.path, first.body) == ("POST", "/hook", b'{"a": 1}')
    assert first.headers["X-Test"] == "yes" and first.headers["User-Agent"].startswith("voltd/")
    assert (second.method, second.path, second.body) == ("PUT", "/j", b'{"b":[1,2]}')
    assert second.headers["Content-Type"] == "application/json"


async def test_204_is_success(server: ScriptedServer, tmp_path: Path) -> None:
    server.script = lambda seen: Reply(204)
    async with client_for(tmp_path) as client:
        response = await client.request("POST", server.url(), content=b"x")
    assert response.status_code == 204 and response.content == b""


async def test_a_gzip_body_is_decoded_and_a_huge_one_is_capped(
    server: ScriptedServer, tmp_path: Path
) -> None:
    async with client_for(tmp_path) as client:
        server.script = lambda seen: Reply(
            200, {"Content-Encoding": "gzip"}, gzip.compress(b'{"ok": true}')
        )
        response = await client.request("POST", server.url())
        assert response.json() == {"ok": True}
        assert "content-encoding" not in response.headers
        server.script = lambda seen: Reply(200, {}, b"x" * (3 * MAX_RESPONSE_BYTES))
        response = await client.request("POST", server.url())
        assert len(response.content) == MAX_RESPONSE_BYTES


# --------------------------------------------------------------------------------------------
# Answers that are not success


async def test_429_with_retry_after_seconds(server: ScriptedServer, tmp_path: Path) -> None:
    server.script = lambda seen: Reply(429, {"Retry-After": "2"})
    async with client_for(tmp_path) as client:
        error = await outcome(client, server.url())
    assert type(error) is RetryableError
    assert error.retry_after == 2.0
    assert str(error) == f"POST {server.origin}: 429 Too Many Requests (retry after 2s)"


async def test_429_with_retry_after_as_an_http_date(server: ScriptedServer, tmp_path: Path) -> None:
    later = email.utils.format_datetime(
        _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=120), usegmt=True
    )
    server.script = lambda seen: Reply(429, {"Retry-After": later}, b"slow down")
    async with client_for(tmp_path) as client:
        error = await outcome(client, server.url())
    assert isinstance(error, RetryableError)
    assert error.retry_after is not None and 100 < error.retry_after <= 120
    assert str(error).startswith(f"POST {server.origin}: 429 Too Many Requests (retry after 1")
    assert str(error).endswith("s): slow down")


async def test_503_is_retryable_with_or_without_retry_after(
    server: ScriptedServer, tmp_path: Path
) -> None:
    async with client_for(tmp_path) as client:
        server.script = lambda seen: Reply(503, {"Retry-After": "2"}, b"busy")
        error = await outcome(client, server.url())
        assert isinstance(error, RetryableError) and error.retry_after == 2.0
        assert str(error) == f"POST {server.origin}: 503 Service Unavailable (retry after 2s): busy"
        server.script = lambda seen: Reply(503)
        error = await outcome(client, server.url())
        assert isinstance(error, RetryableError) and error.retry_after is None
        assert str(error) == f"POST {server.origin}: 503 Service Unavailable"


@pytest.mark.parametrize("status", [408, 425, 500, 502, 504, 599])
async def test_other_retryable_statuses(
    status: int, server: ScriptedServer, tmp_path: Path
) -> None:
    server.script = lambda seen: Reply(status)
    async with client_for(tmp_path) as client:
        error = await outcome(client, server.url())
    assert type(error) is RetryableError and error.retry_after is None
    assert str(error).startswith(f"POST {server.origin}: {status}")


async def test_any_status_with_retry_after_passes_it_on(
    server: ScriptedServer, tmp_path: Path
) -> None:
    server.script = lambda seen: Reply(500, {"Retry-After": "30"})
    async with client_for(tmp_path) as client:
        error = await outcome(client, server.url())
    assert isinstance(error, RetryableError) and error.retry_after == 30.0


async def test_410_means_the_endpoint_is_gone(server: ScriptedServer, tmp_path: Path) -> None:
    server.script = lambda seen: Reply(410, {"Content-Type": "text/plain"}, b"channel_is_archived")
    async with client_for(tmp_path) as client:
        error = await outcome(client, server.url())
    assert type(error) is EndpointGone
    assert str(error) == (
        f"POST {server.origin}: 410 Gone: the endpoint is gone: channel_is_archived"
    )


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 422])
async def test_other_4xx_are_permanent(status: int, server: ScriptedServer, tmp_path: Path) -> None:
    server.script = lambda seen: Reply(status, {}, b"invalid_payload\n")
    async with client_for(tmp_path) as client:
        error = await outcome(client, server.url())
    assert type(error) is PermanentError
    assert str(error).startswith(f"POST {server.origin}: {status} ")
    assert str(error).endswith(": invalid_payload")


async def test_a_body_is_shown_as_one_short_line(server: ScriptedServer, tmp_path: Path) -> None:
    page = (
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
        + b"<!-- padding -->" * 200
        + b"</body></html>"
    )
    async with client_for(tmp_path) as client:
        server.script = lambda seen: Reply(502, {"Content-Type": "text/html"}, page)
        error = await outcome(client, server.url())
        assert str(error) == (
            f"POST {server.origin}: 502 Bad Gateway: 502 Bad Gateway 502 Bad Gateway nginx"
        )
        server.script = lambda seen: Reply(400, {}, b"line one\nline\ttwo\x00\x1b[31m" * 100)
        error = await outcome(client, server.url())
        body = str(error).split(": ", 2)[2]
        assert len(body) == 200 and body.endswith("…") and body.startswith("line one line two")
        assert str(error).isprintable()


async def test_302_is_not_followed_by_default(server: ScriptedServer, tmp_path: Path) -> None:
    def script(seen: Seen) -> Reply:
        if seen.path == "/old":
            return Reply(302, {"Location": "/new/secret-path"})
        return Reply(200, {}, b"moved here")

    server.script = script
    async with client_for(tmp_path) as client:
        error = await outcome(client, server.url("/old"))
    assert type(error) is RetryableError
    assert str(error) == (
        f"POST {server.origin}: 302 Found: redirected to {server.origin}, not followed (the "
        "endpoint may have moved: fix the URL, or set follow_redirects = true to follow "
        "redirects)"
    )
    assert [s.path for s in server.seen] == ["/old"]


async def test_302_is_followed_with_follow_redirects(
    server: ScriptedServer, tmp_path: Path
) -> None:
    server.script = lambda seen: (
        Reply(307, {"Location": "/new"}) if seen.path == "/old" else Reply(200, {}, b"moved here")
    )
    async with client_for(tmp_path, follow_redirects=True) as client:
        response = await client.request("POST", server.url("/old"), content=b"body")
    assert response.status_code == 200 and response.text == "moved here"
    assert [(s.path, s.body) for s in server.seen] == [("/old", b"body"), ("/new", b"body")]
    assert [r.status_code for r in response.history] == [307]


async def test_check_false_returns_any_answer_for_the_sink_to_read(
    server: ScriptedServer, tmp_path: Path
) -> None:
    server.script = lambda seen: Reply(404, {}, b"no_service")
    async with client_for(tmp_path) as client:
        response = await client.request("POST", server.url(), check=False)
    assert response.status_code == 404 and response.text == "no_service"
    error = classify(response)
    assert isinstance(error, PermanentError)
    assert str(error) == f"POST {server.origin}: 404 Not Found: no_service"


# --------------------------------------------------------------------------------------------
# Network failures


async def test_connection_refused(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again below: nobody listens there
    async with client_for(tmp_path) as client:
        error = await outcome(client, f"http://127.0.0.1:{port}/hook")
    assert type(error) is RetryableError
    assert str(error) == f"POST http://127.0.0.1:{port}: connection refused"


async def test_read_timeout_against_a_server_that_never_answers(
    silent: SilentServer, tmp_path: Path
) -> None:
    start = time.monotonic()
    async with client_for(tmp_path, timeout="300ms") as client:
        error = await outcome(client, f"http://127.0.0.1:{silent.port}/hook", content=b"x")
    assert time.monotonic() - start < 3
    assert type(error) is RetryableError
    assert str(error).startswith(f"POST http://127.0.0.1:{silent.port}: no ")
    assert "within 0.3s (timeout)" in str(error)


async def test_an_unusable_url_disables_the_sink(tmp_path: Path) -> None:
    async with client_for(tmp_path) as client:
        for url in ["ftp://files.example.com/x", "hooks.example.com/x"]:
            error = await outcome(client, url)
            assert type(error) is EndpointGone
            assert "not a usable http:// or https:// URL" in str(error)


# --------------------------------------------------------------------------------------------
# TLS


async def test_https_with_the_right_ca_file(https: ScriptedServer, pki: Pki) -> None:
    async with client_for(pki.dir, ca_file="ca.pem") as client:  # relative to the config dir
        response = await client.request("POST", https.url(), content=b"x")
        assert response.status_code == 200
        response = await client.request("POST", https.url(host="localhost"), content=b"x")
        assert response.status_code == 200


async def test_https_with_a_wrong_ca_is_a_clear_tls_error(https: ScriptedServer, pki: Pki) -> None:
    async with client_for(pki.dir, ca_file="other-ca.pem") as client:
        error = await outcome(client, https.url())
    assert type(error) is RetryableError
    assert str(error) == (
        f"POST {https.origin}: TLS certificate verify failed: unable to get local issuer "
        f"certificate (ca_file {pki.dir / 'other-ca.pem'})"
    )
    assert not https.seen


async def test_https_with_the_default_trust_does_not_know_a_private_ca(
    https: ScriptedServer, tmp_path: Path
) -> None:
    async with client_for(tmp_path) as client:
        error = await outcome(client, https.url())
    assert isinstance(error, RetryableError)
    assert "TLS certificate verify failed" in str(error)
    assert str(error).endswith("(the default CA certificates)")


async def test_https_host_name_mismatch(pki: Pki) -> None:
    s = ScriptedServer(server_tls(pki, ip_only=True))
    try:
        async with client_for(pki.dir, ca_file="ca.pem") as client:
            assert (await client.request("POST", s.url())).status_code == 200
            error = await outcome(client, s.url(host="localhost"))
    finally:
        s.close()
    assert isinstance(error, RetryableError)
    assert str(error).startswith(f"POST https://localhost:{s.port}: TLS certificate verify failed")
    assert "localhost" in str(error).split("failed: ", 1)[1]


async def test_verify_tls_false_accepts_any_certificate(https: ScriptedServer, pki: Pki) -> None:
    async with client_for(pki.dir, verify_tls=False) as client:
        assert (await client.request("POST", https.url(host="localhost"))).status_code == 200
    async with client_for(pki.dir, verify_tls=False, ca_file="other-ca.pem") as client:
        assert (await client.request("POST", https.url())).status_code == 200


async def test_mutual_tls_works_with_the_client_certificate(mtls: ScriptedServer, pki: Pki) -> None:
    async with client_for(
        pki.dir, ca_file="ca.pem", client_cert="client.pem", client_key="client.key"
    ) as client:
        assert (await client.request("POST", mtls.url(), content=b"x")).status_code == 200
    async with client_for(pki.dir, ca_file="ca.pem", client_cert="client-both.pem") as client:
        assert (await client.request("POST", mtls.url(), content=b"x")).status_code == 200
    assert len(mtls.seen) == 2


async def test_mutual_tls_fails_without_a_client_certificate(
    mtls: ScriptedServer, pki: Pki
) -> None:
    async with client_for(pki.dir, ca_file="ca.pem") as client:
        error = await outcome(client, mtls.url(), content=b"x")
    assert type(error) is RetryableError
    assert str(error).startswith(f"POST {mtls.origin}: ")
    assert "client certificate" in str(error)
    assert not mtls.seen


async def test_mutual_tls_fails_with_a_certificate_from_another_ca(
    mtls: ScriptedServer, pki: Pki
) -> None:
    async with client_for(
        pki.dir, ca_file="ca.pem", client_cert="stranger.pem", client_key="stranger.key"
    ) as client:
        error = await outcome(client, mtls.url(), content=b"x")
    assert type(error) is RetryableError
    assert str(error).startswith(f"POST {mtls.origin}: TLS")
    assert not mtls.seen


# --------------------------------------------------------------------------------------------
# Secrets never show


TOKEN = "T0KENinTHEpath9876"
QUERY = "QUERYsecret5432"
HEADER = "HEADERsecret1234"
APIKEY = "apikey-0f9e8d7c"
USERPW = "USERINFOpw321"
BASIC = base64.b64encode(f"user:{USERPW}".encode()).decode()  # what httpx sends for userinfo
SECRETS = [TOKEN, QUERY, HEADER, APIKEY, USERPW, BASIC, "/services/"]


def echo(seen: Seen) -> str:
    """What a careless server says back: the request line and every header."""
    auth, key = seen.headers.get("Authorization"), seen.headers.get("X-Api-Key")
    return f"Cannot {seen.method} {seen.path} (auth {auth}, key {key})"


def assert_no_secret(error: BaseException, origin: str) -> None:
    texts = [str(error), repr(error), *map(str, error.args)]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, (secret, text)
    assert str(error).startswith(f"POST {origin}")


async def test_no_error_ever_shows_the_path_query_userinfo_or_a_header(
    server: ScriptedServer,
    silent: SilentServer,
    https: ScriptedServer,
    pki: Pki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    path = f"/services/T000/B000/{TOKEN}?token={QUERY}&x=1"
    headers = {"Authorization": f"Bearer {HEADER}", "X-Api-Key": APIKEY}

    def url(origin: str, userinfo: bool = False) -> str:
        scheme, rest = origin.split("://")
        return f"{scheme}://user:{USERPW}@{rest}{path}" if userinfo else f"{origin}{path}"

    errors: list[tuple[SinkError, str]] = []
    async with client_for(tmp_path, timeout="300ms") as client:
        for i, status in enumerate([301, 400, 401, 404, 410, 429, 500, 503]):
            server.script = lambda seen, status=status: Reply(
                status,
                {"Location": f"https://elsewhere.test/{TOKEN}?q={QUERY}", "Retry-After": "1"},
                echo(seen).encode(),
            )
            target = url(server.origin, userinfo=i % 2 == 1)
            errors.append((await outcome(client, target, headers=headers), server.origin))
        # The echoes really held the secrets: only the redaction keeps them out.
        echoes = " ".join(echo(seen) for seen in server.seen)
        assert all(secret in echoes for secret in SECRETS if secret != USERPW)
        errors.append(
            (
                await outcome(client, url(f"http://127.0.0.1:{silent.port}"), headers=headers),
                f"http://127.0.0.1:{silent.port}",
            )
        )
        with socket.create_server(("127.0.0.1", 0)) as s:
            refused = f"http://127.0.0.1:{s.getsockname()[1]}"
        errors.append((await outcome(client, url(refused), headers=headers), refused))
        errors.append((await outcome(client, url(https.origin), headers=headers), https.origin))
    async with client_for(pki.dir, ca_file="ca.pem") as client:
        https.script = lambda seen: Reply(403, {}, echo(seen).encode())
        errors.append((await outcome(client, url(https.origin), headers=headers), https.origin))
    assert len(errors) == 12
    for error, origin in errors:
        assert_no_secret(error, origin)
        if "Cannot POST" in str(error):  # the whole echo is shown, redacted
            assert str(error).endswith("Cannot POST [redacted] (auth [redacted], key [redacted])")
    kinds = {type(e) for e, _ in errors}
    assert kinds == {RetryableError, PermanentError, EndpointGone}
    for record in caplog.records:
        message = record.getMessage()
        for secret in SECRETS:
            assert secret not in message, (record.name, message)


async def test_secrets_are_redacted_from_bodies_in_any_case_and_form(
    server: ScriptedServer, tmp_path: Path
) -> None:
    bodies = [
        ("text/plain", f"unknown webhook {TOKEN.lower()}"),
        ("application/json", f'{{"error": "bad path", "path": "\\/services\\/x\\/{TOKEN}"}}'),
        (
            "text/html",
            f"<p>no hook at <code>/services/x/{TOKEN[:6]}&#x{ord(TOKEN[6]):x};"
            f"{TOKEN[7:]}</code></p>",
        ),
        ("text/plain", f"bad key {APIKEY.upper()} for query {QUERY}"),
    ]
    async with client_for(tmp_path) as client:
        for content_type, body in bodies:
            server.script = lambda seen, ct=content_type, b=body: Reply(
                404, {"Content-Type": ct}, b.encode()
            )
            error = await outcome(
                client, server.url(f"/services/x/{TOKEN}?q={QUERY}"), headers={"X-Api-Key": APIKEY}
            )
            assert "[redacted]" in str(error), str(error)
            for secret in SECRETS:
                assert secret.lower() not in str(error).lower(), (secret, str(error))


async def test_a_header_value_that_is_not_valid_http_is_not_quoted(
    server: ScriptedServer, tmp_path: Path
) -> None:
    async with client_for(tmp_path) as client:
        for headers in [
            {"X-Key": f"{HEADER}\r\nX-Injected: y"},
            {"X-Key": f"{HEADER}\x00"},
            {"X Key": HEADER},
            {"X-Key": f"ü{HEADER}"},
        ]:
            error = await outcome(client, server.url(), headers=headers)
            assert type(error) is PermanentError
            assert str(error) == (
                f"POST {server.origin}: the request is not valid HTTP (a header name or value "
                "has a character HTTP does not allow)"
            )
    assert not server.seen


# --------------------------------------------------------------------------------------------
# The pieces on their own


def test_safe_url_keeps_only_scheme_host_and_port() -> None:
    assert safe_url(f"https://hooks.slack.com/services/T0/B0/{TOKEN}") == "https://hooks.slack.com"
    assert safe_url(f"https://u:{USERPW}@relay.example.com:8443/x?k={QUERY}#f") == (
        "https://relay.example.com:8443"
    )
    assert safe_url("https://relay.example.com:443/x") == "https://relay.example.com"
    assert safe_url("http://[::1]:8080/x") == "http://[::1]:8080"
    assert safe_url(httpx.URL("http://bücher.example/x")) == "http://bücher.example"
    assert safe_url("hooks.slack.com/services/x") == "(not an absolute URL)"
    for bad in [f"http://[oops/{TOKEN}", f"https://h\\{TOKEN}", f"http://h%2F{TOKEN}/x"]:
        assert safe_url(bad) == "(invalid URL)"


def test_parse_retry_after() -> None:
    now = _dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=_dt.UTC)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wednesday, 01-May-24 12:01:00 GMT", now) == 60.0
    assert parse_retry_after("Wed May  1 12:00:05 2024", now) == 5.0
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now) == 0.0  # past: now
    for bad in [None, "", "soon", "-1", "1e3", "inf", "Wed, 99 Foo 2024"]:
        assert parse_retry_after(bad, now) is None, bad


def test_classify_without_a_server() -> None:
    request = httpx.Request("PUT", f"https://relay.example.com/{TOKEN}")
    assert classify(httpx.Response(200, request=request)) is None
    assert classify(httpx.Response(299, request=request)) is None
    gone = classify(httpx.Response(410, request=request))
    assert isinstance(gone, EndpointGone)
    assert str(gone) == "PUT https://relay.example.com: 410 Gone: the endpoint is gone"
    moved = classify(httpx.Response(301, request=request), follow_redirects=True)
    assert isinstance(moved, RetryableError) and "could not be followed" in str(moved)
    odd = classify(httpx.Response(103, request=request))
    assert isinstance(odd, RetryableError) and "unexpected status" in str(odd)
    bare = classify(httpx.Response(400, content=b"bad"))
    assert str(bare) == "HTTP: 400 Bad Request: bad"


def _failed(exc: httpx.HTTPError, cause: BaseException) -> httpx.HTTPError:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("client_cert", "expected"),
    [
        (False, "TLS: the server requires a client certificate (set client_cert and client_key)"),
        (None, "TLS: the server requires a client certificate"),
        (
            True,
            "TLS: the server refused our client certificate (TLSV13_ALERT_CERTIFICATE_REQUIRED)",
        ),
    ],
)
def test_transport_text_hints_at_a_client_certificate_only_where_one_can_be_set(
    client_cert: bool | None, expected: str
) -> None:
    required = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] alert")
    required.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"  # what OpenSSL sets
    exc = _failed(httpx.ReadError("tls alert"), required)
    assert _transport_text(exc, secrets=[], trust="x", client_cert=client_cert) == expected


def test_transport_text_without_a_server() -> None:
    url = httpx.URL(f"https://u:{USERPW}@relay.example.com/{TOKEN}?k={QUERY}")
    secrets = _secrets(url, None)

    def text(exc: httpx.HTTPError, cause: BaseException | None = None) -> str:
        failed = _failed(exc, cause) if cause is not None else exc
        return _transport_text(failed, secrets=secrets, trust="ca_file ca.pem")

    verify = ssl.SSLCertVerificationError(1, "verify")
    verify.verify_message = "self-signed certificate"
    assert text(httpx.ConnectError("x"), verify) == (
        "TLS certificate verify failed: self-signed certificate (ca_file ca.pem)"
    )
    assert text(httpx.ConnectError("x"), ConnectionRefusedError(111, "refused")) == (
        "connection refused"
    )
    assert text(httpx.ConnectError("x"), socket.gaierror(-2, "Name or service not known")) == (
        "cannot resolve the host name"
    )
    assert text(httpx.ReadError("x"), ConnectionResetError(104, "reset")) == (
        "connection reset by the server"
    )
    echoed = text(httpx.RemoteProtocolError(f"illegal status line: GET /{TOKEN}?k={QUERY}"))
    assert echoed.startswith("the server broke the HTTP protocol: illegal status line: GET [")
    assert TOKEN not in echoed and QUERY not in echoed and "[redacted]" in echoed
    assert text(httpx.ConnectError("x"), OSError(113, "No route to host")) == (
        "network error: No route to host"
    )
    assert text(httpx.ConnectError("x")) == "could not connect"
    assert text(httpx.WriteError("x")) == "the connection broke while sending the request"
    assert text(httpx.ReadError("x")) == "the connection broke before the answer was complete"
    assert text(httpx.DecodingError("x")) == "network error (DecodingError)"


# --------------------------------------------------------------------------------------------
# Options and construction


def test_http_options_defaults_and_durations() -> None:
    options = HttpOptions()
    assert options.timeout == 15.0
    assert (options.ca_file, options.client_cert, options.client_key) == (None, None, None)
    assert options.verify_tls is True and options.follow_redirects is False
    assert HttpOptions(timeout="250ms").timeout == 0.25
    assert HttpOptions(timeout="1m30s").timeout == 90.0
    for name, info in HttpOptions.model_fields.items():
        assert info.description, name


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": "fast"}, DURATION_EXPECTED),
        ({"timeout": "0s"}, "expected a duration greater than zero, like 15s"),
        ({"client_key": "k.pem"}, "client_key is set but client_cert is not"),
        ({"ca_file": ""}, "expected a file path"),
        ({"verify": False}, "Extra inputs are not permitted"),
    ],
)
def test_http_options_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        HttpOptions(**options)
    assert message in str(info.value)


class RelayOptions(HttpOptions):
    url: str = pydantic.Field(description="where to POST")


def test_a_sink_options_model_inherits_the_transport_settings() -> None:
    options = RelayOptions(url="https://relay.example.com/in", timeout="5s", verify_tls=False)
    assert (options.url, options.timeout, options.verify_tls) == (
        "https://relay.example.com/in",
        5.0,
        False,
    )


def test_unreadable_or_wrong_files_are_config_errors(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "empty.pem").write_text("not a certificate\n")
    (tmp_path / "locked.key").write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"ca_file": "missing.pem"},
            f"ca_file: cannot read {tmp_path / 'missing.pem'}: No such file or directory",
        ),
        ({"ca_file": "empty.pem"}, f"ca_file: no PEM CA certificate in {tmp_path / 'empty.pem'}"),
        ({"ca_file": "."}, "ca_file: cannot read"),
        (
            {"client_cert": str(pki.client_cert), "client_key": "missing.key"},
            f"client_key: cannot read {tmp_path / 'missing.key'}",
        ),
        (
            {"client_cert": str(pki.client_cert), "client_key": str(pki.stranger_key)},
            "client_cert/client_key: expected a PEM certificate and its matching, unencrypted "
            "private key",
        ),
        ({"client_cert": str(pki.client_cert)}, "client_cert/client_key: expected"),
        (
            {"client_cert": str(pki.client_cert), "client_key": "locked.key"},
            "client_cert/client_key: expected",
        ),
    ]
    for options, message in cases:
        with pytest.raises(ValueError) as info:
            client_for(tmp_path, **options)
        assert str(info.value).startswith(message), (options, str(info.value))
