"""`[verify] public_key_url`: Volt's key fetched over HTTPS, cached in the state directory, a
changed key accepted only beside the trusted one until the operator confirms it.

Against a real HTTPS server on 127.0.0.1 (http.server + ssl in a thread) whose certificate the
config trusts through `public_key_ca_file`; the URL's path holds a token that must never show
up in a log line or an error message.
"""

from __future__ import annotations

import json
import logging
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.helpers import Daemon, make_event, session_material
from voltd.config import ConfigError, load
from voltd.daemon import configure
from voltd.keyfetch import (
    CACHE_KEY_FILE,
    CACHE_META_FILE,
    FetchError,
    add_url_keys,
    fetch_key,
    fingerprint,
    read_cache,
)
from voltd.keys import generate_signing_pair, make_self_signed_cert
from voltd.verify import Signer, Verifier, load_private_key_file, load_public_key_file

TOKEN = "s3cr3t-t0ken-in-the-path"
BODY = b'{"type": "messaging", "id": "rfw_1", "payload": {}, "time": 0}'


@dataclass(frozen=True)
class Pair:
    public: Path  # OpenSSH id_rsa.pub
    signer: Signer

    @property
    def text(self) -> bytes:
        return self.public.read_bytes()

    @property
    def fp(self) -> str:
        return fingerprint(load_public_key_file(self.public))


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two signing pairs (the old and the new Volt key) and a TLS certificate for 127.0.0.1."""
    root = tmp_path_factory.mktemp("key-url")
    pairs = {}
    for name in ("old", "new"):
        private, public = generate_signing_pair(root / name, name)
        pairs[name] = Pair(public, Signer(load_private_key_file(private)))
    cert, key = make_self_signed_cert(root / "tls", hosts=("127.0.0.1",))
    return {"old": pairs["old"], "new": pairs["new"], "cert": cert, "key": key}


class KeyServer:
    """An HTTPS server on 127.0.0.1 answering every GET with `status` and `body`, or for a
    path in `raw` with those bytes as they are (not HTTP, say)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.status = 200
        self.body = b""
        self.delay = 0.0
        self.headers: dict[str, str] = {}
        self.raw: dict[str, bytes] = {}
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits += 1
                if self.path in server.raw:
                    self.wfile.write(server.raw[self.path])
                    self.close_connection = True
                    return
                if server.delay:
                    time.sleep(server.delay)
                try:
                    self.send_response(server.status)
                    for name, value in server.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(server.body)))
                    self.end_headers()
                    self.wfile.write(server.body)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.origin = f"https://127.0.0.1:{self.port}"
        self.url = f"{self.origin}/{TOKEN}/id_rsa.pub"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(material: dict[str, object]) -> Iterator[KeyServer]:
    s = KeyServer(material["cert"], material["key"])  # type: ignore[arg-type]
    yield s
    s.stop()


@pytest.fixture
def old(material: dict[str, object]) -> Pair:
    return material["old"]  # type: ignore[return-value]


@pytest.fixture
def new(material: dict[str, object]) -> Pair:
    return material["new"]  # type: ignore[return-value]


@pytest.fixture
def deploy(tmp_path: Path, material: dict[str, object]) -> Path:
    """A config directory with the server's certificate as `ca.pem`."""
    (tmp_path / "ca.pem").write_bytes(material["cert"].read_bytes())  # type: ignore[attr-defined]
    return tmp_path


def write_config(root: Path, url: str, extra: str = "") -> Path:
    path = root / "config.toml"
    path.write_text(
        f'[verify]\npublic_key_url = "{url}"\npublic_key_ca_file = "ca.pem"\n{extra}\n'
        '[spool]\npath = "state/spool.db"\n\n'
        '[sinks.archive]\ntype = "file"\npath = "archive.jsonl"\n'
    )
    return path


def verifies(keys: list[object], pair: Pair) -> bool:
    return Verifier(keys).verify(BODY, pair.signer.sign(BODY))  # type: ignore[arg-type]


def fingerprints(config_keys: list[object]) -> set[str]:
    return {fingerprint(k) for k in config_keys}  # type: ignore[arg-type]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="voltd.keyfetch")
    return caplog


# --------------------------------------------------------------------------------------------
# Fetched and cached


def test_fetched_used_and_cached(
    deploy: Path, server: KeyServer, old: Pair, logs: pytest.LogCaptureFixture
) -> None:
    server.body = old.text
    plan = configure(write_config(deploy, server.url), write_key_cache=True)
    keys = plan.config.verify.keys
    assert fingerprints(keys) == {old.fp}
    assert verifies(keys, old)
    state = deploy / "state"
    cached = state / CACHE_KEY_FILE
    assert fingerprint(load_public_key_file(cached)) == old.fp
    assert cached.read_text().startswith("ssh-rsa ")
    meta = json.loads((state / CACHE_META_FILE).read_text())
    assert meta["source"] == server.origin and meta["fingerprint"] == old.fp
    assert meta["pending"] is None and meta["fetched_at"]
    for path in (cached, state / CACHE_META_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in state.iterdir()) == sorted([CACHE_KEY_FILE, CACHE_META_FILE])
    assert "trusted on first use" in logs.text and old.fp in logs.text
    assert TOKEN not in logs.text and TOKEN not in json.dumps(meta) + cached.read_text()
    # A second start: unchanged, rewritten in place.
    plan = configure(deploy / "config.toml", write_key_cache=True)
    assert fingerprints(plan.config.verify.keys) == {old.fp}
    assert "unchanged" in logs.text


def test_pem_body_and_configured_keys_beside(
    deploy: Path, server: KeyServer, old: Pair, new: Pair
) -> None:
    """A PEM body parses like a key file; the fetched key joins public_keys, not replacing."""
    key = load_public_key_file(old.public)
    server.body = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (deploy / "new.pub").write_bytes(new.text)
    plan = configure(write_config(deploy, server.url, 'public_keys = ["new.pub"]'))
    assert fingerprints(plan.config.verify.keys) == {old.fp, new.fp}
    assert plan.config.verify.public_keys == [deploy / "new.pub"]


def test_check_writes_nothing(deploy: Path, server: KeyServer, old: Pair) -> None:
    """`configure` by default (what `voltd check` calls) fetches but never writes the cache."""
    server.body = old.text
    plan = configure(write_config(deploy, server.url))
    assert fingerprints(plan.config.verify.keys) == {old.fp}
    assert server.hits == 1
    assert not (deploy / "state").exists()


def test_voltd_check_shows_the_host_and_fingerprint_not_the_path(
    deploy: Path, server: KeyServer, old: Pair
) -> None:
    server.body = old.text
    source = write_config(deploy, server.url)
    out = subprocess.run(
        [sys.executable, "-m", "voltd", "check", "-c", str(source)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("verify:"))
    host = server.url.split("/")[2]
    assert f"1 key(s) (https://{host} ({old.fp}))" in line
    path = server.url.split(host, 1)[1]
    assert path not in out.stdout + out.stderr
    assert not (deploy / "state").exists()


def test_load_alone_does_not_fetch(deploy: Path, server: KeyServer, old: Pair) -> None:
    server.body = old.text
    config = load(write_config(deploy, server.url))
    assert config.verify.keys == [] and server.hits == 0
    assert config.verify.public_key_url == server.url


# --------------------------------------------------------------------------------------------
# The fetch fails: the cached key stays


def _break(server: KeyServer, how: str) -> str:
    """Make the server fail as `how` says; the reason the warning should give."""
    if how == "down":
        server.stop()
        return "connection refused"
    if how == "500":
        server.status = 500
        server.body = b"oops " + TOKEN.encode()
        return "answered 500 Internal Server Error"
    if how == "garbage":
        server.body = b"<html>not a key</html>"
        return "the answer is not a usable key"
    if how == "timeout":
        server.delay = 3.0
        return "no complete answer within 0.5s (timeout)"
    if how == "redirect-to-http":
        server.status = 302
        server.headers["Location"] = f"http://127.0.0.1:{server.port}/{TOKEN}"
        return "redirected to a URL that is not https://"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["down", "500", "garbage", "timeout", "redirect-to-http"])
def test_fetch_failure_uses_the_cached_key(
    deploy: Path, server: KeyServer, old: Pair, logs: pytest.LogCaptureFixture, how: str
) -> None:
    server.body = old.text
    source = write_config(deploy, server.url)
    configure(source, write_key_cache=True)
    before = (deploy / "state" / CACHE_KEY_FILE).read_bytes()
    logs.clear()
    reason = _break(server, how)
    config = add_url_keys(load(source), write_cache=True, timeout=0.5)
    assert fingerprints(config.verify.keys) == {old.fp}
    assert verifies(config.verify.keys, old)
    warnings = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"could not fetch the key from {server.origin}: {reason}" in warnings[0]
    assert f"using the cached key {old.fp}" in warnings[0]
    assert TOKEN not in logs.text
    assert (deploy / "state" / CACHE_KEY_FILE).read_bytes() == before


def test_a_broken_answer_is_described_without_the_url(deploy: Path, server: KeyServer) -> None:
    """What the server sent back is shown, with the URL's secrets (and a redirect's) taken out."""
    path = f"/{TOKEN}/id_rsa.pub"
    server.raw[path] = f"GET {path}?{TOKEN} HTTP/1.1\r\n\r\n".encode()
    with pytest.raises(FetchError) as err:
        fetch_key(server.url, ca_file=deploy / "ca.pem", timeout=5)
    assert str(err.value).startswith("the server broke the HTTP protocol: ")
    assert "[redacted]" in str(err.value) and TOKEN not in str(err.value)

    moved = "/moved/an0ther-s3cret-t0ken"
    server.raw = {moved: f"GET {moved} HTTP/1.1\r\n\r\n".encode()}
    server.status = 302
    server.headers["Location"] = f"{server.origin}{moved}"
    with pytest.raises(FetchError) as err:
        fetch_key(server.url, ca_file=deploy / "ca.pem", timeout=5)
    assert str(err.value).startswith("the server broke the HTTP protocol: ")
    assert "an0ther-s3cret-t0ken" not in str(err.value) and TOKEN not in str(err.value)


def test_an_untrusted_certificate_names_what_decides_trust(
    deploy: Path, server: KeyServer, tmp_path: Path
) -> None:
    with pytest.raises(FetchError) as err:
        fetch_key(server.url, timeout=5)
    assert str(err.value).startswith("TLS certificate verify failed: ")
    assert str(err.value).endswith("(the default CA certificates)")
    other, _ = make_self_signed_cert(tmp_path / "other", hosts=("127.0.0.1",))
    with pytest.raises(FetchError) as err:
        fetch_key(server.url, ca_file=other, timeout=5)
    assert str(err.value).endswith(f"(public_key_ca_file {other})")
    assert TOKEN not in str(err.value)


def test_untrusted_certificate_is_a_failed_fetch(
    deploy: Path, server: KeyServer, old: Pair, logs: pytest.LogCaptureFixture
) -> None:
    """Without public_key_ca_file the system CAs decide: our private certificate fails."""
    server.body = old.text
    (deploy / "old.pub").write_bytes(old.text)
    source = deploy / "config.toml"
    source.write_text(
        f'[verify]\npublic_keys = ["old.pub"]\npublic_key_url = "{server.url}"\n'
        '[sinks.archive]\ntype = "file"\npath = "a.jsonl"\n'
    )
    plan = configure(source, write_key_cache=True)
    assert fingerprints(plan.config.verify.keys) == {old.fp}
    assert "TLS certificate verify failed" in logs.text
    assert "so only public_keys verify signatures" in logs.text
    assert not (deploy / CACHE_KEY_FILE).exists()


def test_no_cache_and_no_keys_is_a_config_error(
    deploy: Path, server: KeyServer, logs: pytest.LogCaptureFixture
) -> None:
    server.status = 404
    source = write_config(deploy, server.url)
    with pytest.raises(ConfigError) as err:
        configure(source, write_key_cache=True)
    (problem,) = err.value.problems
    assert problem.startswith(
        f"{source}: verify.public_key_url: could not fetch the key from {server.origin}: "
        "answered 404 Not Found, expected 200; and no copy is cached in "
    )
    assert TOKEN not in problem and TOKEN not in logs.text


# --------------------------------------------------------------------------------------------
# A changed key: beside the trusted one, until confirmed


def test_changed_key_is_added_beside_until_confirmed(
    deploy: Path, server: KeyServer, old: Pair, new: Pair, logs: pytest.LogCaptureFixture
) -> None:
    server.body = old.text
    source = write_config(deploy, server.url)
    configure(source, write_key_cache=True)
    state = deploy / "state"

    # The URL now serves another key: both verify, and it is said loudly.
    server.body = new.text
    logs.clear()
    keys = configure(source, write_key_cache=True).config.verify.keys
    assert fingerprints(keys) == {old.fp, new.fp}
    assert verifies(keys, old) and verifies(keys, new)
    errors = [r.getMessage() for r in logs.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "CHANGED" in errors[0] and old.fp in errors[0] and new.fp in errors[0]
    assert f'public_key_fingerprints = ["{new.fp}"]' in errors[0]
    # The trusted key stays in the cache; the new one waits in the metadata.
    assert fingerprint(load_public_key_file(state / CACHE_KEY_FILE)) == old.fp
    meta = json.loads((state / CACHE_META_FILE).read_text())
    assert meta["pending"]["fingerprint"] == new.fp
    cache = read_cache(state)
    assert cache.trusted is not None and cache.pending is not None

    # Still unconfirmed on the next start, even when the fetch fails: both, still loud.
    server.status = 503
    logs.clear()
    keys = configure(source, write_key_cache=True).config.verify.keys
    assert fingerprints(keys) == {old.fp, new.fp}
    assert any(r.levelno == logging.ERROR and new.fp in r.getMessage() for r in logs.records)

    # Confirmed: only the confirmed key verifies, and the cache holds it.
    server.status = 200
    write_config(deploy, server.url, f'public_key_fingerprints = ["{new.fp}"]')
    logs.clear()
    keys = configure(source, write_key_cache=True).config.verify.keys
    assert fingerprints(keys) == {new.fp}
    assert verifies(keys, new) and not verifies(keys, old)
    assert "is confirmed" in logs.text
    assert not [r for r in logs.records if r.levelno >= logging.ERROR]
    assert fingerprint(load_public_key_file(state / CACHE_KEY_FILE)) == new.fp
    assert json.loads((state / CACHE_META_FILE).read_text())["pending"] is None
    assert TOKEN not in logs.text


def test_confirming_by_public_keys_and_while_the_url_is_down(
    deploy: Path, server: KeyServer, old: Pair, new: Pair
) -> None:
    """The new key's file in public_keys confirms it too, even when the fetch fails."""
    server.body = old.text
    source = write_config(deploy, server.url)
    configure(source, write_key_cache=True)
    server.body = new.text
    configure(source, write_key_cache=True)
    server.stop()
    (deploy / "new.pub").write_bytes(new.text)
    write_config(deploy, server.url, 'public_keys = ["new.pub"]')
    keys = configure(source, write_key_cache=True).config.verify.keys
    assert fingerprints(keys) == {new.fp}
    assert len(keys) == 1  # the configured key, not also its fetched copy


def test_url_serving_the_trusted_key_again_drops_the_pending_one(
    deploy: Path, server: KeyServer, old: Pair, new: Pair
) -> None:
    server.body = old.text
    source = write_config(deploy, server.url)
    configure(source, write_key_cache=True)
    server.body = new.text
    configure(source, write_key_cache=True)
    server.body = old.text
    keys = configure(source, write_key_cache=True).config.verify.keys
    assert fingerprints(keys) == {old.fp}
    assert read_cache(deploy / "state").pending is None


def test_a_third_key_replaces_the_unconfirmed_one_never_the_trusted_one(
    deploy: Path, server: KeyServer, old: Pair, new: Pair, logs: pytest.LogCaptureFixture
) -> None:
    third = (session_material() / "keys" / "volt_id_rsa.pub").read_bytes()
    server.body = old.text
    source = write_config(deploy, server.url)
    configure(source, write_key_cache=True)
    server.body = new.text
    configure(source, write_key_cache=True)
    server.body = third
    keys = configure(source, write_key_cache=True).config.verify.keys
    assert len(keys) == 2 and old.fp in fingerprints(keys) and new.fp not in fingerprints(keys)
    assert f"the unconfirmed key {new.fp} is no longer served" in logs.text


def test_a_damaged_cache_is_ignored_and_rewritten(
    deploy: Path, server: KeyServer, old: Pair, logs: pytest.LogCaptureFixture
) -> None:
    state = deploy / "state"
    state.mkdir()
    (state / CACHE_KEY_FILE).write_text("not a key\n")
    (state / CACHE_META_FILE).write_text("{nope")
    server.body = old.text
    keys = configure(write_config(deploy, server.url), write_key_cache=True).config.verify.keys
    assert fingerprints(keys) == {old.fp}
    assert "the cached key" in logs.text and "is unusable, ignoring it" in logs.text
    assert fingerprint(load_public_key_file(state / CACHE_KEY_FILE)) == old.fp
    assert json.loads((state / CACHE_META_FILE).read_text())["fingerprint"] == old.fp


def test_a_pinned_url_never_trusts_an_unlisted_key_alone(
    deploy: Path, server: KeyServer, old: Pair, new: Pair
) -> None:
    server.body = new.text
    source = write_config(deploy, server.url, f'public_key_fingerprints = ["{old.fp}"]')
    with pytest.raises(ConfigError) as err:
        configure(source, write_key_cache=True)
    assert f"({new.fp}) is not in public_key_fingerprints" in str(err.value)
    assert not (deploy / "state" / CACHE_KEY_FILE).exists()
    # Listed: trusted from the first fetch.
    write_config(deploy, server.url, f'public_key_fingerprints = "{new.fp}"')
    keys = configure(source, write_key_cache=True).config.verify.keys
    assert fingerprints(keys) == {new.fp}


# --------------------------------------------------------------------------------------------
# Config errors


@pytest.mark.parametrize(
    ("verify", "expected"),
    [
        (
            'public_key_url = "http://callbacks.respondflow.com/id_rsa.pub"',
            "verify.public_key_url: plain http:// is refused: anyone on the way could hand us "
            "their own key; expected an https:// URL like "
            "https://callbacks.respondflow.com/id_rsa.pub",
        ),
        (
            'public_key_url = "callbacks.respondflow.com/id_rsa.pub"',
            "verify.public_key_url: expected an https:// URL like "
            "https://callbacks.respondflow.com/id_rsa.pub",
        ),
        (
            'public_key_url = "https://h/x"\npublic_key_fingerprints = ["MD5:ab:cd"]',
            'verify.public_key_fingerprints[0]: expected a key fingerprint like "SHA256:" and '
            "43 characters, as `ssh-keygen -lf volt-key-cache.pub` and voltd's log print it, "
            "got 'MD5:ab:cd'",
        ),
        (
            'public_keys = "k.pub"\npublic_key_ca_file = "ca.pem"',
            "verify.public_key_ca_file: public_key_ca_file only applies to the key fetched from "
            "public_key_url, which is not set; expected public_key_url too, or remove this key",
        ),
        (
            'public_key_url = "https://h/x"\npublic_key_ca_file = "k.pub"',
            "verify.public_key_ca_file: no PEM CA certificate in this file; expected "
            "'-----BEGIN CERTIFICATE-----' (file {dir}/k.pub)",
        ),
        (
            'public_key_url = "https://h/x"\npublic_key_ca_file = "nope.pem"',
            "verify.public_key_ca_file: cannot read: No such file or directory "
            "(file {dir}/nope.pem)",
        ),
    ],
)
def test_config_problems(deploy: Path, old: Pair, verify: str, expected: str) -> None:
    (deploy / "k.pub").write_bytes(old.text)
    source = deploy / "config.toml"
    source.write_text(f'[verify]\n{verify}\n[sinks.a]\ntype = "file"\npath = "a"\n')
    with pytest.raises(ConfigError) as err:
        load(source)
    assert err.value.problems == [f"{source}: " + expected.format(dir=deploy)]


def test_url_alone_is_enough_and_fingerprints_are_normalized(deploy: Path) -> None:
    fp = "SHA256:" + "A" * 43
    source = deploy / "config.toml"
    source.write_text(
        '[verify]\npublic_key_url = "https://callbacks.respondflow.com/id_rsa.pub"\n'
        f'public_key_fingerprints = ["sha256:{"A" * 43}="]\n'
        '[sinks.a]\ntype = "file"\npath = "a"\n'
    )
    v = load(source).verify
    assert v.public_keys == [] and v.public_key_fingerprints == [fp]
    assert v.public_key_ca_file is None


# --------------------------------------------------------------------------------------------
# The real daemon


def _reloaded(daemon: Daemon, count: int) -> None:
    """SIGHUP, and wait for the `count`th reload to be done."""
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: sum("configuration reloaded" in x for x in daemon.log) >= count)


@pytest.fixture
def url_daemon(daemon: Daemon, material: dict[str, object]) -> Iterator[tuple[Daemon, KeyServer]]:
    """The test deployment with `public_key_url` (serving its key) instead of `public_keys`."""
    server = KeyServer(material["cert"], material["key"])  # type: ignore[arg-type]
    server.body = daemon.public_key.read_bytes()
    (daemon.root / "ca.pem").write_bytes(material["cert"].read_bytes())  # type: ignore[attr-defined]
    path = daemon.configure(
        verify_extra=f'public_key_url = "{server.url}"\npublic_key_ca_file = "ca.pem"'
    )
    path.write_text(path.read_text().replace('public_keys = ["keys/volt_id_rsa.pub"]\n', ""))
    assert "public_keys" not in path.read_text()
    yield daemon, server
    server.stop()


def test_daemon_starts_with_only_a_key_url_and_caches_it(
    url_daemon: tuple[Daemon, KeyServer], new: Pair
) -> None:
    daemon, server = url_daemon
    daemon.start()
    assert server.hits == 1
    assert daemon.post(make_event()).status_code == 200
    assert daemon.post(make_event(), signature=new.signer.sign).status_code == 401
    assert not [line for line in daemon.log if TOKEN in line]
    assert (daemon.root / CACHE_KEY_FILE).exists()


def test_daemon_with_only_a_key_url_reloads_it(
    url_daemon: tuple[Daemon, KeyServer], new: Pair
) -> None:
    """`serve` fetches the key and accepts what it signs; SIGHUP fetches again: a changed key
    verifies beside the cached one, a failed fetch keeps both; the URL's path is never
    logged."""
    daemon, server = url_daemon
    configure(daemon.config, write_key_cache=True)  # the cache an earlier start left
    daemon.start()
    assert server.hits == 2
    assert daemon.post(make_event()).status_code == 200
    assert daemon.post(make_event(), signature=new.signer.sign).status_code == 401

    # Volt rotates: after a reload both keys verify, and the daemon says so loudly.
    server.body = new.text
    _reloaded(daemon, 1)
    assert server.hits == 3
    assert any("error" in x.lower() and "CHANGED" in x and new.fp in x for x in daemon.log)
    assert daemon.post(make_event(), signature=new.signer.sign).status_code == 200
    assert daemon.post(make_event()).status_code == 200
    assert read_cache(daemon.root).pending is not None

    # The URL goes away: a reload keeps the keys it had, from the cache.
    server.stop()
    _reloaded(daemon, 2)
    assert any("could not fetch the key" in x for x in daemon.log)
    assert daemon.post(make_event(), signature=new.signer.sign).status_code == 200
    assert daemon.post(make_event()).status_code == 200

    # Confirmed: the old key no longer verifies.
    text = daemon.config.read_text()
    daemon.config.write_text(
        text.replace("[verify]\n", f'[verify]\npublic_key_fingerprints = ["{new.fp}"]\n')
    )
    _reloaded(daemon, 3)
    assert daemon.post(make_event(), signature=new.signer.sign).status_code == 200
    assert daemon.post(make_event()).status_code == 401
    assert daemon.stop() == 0
    assert not [line for line in daemon.log if TOKEN in line]
