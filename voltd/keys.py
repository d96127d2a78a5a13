"""Throwaway keys and certificates for `voltd keygen`, `voltd demo`, the tests and the benchmark.

Nothing here is meant for production TLS; it exists so that a full signed-HTTPS round trip can
run on a laptop with no setup.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["generate_signing_pair", "make_self_signed_cert"]

_SIGNING_KEY_BITS = 2048


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` atomically with its creation, never replacing a file.

    O_EXCL refuses an existing file (a real key must not be clobbered by a demo), and passing
    the mode to open() means a private key is never readable by others, not even briefly.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _refuse_existing(paths: Sequence[Path]) -> None:
    """Check all outputs up front so that a refusal leaves no half-written pair behind."""
    existing = [str(p) for p in paths if os.path.lexists(p)]
    if existing:
        raise FileExistsError(f"refusing to overwrite existing file(s): {', '.join(existing)}")


def _write_set(files: Sequence[tuple[Path, bytes, int]]) -> None:
    """Write several new files; on failure remove those already written by this call."""
    _refuse_existing([path for path, _, _ in files])
    written: list[Path] = []
    try:
        for path, data, mode in files:
            _write_new(path, data, mode)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def generate_signing_pair(directory: Path, name: str = "volt") -> tuple[Path, Path]:
    """Make an RSA-2048 key pair that signs like Volt, publishing the public half as Volt does.

    The public key is an OpenSSH `id_rsa.pub` line because that is the format Volt publishes,
    so the configuration written for testing is the one used against the real service.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / f"{name}_signing_key.pem"
    public_path = directory / f"{name}_id_rsa.pub"

    key = rsa.generate_private_key(public_exponent=65537, key_size=_SIGNING_KEY_BITS)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_ssh = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write_set(
        [
            (private_path, private_pem, 0o600),
            (public_path, public_ssh + f" voltd-{name}-test\n".encode(), 0o644),
        ]
    )
    return private_path, public_path


def _san_entries(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """IP literals must be IPAddress entries: TLS clients never match an IP against a DNSName."""
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def make_self_signed_cert(
    directory: Path,
    hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    days: int = 30,
) -> tuple[Path, Path]:
    """Make a self-signed TLS server certificate that a client can pin as its own trust anchor.

    EC P-256 keeps generation instant. The certificate is a leaf (CA=false) with key
    identifiers, so OpenSSL accepts it as the trust anchor given to `cafile=`/`verify=`, also
    under VERIFY_X509_STRICT (Python 3.13's default). Existing files are never overwritten:
    `cert.pem`/`key.pem` are common names and may be someone's real certificate.
    """
    if not hosts:
        raise ValueError("at least one host name or IP address is needed for the certificate")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    certfile = directory / "cert.pem"
    keyfile = directory / "key.pem"
    _refuse_existing([certfile, keyfile])

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"voltd throwaway {hosts[0]}")])
    now = _dt.datetime.now(_dt.UTC)
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        # Backdated a little so a client whose clock is slightly behind still accepts it.
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_san_entries(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write_set(
        [
            (
                keyfile,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
                0o600,
            ),
            (certfile, cert.public_bytes(serialization.Encoding.PEM), 0o644),
        ]
    )
    return certfile, keyfile
