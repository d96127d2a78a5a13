"""The first-party `slack` sink (plugins/voltd_slack), against a Slack stand-in on 127.0.0.1.

No mocks: every message goes over loopback to a threaded HTTP server (the scripted server of
tests/test_http_helper.py) that records the exact JSON it got and answers as Slack's incoming
webhooks do: a plain-text `ok`, or an error word with its status. Every message a test sees is
checked with Slack's own Block Kit models (slack_sdk) and against Slack's limits by count.
Most tests go through `voltd.testing` (the real config loader and delivery worker); the burst,
the 429 pause, disabling and secrecy run the real daemon (`tests.helpers.Daemon`).
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from slack_sdk.models.blocks import Block
from voltd_slack import (
    MAX_MESSAGE_TEXT,
    SlackSink,
    answer_error,
    message_for,
    message_size,
    summary_for,
)

import voltd
import voltd.testing as vt
from tests.helpers import Daemon, examples, make_event
from tests.test_http_helper import Reply, ScriptedServer, Seen, SilentServer
from voltd.templates import Template

#: A recognisable token in the webhook's path: it must never show anywhere.
TOKEN = "XoxbT0kenNeverShown4242"
#: Our numbers as `SinkContext.numbers` has them (E.164 -> name), as `build_sink` configures.
NAMES = {number: name for name, number in vt.NUMBERS.items()}


# --------------------------------------------------------------------------------------------
# Slack's incoming webhook, on loopback


def slack_reply(
    status: int = 200, body: str = "ok", headers: dict[str, str] | None = None
) -> Reply:
    """An answer as Slack sends it: a plain word, served as text/html."""
    return Reply(status, {"Content-Type": "text/html", **(headers or {})}, body.encode())


@dataclass
class Post:
    at: float  # time.monotonic() when it was answered
    status: int
    path: str
    body: bytes

    @property
    def message(self) -> dict[str, Any]:
        doc = json.loads(self.body)
        assert isinstance(doc, dict)
        return doc


class SlackStandIn:
    """Records each POST with its time; answers with `replies` first (in order), then with
    `answer(seen)`, by default `200 ok`."""

    def __init__(self) -> None:
        self.server = ScriptedServer()
        self.posts: list[Post] = []
        self.replies: list[Reply] = []
        self.answer: Callable[[Seen], Reply] = lambda seen: slack_reply()
        self._lock = threading.Lock()
        self.server.script = self._script

    def _script(self, seen: Seen) -> Reply:
        with self._lock:
            reply = self.replies.pop(0) if self.replies else self.answer(seen)
            self.posts.append(Post(time.monotonic(), reply.status, seen.path, seen.body))
        return reply

    def url(self, token: str = TOKEN) -> str:
        return self.server.url(f"/services/T0VOLTD/B0SLACK/{token}")

    def ok(self) -> list[dict[str, Any]]:
        with self._lock:
            return [p.message for p in self.posts if p.status == 200]

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    s = SlackStandIn()
    yield s
    s.close()


def build(slack: SlackStandIn, **options: Any) -> SlackSink:
    sink = vt.build_sink("slack", {"webhook_url": slack.url(), **options})
    assert isinstance(sink, SlackSink)
    return sink


# --------------------------------------------------------------------------------------------
# What Slack would accept: its Block Kit models, and its limits counted independently


def _size(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _texts(value: Any) -> Iterator[tuple[str, str]]:
    """(type, text) of every text object in blocks."""
    if isinstance(value, dict):
        if value.get("type") in ("plain_text", "mrkdwn") and isinstance(value.get("text"), str):
            yield value["type"], value["text"]
        else:
            for v in value.values():
                yield from _texts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _texts(v)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
#: The links the sink itself makes (media); `<` and `>` anywhere else would be the payload's.
_OUR_LINK = re.compile(r"<https?://[^<>|\s]+\|media \d+>")


def validate(message: dict[str, Any]) -> None:
    """Slack would take `message`: valid JSON in UTF-8, Block Kit by slack_sdk's models,
    every limit kept (counted in UTF-16 units, at least what Slack counts)."""
    raw = json.dumps(message, ensure_ascii=False)
    raw.encode("utf-8")  # no lone surrogate: httpx could not even send it
    assert json.loads(raw) == message
    assert set(message) <= {"text", "blocks", "unfurl_links", "unfurl_media"}
    assert isinstance(message["text"], str) and message["text"].strip()
    blocks = message["blocks"]
    assert 1 <= len(blocks) <= 50
    for model, block in zip(Block.parse_all(blocks), blocks, strict=True):
        model.validate_json()  # raises SlackObjectFormationError
        assert model.to_dict() == block  # nothing unknown that the model would drop
        kind = block["type"]
        if kind == "header":
            assert block["text"]["type"] == "plain_text"
            assert 1 <= _size(block["text"]["text"]) <= 150
        elif kind == "section":
            assert "text" in block or block.get("fields")
            if "text" in block:
                assert 1 <= _size(block["text"]["text"]) <= 3000
            assert len(block.get("fields", [])) <= 10
            for item in block.get("fields", []):
                assert 1 <= _size(item["text"]) <= 2000
        elif kind == "context":
            assert 1 <= len(block["elements"]) <= 10
        else:
            pytest.fail(f"unexpected block {kind}")
    texts = [t for _, t in _texts(blocks)] + [message["text"]]
    total = sum(_size(t) for t in texts)
    assert total == message_size(message) and total <= MAX_MESSAGE_TEXT < 12_000
    for text in texts:
        assert not _CONTROL.search(text), text[:200]


def no_payload_markup(message: dict[str, Any]) -> None:
    """Nothing in the message can be a mention or a link made by the payload: in mrkdwn (and
    the fallback `text`, which Slack reads as mrkdwn) every `<`/`>` is a link of ours and every
    `&` an entity; plain_text is never parsed."""
    mrkdwn = [t for kind, t in _texts(message["blocks"]) if kind == "mrkdwn"]
    for text in [*mrkdwn, message["text"]]:
        bare = _OUR_LINK.sub("", text)
        assert "<" not in bare and ">" not in bare, bare[:300]
        assert "&" not in re.sub(r"&(amp|lt|gt);", "", bare), bare[:300]


def checked(message: dict[str, Any] | None) -> dict[str, Any]:
    assert message is not None
    validate(message)
    no_payload_markup(message)
    return message


def words(message: dict[str, Any]) -> str:
    """All the text a reader sees, as one string."""
    return "\n".join([message["text"], *(t for _, t in _texts(message["blocks"]))])


# --------------------------------------------------------------------------------------------
# Volt's examples, exactly


FAILED_MESSAGE = {
    "text": "Message to front-desk failed to deliver: Blocked as spam - temporary "
    "(provider 40002, Volt 702)",
    "blocks": [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": "Message to front-desk failed to deliver",
                "emoji": False,
            },
        },
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": "*Status*\n:x: failed"},
                {"type": "mrkdwn", "text": "*Direction*\nOutbound"},
                {"type": "mrkdwn", "text": "*From*\nsales (+15555550145)"},
                {"type": "mrkdwn", "text": "*To*\nfront-desk (+15555550123)"},
                {
                    "type": "mrkdwn",
                    "text": "*Error*\nBlocked as spam - temporary (provider 40002, Volt 702)",
                },
                {"type": "mrkdwn", "text": "*Carrier*\nT-MOBILE USA, INC."},
                {"type": "mrkdwn", "text": "*Time*\n2022-04-07 18:19:46 EDT"},
                {"type": "mrkdwn", "text": "*Type*\nSMS · 1 part"},
                {"type": "mrkdwn", "text": "*Event*\nmessage.finalized"},
            ],
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": "*Provider error detail*\nThe message was flagged by a SPAM filter and "
                "was not delivered. This is a temporary condition.",
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": "*Text*"}},
        {
            "type": "section",
            "text": {
                "type": "plain_text",
                "text": "Sending a message to myself to demonstrate using the GraphQL API",
                "emoji": False,
            },
        },
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": "Volt message `rf_o6aDxhawR227gt5wgZ2I` · event "
                    "`rfw_6962ccb5_eb7654690ec04a0593cc645fd2353995`",
                }
            ],
        },
    ],
    "unfurl_links": False,
    "unfurl_media": False,
}


async def test_volt_examples_become_exactly_these_messages(slack: SlackStandIn) -> None:
    delivered, failed = vt.volt_examples()
    sink = build(slack, timezone="America/New_York")
    for event in (failed, delivered):  # one at a time: `send`
        report = await vt.deliver(sink, [event])
        assert report.delivered == [event] and not report.dead and not report.pending
    await sink.aclose()
    assert [(p.status, p.path) for p in slack.posts] == [
        (200, f"/services/T0VOLTD/B0SLACK/{TOKEN}")
    ] * 2
    got_failed, got_delivered = (checked(m) for m in slack.ok())
    assert got_failed == FAILED_MESSAGE
    # The public helper gives the same JSON (README, `voltd demo`).
    assert message_for(failed, timezone="America/New_York", numbers=NAMES) == FAILED_MESSAGE
    # The delivered one: the same but for the header, the status and no error.
    delivered_message = json.loads(json.dumps(FAILED_MESSAGE))
    delivered_message["text"] = "Text delivered to front-desk"
    blocks = delivered_message["blocks"]
    blocks[0]["text"]["text"] = "Text delivered to front-desk"
    fields = blocks[1]["fields"]
    fields[0]["text"] = "*Status*\n:white_check_mark: delivered"
    del fields[4]  # *Error*
    del blocks[2]  # *Provider error detail*
    assert got_delivered == delivered_message
    # What a human needs, in words.
    text = words(got_failed)
    for needed in (
        "failed to deliver",
        "sales (+15555550145)",
        "Blocked as spam - temporary",
        "40002",
        "702",
        "flagged by a SPAM filter",
        "T-MOBILE USA, INC.",
        "rf_o6aDxhawR227gt5wgZ2I",
    ):
        assert needed in text, needed


async def test_the_two_examples_at_once_become_one_summary(slack: SlackStandIn) -> None:
    events = vt.volt_examples()
    sink = build(slack)
    report = await vt.deliver(sink, events)
    await sink.aclose()
    assert report.delivered == events
    (message,) = (checked(m) for m in slack.ok())
    assert message == summary_for(events, numbers=NAMES)
    assert message["text"] == "2 events: 1 delivered, 1 failed"
    text = words(message)
    assert ":x: failed: 1" in text and ":white_check_mark: delivered: 1" in text
    assert "*Our numbers*\nsales (+15555550145): 2" in text
    assert "• Blocked as spam - temporary (provider 40002, Volt 702): 1" in text
    listing = message["blocks"][-1]["text"]["text"]
    assert listing.startswith("*Events*\n`22:19:46` · :white_check_mark: delivered")
    assert listing.count("\n") == 2 and "more" not in listing


def test_headlines_say_what_happened() -> None:
    cases = [
        (dict(direction="inbound", status="received"), "New text to front-desk"),
        (
            dict(direction="inbound", status="received", our="+15555550177"),
            "New text to +15555550177",
        ),
        (
            dict(direction="outbound", status="delivered", event_type="message.finalized"),
            "Text delivered to +15555550199",
        ),
        (dict(direction="outbound", status="sent", event_type="message.sent"), "Text sent to"),
        (dict(direction="outbound", status="failed"), "Message to +15555550199 failed to deliver"),
        (dict(direction="outbound", status="queued"), "Text to +15555550199: queued"),
    ]
    for fields, headline in cases:
        message = checked(message_for(vt.make_event(**fields), numbers=NAMES))
        assert message["blocks"][0]["text"]["text"].startswith(headline), message["blocks"][0]


# --------------------------------------------------------------------------------------------
# Hostile payloads

HOSTILE = [
    "<!channel> everyone look",
    "<!here|here> and <@U024BE7LH> and <#C024BE7LR>",
    "<https://evil.example|click to claim your prize>",
    "already escaped &lt;!channel&gt; &amp; &gt;",
    "*bold* _it_ ~s~ `code` ```block``` > quote",
    "<script>alert('x')</script> <b>html</b> <img src=x onerror=alert(1)>",
    "emoji 😀👍🏽👨‍👩‍👧 and ❤️ :smile:",
    "العربية עברית \u202eevil.exe\u202c mixed",
    "nul\x00bell\x07 esc\x1b[31m del\x7f c1\x85 cr\r\nlf\n tab\t",
    "&" * 5000,
    "<" * 3000 + ">" * 3000,
    "x" * 100_000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=lambda t: repr(t[:24]))
def test_hostile_text_can_neither_ping_nor_link_nor_break_anything(text: str) -> None:
    inbound = vt.make_event(text=text, carrier_name=text, provider_error_title=text)
    failed = vt.make_event(
        direction="outbound",
        status="failed",
        text=text,
        provider_error_title=text,
        provider_error_detail=text,
        provider_error_code=text,
        error_code=text,
        carrier_name=text,
    )
    for event in (inbound, failed):
        message = checked(message_for(event, numbers=NAMES))
        plain = [t for kind, t in _texts(message["blocks"]) if kind == "plain_text"]
        shown = plain[-1]  # the SMS itself, exactly as sent but for control characters
        expected = re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", "", text.replace("\r\n", "\n"))
        if len(expected) <= 3000:
            assert shown == expected.strip()
        else:
            assert shown.endswith("…") and expected.startswith(shown[:-1])
            assert f"{len(expected):,} characters in all" in words(message)
    checked(summary_for([inbound, failed] * 3, numbers=NAMES))
    template = Template(
        "*{{ our_name }}*: {{ text }} ({{ payload.carrier_name }})", escape="mrkdwn"
    )
    checked(message_for(inbound, template=template))
    checked(summary_for([inbound, failed] * 30, template=template))


def test_escaping_cuts_never_split_an_entity_and_keep_emoji_and_rtl() -> None:
    # The fallback shows the start of an inbound text (120 units): wherever the cut falls
    # it ends before an entity or right after a whole one, never inside.
    ends = set()
    for n in range(99, 122):
        message = checked(message_for(vt.make_event(text="a" * n + "&<>" * 50), numbers=NAMES))
        end = message["text"].removesuffix("\u2069")
        assert end.endswith("…") and not re.search(r"&[a-z]{0,3}…$", end), end[-20:]
        ends.add("a" + end.partition("\u2068")[2].lstrip("a"))
    assert ends == {"a…", "a&amp;…", "a&amp;&lt;…", "a&amp;&lt;&gt;…", "a&amp;&lt;&gt;&amp;…"}
    rtl = "שלום \u202eעולם 😀 مرحبا"  # noqa: RUF001 - Hebrew, as an SMS may be
    message = checked(message_for(vt.make_event(text=rtl), numbers=NAMES))
    assert rtl in words(message)
    # In a line of ours the data is isolated: an RTL override cannot reorder the rest.
    assert f"\u2068{rtl}\u2069" in message["text"]


def test_media_become_safe_links() -> None:
    media = [
        "https://media.example/a.jpg?x=1&y=<2>",
        "javascript:alert(1)",
        "https://evil.example/|<!channel>",
        {"url": "http://m.example/b.png", "content_type": "image/png"},
        "https://has space.example/x",
        42,
    ]
    event = vt.make_event(text="", media=media, type="MMS")
    message = checked(message_for(event, numbers=NAMES))
    section = next(t for _, t in _texts(message["blocks"]) if t.startswith("*Media*"))
    assert section == (
        "*Media* (6)\n"
        "• <https://media.example/a.jpg?x=1&amp;y=&lt;2&gt;|media 1>\n"
        "• media 2 (not a web link)\n"
        "• <https://evil.example/%7C&lt;!channel&gt;|media 3>\n"
        "• <http://m.example/b.png|media 4>\n"
        "• media 5 (not a web link)\n"
        "• media 6 (not a web link)"
    )
    assert "*Type*\nMMS · 1 part · 6 media" in words(message)
    assert not any(t == "*Text*" for _, t in _texts(message["blocks"]))  # no empty text


def test_a_thousand_hostile_events_make_one_summary_within_the_limits() -> None:
    events = [
        vt.make_event(
            direction="outbound" if i % 3 else "inbound",
            status=f"<!here> status {i % 40}",
            our="+15555550123" if i % 2 else f"+1555555{i:04d}",
            their=f"+1666666{i:04d}",
            text=HOSTILE[i % len(HOSTILE)][:5000],
            provider_error_title=f"<!channel> error {i % 17} " + "&" * 300,
            provider_error_code="<1>",
            error_code="&2",
        )
        for i in range(1000)
    ]
    message = checked(summary_for(events, numbers=NAMES))
    header = message["blocks"][0]["text"]["text"]
    assert header.startswith("1000 events: ") and len(header) <= 150
    text = words(message)
    assert "*The first 10 of 1000*" in text and "…and 990 more" in text
    assert "*Other parties*\n1000 numbers" in text
    assert "front-desk (+15555550123): 500" in text
    assert "…and " in message["blocks"][1]["fields"][0]["text"]  # 40 statuses: the top shown


#: Any character, and often the ones that matter here: markup, entities, controls, lone
#: surrogates (valid in JSON, not in UTF-8), bidi overrides, emoji.
ALPHABET = st.one_of(
    st.characters(codec=None, exclude_categories=()),
    st.sampled_from(list("<>&;!|@#*_~`\n\r\t\x00\x1b\x85\u2028\u202e\ud800\udfff😀")),
)


@given(
    texts=st.lists(st.text(ALPHABET), min_size=1, max_size=4),
    others=st.lists(st.text(ALPHABET, max_size=300), min_size=3, max_size=3),
    size=st.integers(1, 60),
    outbound=st.booleans(),
)
@examples(50)
def test_property_any_payload_any_burst_stays_within_the_limits(
    texts: list[str], others: list[str], size: int, outbound: bool
) -> None:
    carrier, title, status = others
    events = [
        vt.make_event(
            direction="outbound" if outbound else "inbound",
            status=status,
            text=texts[i % len(texts)] * (1 + i % 3),
            carrier_name=carrier,
            provider_error_title=title,
            provider_error_detail=title * 10,
            error_code=carrier,
        )
        for i in range(size)
    ]
    checked(message_for(events[0], numbers=NAMES))
    checked(summary_for(events, numbers=NAMES, timezone="Asia/Kolkata"))
    template = Template("{{ status }}: {{ text }} {{ payload.carrier_name }}", escape="mrkdwn")
    rendered = summary_for(events, template=template)
    if rendered is not None:  # everything rendered to whitespace: nothing to post
        checked(rendered)


# --------------------------------------------------------------------------------------------
# Templates


async def test_a_template_replaces_the_message_with_escaped_values(slack: SlackStandIn) -> None:
    template = (
        "*{{ our_name }}* got a text from {{ their_number }} <!here>:\n"
        "> {{ text }}\n<https://crm.example/contacts|open the CRM>"
    )
    sink = build(slack, template=template)
    event = vt.make_event(text="<!channel> win <https://evil.example|here> & more")
    assert (await vt.deliver(sink, [event])).delivered == [event]
    (message,) = slack.ok()
    validate(message)
    expected = (
        "*front-desk* got a text from +15555550199 <!here>:\n"
        "> &lt;!channel&gt; win &lt;https://evil.example|here&gt; &amp; more\n"
        "<https://crm.example/contacts|open the CRM>"
    )
    assert message == {
        "text": expected,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": expected}}],
        "unfurl_links": False,
        "unfurl_media": False,
    }
    # A long output fills several sections, then is cut, never inside an entity.
    long = vt.make_event(text="&" * 20_000)
    assert (await vt.deliver(sink, [long])).delivered == [long]
    message = slack.ok()[-1]
    validate(message)
    sections = [b["text"]["text"] for b in message["blocks"]]
    assert len(sections) == 3 and sections[-1].endswith("&amp;…")
    await sink.aclose()


async def test_template_bursts_blank_outputs_and_render_errors(slack: SlackStandIn) -> None:
    sink = build(
        slack,
        template="{% if status != 'skip' %}{{ status }}: {{ payload.campaign }}{% endif %}",
    )
    tagged = [vt.make_event(status="received", campaign=f"c{i}") for i in range(60)]
    skipped = vt.make_event(status="skip")
    broken = vt.make_event(status="received")  # no campaign: cannot render
    report = await vt.deliver(sink, [*tagged, skipped])
    assert len(report.delivered) == 61
    (message,) = slack.ok()
    validate(message)
    sections = [b["text"]["text"] for b in message["blocks"] if b["type"] == "section"]
    assert sections[:2] == ["received: c0", "received: c1"] and len(sections) == 45
    assert message["blocks"][-1]["elements"][0]["text"] == "…and 15 more (60 events: 60 received)"
    assert message["text"] == "60 events: 60 received"
    # Whitespace only: nothing posted, delivered. A render error: that event alone is dead
    # (the summary's PermanentError makes voltd try the events one by one).
    report = await vt.deliver(sink, [skipped])
    assert report.delivered == [skipped] and len(slack.posts) == 1
    report = await vt.deliver(sink, [tagged[0], broken, tagged[1]])
    await sink.aclose()
    assert report.delivered == [tagged[0], tagged[1]]
    assert report.dead == [
        (broken, "PermanentError: template: line 1: 'dict object' has no attribute 'campaign'")
    ]
    assert [m["text"] for m in slack.ok()[1:]] == ["received: c0", "received: c1"]


# --------------------------------------------------------------------------------------------
# Slack's answers


GONE = "the sink is disabled: fix the webhook in Slack or webhook_url, then reload or run " + (
    "`voltd spool retry --sink test`"
)


@pytest.mark.parametrize(
    ("status", "body", "outcome", "says"),
    [
        (200, "ok", "delivered", ""),
        (200, "", "pending", "answered 200 without Slack's `ok`"),
        (400, "invalid_payload", "dead", "400 Bad Request: invalid_payload: Slack could not"),
        (400, "invalid_blocks", "dead", "400 Bad Request: invalid_blocks: Slack refused"),
        (400, "no_text", "dead", "400 Bad Request: no_text: Slack found no text"),
        (403, "invalid_token", "disabled", "403 Forbidden: invalid_token: the webhook's token"),
        (403, "action_prohibited", "disabled", "403 Forbidden: action_prohibited: an admin"),
        (404, "channel_not_found", "disabled", "404 Not Found: channel_not_found: the webhook's"),
        (404, "no_service", "disabled", "404 Not Found: no_service: the webhook is disabled"),
        (410, "channel_is_archived", "disabled", "410 Gone: channel_is_archived: the webhook's"),
        (404, "team_disabled", "disabled", "team_disabled: the Slack workspace is disabled"),
        (400, "no_active_hooks", "disabled", "no_active_hooks: the webhook's app has no"),
        (403, "something_new", "disabled", "403 Forbidden: something_new: Slack refuses"),
        (400, "something_new", "dead", "400 Bad Request: something_new: Slack refused"),
        (429, "rate_limited", "pending", "429 Too Many Requests (retry after 7s): rate_limited"),
        (500, "", "pending", "500 Internal Server Error"),
        (503, "service_unavailable", "pending", "503 Service Unavailable"),
    ],
)
async def test_answers_become_outcomes(
    slack: SlackStandIn, status: int, body: str, outcome: str, says: str
) -> None:
    slack.answer = lambda seen: slack_reply(status, body, {"Retry-After": "7"})
    sink = build(slack)
    event = vt.volt_examples()[1]
    report = await vt.deliver(sink, [event])
    got = {
        "delivered": [(e, "") for e in report.delivered],
        "dead": report.dead,
        "pending": [] if report.disabled else report.pending,  # disabled: its events wait
        "disabled": [(event, report.disabled)] if report.disabled else [],
    }
    assert [k for k, v in got.items() if v] == [outcome], report
    ((_, error),) = got[outcome]
    assert says in error, error
    if outcome == "disabled":
        assert error.startswith(f"EndpointGone: POST {slack.server.origin}: {status} ")
        assert error.endswith(GONE)
    if status == 429:
        with pytest.raises(voltd.RetryableError) as info:
            await sink.send(event)
        assert info.value.retry_after == 7.0  # voltd pauses the whole sink that long
    await sink.aclose()
    assert TOKEN not in error and "T0VOLTD" not in error


async def test_network_errors_and_timeouts_are_retried() -> None:
    silent = SilentServer()
    closed = ScriptedServer()
    closed_url = closed.url(f"/services/T/B/{TOKEN}")
    closed.close()
    try:
        for url, says in (
            (f"http://127.0.0.1:{silent.port}/services/T/B/{TOKEN}", "(timeout)"),
            (closed_url, "connection refused"),
        ):
            sink = vt.build_sink("slack", {"webhook_url": url, "timeout": "300ms"})
            report = await vt.deliver(sink, [vt.make_event()])
            await sink.aclose()
            ((_, error),) = report.pending
            assert error.startswith("RetryableError: POST http://127.0.0.1:") and says in error
            assert TOKEN not in error
    finally:
        silent.close()


def test_answer_error_reads_json_answers_too() -> None:
    request = httpx.Request("POST", f"https://hooks.slack.com/services/T/B/{TOKEN}")

    def answer(status: int, body: str) -> voltd.SinkError | None:
        return answer_error(httpx.Response(status, text=body, request=request), "chat")

    assert answer(200, '{"ok": true}') is None
    gone = answer(404, '{"ok": false, "error": "no_service"}')
    assert isinstance(gone, voltd.EndpointGone)
    assert str(gone).startswith("POST https://hooks.slack.com: 404 Not Found: ")
    assert "`voltd spool retry --sink chat`" in str(gone)
    # A body echoing the URL has the token redacted by voltd.http.
    echoed = answer(400, f"bad url /services/T/B/{TOKEN}")
    assert isinstance(echoed, voltd.PermanentError) and TOKEN not in str(echoed)


async def test_bursts_go_as_one_message_and_a_refused_one_goes_event_by_event(
    slack: SlackStandIn,
) -> None:
    # 2,000 waiting events: two summaries (max_batch 1000), each counted when Slack says ok.
    events = [vt.make_event(text=f"burst {i}") for i in range(2000)]
    sink = build(slack)
    report = await vt.deliver(sink, events, wait=30)
    assert len(report.delivered) == 2000 and not report.pending and not report.dead
    assert [m["text"] for m in slack.ok()] == ["1000 new texts to front-desk"] * 2
    for message in slack.ok():
        checked(message)

    # A summary Slack refuses (it should never happen): the events go one by one.
    slack.posts.clear()
    slack.answer = lambda seen: (
        slack_reply(400, "invalid_blocks")
        if json.loads(seen.body)["text"].startswith("3 ")
        else slack_reply()
    )
    three = [vt.make_event(text=f"one of three {i}") for i in range(3)]
    report = await vt.deliver(sink, three)
    await sink.aclose()
    assert report.delivered == three
    assert [p.status for p in slack.posts] == [400, 200, 200, 200]


# --------------------------------------------------------------------------------------------
# Options and the plugin contract


def config_error(options: dict[str, Any]) -> str:
    with pytest.raises(vt.ConfigError) as info:
        vt.build_sink("slack", options)
    return str(info.value)


def test_webhook_url_is_checked_and_never_shown() -> None:
    assert "sinks.test.webhook_url: missing; this key is required" in config_error({})
    for url in (
        f"http://hooks.slack.com/services/T/B/{TOKEN}",  # http only for loopback
        f"ftp://hooks.slack.com/services/T/B/{TOKEN}",
        f"https:///services/T/B/{TOKEN}",
        f"https://hooks.slack.com/services/T/B/{TOKEN} x",
        f"hooks.slack.com/services/T/B/{TOKEN}",
        f"https://hooks.slack.com:port/{TOKEN}",
        f"http://127.0.0.2.example/{TOKEN}",
    ):
        error = config_error({"webhook_url": url})
        assert "sinks.test.webhook_url: expected an https:// URL with a host" in error, error
        assert TOKEN not in error
    for url in (
        f"https://hooks.slack.com/services/T/B/{TOKEN}",
        f"http://127.0.0.1:9/{TOKEN}",
        f"http://[::1]:9/{TOKEN}",
        f"http://localhost/{TOKEN}",
    ):
        sink = vt.build_sink("slack", {"webhook_url": url})
        assert TOKEN not in repr(sink.options)
    assert "sinks.test.timezone: expected an IANA time zone" in config_error(
        {"webhook_url": "https://hooks.slack.com/x", "timezone": "Mars/Olympus"}
    )
    assert "sinks.test.template: line 1: unknown variable 'txet'" in config_error(
        {"webhook_url": "https://hooks.slack.com/x", "template": "{{ txet }}"}
    )


def test_options_and_class_attributes() -> None:
    assert (SlackSink.default_rate, SlackSink.max_batch) == ("1/s", 1000)
    assert SlackSink.allows_concurrency is False
    assert {"webhook_url", "template", "timezone", "timeout", "ca_file", "verify_tls"} <= set(
        SlackSink.Options.model_fields
    )
    for name, info in SlackSink.Options.model_fields.items():
        assert info.description, name
    sink = vt.build_sink("slack", {"webhook_url": "https://hooks.slack.com/services/T/B/x"})
    assert sink.options.timezone.key == "UTC" and sink.options.template is None
    # One message after another: voltd refuses a concurrency the sink does not allow.
    assert "concurrency" in config_error(
        {"webhook_url": "https://hooks.slack.com/services/T/B/x", "concurrency": 4}
    )


async def test_follows_the_plugin_contract(slack: SlackStandIn) -> None:
    await vt.check_sink(build(slack))
    slack.answer = lambda seen: slack_reply(500, "")
    await vt.check_sink(build(slack))
    slack.answer = lambda seen: slack_reply(404, "no_service")
    await vt.check_sink(build(slack, template="{{ text }}"))
    slack.answer = lambda seen: slack_reply()
    hostile = [vt.make_event(text=t, status=t[:50]) for t in HOSTILE]
    await vt.check_sink(build(slack), hostile)  # 100,000 characters: still no blocking
    assert all(p.status == 200 for p in slack.posts[-len(hostile) - 1 :])


# --------------------------------------------------------------------------------------------
# The real daemon


def slack_config(slack: SlackStandIn, extra: str = "") -> str:
    return f"""
[[routes]]
name = "to slack"
sinks = ["chat"]

[sinks.chat]
type = "slack"
webhook_url = "{slack.url()}"
timezone = "Europe/Berlin"
retry = {{ max_delay = "5s" }}
{extra}
"""


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voltd", *args, "-c", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def spool_status(daemon: Daemon) -> dict[str, Any]:
    done = cli(daemon, "spool", "status", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert TOKEN not in done.stdout
    return doc["sinks"]["chat"]


def covered(message: dict[str, Any]) -> int:
    """How many events one message covers: a summary's header starts with the count."""
    m = re.match(r"(\d+) ", message["blocks"][0]["text"]["text"])
    return int(m.group(1)) if m else 1


@pytest.mark.slow
def test_daemon_burst_of_2000_becomes_few_messages_and_429_pauses_the_sink(
    daemon: Daemon, slack: SlackStandIn
) -> None:
    answered = [0]

    def answer(seen: Seen) -> Reply:
        answered[0] += 1
        if answered[0] == 3:  # one 429 in the middle of the burst
            return slack_reply(429, "rate_limited", {"Retry-After": "2"})
        return slack_reply()

    slack.answer = answer
    daemon.configure(body=slack_config(slack))
    checked_config = cli(daemon, "check")
    assert checked_config.returncode == 0, checked_config.stderr
    line = next(x for x in checked_config.stdout.splitlines() if "chat: slack" in x)
    assert '"webhook_url": "***"' in line
    assert TOKEN not in checked_config.stdout + checked_config.stderr

    daemon.start()
    bodies = [
        make_event(text=f"burst {i} <!channel>", their=f"+1555444{i % 97:04d}")
        for i in range(2000)
    ]

    def post_all(part: list[bytes]) -> None:
        with httpx.Client(verify=daemon.tls(), timeout=30) as client:
            for body in part:
                signature = daemon.signer.sign(body)
                response = client.post(
                    daemon.url,
                    content=body,
                    headers={
                        "Content-Type": "application/json",
                        "X-Respond-Flow-Signature": signature,
                    },
                )
                assert response.status_code == 200, response.text

    with ThreadPoolExecutor(4) as pool:
        for result in pool.map(post_all, [bodies[i::4] for i in range(4)]):
            assert result is None

    def all_delivered() -> bool:
        return sum(covered(m) for m in slack.ok()) >= 2000

    daemon.wait_for(all_delivered, timeout=40)
    status = spool_status(daemon)
    assert status["pending"] == 0 and status["dead"] == 0, status
    messages = slack.ok()
    assert sum(covered(m) for m in messages) == 2000  # each event in exactly one message
    assert len(slack.posts) < 30, len(slack.posts)
    for message in messages:
        checked(message)
    # The rate (1/s) between posts, and the 429's Retry-After before the next one.
    times = [p.at for p in slack.posts]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.8, gaps
    (throttled,) = [i for i, p in enumerate(slack.posts) if p.status == 429]
    assert gaps[throttled] >= 1.9, gaps
    assert daemon.stop() == 0
    log = "\n".join(daemon.log)
    assert "429 Too Many Requests (retry after 2s): rate_limited" in log
    assert TOKEN not in log


@pytest.mark.slow
def test_daemon_disables_the_sink_when_the_webhook_is_gone_and_says_why(
    daemon: Daemon, slack: SlackStandIn
) -> None:
    slack.answer = lambda seen: slack_reply(404, "no_service")
    daemon.configure(body=slack_config(slack))
    daemon.start()
    assert daemon.post(make_event(text="first")).status_code == 200
    daemon.wait_for(lambda: bool(slack.posts), timeout=10)
    daemon.wait_for(lambda: spool_status(daemon)["state"] == "disabled", timeout=10)
    assert daemon.post(make_event(text="second")).status_code == 200
    time.sleep(1.5)
    assert len(slack.posts) == 1  # nothing more is tried while disabled
    status = spool_status(daemon)
    assert status["pending"] == 2
    assert status["reason"] == (
        f"EndpointGone: POST {slack.server.origin}: 404 Not Found: no_service: the webhook is "
        "disabled, removed or not valid; the sink is disabled: fix the webhook in Slack or "
        "webhook_url, then reload or run `voltd spool retry --sink chat`"
    )
    # Fixed in Slack; `voltd spool retry --sink chat` sends what waited (two: one summary).
    slack.answer = lambda seen: slack_reply()
    assert cli(daemon, "spool", "retry", "--sink", "chat").returncode == 0
    daemon.wait_for(lambda: sum(covered(m) for m in slack.ok()) == 2, timeout=10)
    assert daemon.stop() == 0
    log = "\n".join(daemon.log)
    assert "sink chat: disabled, its endpoint is gone" in log and TOKEN not in log
