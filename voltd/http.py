"""HTTP delivery for sinks: one httpx client per sink, every answer turned into an outcome.

Part of the plugin API. A sink that POSTs somewhere inherits `HttpOptions` for the transport
settings (DESIGN §6: `timeout`, `ca_file`, `client_cert`, `client_key`, `verify_tls`,
`follow_redirects`), builds one `HttpClient` in `__init__`, and closes it in `aclose`::

    class Options(HttpOptions):
        url: str = pydantic.Field(description="where to POST")

    def __init__(self, options, context):
        super().__init__(options, context)
        self.http = HttpClient(options, context)   # ValueError: a config problem

    async def send(self, event):
        await self.http.request("POST", self.options.url, content=event.raw)

    async def aclose(self):
        await self.http.aclose()

`request` returns the response for a 2xx and raises what voltd's delivery understands
otherwise (`classify`): 408, 425, 429, 5xx, network errors, timeouts and TLS failures are a
`RetryableError` (with the server's `Retry-After`, for any status that sends one); 410 is
`EndpointGone` (the sink is disabled until a reload), and so is a URL that is not http(s) at
all; a redirect is retryable, as the endpoint probably moved and is fixed in the config
(`follow_redirects = true` follows it); any other 4xx is a `PermanentError`, and so is a
request httpx cannot send (a header value with a line break). Response bodies are kept up to
`MAX_RESPONSE_BYTES`; the whole request, connecting included, takes at most `timeout`.

Why the messages look as they do: URLs and headers hold secrets (a Slack webhook URL has its
token in the path; headers carry API keys), and every error message is logged and kept with
the delivery. So an endpoint is only ever named as `scheme://host[:port]` (`safe_url`), no
header value is ever shown, and a response body (where Slack says `invalid_token`) appears only
as one short line, with anything the request sent in its path, query or headers redacted:
``POST https://hooks.example.com: 503 Service Unavailable (retry after 2s): busy``.
httpx logs each request's full URL at INFO level; building an `HttpClient` raises the level of
the `httpx` and `httpcore` loggers to WARNING unless they were set explicitly.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import html
import http
import logging
import math
import re
import socket
import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import httpx
import pydantic
import trio

from voltd.sink import (
    EndpointGone,
    PermanentError,
    RetryableError,
    SinkContext,
    SinkError,
    SinkOptions,
)
from voltd.sink import _seconds as _duration

__all__ = [
    "MAX_RESPONSE_BYTES",
    "HttpClient",
    "HttpOptions",
    "classify",
    "parse_retry_after",
    "safe_url",
]

#: The most of a response body `request` keeps; the rest is dropped unread.
MAX_RESPONSE_BYTES: Final = 1024 * 1024

_SNIPPET: Final = 200  # characters of a response body an error message may show
_SHORTEST_SECRET: Final = 8  # characters; shorter path pieces and values are not redacted
_REDACT_SCAN: Final = 65536  # characters of a body searched for secrets before the cut
_REDACTED: Final = "[redacted]"
#: Headers whose values are never secrets and are too common to redact from a body.
_PLAIN_HEADERS: Final = frozenset(
    {
        "host",
        "accept",
        "accept-encoding",
        "connection",
        "content-length",
        "content-type",
        "user-agent",
    }
)
_RETRYABLE_4XX: Final = frozenset({408, 425, 429})
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")
_IPV6: Final = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")


def _quiet_httpx_logs() -> None:
    """httpx logs every request's full URL at INFO, secrets in the path included: raise its
    loggers to WARNING unless the operator set them (done when a client is built, not on
    import)."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


# --------------------------------------------------------------------------------------------
# Options


def _positive_duration(value: Any) -> float:
    seconds = _duration(value)
    if seconds <= 0:
        raise ValueError("expected a duration greater than zero, like 15s")
    return seconds


class HttpOptions(SinkOptions):
    """The transport settings of an HTTP sink; inherit them in the sink's `Options`.

    Paths are relative to the config file; they are read when the sink is built
    (`HttpClient`), which reports an unreadable file as a config problem.
    """

    timeout: float = pydantic.Field(
        "15s",
        validate_default=True,
        description='the longest one request may take, connecting included (e.g. "15s")',
    )
    ca_file: str | None = pydantic.Field(
        None,
        description="PEM file of the CA certificates to trust instead of the default ones "
        "(a private CA); relative to the config file",
    )
    client_cert: str | None = pydantic.Field(
        None,
        description="PEM client certificate for mutual TLS (may hold the key too); "
        "relative to the config file",
    )
    client_key: str | None = pydantic.Field(
        None,
        description="PEM private key of client_cert, unless client_cert holds it; not "
        "encrypted; relative to the config file",
    )
    verify_tls: bool = pydantic.Field(
        True,
        description="check the server's TLS certificate; false accepts any certificate "
        "(testing only: anyone on the path can read and change the requests)",
    )
    follow_redirects: bool = pydantic.Field(
        False,
        description="follow 3xx redirects; by default a redirect is a retryable error, as "
        "the endpoint moved and the URL in the config should change",
    )

    @pydantic.field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float:
        return _positive_duration(value)

    @pydantic.field_validator("ca_file", "client_cert", "client_key")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "\x00" in value):
            raise ValueError("expected a file path")
        return value

    @pydantic.model_validator(mode="after")
    def _key_needs_cert(self) -> HttpOptions:
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key is set but client_cert is not: set both for mutual TLS")
        return self


# --------------------------------------------------------------------------------------------
# Describing endpoints and answers without secrets


def safe_url(url: str | httpx.URL) -> str:
    """`scheme://host[:port]` of `url`: never its path, query or userinfo (secrets live there)."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "(invalid URL)"
    scheme, host = parsed.scheme, parsed.host
    if not scheme or not host:
        return "(not an absolute URL)"
    raw_host = parsed.raw_host.decode("ascii", "replace")
    if _IPV6.fullmatch(raw_host):
        host = f"[{host}]"
    elif not _HOSTNAME.fullmatch(raw_host):
        # A malformed URL can leave part of its path in the "host" (`https://h\token`).
        return "(invalid URL)"
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{scheme}://{host}{port}"


def _pieces(value: str) -> Iterator[str]:
    """A secret as sent, and its parts (`Bearer abc` -> `abc`), each long enough to matter."""
    yield value
    yield from re.split(r"[\s/&=;,:]+", value)


def _secrets(url: httpx.URL | None, headers: httpx.Headers | None) -> list[str]:
    """What a request may hold of secrets, to redact from any text the server sent back."""
    found: set[str] = set()
    if url is not None:
        raw_path = url.raw_path.decode("ascii", "replace")
        found.update(_pieces(raw_path))
        found.update(_pieces(url.path))
        for key, value in url.params.multi_items():
            found.update(_pieces(key))
            found.update(_pieces(value))
        found.update(_pieces(url.userinfo.decode("ascii", "replace")))
        found.update(_pieces(url.username))
        found.update(_pieces(url.password or ""))
    if headers is not None:
        for key, value in headers.multi_items():
            if key.lower() not in _PLAIN_HEADERS:
                found.update(_pieces(value))
    # Short pieces are words, not secrets: redacting "hook" from "hook deleted" only confuses.
    return sorted((s for s in found if len(s) >= _SHORTEST_SECRET), key=len, reverse=True)


def _redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret (in any case: servers lower-case things) replaced."""
    if not secrets:
        return text
    pattern = re.compile("|".join(map(re.escape, secrets)), re.IGNORECASE)  # longest first
    return pattern.sub(_REDACTED, text)


def _one_line(text: str, limit: int = _SNIPPET) -> str:
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _clean(text: str, secrets: list[str]) -> str:
    """Server-provided text as one short line with the request's secrets taken out."""
    return _one_line(_redact(text[:_REDACT_SCAN], secrets))


def _request_of(response: httpx.Response) -> httpx.Request | None:
    try:
        return response.request
    except RuntimeError:  # a Response built by hand has none
        return None


def _where(request: httpx.Request | None) -> str:
    if request is None:
        return "HTTP"
    return f"{request.method} {safe_url(request.url)}"


def _status(response: httpx.Response) -> str:
    code = response.status_code
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = _one_line(response.reason_phrase, 60)
    return f"{code} {phrase}".rstrip()


def _body_snippet(response: httpx.Response, secrets: list[str]) -> str:
    try:
        text = response.text
    except (httpx.ResponseNotRead, httpx.DecodingError, LookupError, ValueError):
        return ""
    if "html" in response.headers.get("content-type", "").lower():
        text = html.unescape(re.sub(r"<[^>]*>", " ", text[:_REDACT_SCAN]))
    return _clean(text, secrets)


def _seconds(value: float) -> str:
    if value >= 1:
        return f"{math.ceil(value)}s"
    return f"{value:.3g}s"


def parse_retry_after(value: str | None, now: _dt.datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110),
    never negative; None when absent or not understood. `now` is for tests."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)  # "-0000": UTC, origin unknown (RFC 5322)
    now = now if now is not None else _dt.datetime.now(_dt.UTC)
    return max(0.0, (when - now).total_seconds())


def classify(response: httpx.Response, *, follow_redirects: bool = False) -> SinkError | None:
    """What an answer means for delivery: None for 2xx, else the error to raise (not raised).

    For a sink that reads some answers itself (Slack's `no_service` is a 404) before
    leaving the rest to this: `request(..., check=False)`, then `classify`.
    """
    code = response.status_code
    if 200 <= code < 300:
        return None
    request = _request_of(response)
    secrets = _secrets(request.url, request.headers) if request is not None else []
    status = f"{_where(request)}: {_status(response)}"
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    head = status if retry_after is None else f"{status} (retry after {_seconds(retry_after)})"
    body = _body_snippet(response, secrets)
    tail = f": {body}" if body else ""
    if 300 <= code < 400:
        location = response.headers.get("location")
        target = ""
        if location and request is not None:
            try:
                target = f" to {safe_url(request.url.join(location))}"
            except (httpx.InvalidURL, TypeError, ValueError):
                target = " to an invalid URL"
        if follow_redirects:
            return RetryableError(
                f"{head}: a redirect{target} that could not be followed{tail}",
                retry_after=retry_after,
            )
        return RetryableError(
            f"{head}: redirected{target}, not followed (the endpoint may have moved: fix the "
            f"URL, or set follow_redirects = true to follow redirects){tail}",
            retry_after=retry_after,
        )
    if code == 410:
        return EndpointGone(f"{status}: the endpoint is gone{tail}")
    if code in _RETRYABLE_4XX or 500 <= code < 600:
        return RetryableError(f"{head}{tail}", retry_after=retry_after)
    if 400 <= code < 500:
        return PermanentError(f"{status}{tail}")
    return RetryableError(f"{head}: unexpected status{tail}", retry_after=retry_after)


# --------------------------------------------------------------------------------------------
# Transport errors in words


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what caused it, exception groups included, breadth first."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue:
        e = queue.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseExceptionGroup):
            queue.extend(e.exceptions)
        for nxt in (e.__cause__, e.__context__):
            if nxt is not None:
                queue.append(nxt)


def _transport_text(
    exc: httpx.HTTPError, *, secrets: list[str], trust: str, client_cert: bool | None = None
) -> str:
    """Why a request failed on the network, from the innermost cause that says so.

    Never quotes the URL; text from the server or the TLS library is one short line with
    `secrets` (`_secrets` of what was sent) taken out. `trust` names what decides which server
    certificates are trusted (`ca_file …`, `the default CA certificates`). `client_cert`:
    whether a client certificate was sent; None when the caller has no way to send one (so
    the message does not tell the operator to set one).
    """
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or cause.reason or "not trusted"
            return f"TLS certificate verify failed: {_clean(reason, secrets)} ({trust})"
        if isinstance(cause, ssl.SSLError):
            reason = _clean(str(cause.reason or cause.strerror or "").strip(), secrets)
            if "CERTIFICATE_REQUIRED" in reason.upper() and not client_cert:
                hint = " (set client_cert and client_key)" if client_cert is False else ""
                return f"TLS: the server requires a client certificate{hint}"
            if "CERTIFICATE" in reason.upper() and client_cert:
                return f"TLS: the server refused our client certificate ({reason})"
            return f"TLS handshake failed: {reason or 'SSL error'}"
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "cannot resolve the host name"
        if isinstance(cause, ConnectionResetError):
            return "connection reset by the server"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the server broke the HTTP protocol: {_clean(str(exc), secrets)}"
    for cause in _causes(exc):
        if isinstance(cause, OSError) and cause.strerror:
            return f"network error: {_clean(cause.strerror, secrets)}"
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    if isinstance(exc, httpx.WriteError):
        return "the connection broke while sending the request"
    if isinstance(exc, httpx.ReadError):
        return "the connection broke before the answer was complete"
    return f"network error ({type(exc).__name__})"


# --------------------------------------------------------------------------------------------
# The client


def _read_file(path: Path, option: str) -> None:
    """Fail with a config-style message if `path` cannot be read."""
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise ValueError(
            f"{option}: cannot read {path}: {e.strerror or type(e).__name__}"
        ) from None


def _no_password() -> bytes:
    # Without a callback OpenSSL would ask on the terminal, and a daemon would hang.
    raise ValueError("encrypted")


class HttpClient:
    """One long-lived `httpx.AsyncClient` for a sink, with its TLS and timeouts.

    Raises ValueError, which voltd reports as a config problem, when a certificate file cannot
    be read or is not what it should be.
    """

    def __init__(self, options: HttpOptions, context: SinkContext) -> None:
        _quiet_httpx_logs()
        self.options = options
        self.timeout = float(options.timeout)
        self._trust = "the default CA certificates"
        ssl_context = self._ssl_context(options, context)
        self._client = httpx.AsyncClient(
            verify=ssl_context,
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=options.follow_redirects,
            headers={"User-Agent": f"voltd/{_version()}"},
        )

    def _ssl_context(self, options: HttpOptions, context: SinkContext) -> ssl.SSLContext:
        if options.ca_file is not None:
            ca_path = context.path(options.ca_file)
            _read_file(ca_path, "ca_file")
            try:
                ctx = ssl.create_default_context(cafile=str(ca_path))
            except (ssl.SSLError, ValueError):
                raise ValueError(f"ca_file: no PEM CA certificate in {ca_path}") from None
            self._trust = f"ca_file {ca_path}"
        else:
            ctx = httpx.create_ssl_context()
        if not options.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self._trust = "verify_tls = false"
        if options.client_cert is not None:
            cert = context.path(options.client_cert)
            key = context.path(options.client_key) if options.client_key is not None else None
            _read_file(cert, "client_cert")
            if key is not None:
                _read_file(key, "client_key")
            try:
                ctx.load_cert_chain(cert, key, password=_no_password)
            except (ssl.SSLError, ValueError):
                files = f"{cert}" + (f", {key}" if key is not None else "")
                raise ValueError(
                    "client_cert/client_key: expected a PEM certificate and its matching, "
                    f"unencrypted private key ({files})"
                ) from None
        return ctx

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (the sink's `aclose`)."""
        await self._client.aclose()

    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        content: bytes | str | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> httpx.Response:
        """Send one request; return the response (body read, at most `MAX_RESPONSE_BYTES`).

        Raises `RetryableError`, `PermanentError` or `EndpointGone` as `classify` says (not
        for the status with `check=False`), and `RetryableError` for network errors, timeouts
        and TLS failures; the whole request may take at most `timeout`.
        """
        where = f"{method} {safe_url(url)}"
        try:
            with trio.fail_after(self.timeout):
                async with self._client.stream(
                    method, url, content=content, json=json, headers=headers
                ) as streamed:
                    body = await _read_capped(streamed)
        except trio.TooSlowError:
            raise RetryableError(
                f"{where}: no complete answer within {_seconds(self.timeout)} (timeout)"
            ) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol):
            # The configured URL is unusable: no event can go until the config changes.
            raise EndpointGone(f"{where}: not a usable http:// or https:// URL") from None
        except (httpx.LocalProtocolError, UnicodeEncodeError):
            # Our own request is wrong (h11 would quote the offending header, and header
            # values are secrets): sending it again cannot help.
            raise PermanentError(
                f"{where}: the request is not valid HTTP (a header name or value has a "
                "character HTTP does not allow)"
            ) from None
        except httpx.TooManyRedirects:
            raise RetryableError(f"{where}: too many redirects") from None
        except httpx.TimeoutException as e:
            raise RetryableError(f"{where}: {self._timeout_text(e)}") from None
        except httpx.TransportError as e:
            raise RetryableError(f"{where}: {self._transport_text(e, url, headers)}") from None
        except httpx.DecodingError:
            raise RetryableError(f"{where}: the response body could not be decoded") from None
        response = httpx.Response(
            streamed.status_code,
            headers=[
                (k, v)
                for k, v in streamed.headers.multi_items()
                if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
            ],
            content=body,
            request=streamed.request,
            extensions=streamed.extensions,
            history=streamed.history,
        )
        response.read()
        if check:
            error = classify(response, follow_redirects=self.options.follow_redirects)
            if error is not None:
                raise error
        return response

    def _timeout_text(self, exc: httpx.TimeoutException) -> str:
        limit = _seconds(self.timeout)
        if isinstance(exc, httpx.ConnectTimeout):
            return f"could not connect within {limit} (timeout)"
        if isinstance(exc, httpx.WriteTimeout):
            return f"could not send the request within {limit} (timeout)"
        if isinstance(exc, httpx.PoolTimeout):
            return f"no free connection within {limit} (too many requests at once)"
        return f"no answer within {limit} (timeout)"

    def _transport_text(
        self, exc: httpx.TransportError, url: str | httpx.URL, headers: Mapping[str, str] | None
    ) -> str:
        """Why a request failed on the network, with the request's secrets taken out."""
        try:
            secrets = _secrets(httpx.URL(url), httpx.Headers(headers or {}))
        except (httpx.InvalidURL, TypeError, ValueError):
            secrets = []
        return _transport_text(
            exc,
            secrets=secrets,
            trust=self._trust,
            client_cert=self.options.client_cert is not None,
        )


async def _read_capped(response: httpx.Response) -> bytes:
    """The body, decoded (gzip…), up to MAX_RESPONSE_BYTES: a huge answer is not kept."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        room = MAX_RESPONSE_BYTES - size
        chunks.append(chunk[:room])
        size += min(len(chunk), room)
        if size >= MAX_RESPONSE_BYTES:
            break
    return b"".join(chunks)


def _version() -> str:
    from voltd import __version__

    return __version__
