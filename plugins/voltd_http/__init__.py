"""voltd's `http` sink: relays each Volt event to an HTTP endpoint, signed as Standard Webhooks.

It is registered through the same `voltd` entry-point group as any third-party plugin and
imports only voltd's public plugin API, so it is also an example to copy:

    [sinks.crm]
    type = "http"
    url = "https://crm.example.com/hooks/volt"
    method = "POST"                                  # or "PUT"
    headers = { Authorization = "Bearer ${env:CRM_TOKEN}" }
    signing_secret = "${env:CRM_WEBHOOK_SECRET}"     # whsec_..., or a list of two to rotate
    forward_volt_signature = true                    # pass on X-Respond-Flow-Signature
    concurrency = 4                                  # voltd's delivery setting: fine here
    # ca_file = "tls/crm-ca.pem"; client_cert = "tls/voltd.pem"; client_key = "tls/voltd.key"

    [sinks.chat]                                     # a body of your own, from a template
    type = "http"
    url = "https://chat.example.com/api/post"
    body = "template"
    template = '{"from": {{ their_number | tojson }}, "text": {{ (text or "") | tojson }}}'

What is sent
------------

- `body = "envelope"` (the default): the request body Volt sent, byte for byte (`event.raw`:
  unknown fields, spacing and key order untouched), as `Content-Type: application/json`.
  Volt's own signature covers exactly these bytes, so with `forward_volt_signature = true`
  the receiver can check Volt itself against Volt's public key. The header is always named
  `X-Respond-Flow-Signature`, whatever `[verify] header` it came in. An event stored before
  voltd kept Volt's signature is relayed without it.
- `body = "template"`: the `template` option rendered per event (`voltd.templates`, with the
  variables `event`, `payload`, `text`, `our_number`, ...; times in UTC), sent as UTF-8,
  `Content-Type: application/json` unless `headers` sets one. Its escaping is **text**
  (none): the sink cannot know what the body is (JSON, a form, XML, plain text), and HTML
  or mrkdwn escaping would corrupt all of them (`"` becoming `&#34;` breaks JSON). So the
  template says how each value is quoted: `{{ text | tojson }}` for a JSON string. A body
  over `MAX_TEMPLATE_BODY` characters is refused (a dead letter), never cut, since a cut
  body is a corrupt one; so is an event the template cannot render.
- `headers`: sent with every request; values may (should, for credentials) come from
  `${env:NAME}` or `${file:PATH}`. No header value ever appears in a log line or an error
  message (voltd's HTTP helper names an endpoint by `scheme://host[:port]` only, and redacts
  what the request carried from any response text it quotes). The headers this sink sets
  itself (`webhook-*`, `X-Respond-Flow-Signature`) and `Content-Length` /
  `Transfer-Encoding` may not be set there.

Signing (https://www.standardwebhooks.com)
------------------------------------------

With `signing_secret` each request carries:

- `webhook-id`: `msg_` and 32 hex digits of a SHA-256 over the sink name, the envelope id and
  the event's content digest (`Event.digest`). It is the same on every retry and after a
  restart, and differs between two sinks relaying one event, so a receiver deduplicates on it.
- `webhook-timestamp`: now, in Unix seconds, per attempt.
- `webhook-signature`: `v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.".encode() + body)>`,
  the key being the base64-decoded part after `whsec_`, over exactly the bytes sent. With two
  secrets (a rotation) two signatures, separated by a space; the receiver accepts either.

A secret is `whsec_` and the base64 of 24 to 64 random bytes, as the specification asks;
make one with `echo "whsec_$(head -c 32 /dev/urandom | base64)"`.
A malformed one is a config error that never shows the value. A receiver in Python verifies
with the reference package (`pip install standardwebhooks`)::

    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    try:
        event = Webhook("whsec_...").verify(request_body_bytes, dict(request.headers))
    except WebhookVerificationError:
        ...  # answer 401 and drop it; also refuses timestamps more than 5 minutes off

and then deduplicates on `webhook-id` (delivery is at least once).

What the receiver's answers mean
--------------------------------

2xx is delivered. 408, 425, 429, 5xx, network errors, timeouts and TLS failures are retried
with backoff, and a `Retry-After` pauses the whole sink that long (capped by the sink's retry
`max_delay`). 410 Gone disables the sink. A redirect is retried (the endpoint moved: fix
`url`), unless `follow_redirects = true`. 400, 413, 422 and the other 4xx reject this one
event: a dead letter (`voltd spool dead`, `voltd spool replay`).

Decision: **401, 403, 404 and 405 disable the sink** (`EndpointGone`) instead of
dead-lettering the event, as `voltd.http` does by default. A relay sends every event to one
fixed URL with one fixed method and one fixed set of credentials, so these answers are about
the configuration, not about the event: credentials revoked or rotated (401, 403; also a
receiver refusing our signature after a secret change), the URL wrong or the receiver's route
gone (404), the method wrong (405). Treated per event, each would turn the whole stream into
dead letters until someone noticed and replayed them; disabled, the sink sends nothing more,
says why in the log, in `voltd spool status` and `/healthz`, and its events wait in the spool
(they never expire while it is disabled) until the operator fixes it and reloads (SIGHUP) or
runs `voltd spool retry --sink NAME`. The price: a receiver that uses 403 or 404 to refuse a
single event stops the sink instead; answer 400 or 422 for that.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
import urllib.parse
from typing import Annotated, Any, Final, Literal

import pydantic

import voltd
from voltd.http import HttpClient, HttpOptions, classify, safe_url
from voltd.templates import Template, TemplateError, TemplateSpec, template_data

voltd.require_api(1, 0)

#: The longest body a template may make, in characters; a longer one is refused, not cut.
MAX_TEMPLATE_BODY: Final = 1_000_000

#: Answers that say this sink's configuration is wrong (see the module docstring).
GONE_STATUSES: Final = frozenset({401, 403, 404, 405})

SECRET_PREFIX: Final = "whsec_"
#: Standard Webhooks: a secret of 24 to 64 random bytes.
SECRET_BYTES: Final = (24, 64)

VOLT_SIGNATURE_HEADER: Final = "X-Respond-Flow-Signature"
#: Headers this sink sets itself, or that would break the request's framing.
RESERVED_HEADERS: Final = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        VOLT_SIGNATURE_HEADER.lower(),
        "content-length",
        "transfer-encoding",
    }
)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110)
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")  # what httpx sends as a header value (ASCII)
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")

BodyTemplate = Annotated[Template, TemplateSpec(escape="text", max_length=MAX_TEMPLATE_BODY + 1)]


def secret_key(secret: str, which: str = "") -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; ValueError, never quoting it, if malformed."""
    expected = (
        f"{which}expected a Standard Webhooks secret: {SECRET_PREFIX} followed by the "
        f"base64 of {SECRET_BYTES[0]} to {SECRET_BYTES[1]} random bytes (the value is not shown)"
    )
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError(expected)
    encoded = secret[len(SECRET_PREFIX) :]
    if not _BASE64.fullmatch(encoded):
        raise ValueError(expected)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(expected) from None
    if not SECRET_BYTES[0] <= len(key) <= SECRET_BYTES[1]:
        raise ValueError(f"{expected}; this one decodes to {len(key)} bytes")
    return key


def webhook_id(sink: str, event: voltd.Event) -> str:
    """`msg_…`: stable per event and sink, across retries and restarts, never from time."""
    h = hashlib.sha256(b"voltd-http\x00")
    for part in (sink, event.id):
        h.update(part.encode("utf-8", "surrogatepass") + b"\x00")
    h.update(event.digest)
    return "msg_" + h.hexdigest()[:32]


def sign(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one `v1,<base64>` per key, space separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")
        for key in keys
    )


class HttpSink(voltd.Sink):
    """Relays each event to one URL: Volt's body unchanged or a template's, signed."""

    class Options(HttpOptions):  # timeout, ca_file, client_cert, client_key, verify_tls, ...
        url: Annotated[str, voltd.Secret()] = pydantic.Field(
            repr=False,
            description="where to send each event: an http:// or https:// URL; if it holds a "
            "token, write it as ${env:NAME}",
        )
        method: Literal["POST", "PUT"] = pydantic.Field(
            "POST", description='the HTTP method: "POST" or "PUT"'
        )
        headers: Annotated[dict[str, str], voltd.Secret()] = pydantic.Field(
            default_factory=dict,
            repr=False,
            description="extra request headers, a table of strings, e.g. "
            '{ Authorization = "Bearer ${env:TOKEN}" }; values are never logged',
        )
        body: Literal["envelope", "template"] = pydantic.Field(
            "envelope",
            description='"envelope": the bytes Volt sent, unchanged (application/json); '
            '"template": the `template` option rendered per event',
        )
        template: BodyTemplate | None = pydantic.Field(
            None,
            description='the request body when body = "template": a template with text '
            "escaping (none: quote values yourself, e.g. {{ text | tojson }} in JSON); sent as "
            "application/json unless headers set Content-Type",
        )
        signing_secret: Annotated[str | list[str] | None, voltd.Secret()] = pydantic.Field(
            None,
            repr=False,
            description="sign each request as Standard Webhooks (webhook-id, -timestamp, "
            "-signature headers) with this whsec_<base64> secret, or a list of two while "
            "rotating; a secret: use ${cred:NAME}, ${env:NAME} or ${file:PATH}",
        )
        forward_volt_signature: bool = pydantic.Field(
            False,
            description="also send Volt's own X-Respond-Flow-Signature header, so that the "
            'receiver can verify Volt itself (with body = "envelope", the signed bytes)',
        )

        @pydantic.field_validator("method", mode="before")
        @classmethod
        def _upper(cls, value: Any) -> Any:
            return value.upper() if isinstance(value, str) else value

        @pydantic.field_validator("url")
        @classmethod
        def _url(cls, value: str) -> str:
            expected = "expected an http:// or https:// URL with a host (the value is not shown)"
            if not value or any(c.isspace() or not c.isprintable() for c in value):
                raise ValueError(expected)
            try:
                parts = urllib.parse.urlsplit(value)
                host = parts.hostname
                _ = parts.port  # a port that is not a number raises ValueError
            except ValueError:
                raise ValueError(expected) from None
            if parts.scheme not in ("http", "https") or not host or safe_url(value).startswith("("):
                raise ValueError(expected)
            return value

        @pydantic.field_validator("headers")
        @classmethod
        def _headers(cls, value: dict[str, str]) -> dict[str, str]:
            seen: set[str] = set()
            for name, text in value.items():
                if not _TOKEN.fullmatch(name):
                    shown = repr(name) if name.isprintable() and len(name) <= 100 else "a name"
                    raise ValueError(f"header name {shown} is not a valid HTTP field name")
                lower = name.lower()
                if lower in RESERVED_HEADERS:
                    raise ValueError(
                        f"header {name!r} is set by the sink itself (webhook-* by "
                        f"signing_secret, {VOLT_SIGNATURE_HEADER} by forward_volt_signature) "
                        "or by HTTP; remove it"
                    )
                if lower in seen:
                    raise ValueError(f"header {name!r} is given twice (names ignore case)")
                seen.add(lower)
                if not _FIELD_VALUE.fullmatch(text):
                    raise ValueError(
                        f"header {name!r}: the value has a character a header cannot carry "
                        "(a line break, a control character or non-ASCII); the value is not "
                        "shown"
                    )
            return value

        @pydantic.field_validator("signing_secret")
        @classmethod
        def _secrets(cls, value: str | list[str] | None) -> str | list[str] | None:
            if isinstance(value, list):
                if not 1 <= len(value) <= 2:
                    raise ValueError(
                        f"expected one secret, or a list of two while rotating (got {len(value)})"
                    )
                for i, secret in enumerate(value):
                    secret_key(secret, f"secret {i + 1} of {len(value)}: ")
            elif value is not None:
                secret_key(value)
            return value

        @pydantic.model_validator(mode="after")
        def _body_and_template(self) -> HttpSink.Options:
            if self.body == "template" and self.template is None:
                raise ValueError(
                    'body = "template" needs a template option: the request body to render'
                )
            if self.body != "template" and self.template is not None:
                raise ValueError(
                    'template is set but body is "envelope" (the bytes Volt sent): set '
                    'body = "template" to send the template, or remove template'
                )
            return self

    options: Options
    #: Sends may overlap (the `concurrency` delivery setting): each request stands alone.
    allows_concurrency = True

    def __init__(self, options: Options, context: voltd.SinkContext) -> None:
        super().__init__(options, context)
        secrets = options.signing_secret
        if isinstance(secrets, str):
            secrets = [secrets]
        self._keys = [secret_key(s) for s in secrets or []]
        self._headers = dict(options.headers)
        if not any(name.lower() == "content-type" for name in self._headers):
            self._headers["Content-Type"] = "application/json"
        self._template = options.template
        self.http = HttpClient(options, context)  # one connection pool for the sink's life

    def body_for(self, event: voltd.Event) -> bytes:
        """The request body: Volt's bytes, or the template's (PermanentError if it cannot)."""
        if self._template is None:
            return event.raw
        data = template_data(event, numbers=self.context.numbers)
        try:
            text = self._template.render(data)
        except TemplateError as exc:  # this event can never render: a dead letter
            raise voltd.PermanentError(f"template: {exc}") from None
        if len(text) > MAX_TEMPLATE_BODY:
            raise voltd.PermanentError(
                f"template: the body would be longer than {MAX_TEMPLATE_BODY} characters"
            )
        return text.encode("utf-8", "replace")  # a lone surrogate from JSON: "?"

    def headers_for(self, event: voltd.Event, body: bytes) -> dict[str, str]:
        headers = dict(self._headers)
        if self._keys:
            msg_id = webhook_id(self.context.name, event)
            timestamp = int(time.time())
            headers["webhook-id"] = msg_id
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = sign(self._keys, msg_id, timestamp, body)
        if self.options.forward_volt_signature and event.volt_signature is not None:
            headers[VOLT_SIGNATURE_HEADER] = event.volt_signature
        return headers

    async def send(self, event: voltd.Event) -> None:
        body = self.body_for(event)
        response = await self.http.request(
            self.options.method,
            self.options.url,
            content=body,
            headers=self.headers_for(event, body),
            check=False,
        )
        error = classify(response, follow_redirects=self.options.follow_redirects)
        if error is None:
            return
        if response.status_code in GONE_STATUSES:
            raise voltd.EndpointGone(
                f"{error}: the receiver refuses this sink's requests as configured (its "
                "credentials, URL or method); fix it, then reload or run "
                f"`voltd spool retry --sink {self.context.name}`"
            )
        raise error

    async def aclose(self) -> None:
        await self.http.aclose()


@voltd.hookimpl
def register_sink_types(register: voltd.Register) -> None:
    register("http", HttpSink)
