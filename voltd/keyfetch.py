"""`[verify] public_key_url`: Volt's published key, fetched, cached, and changed only with consent.

At start-up and on every reload (`voltd.daemon.configure`) the key is fetched from the URL
(https only, `FETCH_TIMEOUT` at most), parsed like a `public_keys` file, and compared with the
copy cached in the state directory (`cache_dir`: the spool's directory, `/var/lib/voltd` under
systemd):

- `volt-key-cache.pub`: the trusted key, an OpenSSH line (`ssh-keygen -lf` reads it);
- `volt-key-cache.json`: when it was last fetched, and a *pending* key: one the URL served
  that differs from the trusted key and has not been confirmed yet.

What verifies signatures, besides `public_keys`: the trusted key, and the pending key beside it
(never instead of it). The rules, each logged:

- first fetch, nothing cached: the key is trusted on first use, unless `public_key_fingerprints`
  is set and does not list it (then it is pending: beside `public_keys`, or an error if there
  is nothing to be beside);
- the URL serves the trusted key: nothing changes (a pending key that is no longer served is
  dropped);
- the URL serves another key: it becomes the pending key, logged at error level with both
  fingerprints on every start and reload until it is confirmed;
- confirmation: the operator lists the pending key's fingerprint in `public_key_fingerprints`
  (or its file in `public_keys`) and reloads; it replaces the trusted key, which stops
  verifying. Nothing the URL serves can ever remove the trusted key by itself;
- the fetch fails (network, timeout, not 200, not a key): the cached keys are used, with a
  warning; with nothing cached and no `public_keys` that is a ConfigError (so start-up fails
  and a reload is refused, keeping the running keys).

The fetch is synchronous (httpx.Client): `configure` is synchronous, runs before the daemon
starts, and on reload in a worker thread (`trio.to_thread`). `voltd check` fetches too but
writes nothing (`write_cache=False`). Logs name the URL as `scheme://host` only (`safe_url`):
its path could hold a token.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import hashlib
import http
import json
import logging
import os
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from voltd.config import Config, ConfigError
from voltd.http import _quiet_httpx_logs, _secrets, _transport_text, _version, safe_url
from voltd.verify import KeyLoadError, load_public_key, load_public_key_file

__all__ = [
    "CACHE_KEY_FILE",
    "CACHE_META_FILE",
    "FETCH_TIMEOUT",
    "FetchError",
    "KeyCache",
    "add_url_keys",
    "cache_dir",
    "fetch_key",
    "fingerprint",
    "read_cache",
]

log = logging.getLogger("voltd.keyfetch")

#: The longest a fetch may take: connecting, TLS, redirects and the body together.
FETCH_TIMEOUT: Final = 10.0
CACHE_KEY_FILE: Final = "volt-key-cache.pub"
CACHE_META_FILE: Final = "volt-key-cache.json"
_MAX_BODY: Final = 64 * 1024  # an id_rsa.pub is under 1 KiB
_MAX_REDIRECTS: Final = 3
_AT: Final = "verify.public_key_url"


class FetchError(Exception):
    """The key could not be fetched; the message says why, never naming the URL's path."""


def fingerprint(key: RSAPublicKey) -> str:
    """`SHA256:…` as `ssh-keygen -lf` prints it: unpadded base64 of the SSH key blob's hash."""
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _openssh(key: RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")


# --------------------------------------------------------------------------------------------
# Fetching


def fetch_key(
    url: str, *, ca_file: Path | None = None, timeout: float = FETCH_TIMEOUT
) -> RSAPublicKey:
    """GET `url` (https, and https redirects only) and parse the body as an RSA public key.

    Raises FetchError for anything that does not end in a usable key within `timeout`.
    """
    _quiet_httpx_logs()  # httpx logs each request's full URL at INFO
    try:
        trust = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    except (ssl.SSLError, OSError, ValueError):
        raise FetchError("public_key_ca_file holds no usable PEM CA certificate") from None
    deadline = time.monotonic() + timeout
    limit = f"{timeout:g}s"
    try:
        target = httpx.URL(url)
        with httpx.Client(
            verify=trust,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            headers={"User-Agent": f"voltd/{_version()}"},
        ) as client:
            body = _get(client, target, deadline, limit)
    except httpx.TimeoutException:
        raise FetchError(f"no complete answer within {limit} (timeout)") from None
    except httpx.InvalidURL:
        raise FetchError("not a usable https:// URL") from None
    except httpx.HTTPError as e:
        trusted_by = f"public_key_ca_file {ca_file}" if ca_file else "the default CA certificates"
        reason = _transport_text(e, secrets=_url_secrets(url, e), trust=trusted_by)
        raise FetchError(reason) from None
    try:
        return load_public_key(body)
    except KeyLoadError as e:
        raise FetchError(f"the answer is not a usable key: {e}") from None


def _get(client: httpx.Client, target: httpx.URL, deadline: float, limit: str) -> bytes:
    for _ in range(_MAX_REDIRECTS + 1):
        with client.stream("GET", target) as response:
            if response.is_redirect:
                try:
                    target = target.join(response.headers.get("location", ""))
                except (httpx.InvalidURL, ValueError):
                    raise FetchError("redirected to an invalid URL") from None
                if target.scheme != "https":
                    raise FetchError("redirected to a URL that is not https:// (refused)")
                continue
            if response.status_code != 200:
                raise FetchError(f"answered {_status(response.status_code)}, expected 200")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > _MAX_BODY:
                    raise FetchError(f"the answer is too large for a key (over {_MAX_BODY} B)")
                if time.monotonic() > deadline:
                    raise FetchError(f"no complete answer within {limit} (timeout)")
                chunks.append(chunk)
            return b"".join(chunks)
    raise FetchError(f"more than {_MAX_REDIRECTS} redirects")


def _status(code: int) -> str:
    try:
        return f"{code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def _url_secrets(url: str, exc: httpx.HTTPError) -> list[str]:
    """What of `url`, and of the URL that failed (a redirect's), must never show in a message."""
    urls = [httpx.URL(url)]
    try:
        urls.append(exc.request.url)
    except RuntimeError:  # no request attached
        pass
    return sorted({s for u in urls for s in _secrets(u, None)}, key=len, reverse=True)


# --------------------------------------------------------------------------------------------
# The cache


@dataclass(frozen=True)
class KeyCache:
    """What the state directory holds: the trusted key, and a changed key not yet confirmed."""

    trusted: RSAPublicKey | None = None
    pending: RSAPublicKey | None = None
    fetched_at: str | None = None  #: the last successful fetch, ISO 8601 UTC
    pending_since: str | None = None

    def same(self, other: KeyCache) -> bool:
        return _fp(self.trusted) == _fp(other.trusted) and _fp(self.pending) == _fp(other.pending)


def _fp(key: RSAPublicKey | None) -> str | None:
    return fingerprint(key) if key is not None else None


def cache_dir(config: Config) -> Path:
    """The state directory: `[spool] state_dir` when given, else the SQLite spool's
    directory (`/var/lib/voltd` under systemd); with a PostgreSQL spool, systemd's
    `$STATE_DIRECTORY` (StateDirectory=), else the config file's directory."""
    spool = config.spool
    if spool.state_dir is not None:
        return spool.state_dir
    if spool.url is None:
        return spool.path.parent
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(given) if given else config.config_dir


def read_cache(directory: Path) -> KeyCache:
    """The cache in `directory`; a missing one is empty, a damaged part is ignored (logged)."""
    trusted = None
    key_path = directory / CACHE_KEY_FILE
    if key_path.exists():
        try:
            trusted = load_public_key_file(key_path)
        except KeyLoadError as e:
            log.warning("%s: the cached key %s is unusable, ignoring it: %s", _AT, key_path, e)
    meta: dict[str, Any] = {}
    meta_path = directory / CACHE_META_FILE
    try:
        loaded = json.loads(meta_path.read_bytes())
        meta = loaded if isinstance(loaded, dict) else {}
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        log.warning("%s: ignoring the unreadable %s: %s", _AT, meta_path, e)
    pending = None
    entry = meta.get("pending")
    if isinstance(entry, dict) and isinstance(entry.get("key"), str):
        try:
            pending = load_public_key(entry["key"].encode())
        except KeyLoadError as e:
            log.warning("%s: ignoring the pending key in %s: %s", _AT, meta_path, e)
    if pending is not None and _fp(pending) == _fp(trusted):
        pending = None
    since = entry.get("since") if isinstance(entry, dict) else None
    fetched_at = meta.get("fetched_at")
    return KeyCache(
        trusted,
        pending,
        fetched_at if isinstance(fetched_at, str) else None,
        since if isinstance(since, str) and pending is not None else None,
    )


def _write_cache(directory: Path, cache: KeyCache, origin: str) -> None:
    """Both files, each written to a temporary file and renamed over the old (mode 0644: the
    key is public). The key first: it is what a later start trusts."""
    directory.mkdir(parents=True, exist_ok=True)
    if cache.trusted is not None:
        line = f"{_openssh(cache.trusted)} volt-key-from-{origin.split('://', 1)[-1]}\n"
        _write_atomic(directory / CACHE_KEY_FILE, line.encode())
    meta: dict[str, Any] = {
        "source": origin,
        "fetched_at": cache.fetched_at,
        "fingerprint": _fp(cache.trusted),
        "pending": None,
    }
    if cache.pending is not None:
        meta["pending"] = {
            "key": _openssh(cache.pending),
            "fingerprint": fingerprint(cache.pending),
            "since": cache.pending_since,
        }
    _write_atomic(directory / CACHE_META_FILE, (json.dumps(meta, indent=2) + "\n").encode())


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------------------------
# The composition root's entry point


def add_url_keys(
    config: Config, *, write_cache: bool = False, timeout: float = FETCH_TIMEOUT
) -> Config:
    """`config` with the keys from `[verify] public_key_url` beside `public_keys` (unchanged
    when no URL is set). Fetches, applies the rules in this module's docstring, and with
    `write_cache` stores the outcome in the state directory (`voltd check` does not).

    Raises ConfigError when no key at all would verify signatures.
    """
    v = config.verify
    if v.public_key_url is None:
        return config
    origin = safe_url(v.public_key_url)
    where = f"{config.source_name}: {_AT}"
    directory = cache_dir(config)
    configured = {fingerprint(k.key) for k in v.key_files}
    confirmed = configured | set(v.public_key_fingerprints)
    before = read_cache(directory)
    cache = before
    why = ""
    try:
        fetched: RSAPublicKey | None = fetch_key(
            v.public_key_url, ca_file=v.public_key_ca_file, timeout=timeout
        )
    except FetchError as e:
        fetched, why = None, str(e)
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")

    if fetched is None:
        if cache.trusted is None and cache.pending is None:
            if not configured:
                raise ConfigError(
                    [
                        f"{where}: could not fetch the key from {origin}: {why}; and no copy "
                        f"is cached in {directory} ({CACHE_KEY_FILE}); expected the URL to "
                        "answer, or a key file in public_keys"
                    ]
                )
            log.warning(
                "%s: could not fetch the key from %s: %s; none is cached in %s, so only "
                "public_keys verify signatures",
                _AT,
                origin,
                why,
                directory,
            )
        else:
            shown = _fp(cache.trusted) or f"{_fp(cache.pending)} (pending)"
            log.warning(
                "%s: could not fetch the key from %s: %s; using the cached key %s "
                "(last fetched %s)",
                _AT,
                origin,
                why,
                shown,
                cache.fetched_at or "at an unknown time",
            )
    else:
        cache = _merge(cache, fetched, confirmed, bool(v.public_key_fingerprints), origin, now)

    cache = _confirm(cache, confirmed)
    if cache.pending is not None:
        new = fingerprint(cache.pending)
        if cache.trusted is None and not configured:
            raise ConfigError(
                [
                    f"{where}: the key from {origin} ({new}) is not in "
                    "public_key_fingerprints and no other key is trusted (none cached in "
                    f"{directory}, no public_keys); expected its fingerprint in "
                    "public_key_fingerprints if Volt really uses this key"
                ]
            )
        old = _fp(cache.trusted) or ", ".join(sorted(configured)) + " (public_keys)"
        log.error(
            "%s: THE KEY PUBLISHED AT %s CHANGED: trusted %s, now served %s (since %s). Both "
            "verify signatures until you confirm the new one: if Volt announced this rotation, "
            'add public_key_fingerprints = ["%s"] to [verify] and reload; if not, someone may '
            "be impersonating %s: investigate before confirming",
            _AT,
            origin,
            old,
            new,
            cache.pending_since or "unknown",
            new,
            origin,
        )
    elif (
        v.public_key_fingerprints
        and cache.trusted is not None
        and fingerprint(cache.trusted) not in confirmed
    ):
        log.warning(
            "%s: public_key_fingerprints does not list the key in use from %s (%s); it stays "
            "trusted until %s serves a key that is listed",
            _AT,
            origin,
            fingerprint(cache.trusted),
            origin,
        )

    if write_cache and (fetched is not None or not cache.same(before)):
        try:
            _write_cache(directory, cache, origin)
        except OSError as e:
            log.warning(
                "%s: could not write the key cache in %s (%s); the key is used but a start "
                "while %s is unreachable will not find it",
                _AT,
                directory,
                e.strerror or type(e).__name__,
                origin,
            )
    keys = [k for k in (cache.trusted, cache.pending) if k is not None]
    extra = [k for k in keys if fingerprint(k) not in configured]
    return dataclasses.replace(config, verify=v.with_url_keys(extra))


def _merge(
    cache: KeyCache,
    fetched: RSAPublicKey,
    confirmed: set[str],
    pinned: bool,
    origin: str,
    now: str,
) -> KeyCache:
    """The cache after a successful fetch (before confirmation)."""
    fp = fingerprint(fetched)
    cache = dataclasses.replace(cache, fetched_at=now)
    if cache.trusted is None:
        if fp in confirmed or not pinned:
            how = "it is confirmed" if fp in confirmed else "trusted on first use"
            log.warning(
                "%s: first key fetched from %s: %s, %s%s",
                _AT,
                origin,
                fp,
                how,
                "" if pinned else f'; to pin it: public_key_fingerprints = ["{fp}"]',
            )
            return dataclasses.replace(cache, trusted=fetched, pending=None, pending_since=None)
        return _pending(cache, fetched, now)
    if fp == fingerprint(cache.trusted):
        if cache.pending is not None:
            log.warning(
                "%s: %s serves the trusted key %s again; the unconfirmed %s no longer verifies",
                _AT,
                origin,
                fp,
                fingerprint(cache.pending),
            )
        else:
            log.info("%s: the key from %s is unchanged (%s)", _AT, origin, fp)
        return dataclasses.replace(cache, pending=None, pending_since=None)
    return _pending(cache, fetched, now)


def _pending(cache: KeyCache, fetched: RSAPublicKey, now: str) -> KeyCache:
    if _fp(cache.pending) == fingerprint(fetched):
        return cache  # the same change as before: keep when it was first seen
    if cache.pending is not None:
        log.warning(
            "%s: the unconfirmed key %s is no longer served and no longer verifies",
            _AT,
            fingerprint(cache.pending),
        )
    return dataclasses.replace(cache, pending=fetched, pending_since=now)


def _confirm(cache: KeyCache, confirmed: set[str]) -> KeyCache:
    """A pending key the operator confirmed replaces the trusted one."""
    if cache.pending is None or fingerprint(cache.pending) not in confirmed:
        return cache
    log.warning(
        "%s: the new key %s is confirmed; it replaces %s, which no longer verifies",
        _AT,
        fingerprint(cache.pending),
        _fp(cache.trusted) or "nothing",
    )
    return dataclasses.replace(cache, trusted=cache.pending, pending=None, pending_since=None)
