"""voltd's `email` sink: each Volt event as an e-mail a person reads, or one digest per window.

It is registered through the same `voltd` entry-point group as any third-party plugin and
imports only voltd's public plugin API and the standard library (`smtplib`, `email`, `ssl`)::

    [sinks.ops-mail]
    type = "email"
    host = "smtp.example.com"
    # port = 587                                   # 465 with tls = "implicit"
    # tls = "starttls"                             # required; or "implicit", or "none"
    username = "voltd@example.com"
    password = "${env:SMTP_PASSWORD}"              # a secret: never logged, never shown
    from = "voltd <voltd@example.com>"
    to = ["ops@example.com"]
    cc = ["desk-lead@example.com"]
    timezone = "America/New_York"                  # times in the mails
    # digest = "10m"                               # one mail per 10 minutes instead
    # ca_file = "tls/mail-ca.pem"                  # a private CA, relative to the config

    [sinks.local-relay]                            # a relay on this machine: no TLS, no AUTH
    type = "email"
    host = "127.0.0.1"
    port = 25
    tls = "none"
    from = "voltd@host.example"
    to = ["sms-log@example.com"]

What a mail looks like
----------------------

One mail per event (the default): the subject says what happened in words, e.g.
``Message failed to deliver: sales (+15555550145) → front-desk (+15555550123)``; the body
(a plain-text part and an HTML part, `multipart/alternative`) repeats that and gives the
provider's error title, detail and codes, the SMS text, media links, the status, the carrier,
the time in `timezone`, Volt's message id (`rf_…`) and the event id (`rfw_…`). Numbers are
named from `[numbers]` (both sides, when both are ours).

Change any part with the templates `subject`, `text` and `html` (`voltd.templates`, checked
by `voltd check`). Besides the usual variables (`text`, `status`, `our_number`, `our_name`,
`their_number`, `received`, `payload`, `event`, ...) they see:

- ``headline``: what happened, e.g. "Message failed to deliver", "Message received";
- ``parties``: sender → recipient, named, e.g. "sales (+15555550145) → +15555550199";
- ``their_name``: the `[numbers]` name of the other number when it is one of ours, or None;
- ``error``: None, or ``{title, detail, provider_code, code}`` from the payload;
- ``media``: the http(s) links of the payload's `media`;
- ``message_id`` (Volt's `rf_…`) and ``carrier``.

`subject` is rendered as one line: line breaks and control characters become spaces and it is
cut at 200 characters, so no SMS text can add a header (`Bcc:`) to the mail. `text` is plain
text; `html` is escaped HTML (an SMS saying `<script>` shows those characters), a fragment
that the sink puts into a page of its own; use inline styles only. NUL and other control
characters in an SMS become U+FFFD. An event a template cannot render is a dead letter.

Threads: each conversation (our number and theirs) becomes one thread in a mail client. Every
mail's `Message-ID` is derived from the sink's name, the event id and the event's content
digest, so it is the same on every retry; the sink remembers (in its durable state,
`context.state`) the first and last Message-ID of each conversation and sets `In-Reply-To`
(the previous mail) and `References` (the first and the previous). Gmail threads only mails
whose subjects match too: for Gmail, use a subject without the status, e.g.
``subject = "SMS {{ parties }}"``.

Digests
-------

With `digest = "10m"` the sink sends one mail per window instead of one per event. voltd
holds the events in its spool (not in the sink) until the oldest waiting one has waited
10 minutes since it arrived, then hands over everything waiting (at most `MAX_DIGEST`
events; more go in the next mail at once). So a restart or a crash loses nothing and does not
restart the window. The mail opens with a summary (counts by status, the most common errors,
the numbers involved, the time span) followed by every event, as its text and HTML parts
render it (each cut at `DIGEST_PART_MAX` characters). A digest is not threaded.

A digest's `Message-ID` is derived from its events, so one sent again is recognisable as the
same mail (mail services that deduplicate on Message-ID show it once). When it is sent again,
honestly: voltd records a delivery once the server has answered 250 to the mail. A crash (or
`kill -9`) in the milliseconds between that answer and voltd's commit sends the same digest
once more after the restart; with the same events it carries the same Message-ID, but when
new events arrived meanwhile it holds them too and gets a new Message-ID: a second mail, a
superset of the first. That window exists for every at-least-once sink; a digest merely makes
each occurrence a bigger mail.

Connection and security
-----------------------

`tls = "starttls"` (the default, port 587) **requires** STARTTLS: a server that does not
offer it is refused, the sink is disabled and nothing is sent in plain text. `"implicit"`
(port 465) speaks TLS from the first byte. Certificates are checked against the system's CAs,
or only `ca_file`'s, and must name `host`. `tls = "none"` sends in plain text and is meant for
a relay on the same machine: a `password` with it is refused unless `host` is a loopback
address (`localhost`, `127.0.0.1`, `::1`).

`username` and `password` log in (AUTH) after TLS; set both or neither. A server that does not
offer AUTH while a username is set is refused rather than mailed without logging in. The
password is a secret: `voltd check` shows `***`, and it never appears in a log line or an
error, even when a server quotes it back.

Every connection, TLS handshake and SMTP command must be answered within `timeout` (30 s by
default), which also bounds a whole delivery; voltd itself gives one at most 60 s. Deliveries
run in a worker thread (`smtplib`), one at a time per sink; each mail has its own connection.

What the server's answers mean
------------------------------

- 250 to the mail: delivered.
- 4xx anywhere (421 included), no connection, a timeout, a disconnect, a TLS failure (an
  untrusted certificate included): retried with backoff.
- 5xx to the mail (DATA), or 552 to MAIL FROM (the mail is too big): this event is refused,
  a dead letter (`voltd spool dead`, `voltd spool replay`).
- STARTTLS not offered or refused, AUTH not offered or refused (535), the sender refused with
  5xx: the sink is **disabled** until a reload.
- Some recipients refused: see below.

Recipients one by one: when the server refuses some recipients and takes the mail for the
others, the sink remembers (in its state) who got it. A recipient refused with 4xx is retried,
and the retry goes only to the recipients who have not got it yet. A recipient refused with 5xx
(and none with 4xx) makes the event a dead letter whose error names that recipient; after
fixing `to`, `voltd spool replay` sends it only to those who did not get it (a recipient who got
it is never mailed twice for the same event, whatever the configuration says by then).

A disabled sink sends nothing more and says why in the log, `voltd spool status` and
`/healthz`; its events wait in the spool (they never expire while it is disabled) until the
operator fixes the configuration or the server and reloads (SIGHUP) or runs
`voltd spool retry --sink NAME`. Errors carry the server's code and text (one line, capped).
"""

from __future__ import annotations

import base64
import collections
import email.policy
import email.utils
import hashlib
import html as _html
import ipaddress
import json
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo

import pydantic
import trio

import voltd
from voltd.state import StateUnavailable
from voltd.templates import (
    NAMES,
    Template,
    TemplateError,
    TemplateSpec,
    TimeZone,
    get_zone,
    template_data,
)

voltd.require_api(1, 1)

__all__ = [
    "DIGEST_PART_MAX",
    "EXTRA_NAMES",
    "MAX_DIGEST",
    "EmailOptions",
    "EmailSink",
    "build_digest",
    "build_message",
    "digest_message_id",
    "message_id",
    "register_sink_types",
]

#: The most events one digest mail holds (`max_batch` in digest mode).
MAX_DIGEST: Final = 500
#: Each event's text and HTML part in a digest is cut at this many characters.
DIGEST_PART_MAX: Final = 20_000
#: The longest subject, in characters ("…" included).
SUBJECT_MAX: Final = 200
#: The variables the sink's templates see besides `voltd.templates.NAMES`.
EXTRA_NAMES: Final = (
    "headline",
    "parties",
    "their_name",
    "error",
    "media",
    "message_id",
    "carrier",
)
#: The longest `timeout`: voltd gives one delivery attempt 60 s.
MAX_TIMEOUT: Final = 60.0

_SNIPPET: Final = 200  # characters of a server's reply an error may show
_ELLIPSIS: Final = "…"
_POLICY: Final = email.policy.SMTP
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_HOST = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\[?[0-9A-Fa-f:.]+\]?")

# --------------------------------------------------------------------------------------------
# Default templates

DEFAULT_SUBJECT: Final = (
    '{{ headline }}: {{ parties }}{% if text and direction == "inbound" %}: '
    "{{ text | shorten(80) }}{% endif %}"
)

DEFAULT_TEXT: Final = """\
{{ headline }}: {{ parties }}
{%- if error %}

Error:    {{ error.title or "(no title given)" }}
{%- if error.detail %}
          {{ error.detail }}
{%- endif %}
Codes:    provider {{ error.provider_code or "-" }}, Volt {{ error.code or "-" }}
{%- endif %}

Text:
{{ text if text is not none else "(no text)" }}
{%- if media %}

Media:
{%- for url in media %}
  {{ url }}
{%- endfor %}
{%- endif %}

Status:   {{ status or "-" }} ({{ event_type or "-" }}, {{ direction or "-" }})
Carrier:  {{ carrier or "-" }}
Time:     {{ (received | localtime) if received else "-" }}
Volt id:  {{ message_id or "-" }}
Event id: {{ event.id }}
"""

_LABEL: Final = 'style="padding:2px 16px 2px 0;color:#57606a;vertical-align:top;"'
_VALUE: Final = 'style="padding:2px 0;vertical-align:top;"'

DEFAULT_HTML: Final = f"""\
<div style="font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;font-size:14px;\
max-width:680px;border:1px solid #d0d7de;border-radius:6px;padding:16px;margin:0 0 16px 0;">
<div style="font-size:18px;font-weight:bold;margin:0 0 4px 0;color:\
{{% if status == "failed" %}}#b42318{{% elif status in ("delivered", "received") %}}#1a7f37\
{{% else %}}#1f2328{{% endif %}};">{{{{ headline }}}}</div>
<div style="margin:0 0 12px 0;color:#57606a;">{{{{ parties }}}}</div>
{{%- if error %}}
<div style="background:#fff1f0;border-left:4px solid #b42318;padding:8px 12px;\
margin:0 0 12px 0;"><strong>{{{{ error.title or "Error" }}}}</strong>
{{%- if error.detail %}}<br>{{{{ error.detail }}}}{{% endif %}}<br>\
<span style="color:#57606a;">Codes: provider {{{{ error.provider_code or "-" }}}}, \
Volt {{{{ error.code or "-" }}}}</span></div>
{{%- endif %}}
<div dir="auto" style="white-space:pre-wrap;unicode-bidi:isolate;background:#f6f8fa;\
border-radius:4px;padding:8px 12px;margin:0 0 12px 0;">\
{{{{ text if text is not none else "(no text)" }}}}</div>
{{%- if media %}}
<div style="margin:0 0 12px 0;">Media:{{% for url in media %}}<br>\
<a href="{{{{ url }}}}">{{{{ url }}}}</a>{{% endfor %}}</div>
{{%- endif %}}
<table style="border-collapse:collapse;font-size:13px;">
<tr><td {_LABEL}>Status</td><td {_VALUE}>{{{{ status or "-" }}}} \
({{{{ event_type or "-" }}}}, {{{{ direction or "-" }}}})</td></tr>
<tr><td {_LABEL}>Carrier</td><td {_VALUE}>{{{{ carrier or "-" }}}}</td></tr>
<tr><td {_LABEL}>Time</td><td {_VALUE}>\
{{{{ (received | localtime) if received else "-" }}}}</td></tr>
<tr><td {_LABEL}>Volt id</td><td {_VALUE}>{{{{ message_id or "-" }}}}</td></tr>
<tr><td {_LABEL}>Event id</td><td {_VALUE}>{{{{ event.id }}}}</td></tr>
</table>
</div>
"""

SubjectTemplate = Annotated[Template, TemplateSpec("text", max_length=1000, names=EXTRA_NAMES)]
TextPartTemplate = Annotated[Template, TemplateSpec("text", names=EXTRA_NAMES)]
HtmlPartTemplate = Annotated[Template, TemplateSpec("html", names=EXTRA_NAMES)]


# --------------------------------------------------------------------------------------------
# Options


def _address(value: Any, what: str) -> str:
    """One address, `user@example.com` or `Name <user@example.com>`, normalised; ValueError
    saying what is wrong (addresses are not secrets, so the value may be shown)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what}: expected an e-mail address like ops@example.com")
    shown = value if value.isprintable() and len(value) <= 200 else "the address"
    if any(not c.isprintable() for c in value):
        raise ValueError(f"{what}: {shown!r} has a line break or control character")
    if not value.isascii():
        raise ValueError(
            f"{what}: {shown!r} is not ASCII (this sink does not use SMTPUTF8): write an "
            "international domain in its xn-- form"
        )
    pairs = email.utils.getaddresses([value])
    if len(pairs) != 1 or not pairs[0][1]:
        raise ValueError(f"{what}: {shown!r} is not one e-mail address like ops@example.com")
    name, spec = pairs[0]
    local, at, domain = spec.rpartition("@")
    if not at or not local or not domain or not _HOST.fullmatch(domain):
        raise ValueError(f"{what}: {shown!r} is not an e-mail address like ops@example.com")
    try:
        return str(Address(display_name=name, addr_spec=spec))
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{what}: {shown!r} is not a valid e-mail address ({exc})") from None


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class EmailOptions(voltd.SinkOptions):
    """The `[sinks.NAME]` table of an `email` sink (see the module docstring)."""

    host: str = pydantic.Field(
        description="the SMTP server: a host name or IP address, e.g. smtp.example.com"
    )
    port: int | None = pydantic.Field(
        None,
        ge=1,
        le=65535,
        description='the SMTP port; by default 587, or 465 with tls = "implicit"',
    )
    tls: Literal["starttls", "implicit", "none"] = pydantic.Field(
        "starttls",
        description='"starttls" (default): STARTTLS is required, a server without it is '
        'refused; "implicit": TLS from the first byte (port 465); "none": plain text, for '
        "a relay on this machine",
    )
    username: str | None = pydantic.Field(
        None, description="log in (AUTH) with this user name; needs password"
    )
    password: Annotated[str | None, voltd.Secret()] = pydantic.Field(
        None,
        repr=False,
        description="the password for username; a secret: use ${cred:NAME}, ${env:NAME} or "
        "${file:PATH}",
    )
    sender: str = pydantic.Field(
        alias="from",
        description='the sender, one address: "voltd@example.com" or "voltd <voltd@example.com>"',
    )
    to: list[str] = pydantic.Field(
        min_length=1, description="the recipients, a list of one or more addresses"
    )
    cc: list[str] = pydantic.Field(
        default_factory=list, description="more recipients, in the Cc header"
    )
    subject: SubjectTemplate = pydantic.Field(
        DEFAULT_SUBJECT,
        validate_default=True,
        description="the subject (a template, per event); made one line of at most "
        f"{SUBJECT_MAX} characters",
    )
    text: TextPartTemplate = pydantic.Field(
        DEFAULT_TEXT,
        validate_default=True,
        description="the plain-text part (a template, per event)",
    )
    html: HtmlPartTemplate = pydantic.Field(
        DEFAULT_HTML,
        validate_default=True,
        description="the HTML part (a template with HTML escaping, per event): a fragment, "
        "the sink adds the page around it; inline styles only",
    )
    digest: voltd.Duration = pydantic.Field(
        "0s",
        validate_default=True,
        ge=0,
        description='"0s" (default): one mail per event; e.g. "10m": one digest mail per '
        "10 minutes with every event that waited (the window runs from the first's arrival)",
    )
    timezone: TimeZone = pydantic.Field(
        "UTC", validate_default=True, description="the time zone of times in the mails"
    )
    ca_file: str | None = pydantic.Field(
        None,
        description="PEM file of the CA certificates to trust instead of the system's (a "
        "private CA); relative to the config file",
    )
    timeout: voltd.Duration = pydantic.Field(
        "30s",
        validate_default=True,
        description="the longest the server may take to answer connecting, TLS and each "
        f'command, and the longest one delivery may take (e.g. "30s"; at most '
        f"{MAX_TIMEOUT:g}s)",
    )

    @pydantic.field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        text = value.strip()
        if not text or not _HOST.fullmatch(text):
            shown = f" {value!r}" if value.isprintable() and len(value) <= 100 else ""
            raise ValueError(
                f"expected a host name or IP address like smtp.example.com, not{shown or ' that'}"
                " (no scheme, no port: set port)"
            )
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]  # an IPv6 address as in a URL: smtplib wants it bare
        return text

    @pydantic.field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        return _address(value, "from")

    @pydantic.field_validator("to", "cc")
    @classmethod
    def _recipients(cls, value: list[str], info: pydantic.ValidationInfo) -> list[str]:
        return [_address(v, f"{info.field_name}[{i}]") for i, v in enumerate(value)]

    @pydantic.field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if not 0 < value <= MAX_TIMEOUT:
            raise ValueError(
                f'expected a duration above 0 and at most {MAX_TIMEOUT:g}s, like "30s" (voltd '
                f"gives one delivery attempt {MAX_TIMEOUT:g}s)"
            )
        return value

    @pydantic.field_validator("ca_file")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "\x00" in value):
            raise ValueError("expected a file path")
        return value

    @pydantic.model_validator(mode="after")
    def _together(self) -> EmailOptions:
        if (self.username is None) != (self.password is None):
            raise ValueError(
                "username and password go together: set both to log in, or neither "
                "(the password is not shown)"
            )
        if self.tls == "none":
            if self.password is not None and not _is_loopback(self.host):
                raise ValueError(
                    f'tls = "none" with a password would send it in plain text to '
                    f'{self.host}: use tls = "starttls" or "implicit"; tls = "none" '
                    "with a password is only for a relay on this machine (a loopback host)"
                )
            if self.ca_file is not None:
                raise ValueError('ca_file is set but tls = "none" uses no TLS: remove one')
        return self

    @property
    def smtp_port(self) -> int:
        """The port to connect to, the default for `tls` when none is set."""
        if self.port is not None:
            return self.port
        return 465 if self.tls == "implicit" else 587


# --------------------------------------------------------------------------------------------
# Identities: Message-IDs and state keys


def _hash(*parts: str | bytes) -> str:
    h = hashlib.sha256(b"voltd-email\x00")
    for part in parts:
        data = part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(4, "big") + data)
    return h.hexdigest()[:32]


def _event_key(sink: str, event: voltd.Event) -> str:
    """Stable per event and sink, across retries and restarts: never from time."""
    return _hash("event", sink, event.id, event.digest)


def _domain(sender: str) -> str:
    domain = Address(addr_spec=email.utils.parseaddr(sender)[1]).domain
    return domain or "voltd.invalid"


def message_id(sink: str, event: voltd.Event, sender: str = "voltd@voltd.invalid") -> str:
    """The `Message-ID` of the mail about `event` from sink `sink`: the same on every retry
    and after a restart, different per sink; on the domain of the `sender` address."""
    return f"<voltd.{_event_key(sink, event)}@{_domain(sender)}>"


def digest_message_id(
    sink: str, events: Iterable[voltd.Event], sender: str = "voltd@voltd.invalid"
) -> str:
    """The `Message-ID` of a digest: from its events (in any order), so the same digest sent
    again is recognisably the same mail."""
    keys = sorted({_event_key(sink, e) for e in events})
    return f"<voltd.digest.{_hash('digest', sink, *keys)}@{_domain(sender)}>"


# --------------------------------------------------------------------------------------------
# Rendering


def _clean(text: str) -> str:
    """Text any mail can carry: line breaks as LF, no lone surrogates (from a JSON escape),
    control characters (NUL included) as U+FFFD."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\u2028", "\n").replace("\u2029", "\n")
    return _CONTROL.sub("\ufffd", text)


def _one_line(text: str, limit: int) -> str:
    """One line of at most `limit` characters: a subject, or a server's reply in an error."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    flat = " ".join(flat.encode("utf-8", "replace").decode("utf-8").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + _ELLIPSIS


def _label(number: str | None, name: str | None) -> str:
    if not number:
        return "an unknown number"
    return f"{name} ({number})" if name else number


_HEADLINES: Final = {
    "received": "Message received",
    "delivered": "Message delivered",
    "failed": "Message failed to deliver",
    "delivery_failed": "Message failed to deliver",
    "sending_failed": "Message failed to send",
    "undelivered": "Message failed to deliver",
    "sent": "Message sent",
    "sending": "Message sending",
    "queued": "Message queued",
}


def _headline(status: str | None, event_type: str | None, direction: str | None) -> str:
    if status and status.lower() in _HEADLINES:
        return _HEADLINES[status.lower()]
    if status:
        return f"Message {_one_line(status, 40)}"
    if event_type:
        return f"Message event {_one_line(event_type, 60)}"
    return f"{(direction or 'SMS').capitalize()} message"


def _media_links(payload: Mapping[str, Any]) -> list[str]:
    """The http(s) links of `media` (strings, or objects with a url): nothing else becomes
    a link, so no `javascript:` can."""
    media = payload.get("media")
    links: list[str] = []
    if not isinstance(media, list):
        return links
    for item in media[:100]:
        url = item
        if isinstance(item, dict):
            url = next((item[k] for k in ("url", "media_url", "href", "link") if k in item), None)
        if isinstance(url, str) and re.match(r"https?://[^\s<>\"']+\Z", url, re.IGNORECASE):
            links.append(url)
    return links


def _error_of(payload: Mapping[str, Any]) -> dict[str, str | None] | None:
    def text(key: str) -> str | None:
        value = payload.get(key)
        return None if value is None or isinstance(value, dict | list) else str(value)

    error = {
        "title": text("provider_error_title"),
        "detail": text("provider_error_detail"),
        "provider_code": text("provider_error_code"),
        "code": text("error_code"),
    }
    return error if any(error.values()) else None


def mail_data(
    event: voltd.Event, zone: ZoneInfo, numbers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The template variables of one event: `voltd.templates.template_data` and
    `EXTRA_NAMES`."""
    data = template_data(event, timezone=zone, numbers=numbers)
    payload: dict[str, Any] = data["payload"]
    names = numbers or {}
    our = _label(data["our_number"], data["our_name"])
    their_number = data["their_number"]
    their_name = names.get(their_number) if their_number else None
    their = _label(their_number, their_name)
    direction = data["direction"]
    if direction == "inbound":
        parties = f"{their} → {our}"
    elif direction == "outbound":
        parties = f"{our} → {their}"
    else:
        frm, to = event.field("from_number"), event.field("to_number")
        parties = f"{_label(frm, names.get(frm or ''))} → {_label(to, names.get(to or ''))}"
    data.update(
        headline=_headline(data["status"], data["event_type"], direction),
        parties=parties,
        their_name=their_name,
        error=_error_of(payload),
        media=_media_links(payload),
        message_id=event.message_id,
        carrier=event.field("carrier_name"),
    )
    return data


def _page(fragment: str, title: str) -> str:
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{_html.escape(title)}</title></head>\n"
        '<body style="margin:0;padding:16px;background:#ffffff;color:#1f2328;">\n'
        f"{fragment}\n</body></html>\n"
    )


def _copy(template: Template, zone: ZoneInfo, max_length: int | None = None) -> Template:
    return Template(
        template.source,
        escape=template.escape,
        max_length=template.max_length if max_length is None else max_length,
        zone=zone,
        names=template.names - NAMES,
    )


@dataclass(frozen=True, slots=True)
class _Thread:
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()


class _Renderer:
    """The templates in the sink's zone and the addresses, ready to make mails."""

    def __init__(self, options: EmailOptions, sink: str, numbers: Mapping[str, str] | None) -> None:
        zone = get_zone(options.timezone)
        self.zone = zone
        self.sink = sink
        self.numbers: Mapping[str, str] = numbers or {}
        self.options = options
        self.subject = _copy(options.subject, zone)
        self.text = _copy(options.text, zone)
        self.html = _copy(options.html, zone)
        self.digest_text = _copy(options.text, zone, DIGEST_PART_MAX)
        self.digest_html = _copy(options.html, zone, DIGEST_PART_MAX)

    def _envelope(self, msg: EmailMessage, subject: str, msg_id: str) -> None:
        opts = self.options
        msg["Subject"] = _one_line(subject, SUBJECT_MAX) or "(no subject)"
        msg["From"] = opts.sender
        msg["To"] = ", ".join(opts.to)
        if opts.cc:
            msg["Cc"] = ", ".join(opts.cc)
        msg["Date"] = email.utils.formatdate(usegmt=True)
        msg["Message-ID"] = msg_id
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
        msg["X-Mailer"] = f"voltd/{voltd.__version__}"

    @staticmethod
    def _parts(msg: EmailMessage, text: str, html: str) -> None:
        # Quoted-printable: 7-bit clean for any server, readable, lines of any length.
        msg.set_content(_clean(text), subtype="plain", charset="utf-8", cte="quoted-printable")
        msg.add_alternative(_clean(html), subtype="html", charset="utf-8", cte="quoted-printable")

    def message(self, event: voltd.Event, thread: _Thread = _Thread()) -> EmailMessage:
        data = mail_data(event, self.zone, self.numbers)
        subject = self.subject.render(data)
        text = self.text.render(data)
        html = self.html.render(data)
        msg = EmailMessage(policy=_POLICY)
        self._envelope(msg, subject, message_id(self.sink, event, self.options.sender))
        if thread.in_reply_to:
            msg["In-Reply-To"] = thread.in_reply_to
        if thread.references:
            msg["References"] = " ".join(thread.references)
        self._parts(msg, text, _page(html, _one_line(subject, SUBJECT_MAX)))
        return msg

    def digest(self, events: Sequence[voltd.Event]) -> EmailMessage:
        datas = [mail_data(e, self.zone, self.numbers) for e in events]
        summary = _Summary(events, datas, self.zone)
        texts = [self.digest_text.render(d) for d in datas]
        htmls = [self.digest_html.render(d) for d in datas]
        n = len(events)
        rule = "=" * 72
        body = [summary.text(), ""]
        for i, part in enumerate(texts, 1):
            body += [rule, f"{i} of {n}", "", part.rstrip("\n"), ""]
        cards = [
            f'<div style="font-family:sans-serif;font-size:12px;color:#57606a;margin:0 0 4px 0;">'
            f"{i} of {n}</div>\n{part}"
            for i, part in enumerate(htmls, 1)
        ]
        subject = summary.subject()
        msg = EmailMessage(policy=_POLICY)
        self._envelope(msg, subject, digest_message_id(self.sink, events, self.options.sender))
        html = summary.html() + "\n" + "\n".join(cards)
        self._parts(msg, "\n".join(body), _page(html, _one_line(subject, SUBJECT_MAX)))
        return msg


class _Summary:
    """What a digest says at its top: counts by status, errors, numbers, the time span."""

    def __init__(
        self, events: Sequence[voltd.Event], datas: Sequence[dict[str, Any]], zone: ZoneInfo
    ) -> None:
        self.count = len(events)
        self.statuses = collections.Counter(
            _one_line(d["status"] or "unknown", 40) for d in datas
        ).most_common()
        errors: collections.Counter[str] = collections.Counter()
        for d in datas:
            error = d["error"]
            if error:
                codes = ", ".join(
                    f"{what} {error[key]}"
                    for what, key in (("provider", "provider_code"), ("Volt", "code"))
                    if error[key]
                )
                title = error["title"] or "(no title given)"
                errors[_one_line(f"{title} ({codes})" if codes else title, 160)] += 1
        self.errors = errors.most_common(5)
        ours: collections.Counter[str] = collections.Counter()
        theirs: collections.Counter[str] = collections.Counter()
        for d in datas:
            ours[_label(d["our_number"], d["our_name"])] += 1
            if d["their_number"]:
                theirs[_label(d["their_number"], d["their_name"])] += 1
        self.ours = ours.most_common()
        self.theirs = theirs.most_common()
        times = [e.when for e in events if e.when is not None]
        self.first = min(times).astimezone(zone) if times else None
        self.last = max(times).astimezone(zone) if times else None

    def _span(self) -> str:
        if self.first is None or self.last is None:
            return "time unknown"
        fmt = "%Y-%m-%d %H:%M:%S %Z"
        if self.first == self.last:
            return self.first.strftime(fmt)
        same_day = self.first.date() == self.last.date()
        end = self.last.strftime("%H:%M:%S %Z" if same_day else fmt)
        return f"{self.first.strftime(fmt)} to {end}"

    def _statuses(self) -> str:
        return ", ".join(f"{count} {status}" for status, count in self.statuses)

    def subject(self) -> str:
        events = f"{self.count} event{'s' if self.count != 1 else ''}"
        return f"SMS digest: {events} ({self._statuses()}), {self._span()}"

    def _lines(self) -> list[tuple[str, list[str]]]:
        more = len(self.theirs) - 20
        theirs = [f"{who}: {n}" for who, n in self.theirs[:20]]
        if more > 0:
            theirs.append(f"and {more} more")
        return [
            ("By status", [f"{status}: {n}" for status, n in self.statuses]),
            ("Most common errors", [f"{err}: {n}" for err, n in self.errors] or ["none"]),
            ("Our numbers", [f"{who}: {n}" for who, n in self.ours]),
            ("Their numbers", theirs or ["none"]),
        ]

    def text(self) -> str:
        events = f"{self.count} event{'s' if self.count != 1 else ''}"
        out = [f"SMS digest: {events}, {self._span()}", ""]
        for title, items in self._lines():
            out.append(f"{title}:")
            out.extend(f"  {item}" for item in items)
            out.append("")
        return "\n".join(out)

    def html(self) -> str:
        e = _html.escape
        events = f"{self.count} event{'s' if self.count != 1 else ''}"
        rows = "".join(
            f"<tr><td {_LABEL}>{e(title)}</td><td {_VALUE}>"
            + "<br>".join(e(item) for item in items)
            + "</td></tr>"
            for title, items in self._lines()
        )
        return (
            "<div style=\"font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;"
            "font-size:14px;max-width:680px;border:1px solid #d0d7de;border-radius:6px;"
            'padding:16px;margin:0 0 24px 0;background:#f6f8fa;">'
            f'<div style="font-size:18px;font-weight:bold;margin:0 0 4px 0;">SMS digest: '
            f"{e(events)}</div>"
            f'<div style="margin:0 0 12px 0;color:#57606a;">{e(self._span())}</div>'
            f'<table style="border-collapse:collapse;font-size:13px;">{rows}</table></div>'
        )


def _options(options: EmailOptions | Mapping[str, Any] | None) -> EmailOptions:
    if isinstance(options, EmailOptions):
        return options
    example = {"host": "localhost", "from": "voltd <voltd@localhost>", "to": ["you@localhost"]}
    return EmailOptions.model_validate({**example, **(options or {})})


def build_message(
    event: voltd.Event,
    options: EmailOptions | Mapping[str, Any] | None = None,
    *,
    sink: str = "email",
    numbers: Mapping[str, str] | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
) -> EmailMessage:
    """The mail the sink sends for `event` (for the README, `voltd demo` and tests).

    `options` are the sink's (a mapping is validated; missing host/from/to get example
    values); `numbers` is `[numbers]` as E.164 -> name. Raises `TemplateError` when a
    template cannot render this event. The text part: ``msg.get_body(("plain",))``.
    """
    thread = _Thread(in_reply_to, tuple(references))
    return _Renderer(_options(options), sink, numbers).message(event, thread)


def build_digest(
    events: Sequence[voltd.Event],
    options: EmailOptions | Mapping[str, Any] | None = None,
    *,
    sink: str = "email",
    numbers: Mapping[str, str] | None = None,
) -> EmailMessage:
    """The digest mail for `events` (at least one), as `build_message` for one event."""
    if not events:
        raise ValueError("a digest needs at least one event")
    return _Renderer(_options(options), sink, numbers).digest(events)


# --------------------------------------------------------------------------------------------
# SMTP, in a worker thread


class _Refusal(Exception):
    """The server lacks what the configuration requires (STARTTLS, AUTH): disable the sink."""


_fqdn: str | None = None
_fqdn_lock = threading.Lock()


def _local_hostname() -> str:
    """Our name for EHLO, looked up once (it may ask DNS)."""
    global _fqdn
    with _fqdn_lock:
        if _fqdn is None:
            name = socket.getfqdn()
            _fqdn = name if name.isascii() and _HOST.fullmatch(name) else "localhost"
        return _fqdn


class _Transaction:
    """One connection delivering one mail; `run` in a thread, `abort` from any thread.

    `stage` says how far it got, for the error message."""

    def __init__(self, options: EmailOptions, tls: ssl.SSLContext | None) -> None:
        self.options = options
        self.tls = tls
        self.deadline = time.monotonic() + options.timeout
        self.stage = "connect"
        self._smtp: smtplib.SMTP | None = None
        self._aborted = False

    @property
    def timed_out(self) -> bool:
        return self._aborted or time.monotonic() >= self.deadline

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0 or self._aborted:
            raise TimeoutError(f"no answer within {self.options.timeout:g}s")
        return left

    def _tick(self, stage: str) -> None:
        """Before each command: the socket waits at most what is left of the timeout."""
        self.stage = stage
        smtp = self._smtp
        left = self._left()
        if smtp is not None and smtp.sock is not None:
            smtp.sock.settimeout(left)

    def abort(self) -> None:
        """Interrupt a blocked read or write (the whole delivery took too long)."""
        self._aborted = True
        smtp = self._smtp
        sock = smtp.sock if smtp is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self, sender: str, recipients: list[str], data: bytes) -> dict[str, tuple[int, bytes]]:
        opts = self.options
        host, port = opts.host, opts.smtp_port
        local = _local_hostname()
        smtp: smtplib.SMTP
        if opts.tls == "implicit":
            assert self.tls is not None
            self.stage = "TLS handshake"
            smtp = smtplib.SMTP_SSL(
                host, port, local_hostname=local, timeout=self._left(), context=self.tls
            )
        else:
            smtp = smtplib.SMTP(host, port, local_hostname=local, timeout=self._left())
        self._smtp = smtp
        done = False
        try:
            self._tick("EHLO")
            smtp.ehlo_or_helo_if_needed()
            if opts.tls == "starttls":
                if not smtp.has_extn("starttls"):
                    raise _Refusal(
                        'the server does not offer STARTTLS, which tls = "starttls" requires: '
                        "nothing was sent in plain text"
                    )
                self._tick("STARTTLS")
                smtp.starttls(context=self.tls)
                self._tick("EHLO")
                smtp.ehlo()
            if opts.username is not None and opts.password is not None:
                if not smtp.has_extn("auth"):
                    raise _Refusal(
                        "the server does not offer AUTH (logging in) although username is set"
                        + (" (it may offer it only after TLS)" if opts.tls == "none" else "")
                    )
                self._tick("AUTH")
                smtp.login(opts.username, opts.password)
            self._tick("sending the mail")
            refused = smtp.sendmail(sender, recipients, data)
            done = True
            return refused
        finally:
            if done and smtp.sock is not None:
                try:  # a polite QUIT, briefly: the mail is already accepted
                    smtp.sock.settimeout(min(2.0, max(0.01, self.deadline - time.monotonic())))
                    smtp.quit()
                except (OSError, smtplib.SMTPException):
                    smtp.close()
            else:
                smtp.close()


# --------------------------------------------------------------------------------------------
# The sink


def _reply(code: int, message: bytes | str, secrets: Sequence[str]) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return f"{code} {_one_line(text, _SNIPPET)}".rstrip()


def _tls_context(options: EmailOptions, context: voltd.SinkContext) -> ssl.SSLContext | None:
    """The client TLS settings: system CAs or `ca_file`, hostname checked; None without TLS."""
    if options.tls == "none":
        return None
    if options.ca_file is None:
        return ssl.create_default_context()
    path = context.path(options.ca_file)
    try:
        return ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        raise ValueError(
            f"ca_file {path}: not a PEM file of CA certificates ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ValueError(f"ca_file {path}: cannot read it ({exc.strerror or exc})") from None


class EmailSink(voltd.Sink):
    """Mails each event, or a digest per window, through SMTP (see the module docstring)."""

    Options = EmailOptions
    options: EmailOptions

    def __init__(self, options: EmailOptions, context: voltd.SinkContext) -> None:
        super().__init__(options, context)
        self._tls = _tls_context(options, context)
        self._render = _Renderer(options, context.name, context.numbers)
        self._sender = email.utils.parseaddr(options.sender)[1]
        recipients: dict[str, str] = {}
        for addr in [*options.to, *options.cc]:
            spec = email.utils.parseaddr(addr)[1]
            recipients.setdefault(spec.lower(), spec)
        self._recipients = list(recipients.values())
        self._where = f"SMTP {options.host}:{options.smtp_port}"
        secrets = []
        if options.password:
            user, pw = options.username or "", options.password
            secrets = [
                pw,
                base64.b64encode(pw.encode()).decode(),
                base64.b64encode(f"\0{user}\0{pw}".encode()).decode(),
            ]
        self._secrets = sorted((s for s in secrets if s), key=len, reverse=True)
        self._limiter = trio.CapacityLimiter(1)
        if options.digest > 0:
            # API 1.1: voltd holds the events in its spool for the window, then one batch.
            self.batch_window = options.digest
            self.max_batch = MAX_DIGEST

    @property
    def takes_batches(self) -> bool:
        """Only a digest takes batches; one mail per event goes through `send`."""
        return self.batch_window > 0

    # ---- state: threads and who got what (a sink built by hand has none: no threading)

    async def _get(self, key: str) -> Any:
        try:
            value = await self.context.state.get(key)
        except StateUnavailable:
            return None
        try:
            return json.loads(value) if value is not None else None
        except ValueError:
            return None

    async def _set(self, key: str, value: Any) -> None:
        try:
            await self.context.state.set(key, json.dumps(value, separators=(",", ":")))
        except StateUnavailable:
            pass

    async def _delete(self, key: str) -> None:
        try:
            await self.context.state.delete(key)
        except StateUnavailable:
            pass

    def _conversation(self, event: voltd.Event) -> str | None:
        our, their = event.our_number, event.their_number
        if not our or not their:
            return None
        return "thread:" + _hash("conversation", our, their)

    async def _thread(self, key: str | None, msg_id: str) -> tuple[_Thread, dict[str, Any]]:
        """Reply headers for the mail `msg_id` in conversation `key`: the same on a retry
        of that mail (state remembers first, last and the one before the last)."""
        state = await self._get(key) if key is not None else None
        if not isinstance(state, dict) or not isinstance(state.get("first"), str):
            return _Thread(), {}
        first: str = state["first"]
        last, prev = state.get("last"), state.get("prev")
        parent = prev if last == msg_id else last
        if first == msg_id or not isinstance(parent, str):
            return _Thread(), state
        refs = (first,) if parent == first else (first, parent)
        return _Thread(parent, refs), state

    # ---- delivery

    async def send(self, event: voltd.Event) -> None:
        if self.batch_window > 0:
            await self.send_batch([event])  # a digest of one
            return
        msg_id = message_id(self.context.name, event, self.options.sender)
        conversation = self._conversation(event)
        thread, state = await self._thread(conversation, msg_id)
        try:
            msg = self._render.message(event, thread)
        except TemplateError as exc:  # this event can never render: a dead letter
            raise voltd.PermanentError(f"template: {exc}") from None
        await self._deliver(msg, [_event_key(self.context.name, event)])
        if conversation is not None and state.get("last") != msg_id:
            last = state.get("last")
            await self._set(
                conversation,
                {"first": state.get("first") or msg_id, "last": msg_id, "prev": last},
            )

    async def send_batch(self, events: Sequence[voltd.Event]) -> None:
        """One digest mail holding all of `events` (all or nothing)."""
        if not events:
            return
        try:
            msg = self._render.digest(events)
        except TemplateError as exc:  # voltd then sends them one by one: the bad one dies
            raise voltd.PermanentError(f"template: {exc}") from None
        await self._deliver(msg, [_event_key(self.context.name, e) for e in events])

    async def _deliver(self, msg: EmailMessage, keys: list[str]) -> None:
        """Send `msg` to every recipient who has not yet got all of the events `keys`."""
        got_per_event = [await self._get("got:" + k) for k in keys]
        sets = [set(g) if isinstance(g, list) else set() for g in got_per_event]
        have = set.intersection(*sets) if sets else set()
        recipients = [r for r in self._recipients if r.lower() not in have]
        if not recipients:
            await self._forget(keys, sets)
            return
        data = msg.as_bytes(policy=_POLICY)
        try:
            refused = await self._smtp(recipients, data)
        except smtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients
        if not refused:
            await self._forget(keys, sets)
            return
        accepted = {r.lower() for r in recipients if r not in refused}
        if accepted:
            # Durable before the error is: a retry or a replay mails only the others.
            async with trio.open_nursery() as nursery:
                for key, already in zip(keys, sets, strict=True):
                    nursery.start_soon(self._set, "got:" + key, sorted(already | accepted))
        raise self._refused(refused, accepted)

    async def _forget(self, keys: list[str], sets: list[set[str]]) -> None:
        for key, already in zip(keys, sets, strict=True):
            if already:
                await self._delete("got:" + key)

    def _refused(
        self, refused: Mapping[str, tuple[int, bytes]], accepted: set[str]
    ) -> voltd.SinkError:
        later = {r: v for r, v in refused.items() if v[0] < 500}
        never = {r: v for r, v in refused.items() if v[0] >= 500}

        def names(which: Mapping[str, tuple[int, bytes]]) -> str:
            return "; ".join(
                f"{r}: {_reply(code, text, self._secrets)}" for r, (code, text) in which.items()
            )

        sent = f" (sent to {len(accepted)} other recipient{'s' if len(accepted) != 1 else ''})"
        sent = sent if accepted else ""
        if later:
            extra = f"; refused for good: {names(never)}" if never else ""
            return voltd.RetryableError(
                f"{self._where}: recipient refused for now: {names(later)}{extra}{sent}; "
                "retried for those only"
            )
        return voltd.PermanentError(
            f"{self._where}: recipient refused: {names(never)}{sent}; fix to/cc, then "
            "`voltd spool replay` sends it only to those who did not get it"
        )

    async def _smtp(self, recipients: list[str], data: bytes) -> dict[str, tuple[int, bytes]]:
        """One SMTP delivery in a worker thread, bounded by `timeout`; errors as SinkErrors
        (SMTPRecipientsRefused passes through for `_deliver`)."""
        tx = _Transaction(self.options, self._tls)
        try:
            with trio.move_on_after(self.options.timeout + 1.0) as scope:
                return await trio.to_thread.run_sync(
                    tx.run,
                    self._sender,
                    recipients,
                    data,
                    limiter=self._limiter,
                    abandon_on_cancel=True,
                )
        except smtplib.SMTPRecipientsRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a SinkError
            raise self._classify(exc, tx.stage, tx.timed_out) from None
        finally:
            tx.abort()  # the thread, if abandoned, ends at once (a no-op after it ended)
        assert scope.cancelled_caught
        raise voltd.RetryableError(
            f"{self._where}: no answer within {self.options.timeout:g}s ({tx.stage})"
        )

    def _gone(self, why: str) -> voltd.EndpointGone:
        return voltd.EndpointGone(
            f"{self._where}: {why}; the sink is disabled: fix the server or the sink's "
            f"configuration, then reload (SIGHUP) or run `voltd spool retry --sink "
            f"{self.context.name}`"
        )

    def _classify(
        self, exc: BaseException, stage: str, tx_timed_out: bool = False
    ) -> voltd.SinkError:
        """What an SMTP failure means for delivery (the table in the module docstring)."""
        where, secrets = self._where, self._secrets

        def said(text: str, limit: int = _SNIPPET) -> str:
            for secret in secrets:
                text = text.replace(secret, "[redacted]")
            return _one_line(text, limit)

        if isinstance(exc, _Refusal):
            return self._gone(str(exc))
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            reply = _reply(exc.smtp_code, exc.smtp_error, secrets)
            if 400 <= exc.smtp_code < 500:
                return voltd.RetryableError(f"{where}: login failed for now: {reply}")
            return self._gone(f"login refused: {reply} (username or password wrong or revoked)")
        if isinstance(exc, smtplib.SMTPSenderRefused):
            reply = _reply(exc.smtp_code, exc.smtp_error, secrets)
            if exc.smtp_code < 500:
                return voltd.RetryableError(f"{where}: sender refused for now: {reply}")
            if exc.smtp_code == 552:
                return voltd.PermanentError(f"{where}: the mail is too big: {reply}")
            return self._gone(f"the server refuses the sender {self._sender}: {reply}")
        if isinstance(exc, smtplib.SMTPDataError):
            reply = _reply(exc.smtp_code, exc.smtp_error, secrets)
            if 400 <= exc.smtp_code < 500:
                return voltd.RetryableError(f"{where}: the mail was refused for now: {reply}")
            return voltd.PermanentError(f"{where}: the server refused the mail: {reply}")
        if isinstance(exc, smtplib.SMTPResponseException):  # connect, EHLO, STARTTLS, ...
            reply = _reply(exc.smtp_code, exc.smtp_error, secrets)
            if stage == "STARTTLS" and exc.smtp_code >= 500:
                return self._gone(f"STARTTLS refused: {reply}: nothing was sent in plain text")
            return voltd.RetryableError(f"{where}: {stage}: {reply}")
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return self._gone(f"{stage}: {said(str(exc))}")
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            # smtplib reports a read that timed out (or was aborted) as a disconnect.
            if "timed out" in str(exc) or tx_timed_out:
                return voltd.RetryableError(
                    f"{where}: no answer within {self.options.timeout:g}s ({stage})"
                )
            return voltd.RetryableError(f"{where}: the server closed the connection ({stage})")
        if isinstance(exc, smtplib.SMTPException):
            text = said(str(exc))
            if stage == "AUTH":  # "No suitable authentication method found."
                return self._gone(f"login impossible: {text}")
            return voltd.RetryableError(f"{where}: {stage}: {text}")
        if isinstance(exc, ssl.SSLCertVerificationError):
            return voltd.RetryableError(
                f"{where}: TLS: the server's certificate is not trusted "
                f"({said(exc.verify_message or str(exc), 120)}); for a private CA set "
                "ca_file"
            )
        if isinstance(exc, ssl.SSLError):
            return voltd.RetryableError(
                f"{where}: TLS handshake failed: {said(exc.reason or str(exc), 120)}"
            )
        if isinstance(exc, TimeoutError | socket.timeout):
            return voltd.RetryableError(
                f"{where}: no answer within {self.options.timeout:g}s ({stage})"
            )
        if isinstance(exc, OSError):
            why = exc.strerror or type(exc).__name__
            return voltd.RetryableError(f"{where}: {stage}: {said(why, 120)}")
        return voltd.RetryableError(f"{where}: {stage}: {type(exc).__name__}: {said(str(exc))}")


@voltd.hookimpl
def register_sink_types(register: voltd.Register) -> None:
    register("email", EmailSink)
