"""Signature check: the stage that decides whether a request really came from Volt.

Volt documents only "an RSA signature in X-Respond-Flow-Signature" and publishes an OpenSSH
`id_rsa.pub`. The padding, hash and header encoding are therefore settings (DESIGN.md §4,
`[verify]`), and this module implements every combination they allow, plus the signing side
so that `voltd send`, the demo and the tests can sign exactly as the verifier expects.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from voltd.defaults import SIGNATURE_ALGORITHM, SIGNATURE_ENCODING

__all__ = [
    "ALGORITHMS",
    "ENCODINGS",
    "MAX_SIGNATURE_CHARS",
    "MIN_KEY_BITS",
    "KeyLoadError",
    "Signer",
    "Verifier",
    "load_private_key_file",
    "load_public_key",
    "load_public_key_file",
    "too_old",
]

ALGORITHMS: Final = (
    "rsa-pkcs1v15-sha256",
    "rsa-pkcs1v15-sha1",
    "rsa-pkcs1v15-sha512",
    "rsa-pss-sha256",
)
ENCODINGS: Final = ("base64", "hex")

# Longer headers are rejected before any decoding work: even an RSA-16384 signature in hex
# fits, and an attacker cannot make us decode megabytes per request.
MAX_SIGNATURE_CHARS: Final = 4096
# Shorter RSA keys can be factored; accepting one would make the signature check decorative.
MIN_KEY_BITS: Final = 1024
# Key files are tiny; a cap keeps a misconfigured path (a log, /dev/zero) from eating memory.
_MAX_KEY_FILE_BYTES: Final = 1 << 20

_EXPECTED_PUBLIC: Final = (
    "expected an OpenSSH 'ssh-rsa AAAA…' line (as in id_rsa.pub) or a PEM public key "
    "('-----BEGIN PUBLIC KEY-----' or '-----BEGIN RSA PUBLIC KEY-----')"
)
_EXPECTED_PRIVATE: Final = (
    "expected an unencrypted PEM RSA private key "
    "('-----BEGIN PRIVATE KEY-----' or '-----BEGIN RSA PRIVATE KEY-----')"
)

# URL-safe base64 differs from the standard alphabet only in these two characters.
_URLSAFE_TO_STD: Final = bytes.maketrans(b"-_", b"+/")


class KeyLoadError(ValueError):
    """A key cannot be used; the message says why and what was expected.

    It never names the file: the caller knows the file and the config key and adds both, so
    the operator gets one message with all three.
    """


def _describe(key: object) -> str:
    """Name a non-RSA key type in words an operator recognises from ssh-keygen."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "an Ed25519 key"
    if isinstance(key, ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        return "an Ed448 key"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"an ECDSA key ({key.curve.name})"
    if isinstance(key, dsa.DSAPublicKey | dsa.DSAPrivateKey):
        return "a DSA key"
    return f"a {type(key).__name__}"


def _check_size(key: RSAPublicKey | RSAPrivateKey) -> None:
    if key.key_size < MIN_KEY_BITS:
        raise KeyLoadError(
            f"RSA key is too short: {key.key_size} bits; expected at least {MIN_KEY_BITS}"
        )


def _load_pem_public(data: bytes) -> object:
    if b"PRIVATE KEY-----" in data:
        raise KeyLoadError("this is a private key; give the public key (" + _EXPECTED_PUBLIC + ")")
    if b"-----BEGIN CERTIFICATE-----" in data:
        raise KeyLoadError("this is an X.509 certificate, not a public key; " + _EXPECTED_PUBLIC)
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyLoadError("malformed PEM public key; " + _EXPECTED_PUBLIC) from None


def _load_openssh_public(data: bytes) -> object:
    lines = [
        line.strip()
        for line in data.splitlines()
        if line.strip() and not line.lstrip().startswith(b"#")
    ]
    if not lines:
        raise KeyLoadError("no key found (the file is empty or only comments); " + _EXPECTED_PUBLIC)
    if len(lines) > 1:
        # Silently taking the first key would hide a rotation the operator meant to configure.
        raise KeyLoadError(
            f"{len(lines)} keys or lines of text found, expected exactly one key; "
            "for a key rotation put each key in its own file and list them all in public_keys"
        )
    try:
        return serialization.load_ssh_public_key(lines[0])
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyLoadError("not an RSA public key: " + _EXPECTED_PUBLIC) from None


def load_public_key(data: bytes) -> RSAPublicKey:
    """Parse an RSA public key in the formats Volt or an operator is likely to hand us.

    OpenSSH is first-class because Volt publishes `id_rsa.pub`; PEM SPKI and PKCS#1 are what
    `openssl` produces when someone converts it.
    """
    stripped = data.strip()
    if b"-----BEGIN" in stripped:
        key = _load_pem_public(stripped)
    else:
        key = _load_openssh_public(stripped)
    if not isinstance(key, RSAPublicKey):
        raise KeyLoadError(f"not an RSA public key: this is {_describe(key)}; {_EXPECTED_PUBLIC}")
    _check_size(key)
    return key


def _read_key_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise KeyLoadError(f"cannot read: {e.strerror or type(e).__name__}") from None
    except ValueError:  # open()'s word for a NUL in the path ("embedded null byte")
        raise KeyLoadError("cannot read: the path contains a NUL character") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyLoadError(f"too large to be a key (over {_MAX_KEY_FILE_BYTES} bytes)")
    return data


def load_public_key_file(path: Path) -> RSAPublicKey:
    """Read and parse a public key file; every failure is a KeyLoadError for config checks."""
    return load_public_key(_read_key_file(path))


def load_private_key_file(path: Path) -> RSAPrivateKey:
    """Read the PEM signing key used by `voltd send`, the demo and tests.

    Only unencrypted keys: these are test keys, and a passphrase prompt would break scripts.
    """
    data = _read_key_file(path)
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
        raise KeyLoadError(
            "OpenSSH private key format; convert it with 'ssh-keygen -p -m PEM -f FILE' or "
            + _EXPECTED_PRIVATE
        )
    if b"PRIVATE KEY-----" not in data:
        if b"PUBLIC KEY-----" in data or data.lstrip().startswith(b"ssh-"):
            raise KeyLoadError(
                "this is a public key; give the private key (" + _EXPECTED_PRIVATE + ")"
            )
        raise KeyLoadError("not a PEM private key; " + _EXPECTED_PRIVATE)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography signals "encrypted, but no password given" with TypeError.
        raise KeyLoadError("the private key is encrypted; " + _EXPECTED_PRIVATE) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyLoadError("malformed PEM private key; " + _EXPECTED_PRIVATE) from None
    if not isinstance(key, RSAPrivateKey):
        raise KeyLoadError(f"not an RSA private key: this is {_describe(key)}; {_EXPECTED_PRIVATE}")
    _check_size(key)
    return key


def _scheme(
    algorithm: str, *, signing: bool
) -> tuple[padding.AsymmetricPadding, hashes.HashAlgorithm]:
    """Build the padding and hash once, so that verify() allocates nothing for them."""
    if algorithm == "rsa-pkcs1v15-sha256":
        return padding.PKCS1v15(), hashes.SHA256()
    if algorithm == "rsa-pkcs1v15-sha1":
        return padding.PKCS1v15(), hashes.SHA1()  # weak, but the operator chose it to match Volt
    if algorithm == "rsa-pkcs1v15-sha512":
        return padding.PKCS1v15(), hashes.SHA512()
    if algorithm == "rsa-pss-sha256":
        salt = padding.PSS.DIGEST_LENGTH if signing else padding.PSS.AUTO
        return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt), hashes.SHA256()
    raise ValueError(f"unknown signature algorithm {algorithm!r}; expected one of {ALGORITHMS}")


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown signature encoding {encoding!r}; expected one of {ENCODINGS}")


class Verifier:
    """Checks the signature header of every request against the configured public keys.

    For `rsa-pss-sha256` the salt length is recovered from the signature (PSS.AUTO) rather
    than fixed, because Volt does not document the salt length it uses; MGF1 uses SHA-256.
    """

    __slots__ = ("_decode", "_hash", "_keys", "_max_chars", "_padding", "algorithm", "encoding")

    def __init__(
        self,
        keys: Sequence[RSAPublicKey],
        algorithm: str = SIGNATURE_ALGORITHM,
        encoding: str = SIGNATURE_ENCODING,
    ) -> None:
        if not keys:
            raise ValueError("at least one public key is needed to verify signatures")
        for key in keys:
            if not isinstance(key, RSAPublicKey):
                raise TypeError(f"expected RSA public keys, got {type(key).__name__}")
        self._padding, self._hash = _scheme(algorithm, signing=False)
        _check_encoding(encoding)
        self.algorithm = algorithm
        self.encoding = encoding
        # A signature must be exactly as long as the key's modulus; checking that first skips
        # the RSA operation for keys that cannot match (and for garbage).
        self._keys: tuple[tuple[RSAPublicKey, int], ...] = tuple(
            (key, (key.key_size + 7) // 8) for key in keys
        )
        # Longest header that could hold a signature for the largest key (hex is the longer
        # encoding), plus slack for surrounding whitespace: garbage is refused before decoding.
        self._max_chars = min(MAX_SIGNATURE_CHARS, 2 * max(size for _, size in self._keys) + 64)
        self._decode = _decode_base64 if encoding == "base64" else _decode_hex

    def verify(self, body: bytes, signature: str | None) -> bool:
        """True only if one of the keys signed exactly these body bytes.

        Never raises: whatever a client puts in the header, the answer is yes or no, so the
        HTTP layer can map False to 401 without a try block of its own.
        """
        if not signature or not isinstance(signature, str):
            return False
        if len(signature) > self._max_chars:
            return False
        raw = self._decode(signature)
        if raw is None:
            return False
        length = len(raw)
        for key, size in self._keys:
            if length != size:
                continue
            try:
                key.verify(raw, body, self._padding, self._hash)
            except (InvalidSignature, ValueError, TypeError):
                continue
            return True
        return False


def _decode_base64(text: str) -> bytes | None:
    """Accept both base64 alphabets, padded or not: senders and proxies disagree on both.

    Works on bytes because str.translate is ~40x slower than bytes.translate here.
    """
    if not text.isascii():
        return None
    data = text.encode("ascii").strip().rstrip(b"=").translate(_URLSAFE_TO_STD)
    remainder = len(data) % 4
    if remainder == 1:
        return None
    if remainder:
        data += b"=" * (4 - remainder)
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def _decode_hex(text: str) -> bytes | None:
    """Case-insensitive hex; bytes.fromhex already is."""
    text = text.strip()
    if not text.isascii():
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


class Signer:
    """Signs bodies as Volt would, for `voltd send`, the demo, tests and the benchmark.

    Output is canonical (standard base64 with padding, lowercase hex, PSS salt = digest
    length) so that it is accepted by the strictest reading of each setting.
    """

    __slots__ = ("_hash", "_key", "_padding", "algorithm", "encoding")

    def __init__(
        self,
        key: RSAPrivateKey,
        algorithm: str = SIGNATURE_ALGORITHM,
        encoding: str = SIGNATURE_ENCODING,
    ) -> None:
        if not isinstance(key, RSAPrivateKey):
            raise TypeError(f"expected an RSA private key, got {type(key).__name__}")
        self._padding, self._hash = _scheme(algorithm, signing=True)
        _check_encoding(encoding)
        self._key = key
        self.algorithm = algorithm
        self.encoding = encoding

    def sign(self, body: bytes) -> str:
        """The header value for this exact body."""
        raw = self._key.sign(body, self._padding, self._hash)
        if self.encoding == "hex":
            return raw.hex()
        return base64.b64encode(raw).decode("ascii")


def too_old(event_time: float | None, max_age: float, now: float) -> bool:
    """Replay protection: is this envelope older than `max_age` seconds at `now`?

    `max_age <= 0` disables the check. With the check enabled, an envelope without a usable
    `time` (missing, or not a finite number) counts as too old: it cannot prove it is fresh,
    and accepting it would let a captured request be replayed after dedup retention expires.
    Times in the future are accepted (clock skew between Volt and us is not an attack: the
    signature already proves Volt sent it).
    """
    if max_age <= 0:
        return False
    if event_time is None:
        return True
    try:
        t = float(event_time)  # an integer past float range (1e400 written out) overflows
    except OverflowError:
        return True
    if not math.isfinite(t):
        return True
    return now - t > max_age
