"""Signature verification, key loading and key/certificate generation."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import stat
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from voltd.keys import generate_signing_pair, make_self_signed_cert
from voltd.verify import (
    ALGORITHMS,
    ENCODINGS,
    KeyLoadError,
    Signer,
    Verifier,
    load_private_key_file,
    load_public_key,
    load_public_key_file,
    too_old,
)

BODY = b'{"type":"messaging","id":"rfw_1","payload":{"text":"hi \xc3\xa9"},"time":1700000000}'


@pytest.fixture(scope="module")
def key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _openssh(key: RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )


def _same(a: RSAPublicKey, b: RSAPublicKey) -> bool:
    return a.public_numbers() == b.public_numbers()


# --- key formats -----------------------------------------------------------------------------


def test_openssh_without_comment(key: RSAPrivateKey) -> None:
    assert _same(load_public_key(_openssh(key)), key.public_key())


def test_openssh_with_comment_whitespace_and_comment_lines(key: RSAPrivateKey) -> None:
    data = b"\n# Volt callbacks key\n\n   " + _openssh(key) + b" volt@respondflow  \r\n\n"
    assert _same(load_public_key(data), key.public_key())


def test_pem_spki(key: RSAPrivateKey) -> None:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert _same(load_public_key(b"\n\n  " + pem + b"\n\n"), key.public_key())


def test_pem_pkcs1(key: RSAPrivateKey) -> None:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    assert pem.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    assert _same(load_public_key(pem + b"\n  \n"), key.public_key())


def test_ed25519_openssh_rejected() -> None:
    line = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    assert line.startswith(b"ssh-ed25519 ")
    with pytest.raises(KeyLoadError, match=r"not an RSA public key.*Ed25519"):
        load_public_key(line + b" me@host\n")


def test_ed25519_pem_rejected() -> None:
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyLoadError, match="not an RSA public key"):
        load_public_key(pem)


@pytest.mark.parametrize(
    "fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL]
)
def test_private_key_given_as_public_rejected(
    key: RSAPrivateKey, fmt: serialization.PrivateFormat
) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    with pytest.raises(KeyLoadError, match="this is a private key; give the public key"):
        load_public_key(pem)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   \n# only a comment\n",
        b"hello world",
        b"ssh-rsa not-base64!!!",
        b"ssh-rsa QUFBQQ==",
        b"-----BEGIN PUBLIC KEY-----\nQUFBQQ==\n-----END PUBLIC KEY-----\n",
        bytes(range(256)),
    ],
)
def test_garbage_rejected(data: bytes) -> None:
    with pytest.raises(KeyLoadError) as info:
        load_public_key(data)
    assert "expected" in str(info.value)


def test_two_keys_in_one_file_rejected(key: RSAPrivateKey, other_key: RSAPrivateKey) -> None:
    with pytest.raises(KeyLoadError, match="public_keys"):
        load_public_key(_openssh(key) + b"\n" + _openssh(other_key) + b"\n")


def test_short_rsa_key_rejected() -> None:
    # cryptography refuses to generate keys under 1024 bits, so build one from numbers.
    small = rsa.RSAPublicNumbers(e=65537, n=(1 << 767) | 1).public_key()
    line = small.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    with pytest.raises(KeyLoadError, match="too short: 768 bits"):
        load_public_key(line)


def test_key_file_roundtrip_and_error_has_no_file_name(key: RSAPrivateKey, tmp_path: Path) -> None:
    path = tmp_path / "volt_id_rsa.pub"
    path.write_bytes(_openssh(key) + b" volt\n")
    assert _same(load_public_key_file(path), key.public_key())

    garbage = tmp_path / "garbage-name.pub"
    garbage.write_bytes(b"nope")
    with pytest.raises(KeyLoadError) as info:
        load_public_key_file(garbage)
    assert "garbage-name" not in str(info.value)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyLoadError, match="cannot read: No such file or directory") as info:
        load_public_key_file(tmp_path / "absent.pub")
    assert "absent" not in str(info.value)


def test_directory_as_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyLoadError, match="cannot read: "):
        load_public_key_file(tmp_path)


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="root reads any file regardless of mode"
)
def test_unreadable_key_file(key: RSAPrivateKey, tmp_path: Path) -> None:
    path = tmp_path / "k.pub"
    path.write_bytes(_openssh(key))
    path.chmod(0)
    with pytest.raises(KeyLoadError, match="cannot read: Permission denied"):
        load_public_key_file(path)


def test_permission_denied_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Same as above but also meaningful as root: the OS error's text, not the file name."""
    import voltd.verify as verify_module

    def denied(path: object, mode: str = "r") -> object:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(verify_module, "open", denied, raising=False)
    with pytest.raises(KeyLoadError, match=r"^cannot read: Permission denied$"):
        load_public_key_file(tmp_path / "secret-name.pub")
    with pytest.raises(KeyLoadError, match=r"^cannot read: Permission denied$"):
        load_private_key_file(tmp_path / "secret-name.pem")


def test_private_key_file_errors(key: RSAPrivateKey, tmp_path: Path) -> None:
    public = tmp_path / "pub.pem"
    public.write_bytes(_openssh(key))
    with pytest.raises(KeyLoadError, match="this is a public key"):
        load_private_key_file(public)

    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(KeyLoadError, match="encrypted"):
        load_private_key_file(encrypted)

    ed = tmp_path / "ed.pem"
    ed.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyLoadError, match="not an RSA private key"):
        load_private_key_file(ed)

    with pytest.raises(KeyLoadError, match="cannot read"):
        load_private_key_file(tmp_path / "absent.pem")


def test_private_key_file_traditional_format(key: RSAPrivateKey, tmp_path: Path) -> None:
    path = tmp_path / "rsa.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    assert load_private_key_file(path).private_numbers() == key.private_numbers()


# --- sign and verify -------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_roundtrip(key: RSAPrivateKey, algorithm: str, encoding: str) -> None:
    signature = Signer(key, algorithm, encoding).sign(BODY)
    verifier = Verifier([key.public_key()], algorithm, encoding)
    assert verifier.verify(BODY, signature)
    assert not verifier.verify(BODY + b" ", signature)
    assert not verifier.verify(BODY[:-1], signature)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_key(key: RSAPrivateKey, other_key: RSAPrivateKey, algorithm: str) -> None:
    signature = Signer(other_key, algorithm).sign(BODY)
    assert not Verifier([key.public_key()], algorithm).verify(BODY, signature)


@pytest.mark.parametrize("signed_with", ALGORITHMS)
@pytest.mark.parametrize("verified_with", ALGORITHMS)
def test_other_algorithm_rejected(key: RSAPrivateKey, signed_with: str, verified_with: str) -> None:
    signature = Signer(key, signed_with).sign(BODY)
    verifier = Verifier([key.public_key()], verified_with)
    assert verifier.verify(BODY, signature) is (signed_with == verified_with)


def test_signer_output_is_canonical(key: RSAPrivateKey) -> None:
    b64 = Signer(key).sign(BODY)
    assert base64.b64encode(base64.b64decode(b64, validate=True)).decode() == b64
    assert len(b64) == 344  # 256 bytes, padded
    hexed = Signer(key, encoding="hex").sign(BODY)
    assert hexed == hexed.lower() and len(hexed) == 512


def test_pss_signature_is_randomised_but_both_verify(key: RSAPrivateKey) -> None:
    signer = Signer(key, "rsa-pss-sha256")
    first, second = signer.sign(BODY), signer.sign(BODY)
    assert first != second
    verifier = Verifier([key.public_key()], "rsa-pss-sha256")
    assert verifier.verify(BODY, first) and verifier.verify(BODY, second)


def test_pss_with_max_salt_length_verifies(key: RSAPrivateKey) -> None:
    """Volt's salt length is unknown; PSS.AUTO must accept a non-default one too."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    raw = key.sign(
        BODY,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
        hashes.SHA256(),
    )
    verifier = Verifier([key.public_key()], "rsa-pss-sha256")
    assert verifier.verify(BODY, base64.b64encode(raw).decode())


def _bad_headers(good: str) -> list[object]:
    return [
        None,
        "",
        "   ",
        good[:-4],  # truncated
        good[:-1] + ("A" if good[-2] != "A" else "B") + "=",  # one character changed
        good + "AAAA",  # too long
        "!!!!" + good[4:],  # not base64
        "A",  # impossible base64 length
        "é" + good[1:],  # non-ASCII
        "\x00" * 344,
        good[:100] + "\u2028" + good[100:],
        "A" * (1 << 20),  # 1 MB header
        good * 12,
        b"not a str",
    ]


def test_bad_base64_headers_false_without_raising(key: RSAPrivateKey) -> None:
    good = Signer(key).sign(BODY)
    verifier = Verifier([key.public_key()])
    assert verifier.verify(BODY, good)
    for bad in _bad_headers(good):
        assert verifier.verify(BODY, bad) is False, bad  # type: ignore[arg-type]


def test_bad_hex_headers_false_without_raising(key: RSAPrivateKey) -> None:
    good = Signer(key, encoding="hex").sign(BODY)
    verifier = Verifier([key.public_key()], encoding="hex")
    for bad in [
        None,
        "",
        good[:-2],
        good[:-1],  # odd length
        "zz" + good[2:],
        "é" + good[1:],
        "0x" + good[2:],
        "0" * (1 << 20),
        Signer(key).sign(BODY),  # base64 given to a hex verifier
    ]:
        assert verifier.verify(BODY, bad) is False, bad


def test_hex_case_insensitive_and_whitespace(key: RSAPrivateKey) -> None:
    good = Signer(key, encoding="hex").sign(BODY)
    verifier = Verifier([key.public_key()], encoding="hex")
    assert verifier.verify(BODY, good.upper())
    assert verifier.verify(BODY, f"  {good}\t")


def test_base64_variants_accepted(key: RSAPrivateKey) -> None:
    # Find a signature whose base64 contains URL-sensitive characters, so the test means it.
    verifier = Verifier([key.public_key()])
    raw = b""
    for i in range(200):
        body = BODY + str(i).encode()
        raw = base64.b64decode(Signer(key).sign(body))
        std = base64.b64encode(raw).decode()
        if "+" in std and "/" in std:
            break
    else:
        pytest.fail("no signature with both '+' and '/' found")
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    assert "-" in urlsafe and "_" in urlsafe
    for header in (std, std.rstrip("="), urlsafe, urlsafe.rstrip("="), f" \t{std}\r\n "):
        assert verifier.verify(body, header), header


def test_rotation_tries_every_key(key: RSAPrivateKey, other_key: RSAPrivateKey) -> None:
    verifier = Verifier([key.public_key(), other_key.public_key()])
    assert verifier.verify(BODY, Signer(other_key).sign(BODY))
    assert verifier.verify(BODY, Signer(key).sign(BODY))
    third = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert not verifier.verify(BODY, Signer(third).sign(BODY))


def test_rotation_across_key_sizes(key: RSAPrivateKey) -> None:
    big = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    verifier = Verifier([key.public_key(), big.public_key()])
    assert verifier.verify(BODY, Signer(big).sign(BODY))
    assert verifier.verify(BODY, Signer(key).sign(BODY))


def test_verifier_and_signer_reject_bad_settings(key: RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="at least one public key"):
        Verifier([])
    with pytest.raises(ValueError, match="unknown signature algorithm"):
        Verifier([key.public_key()], algorithm="rsa-pkcs1v15-md5")
    with pytest.raises(ValueError, match="unknown signature encoding"):
        Verifier([key.public_key()], encoding="base32")
    with pytest.raises(ValueError, match="unknown signature algorithm"):
        Signer(key, algorithm="hmac-sha256")
    with pytest.raises(ValueError, match="unknown signature encoding"):
        Signer(key, encoding="base85")


@settings(max_examples=300, deadline=None)
@given(signature=st.text(), body=st.binary())
def test_verify_never_raises_on_arbitrary_text(
    key: RSAPrivateKey, signature: str, body: bytes
) -> None:
    for encoding in ENCODINGS:
        verifier = Verifier([key.public_key()], encoding=encoding)
        assert verifier.verify(body, signature) is False


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=256, max_size=256))
def test_verify_false_for_right_length_random_signatures(key: RSAPrivateKey, data: bytes) -> None:
    """Right-length garbage reaches the RSA operation itself, which must not raise either."""
    for algorithm in ALGORITHMS:
        verifier = Verifier([key.public_key()], algorithm)
        assert verifier.verify(BODY, base64.b64encode(data).decode()) is False


# --- replay protection -----------------------------------------------------------------------


def test_too_old() -> None:
    now = 1_700_000_000.0
    assert not too_old(now - 10, 60, now)
    assert not too_old(now - 60, 60, now)  # exactly at the limit is still fresh
    assert too_old(now - 61, 60, now)
    assert not too_old(now + 3600, 60, now)  # clock skew: future is not old
    assert too_old(None, 60, now)  # cannot prove freshness
    assert too_old(float("nan"), 60, now)
    assert too_old(float("-inf"), 60, now)
    # max_age 0 disables the check entirely, even without a time.
    assert not too_old(None, 0, now)
    assert not too_old(0.0, 0, now)
    assert not too_old(now - 10**9, 0, now)


# --- key generation --------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_signing_pair(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "keys"
    private_path, public_path = generate_signing_pair(directory)
    assert private_path == directory / "volt_signing_key.pem"
    assert public_path == directory / "volt_id_rsa.pub"
    assert _mode(private_path) == 0o600
    assert _mode(public_path) & 0o077 != 0o077  # readable public key, whatever the umask

    public_text = public_path.read_bytes()
    assert public_text.startswith(b"ssh-rsa AAAA") and public_text.endswith(b"\n")
    assert public_text.count(b"\n") == 1
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")

    private = load_private_key_file(private_path)
    public = load_public_key_file(public_path)
    assert private.key_size == 2048
    for algorithm in ALGORITHMS:
        for encoding in ENCODINGS:
            signature = Signer(private, algorithm, encoding).sign(BODY)
            assert Verifier([public], algorithm, encoding).verify(BODY, signature)


def test_generate_signing_pair_mode_ignores_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        private_path, _ = generate_signing_pair(tmp_path, name="loose")
    finally:
        os.umask(old)
    assert _mode(private_path) == 0o600


def test_generate_signing_pair_refuses_to_overwrite(tmp_path: Path) -> None:
    private_path, public_path = generate_signing_pair(tmp_path)
    before = private_path.read_bytes(), public_path.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        generate_signing_pair(tmp_path)
    assert (private_path.read_bytes(), public_path.read_bytes()) == before

    # Only the public half present: still refused, and no private key is left behind.
    other = tmp_path / "other"
    other.mkdir()
    (other / "volt_id_rsa.pub").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_signing_pair(other)
    assert not (other / "volt_signing_key.pem").exists()
    assert (other / "volt_id_rsa.pub").read_text() == "keep me"

    # Another name in the same directory is fine.
    generate_signing_pair(tmp_path, name="next")


# --- TLS certificate -------------------------------------------------------------------------


def _handshake(certfile: Path, keyfile: Path, host: str, *, strict: bool = False) -> str:
    """Run a real TLS handshake against a thread-served socket; return the negotiated version."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certfile, keyfile)
    errors: list[BaseException] = []

    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(tls.recv(5))
            except BaseException as e:  # noqa: BLE001 - reported to the main thread
                errors.append(e)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_ctx = ssl.create_default_context(cafile=str(certfile))
        if strict:
            client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        assert client_ctx.check_hostname and client_ctx.verify_mode == ssl.CERT_REQUIRED
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(b"hello")
            assert tls.recv(5) == b"hello"
            version = tls.version() or ""
        thread.join(10)
    assert not errors, errors
    return version


def test_self_signed_cert_files(tmp_path: Path) -> None:
    certfile, keyfile = make_self_signed_cert(tmp_path / "tls")
    assert certfile == tmp_path / "tls" / "cert.pem" and keyfile == tmp_path / "tls" / "key.pem"
    assert _mode(keyfile) == 0o600
    assert certfile.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        make_self_signed_cert(tmp_path / "tls")


@pytest.mark.parametrize("strict", [False, True])
def test_self_signed_cert_tls_handshake_ipv4(tmp_path: Path, strict: bool) -> None:
    certfile, keyfile = make_self_signed_cert(tmp_path)
    assert _handshake(certfile, keyfile, "127.0.0.1", strict=strict).startswith("TLS")


def test_self_signed_cert_tls_handshake_ipv6(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    certfile, keyfile = make_self_signed_cert(tmp_path)
    assert _handshake(certfile, keyfile, "::1").startswith("TLS")


def test_self_signed_cert_wrong_host_fails(tmp_path: Path) -> None:
    certfile, keyfile = make_self_signed_cert(tmp_path, hosts=("example.test",))
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(certfile, keyfile, "127.0.0.1")
