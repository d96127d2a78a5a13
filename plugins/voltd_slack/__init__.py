"""voltd's `slack` sink: posts Volt events to a Slack channel through an incoming webhook.

It is registered through the same `voltd` entry-point group as any third-party plugin and
imports only voltd's public plugin API, so it is also an example to copy:

    [sinks.ops-slack]
    type = "slack"
    webhook_url = "${env:SLACK_WEBHOOK_URL}"   # https://hooks.slack.com/services/T…/B…/…
    timezone = "America/New_York"              # times in messages; default "UTC"
    # template = '*{{ our_name or our_number }}*: {{ status }} {{ text | shorten(200) }}'
    # rate = "1/s"                             # voltd's delivery setting; the default here

Make the webhook in Slack (an app with "Incoming Webhooks", "Add New Webhook to Workspace",
pick the channel). Its URL holds the token that lets anyone post there: keep it in the
environment, a file or a systemd credential (`${env:NAME}`, `${file:PATH}`, `${cred:NAME}`).
voltd never logs it and never shows it in an error or in `voltd check` (`***`); errors name
the endpoint as `https://hooks.slack.com`.
`webhook_url` must be `https://` with a host; `http://` is accepted only for 127.0.0.1, ::1
and localhost (a local stand-in for tests and demos). `timeout`, `ca_file`, `client_cert`,
`client_key`, `verify_tls` and `follow_redirects` work as for the `http` sink.

The message for one event
-------------------------

Block Kit, with a `text` fallback that notifications show:

- a header saying what happened: "Message to +15555550199 failed to deliver" (outbound
  failure), "New text to front-desk" (inbound, named by `[numbers]`, else our number),
  "Text delivered to +15555550199", "Text sent to …";
- fields: status with a mark (":x: failed", ":white_check_mark: delivered"), direction,
  From and To (our numbers as "front-desk (+15555550123)"), for failures the provider's error
  title with the provider's and Volt's codes ("Blocked as spam - temporary (provider 40002,
  Volt 702)"), carrier, the time (the payload's `occurred_at`, else the envelope's `time`, in
  `timezone`), type and parts, the event type;
- the provider's error detail; the SMS text, as plain text (shown exactly as sent: no
  formatting, mention or link is ever made of it; over 3000 characters it is shortened with
  "…" and says so); the media, as links (http and https URLs only);
- a context line with Volt's message id (`rf_…`) and the event id.

`voltd_slack.message_for(event, timezone=..., numbers=...)` returns exactly this JSON (a
dict), e.g. for Volt's failed example; `summary_for(events, ...)` the one for a burst.

Safety: an SMS is written by anyone. Every value from the event is either plain text or
escaped for mrkdwn (`&`, `<`, `>`), so a text saying `<!channel>` or `<https://evil|click>`
pings nobody and links nowhere. Control characters (NUL…) are dropped and broken Unicode is
replaced; emoji and right-to-left text come through.

Slack's limits hold by construction, never by Slack refusing the message: at most 50 blocks,
a header of at most 150 characters, sections of 3000, at most 10 fields of 2000, and all the
text of a message under 10,000 characters (Slack cuts or refuses past 12,000). Long values are
shortened with "…", after escaping and never inside an entity like `&amp;`.

Bursts
------

Slack takes about one message per second per webhook, so the sink's default `rate` is "1/s".
When events come faster, voltd hands the waiting ones to the sink together (up to 1000), and
they become one summary message: a header like "37 texts failed to deliver" or "120 events:
37 failed, 80 delivered, 3 received", counts by status, our numbers (with names) and how many
other parties, the time span, the most common errors with their codes and counts, and one
line per event for the first 10 (every event for up to 5), then "…and N more". 2,000 waiting
events become two messages. The events of a summary count as delivered only when Slack
answers `ok` to it; otherwise they are retried together.

Your own message: `template`
----------------------------

A template (jinja2, see `voltd.templates`: `our_name`, `their_number`, `status`, `text`,
`payload.carrier_name`, `received | localtime`, `shorten`, ...) replaces the default message.
Its output is mrkdwn, so the template's own text may use `*bold*`, `<https://…|links>` and
`<!here>`, while every value it shows is escaped. The output is the message's `text` (its
first 1000 characters) and its blocks (sections of up to 3000 characters, 8000 in all,
then "…"). In a burst each event's output is its own section, as many as fit, then
"…and N more (120 events: 37 failed, …)". An output of only whitespace posts nothing: the
event counts as delivered (use routes to choose events; this is for the odd one a template
skips). An event the template cannot render (a payload key it lacks) is a dead letter.

What Slack's answers mean
-------------------------

Slack answers in plain text. The sink decides from that text first, then the status:

- `200 ok`: delivered. Any other 2xx answer is retried (it is not Slack's `ok`).
- 429 (with `Retry-After`), 408, 5xx, network errors and timeouts: retried; `Retry-After`
  pauses the whole sink that long (capped by the sink's retry `max_delay`).
- `invalid_payload`, `invalid_blocks`, `invalid_blocks_format`, `no_text`, `msg_too_long`,
  `too_many_attachments`, and any other 400: the message was refused: a dead letter (a burst's
  events are then tried one by one, so only a bad one is lost). By construction this should
  never happen; please report it.
- `invalid_token`, `no_service`, `no_service_id`, `no_team`, `team_disabled`,
  `channel_not_found`, `channel_is_archived`, `action_prohibited`,
  `posting_to_general_channel_denied`, `user_not_found`, `no_active_hooks`, and any other 401,
  403, 404 or 410: the webhook itself no longer works, so the sink is disabled: nothing more
  is posted, its events wait in the spool (they never expire meanwhile), and
  `voltd spool status`, `/healthz` and the log say why. Fix the webhook in Slack (or
  `webhook_url`), then reload (SIGHUP) or run `voltd spool retry --sink NAME`.

Errors quote Slack's answer (one short line), never the URL.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final

import httpx
import pydantic

import voltd
from voltd.http import HttpClient, HttpOptions, classify, safe_url
from voltd.templates import MrkdwnTemplate, TemplateError, TimeZone

from .blocks import (
    MAX_BLOCKS,
    MAX_FIELD_TEXT,
    MAX_FIELDS,
    MAX_HEADER,
    MAX_MESSAGE_TEXT,
    MAX_SECTION_TEXT,
    message_for,
    message_size,
    summary_for,
)

voltd.require_api(1, 1)

__all__ = [
    "GONE_REASONS",
    "MAX_BLOCKS",
    "MAX_FIELDS",
    "MAX_FIELD_TEXT",
    "MAX_HEADER",
    "MAX_MESSAGE_TEXT",
    "MAX_SECTION_TEXT",
    "REFUSED_REASONS",
    "SlackSink",
    "answer_error",
    "message_for",
    "message_size",
    "register_sink_types",
    "summary_for",
]

#: Slack's answers saying the webhook itself no longer works: the sink is disabled.
GONE_REASONS: Final[Mapping[str, str]] = {
    "invalid_token": "the webhook's token is not valid (revoked, or the app was reinstalled)",
    "no_service": "the webhook is disabled, removed or not valid",
    "no_service_id": "the webhook URL is not valid",
    "no_team": "the Slack workspace does not exist",
    "team_disabled": "the Slack workspace is disabled",
    "channel_not_found": "the webhook's channel does not exist",
    "channel_is_archived": "the webhook's channel is archived",
    "action_prohibited": "an admin has restricted posting to the webhook's channel",
    "posting_to_general_channel_denied": "only admins may post to the webhook's channel",
    "user_not_found": "the webhook's user does not exist",
    "no_active_hooks": "the webhook's app has no active incoming webhooks",
}
#: Slack's answers refusing this one message: a dead letter.
REFUSED_REASONS: Final[Mapping[str, str]] = {
    "invalid_payload": "Slack could not read the message",
    "invalid_blocks": "Slack refused the message's blocks",
    "invalid_blocks_format": "Slack refused the message's blocks",
    "no_text": "Slack found no text in the message",
    "missing_text_or_fallback_or_attachments": "Slack found no text in the message",
    "msg_too_long": "the message is too long for Slack",
    "too_many_attachments": "the message has too many attachments for Slack",
}
#: Statuses that, without a reason Slack names, mean the webhook no longer works.
GONE_STATUSES: Final = frozenset({401, 403, 404, 410})

_REASON: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})


def _reason(response: httpx.Response) -> str | None:
    """Slack's one-word answer (`ok`, `no_service`, …), plain or as `{"error": …}` JSON."""
    try:
        text = response.text.strip()
    except (httpx.ResponseNotRead, httpx.DecodingError, LookupError, ValueError):
        return None
    if _REASON.fullmatch(text):
        return text
    if text.startswith("{"):
        try:
            doc = json.loads(text[:10_000])
        except ValueError:
            return None
        if isinstance(doc, dict):
            if doc.get("ok") is True:
                return "ok"
            error = doc.get("error")
            if isinstance(error, str) and _REASON.fullmatch(error):
                return error
    return None


def answer_error(response: httpx.Response, sink: str) -> voltd.SinkError | None:
    """What Slack's answer means for delivery: None when it said `ok`, else the error to
    raise (not raised), quoting Slack's answer and never the URL. `sink` names the sink in
    the advice of a disabled one."""
    code = response.status_code
    reason = _reason(response)
    if 200 <= code < 300:
        if reason == "ok":
            return None
        what = f" but {reason!r}" if reason else " without Slack's `ok`"
        return voltd.RetryableError(f"POST {_where(response)}: answered {code}{what}")
    base = classify(response) or voltd.RetryableError(f"POST {_where(response)}: {code}")
    if code in (408, 425, 429) or code >= 500 or code < 400:
        return base  # retryable, with the Retry-After Slack sent
    if reason in GONE_REASONS or (reason not in REFUSED_REASONS and code in GONE_STATUSES):
        why = GONE_REASONS.get(reason or "", "Slack refuses this webhook")
        return voltd.EndpointGone(
            f"{_what(base)}: {why}; the sink is disabled: fix the webhook in Slack or "
            f"webhook_url, then reload or run `voltd spool retry --sink {sink}`"
        )
    why = REFUSED_REASONS.get(reason or "", "Slack refused the message")
    return voltd.PermanentError(f"{_what(base)}: {why}")


def _what(error: voltd.SinkError) -> str:
    """`classify`'s line (`POST https://host: 404 Not Found: no_service`) without its own
    explanation of a 410."""
    return str(error).replace(": the endpoint is gone", "")


def _where(response: httpx.Response) -> str:
    try:
        return safe_url(response.request.url)
    except RuntimeError:  # a Response made by hand has no request
        return "Slack"


class SlackSink(voltd.Sink):
    """Posts each event, or one summary per burst, to a Slack incoming webhook."""

    class Options(HttpOptions):  # timeout, ca_file, client_cert, client_key, verify_tls, ...
        webhook_url: Annotated[str, voltd.Secret()] = pydantic.Field(
            repr=False,
            description="the Slack incoming webhook URL (https://hooks.slack.com/services/…); "
            "a secret: write it as ${cred:NAME}, ${env:NAME} or ${file:PATH}; http:// only for "
            "a loopback host (tests)",
        )
        template: MrkdwnTemplate | None = pydantic.Field(
            None,
            description="replaces the default message: a template whose output is Slack "
            "mrkdwn (values are escaped); one whose output is only whitespace posts nothing",
        )
        timezone: TimeZone = pydantic.Field(
            "UTC",
            validate_default=True,
            description='the time zone of the times in messages, e.g. "Europe/Berlin"',
        )

        @pydantic.field_validator("webhook_url")
        @classmethod
        def _webhook_url(cls, value: str) -> str:
            expected = (
                "expected an https:// URL with a host, like https://hooks.slack.com/services/…"
                " (http:// only for 127.0.0.1, ::1 or localhost; the value is not shown)"
            )
            if not value or any(c.isspace() or not c.isprintable() for c in value):
                raise ValueError(expected)
            try:
                parts = urllib.parse.urlsplit(value)
                host = parts.hostname
                _ = parts.port  # a port that is not a number raises ValueError
            except ValueError:
                raise ValueError(expected) from None
            if not host or safe_url(value).startswith("("):
                raise ValueError(expected)
            if parts.scheme == "https" or (parts.scheme == "http" and host in _LOOPBACK):
                return value
            raise ValueError(expected)

    options: Options
    #: Slack takes about one message per second per webhook: bursts become summaries.
    default_rate = "1/s"
    #: A burst of up to this many waiting events becomes one summary message.
    max_batch = 1000
    #: One message after another, in order (and one webhook is rate limited anyway).
    allows_concurrency = False

    def __init__(self, options: Options, context: voltd.SinkContext) -> None:
        super().__init__(options, context)
        self.template = (
            options.template.with_zone(options.timezone) if options.template is not None else None
        )
        self.http = HttpClient(options, context)  # one connection pool for the sink's life

    def message(self, event: voltd.Event) -> dict[str, Any] | None:
        """The JSON posted for `event` (None: a template rendered nothing)."""
        try:
            return message_for(
                event,
                timezone=self.options.timezone,
                numbers=self.context.numbers,
                template=self.template,
            )
        except TemplateError as exc:  # this event can never render: a dead letter
            raise voltd.PermanentError(f"template: {exc}") from None

    def summary(self, events: Sequence[voltd.Event]) -> dict[str, Any] | None:
        """The JSON posted for a burst (None: a template rendered nothing for any)."""
        try:
            return summary_for(
                events,
                timezone=self.options.timezone,
                numbers=self.context.numbers,
                template=self.template,
            )
        except TemplateError as exc:  # voltd then tries the events one by one
            raise voltd.PermanentError(f"template: {exc}") from None

    async def send(self, event: voltd.Event) -> None:
        message = self.message(event)
        if message is not None:
            await self.post(message)

    async def send_batch(self, events: Sequence[voltd.Event]) -> None:
        message = self.summary(events)
        if message is not None:
            await self.post(message)

    async def post(self, message: Mapping[str, Any]) -> None:
        """POST one message; raise what Slack's answer means (`answer_error`)."""
        response = await self.http.request(
            "POST", self.options.webhook_url, json=message, check=False
        )
        error = answer_error(response, self.context.name)
        if error is not None:
            raise error

    async def aclose(self) -> None:
        await self.http.aclose()


@voltd.hookimpl
def register_sink_types(register: voltd.Register) -> None:
    register("slack", SlackSink)
