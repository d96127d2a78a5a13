"""Checks that involve several keys: the TLS pair, a key to verify with, listener ports, retry
delays, route names.

The model judges each key on its own. These run beside it on the raw values, even when a key
they read is wrong (that is reported at the key), taking a missing or wrong value as its
default from `defaults` just as the model does, so that one pass shows every problem. Values
that came from secrets are never shown.
"""

from __future__ import annotations

import ssl
from collections.abc import Collection
from pathlib import Path
from typing import Any, Final

from voltd.config.errors import Loc, _Invalid, _short_repr, format_key_path, one_line
from voltd.config.paths import _absolute, _path_note, _readable
from voltd.config.secrets import _HIDDEN, _from_secret
from voltd.config.values import _bind, _or_none, _positive_duration
from voltd.defaults import ADMIN_BIND, RETRY_INITIAL, RETRY_MAX_DELAY, SERVER_BIND

_TLS_HELP: Final = "set both for HTTPS, or neither for plain HTTP behind a TLS proxy"
_AFTER_TLS: Final = ("server", "keyfile", 0)  # TLS problems are listed after both paths
#: Neither public_keys nor public_key_url: nothing could verify a signature.
NO_KEYS: Final = (
    "missing: expected at least one public key file, e.g. "
    'public_keys = ["volt_id_rsa.pub"] (Volt publishes it as id_rsa.pub)'
)


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    """`data[key]` when it is a table, else an empty one (the model reports why)."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _cross_checks(
    data: dict[str, Any], base: Path, secrets: Collection[str]
) -> list[tuple[Loc, str, Loc]]:
    """Checks that involve several keys, run on the raw values.

    They run even when a neighbouring key is wrong (which is reported where it is), taking a
    missing or wrong value as its default, so that one pass shows every problem. Each problem
    comes with the key path it is listed at, as if checked right after that key. Values in
    `secrets` (those resolved from `${env:…}`/`${file:…}`) are never shown.
    """
    server, admin, retry = (_table(data, k) for k in ("server", "admin", "retry"))
    routes = data.get("routes")
    return [
        *_spool_checks(_table(data, "spool")),
        *_tls_checks(server, base, secrets),
        *_verify_checks(data),
        *_bind_checks(server, admin, secrets),
        *_retry_checks(retry, secrets),
        *_sink_retry_checks(_table(data, "sinks"), retry, secrets),
        *_route_name_checks(routes if isinstance(routes, list) else [], secrets),
    ]


def _spool_checks(spool: dict[str, Any]) -> list[tuple[Loc, str, Loc]]:
    """`path` (SQLite) or `url` (PostgreSQL), never both; `password` only with `url`."""
    out: list[tuple[Loc, str, Loc]] = []
    if "path" in spool and "url" in spool:
        out.append(
            (
                ("spool", "url"),
                "spool.path is set too: expected either path (a SQLite file, one instance) "
                "or url (PostgreSQL, shared by several instances), not both",
                ("spool", "url"),
            )
        )
    if "password" in spool and "url" not in spool:
        out.append(
            (
                ("spool", "password"),
                "only used with spool.url (PostgreSQL); expected url too, or no password",
                ("spool", "password"),
            )
        )
    return out


def _tls_checks(
    server: dict[str, Any], base: Path, secrets: Collection[str]
) -> list[tuple[Loc, str, Loc]]:
    """Both TLS files or neither, each readable, and the two a pair the server can load."""
    out: list[tuple[Loc, str, Loc]] = []
    for given, needed, what in (
        ("certfile", "keyfile", "its private key"),
        ("keyfile", "certfile", "its certificate"),
    ):
        if given in server and needed not in server:
            why = f"missing: server.{given} is set, so {needed} ({what}) is needed too"
            out.append((("server", needed), f"{why}; {_TLS_HELP}", _AFTER_TLS))
    files: dict[str, Path] = {}
    hidden = {key for key in ("certfile", "keyfile") if _from_secret(server.get(key), secrets)}
    for key in ("certfile", "keyfile"):
        text = server.get(key)
        # Anything else is not a path: the model says so at the key.
        if isinstance(text, str) and text.strip() and "\0" not in text:
            try:
                files[key] = _readable(_absolute(base, text), secret=key in hidden)
            except _Invalid as e:
                out.append((("server", key), str(e), _AFTER_TLS))
    if len(files) == 2:
        problem = _tls_problem(files["certfile"], files["keyfile"], hidden)
        if problem is not None:
            out.append((("server", problem[0]), problem[1], _AFTER_TLS))
    return out


def _verify_checks(data: dict[str, Any]) -> list[tuple[Loc, str, Loc]]:
    """A key to verify with, from files or from the URL; the URL's own keys only with it."""
    if "verify" in data and not isinstance(data["verify"], dict):
        return []  # the model says it is not a table
    verify = _table(data, "verify")
    if "public_keys" not in verify and "public_key_url" not in verify:
        at: Loc = ("verify", "public_keys")
        return [(at, NO_KEYS, at)]
    if "public_key_url" in verify:
        return []
    return [
        (
            ("verify", key),
            f"{key} only applies to the key fetched from public_key_url, which is not set; "
            "expected public_key_url too, or remove this key",
            ("verify", key),
        )
        for key in ("public_key_ca_file", "public_key_fingerprints")
        if key in verify
    ]


def _bind_checks(
    server: dict[str, Any], admin: dict[str, Any], secrets: Collection[str]
) -> list[tuple[Loc, str, Loc]]:
    """The admin listener cannot share a port with the webhook listener."""
    written = server.get("bind", SERVER_BIND)
    written = written if isinstance(written, list) else [written]
    binds = [_or_none(_bind, b) for b in written]
    if not binds or None in binds:
        written, binds = [SERVER_BIND], [_or_none(_bind, SERVER_BIND)]
    raw = admin.get("bind", ADMIN_BIND)
    bind = raw and _or_none(_bind, raw)
    if raw and bind is None:
        raw, bind = ADMIN_BIND, _bind(ADMIN_BIND)
    if not bind or bind.port == 0 or bind not in binds:
        return []
    clashing = [text for text, b in zip(written, binds, strict=True) if b == bind]
    if any(_from_secret(text, secrets) for text in [raw, *clashing]):
        shown = f"this address ({_HIDDEN})"
    else:
        shown = one_line(str(bind))
    why = f"{shown} is also in server.bind; expected another port"
    return [(("admin", "bind"), why, ("admin", "bind"))]


def _retry_checks(
    retry: dict[str, Any],
    secrets: Collection[str],
    base: dict[str, Any] | None = None,
    at: Loc = ("retry",),
) -> list[tuple[Loc, str, Loc]]:
    """The first retry delay cannot be longer than the longest one. For a sink's own `retry`
    table (`at`), what it leaves out comes from `[retry]` (`base`)."""
    shown: list[str] = []
    seconds: list[float] = []
    for key, default in (("initial", RETRY_INITIAL), ("max_delay", RETRY_MAX_DELAY)):
        if base is not None and key not in retry:
            inherited = _retry_checks_value(base, key, default, secrets)
            seconds.append(inherited[0])
            shown.append(inherited[1] + " from [retry]")
            continue
        value, text = _retry_checks_value(retry, key, default, secrets)
        seconds.append(value)
        shown.append(text)
    if seconds[0] <= seconds[1]:
        return []
    where = format_key_path(at)
    why = (
        f"the first retry delay ({shown[0]}) is longer than {where}.max_delay ({shown[1]}); "
        "expected initial <= max_delay"
    )
    return [((*at, "initial"), why, (*at, "give_up_after", 0))]


def _retry_checks_value(
    table: dict[str, Any], key: str, default: float, secrets: Collection[str]
) -> tuple[float, str]:
    """A retry duration as the checks take it (a wrong one counts as the default), and how
    a message may show it."""
    given = _or_none(_positive_duration, table.get(key, default))
    hidden = given is not None and _from_secret(table.get(key), secrets)
    value = given or default
    return value, _HIDDEN if hidden else f"{value:g}s"


def _sink_retry_checks(
    sinks: dict[str, Any], retry: dict[str, Any], secrets: Collection[str]
) -> list[tuple[Loc, str, Loc]]:
    """`_retry_checks` for each sink's own `retry` table, over `[retry]`."""
    out: list[tuple[Loc, str, Loc]] = []
    for name, table in sinks.items():
        own = table.get("retry") if isinstance(table, dict) else None
        if isinstance(own, dict):
            out += _retry_checks(own, secrets, base=retry, at=("sinks", name, "retry"))
    return out


def _route_name_checks(routes: list[Any], secrets: Collection[str]) -> list[tuple[Loc, str, Loc]]:
    """Route names are unique, counting the automatic `route N` of a route without a name.

    A clash with an automatic name is reported at the name that is in the file.
    """
    out: list[tuple[Loc, str, Loc]] = []
    seen: dict[str, int] = {}
    automatic: set[int] = set()
    for i, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        name = route.get("name")
        if "name" not in route:
            name = f"route {i + 1}"
            automatic.add(i)
        elif not (isinstance(name, str) and name.strip()):
            continue  # not a name: reported at the key
        first = seen.setdefault(name, i)
        if first == i:
            continue
        shown = f"({_HIDDEN})" if _from_secret(name, secrets) else _short_repr(name)
        if automatic & {first, i}:
            named, unnamed = (first, i) if i in automatic else (i, first)
            why = (
                f"route name {shown} is also the automatic name of routes[{unnamed}], which has "
                "no name; expected another name"
            )
        else:
            named = i
            why = f"route name {shown} is already used by routes[{first}]; expected unique names"
        out.append((("routes", named, "name"), why, ("routes", named, "name")))
    return out


def _tls_problem(certfile: Path, keyfile: Path, hidden: Collection[str]) -> tuple[str, str] | None:
    """Load the pair exactly as the server will; if that fails, say which half is wrong.

    `hidden` names the keys (certfile, keyfile) whose paths came from secrets.
    """
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    cert_note = _path_note(certfile, "certfile" in hidden)
    key_note = _path_note(keyfile, "keyfile" in hidden)

    asked: list[bool] = []

    def no_passphrase() -> bytes:
        # Without a callback OpenSSL would prompt on the terminal and `check` would hang.
        asked.append(True)
        return b""

    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certfile, keyfile, password=no_passphrase)
        return None
    except (ssl.SSLError, OSError, ValueError) as e:
        error: Exception = e
    try:
        x509.load_pem_x509_certificates(certfile.read_bytes())
    except (ValueError, OSError):
        pem = "expected a PEM file ('-----BEGIN CERTIFICATE-----')"
        return "certfile", f"not a PEM certificate; {pem} {cert_note}"
    expected = "expected an unencrypted PEM private key ('-----BEGIN PRIVATE KEY-----')"
    encrypted = bool(asked)
    try:
        serialization.load_pem_private_key(keyfile.read_bytes(), password=None)
    except TypeError:
        encrypted = True
    except (ValueError, UnsupportedAlgorithm, OSError):
        if not encrypted:
            return "keyfile", f"not a PEM private key; {expected} {key_note}"
    if encrypted:
        return "keyfile", f"the private key is encrypted with a passphrase; {expected} {key_note}"
    reason = getattr(error, "reason", None) or str(error) or type(error).__name__
    if "MISMATCH" in str(reason).upper() or "MISMATCH" in str(error).upper():
        return "keyfile", (
            f"this private key does not belong to the certificate in server.certfile {key_note}"
        )
    files = f"(files {one_line(str(certfile))}, {one_line(str(keyfile))})"
    if hidden:
        files = "(files hidden: a secret went into their paths)"
    return "certfile", f"the certificate and key do not load together for TLS: {reason} {files}"
