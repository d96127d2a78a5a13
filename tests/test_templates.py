"""`voltd.templates`: message templates over plain event data, checked at config load.

Everything is real: events parsed from Volt's own examples and from envelopes built like
Volt's, jinja2's sandbox, pydantic validation of a sink's options and voltd's own wording of
option errors.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import pydantic
import pytest

import voltd
from voltd.config import validation_problems
from voltd.events import Event, parse, with_names
from voltd.templates import (
    DEFAULT_MAX_LENGTH,
    NAMES,
    ZONE_EXPECTED,
    HtmlTemplate,
    MrkdwnTemplate,
    Template,
    TemplateError,
    TemplateSpec,
    TextTemplate,
    TimeZone,
    escape_mrkdwn,
    get_zone,
    template_data,
)

EXAMPLES = Path(voltd.__file__).parent / "examples"
#: The examples' envelope `time`: 2022-04-07 22:19:46 UTC, 18:19:46 in New York (EDT).
EXAMPLE_TIME = 1649369986

HOSTILE = [
    "<!channel>",
    "<!here|here>",
    "<https://evil.example|click here>",
    "<@U012AB3CD>",
    "Tom & Jerry &amp; &lt;b&gt;",
    "<script>alert('x')</script>",
    "\"quoted\" 'single'",
    "nul\x00byte",
    "rtl \u202etxt.exe\u202c and \u200f marks",
    "emoji 👩\u200d👩\u200d👧 🇩🇪 ❤️",
    "{{ 7*7 }} {% if %}",  # template syntax in the data is just text
]


def envelope_bytes(
    *,
    direction: str = "inbound",
    our: str = "+15555550123",
    their: str = "+15555550199",
    text: str = "hello",
    when: int | None = EXAMPLE_TIME,
) -> bytes:
    """An envelope shaped like Volt's, as JSON bytes."""
    frm, to = (their, our) if direction == "inbound" else (our, their)
    envelope: dict[str, Any] = {
        "type": "messaging",
        "id": "rfw_test_0001",
        "payload": {
            "id": "rf_test0001",
            "to_number": to,
            "from_number": frm,
            "type": "SMS",
            "text": text,
            "status": "received" if direction == "inbound" else "delivered",
            "event_type": "message.received" if direction == "inbound" else "message.sent",
            "direction": direction,
            "carrier_name": "T-MOBILE USA, INC.",
            "error_code": None,
            "media": [],
        },
    }
    if when is not None:
        envelope["time"] = when
    return json.dumps(envelope).encode()


def example(name: str) -> Event:
    event = parse((EXAMPLES / name).read_bytes())
    assert isinstance(event, Event)
    return event


def event_with(**kw: Any) -> Event:
    event = parse(envelope_bytes(**kw))
    assert isinstance(event, Event)
    return event


def data_for(text: str, **kw: Any) -> dict[str, Any]:
    return template_data(event_with(text=text, **kw))


def is_plain(value: Any) -> bool:
    if value is None or type(value) in (str, int, float, bool):
        return True
    if type(value) is list:
        return all(is_plain(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and is_plain(v) for k, v in value.items())
    return False


# --------------------------------------------------------------------------------------------
# The data templates see


def test_template_data_is_plain_data_with_exactly_the_documented_names() -> None:
    event = example("finalized-delivered.json")
    data = template_data(event)
    assert set(data) == NAMES
    assert is_plain(data)
    assert data["event"] == json.loads(event.raw)
    assert data["payload"] == data["event"]["payload"]
    assert data["our_number"] == "+15555550145"  # outbound: we sent it
    assert data["their_number"] == "+15555550123"
    assert data["direction"] == "outbound"
    assert data["status"] == "delivered"
    assert data["event_type"] == "message.finalized"
    assert data["text"] == "Sending a message to myself to demonstrate using the GraphQL API"
    assert data["received"] == "2022-04-07T22:19:46+00:00"
    assert data["our_name"] is None


def test_template_data_is_a_fresh_copy_each_time() -> None:
    event = example("finalized-delivered.json")
    first = template_data(event)
    first["payload"]["status"] = "changed"
    first["event"]["payload"]["media"].append("x")
    again = template_data(event)
    assert again["payload"]["status"] == "delivered"
    assert again["event"]["payload"]["media"] == []
    assert event.payload["status"] == "delivered"


def test_our_name_comes_from_the_event_or_from_numbers() -> None:
    event = event_with(direction="inbound", our="+15555550123")
    assert template_data(event)["our_name"] is None
    assert template_data(event, numbers={"+15555550123": "front-desk"})["our_name"] == (
        "front-desk"
    )
    named = with_names(event_with(our="+15555550123"), {"+15555550123": "lobby"})
    assert template_data(named)["our_name"] == "lobby"
    assert template_data(named, numbers={"+15555550123": "other"})["our_name"] == "lobby"


def test_received_is_none_without_a_time_and_in_the_zone_given() -> None:
    assert template_data(event_with(when=None))["received"] is None
    ny = template_data(example("finalized-failed.json"), timezone="America/New_York")
    assert ny["received"] == "2022-04-07T18:19:46-04:00"
    with pytest.raises(ValueError, match="IANA time zone"):
        template_data(example("finalized-failed.json"), timezone="Nowhere/Special")


# --------------------------------------------------------------------------------------------
# Volt's examples


SLACK_MESSAGE = """\
*{{ direction | title }} SMS* {{ our_name or our_number }} ↔ {{ their_number }} \
({{ received | localtime("%H:%M %Z") }})
>{{ text | shorten(200) }}
{% if status == "failed" %}:x: {{ payload.provider_error_title }} \
(code {{ payload.error_code }}, {{ payload.carrier_name }}){% else %}:white_check_mark: \
{{ status }}{% endif %}
<https://app.example.com/messages/{{ payload.id }}|open>"""


def test_volt_examples_render_in_every_mode() -> None:
    delivered = template_data(example("finalized-delivered.json"), timezone="America/New_York")
    failed = template_data(example("finalized-failed.json"), timezone="America/New_York")
    for escape in ("text", "html", "mrkdwn"):
        t = Template(SLACK_MESSAGE, escape=escape, zone="America/New_York")  # type: ignore[arg-type]
        ok = t.render(delivered)
        assert ok.startswith("*Outbound SMS* +15555550145 ↔ +15555550123 (18:19 EDT)\n")
        assert ":white_check_mark: delivered" in ok
        assert ok.endswith("<https://app.example.com/messages/rf_o6aDxhawR227gt5wgZ2I|open>")
        bad = t.render(failed)
        assert ":x: Blocked as spam - temporary (code 702, T-MOBILE USA" in bad
        if escape == "text":
            assert "T-MOBILE USA, INC.)" in bad


def test_none_renders_as_nothing() -> None:
    failed = template_data(example("finalized-failed.json"))
    assert Template("[{{ payload.received_at }}]").render(failed) == "[]"
    assert Template("[{{ payload.received_at }}]", escape="html").render(failed) == "[]"
    assert Template("[{{ our_name }}]", escape="mrkdwn").render(failed) == "[]"


# --------------------------------------------------------------------------------------------
# Escaping


@pytest.mark.parametrize("text", HOSTILE)
def test_mrkdwn_escapes_data_so_it_cannot_ping_or_link(text: str) -> None:
    t = Template("<https://app.example.com|open> *{{ their_number }}*: {{ text }}", escape="mrkdwn")
    out = t.render(data_for(text))
    head = "<https://app.example.com|open> *+15555550199*: "
    assert out.startswith(head)  # literal template markup is untouched
    shown = out[len(head) :]
    assert shown == escape_mrkdwn(text)
    assert "<" not in shown and ">" not in shown
    assert "&" not in shown.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")
    assert "'" in shown or "'" not in text  # only & < > are escaped for Slack


def test_mrkdwn_escaping_of_the_classic_attacks() -> None:
    t = Template("{{ text }}", escape="mrkdwn")
    assert t.render(data_for("<!channel>")) == "&lt;!channel&gt;"
    assert t.render(data_for("<https://evil|click>")) == "&lt;https://evil|click&gt;"
    assert t.render(data_for("a & b")) == "a &amp; b"
    assert t.render(data_for("&lt;!here&gt;")) == "&amp;lt;!here&amp;gt;"  # no double meaning


@pytest.mark.parametrize("text", HOSTILE)
def test_html_escapes_data(text: str) -> None:
    t = Template("<p title='{{ our_number }}'>{{ text }}</p>", escape="html")
    out = t.render(data_for(text))
    assert out.startswith("<p title='+15555550123'>") and out.endswith("</p>")
    shown = out[len("<p title='+15555550123'>") : -len("</p>")]
    assert "<" not in shown and ">" not in shown and "'" not in shown and '"' not in shown
    assert "<script>" not in out


@pytest.mark.parametrize("text", HOSTILE)
def test_text_mode_leaves_data_alone(text: str) -> None:
    assert Template("{{ text }}").render(data_for(text)) == text


@pytest.mark.parametrize("escape", ["html", "mrkdwn"])
def test_escaping_cannot_be_turned_off_by_the_template(escape: str) -> None:
    data = data_for("<!channel> <script>")
    off = Template(
        "{% autoescape false %}{{ text }}{% endautoescape %}",
        escape=escape,  # type: ignore[arg-type]
    )
    assert "<" not in off.render(data)
    with pytest.raises(TemplateError, match="line 1: No filter named 'safe'"):
        Template("{{ text | safe }}", escape=escape)  # type: ignore[arg-type]


@pytest.mark.parametrize("escape", ["html", "mrkdwn"])
def test_macros_and_blocks_are_escaped_once(escape: str) -> None:
    src = (
        "{% macro quote(t) %}>{{ t }}{% endmacro %}"
        "{% set block %}{{ text }}{% endset %}"
        "{{ quote(text) }}|{{ block }}|{{ text ~ '!' }}"
    )
    out = Template(src, escape=escape).render(data_for("a & <b>"))  # type: ignore[arg-type]
    assert out == ">a &amp; &lt;b&gt;|a &amp; &lt;b&gt;|a &amp; &lt;b&gt;!"


def test_string_literals_in_expressions_are_escaped_too() -> None:
    data = data_for("x")
    assert Template("{{ '<!here>' }} <!here>", escape="mrkdwn").render(data) == (
        "&lt;!here&gt; <!here>"
    )


def test_html_producing_filters_are_only_in_html_mode() -> None:
    with pytest.raises(TemplateError, match="No filter named 'urlize'"):
        Template("{{ text | urlize }}", escape="mrkdwn")
    out = Template("{{ text | urlize }}", escape="html").render(data_for("see https://x.test <"))
    assert '<a href="https://x.test"' in out and out.endswith("&lt;")
    with pytest.raises(TemplateError, match="unknown variable 'lipsum'"):
        Template("{{ lipsum() }}", escape="mrkdwn")


def test_100k_characters_of_text_are_capped() -> None:
    text = "ab<c>&" * 20_000  # 120k characters
    data = data_for(text)
    for escape in ("text", "html", "mrkdwn"):
        t = Template("SMS: {{ text }}", escape=escape, max_length=3000)  # type: ignore[arg-type]
        out = t.render(data)
        assert len(out) <= 3000 and out.endswith("…")
        if escape != "text":
            assert not out[:-1].rstrip("abc").endswith("&")  # never cut inside an entity
    full = Template("{{ text }}").render(data)
    assert full == text[: DEFAULT_MAX_LENGTH - 1] + "…"


# --------------------------------------------------------------------------------------------
# Length cap


def test_length_cap_is_exact_and_ends_with_an_ellipsis() -> None:
    data = data_for("0123456789")
    assert Template("{{ text }}", max_length=10).render(data) == "0123456789"
    assert Template("{{ text }}", max_length=9).render(data) == "01234567…"
    assert Template("{{ text }}!", max_length=5).render(data) == "0123…"
    with pytest.raises(ValueError, match="max_length"):
        Template("x", max_length=0)


def test_length_cap_never_splits_an_entity_or_a_tag() -> None:
    data = data_for("&&&&&&&&&&")
    out = Template("{{ text }}", escape="html", max_length=12).render(data)
    assert out == "&amp;&amp;…"
    out = Template("ab <https://x.test|link> cd", escape="mrkdwn", max_length=10).render(data)
    assert out == "ab …"


def test_a_long_loop_stops_at_the_cap() -> None:
    t = Template("{% for i in range(100000) %}{{ text }}{% endfor %}", max_length=1000)
    start = time.monotonic()
    out = t.render(data_for("x" * 10_000))
    assert len(out) == 1000
    assert time.monotonic() - start < 2


# --------------------------------------------------------------------------------------------
# Mistakes, found when the template is parsed


def test_unknown_variable_names_its_line_and_suggests() -> None:
    with pytest.raises(TemplateError) as info:
        Template("Status:\n\n{{ staus }}\n")
    message = str(info.value)
    assert message.startswith("line 3: unknown variable 'staus' (did you mean 'status'?")
    assert "text" in message  # the known names are listed


def test_names_set_in_the_template_and_extra_names_are_known() -> None:
    Template(
        "{% set who = our_name or our_number %}{{ who }}{% for m in payload.media %}"
        "{{ loop.index }}{{ m }}{% endfor %}{{ range(2) | list }}"
    )
    with pytest.raises(TemplateError, match="unknown variable 'events'"):
        Template("{{ events | length }}")
    t = Template("{{ events | length }} events", names=["events"])
    assert t.render({**data_for("x"), "events": [1, 2]}) == "2 events"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("Hello\n\n{{ text } }}", "line 3: unexpected '}'"),
        ("a\n{% if status %}\nb\nc", "line 2: Unexpected end of template"),
        ("a\n{% for x in %}{% endfor %}", "line 2: Expected an expression"),
        ("a\n\n\n{{ text | shout }}", "line 4: No filter named 'shout'"),
        ("a\n{% if text is shouting %}{% endif %}", "line 2: No test named 'shouting'"),
        ("{% frobnicate %}", "line 1: Encountered unknown tag 'frobnicate'"),
        ("a\n{% if text %}\n{{ text | shout }}{% endif %}", "line 3: No filter named 'shout'"),
        ("x\n{{ ''.__class__ }}", "line 2: attribute '__class__' is not allowed"),
        ("x\n{% include 'other' %}", "line 2: {% include %} is not available"),
        ("{% extends 'base' %}", "line 1: {% extends %} is not available"),
        ("\n{% from 'm' import x %}", "line 2: {% from … import %} is not available"),
    ],
)
def test_syntax_errors_name_the_line(source: str, expected: str) -> None:
    with pytest.raises(TemplateError) as info:
        Template(source)
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_template_error_is_a_value_error_without_a_cause() -> None:
    with pytest.raises(ValueError) as info:
        Template("{{ staus }}")
    assert isinstance(info.value, TemplateError)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


# --------------------------------------------------------------------------------------------
# Mistakes found while rendering


def test_missing_payload_key_fails_with_its_line() -> None:
    t = Template("From {{ their_number }}\nSent {{ payload.sent_att }}")
    with pytest.raises(TemplateError) as info:
        t.render(template_data(example("finalized-delivered.json")))
    assert str(info.value) == "line 2: 'dict object' has no attribute 'sent_att'"


def test_optional_keys_can_be_tested_or_defaulted() -> None:
    t = Template(
        "{% if payload.nope is defined %}yes{% else %}no{% endif %} "
        "{{ payload.nope | default('-') }} {{ payload.get('nope', '?') }}"
    )
    assert t.render(template_data(example("finalized-delivered.json"))) == "no - ?"


def test_render_errors_never_contain_the_data_or_the_output() -> None:
    secret_sms = "my PIN is 482913, please call"
    data = data_for(secret_sms)
    cases = [
        "Rendered so far {{ text }}\n{{ payload[text] }}",
        "{{ text }}\n{{ text + 1 }}",
        "{{ text }}{{ '{0[' ~ text ~ ']}' | format(payload) }}",
        "{{ text }}\n{{ 1 / 0 }}",
    ]
    for src in cases:
        with pytest.raises(TemplateError) as info:
            Template(src).render(data)
        message = str(info.value)
        assert secret_sms not in message and "482913" not in message, (src, message)
        assert message.startswith("line "), message
        assert len(message) <= 210 and "\n" not in message


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ event.__class__ }}",
        "{{ ''['__class__'] }}",
        "{{ payload | attr('__class__') }}",
        "{{ (text|attr('__class__')).__mro__ }}",
        "{{ range.__self__ }}",
        "{{ event.payload.media.append(1) }}",
        "{{ payload.update({'status': 'x'}) }}",
        "{{ payload.pop('status') }}",
        "{{ event.payload.clear() }}",
        "{{ payload.setdefault('x', 1) }}",
        "{{ text.format.__globals__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ 'a' * 100000000 }}",
        "{{ 9 ** 99999999 }}",
        "{% for i in range(10 ** 9) %}{% endfor %}",
        "{{ namespace.__init__ }}",
    ],
)
def test_sandbox_escapes_fail_with_template_error(source: str) -> None:
    data = template_data(example("finalized-delivered.json"))
    before = json.dumps(data, sort_keys=True)
    with pytest.raises(TemplateError) as info:
        Template(source).render(data)
    assert "Traceback" not in str(info.value)
    assert str(info.value).startswith("line 1: "), str(info.value)
    assert json.dumps(data, sort_keys=True) == before  # nothing was changed


def test_a_render_error_leaves_the_template_usable() -> None:
    t = Template("{{ payload.maybe }}")
    with pytest.raises(TemplateError):
        t.render({**data_for("x"), "payload": {}})
    assert t.render({**data_for("x"), "payload": {"maybe": "yes"}}) == "yes"


# --------------------------------------------------------------------------------------------
# Time zones and filters


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        ("UTC", "2022-04-07 22:19:46 UTC|22:19 UTC|2022-04-07T22:19:46+00:00"),
        ("America/New_York", "2022-04-07 18:19:46 EDT|18:19 EDT|2022-04-07T18:19:46-04:00"),
        ("Asia/Kolkata", "2022-04-08 03:49:46 IST|03:49 IST|2022-04-08T03:49:46+05:30"),
    ],
)
def test_a_fixed_time_in_several_zones(zone: str, expected: str) -> None:
    event = example("finalized-delivered.json")
    assert event.time == EXAMPLE_TIME
    data = template_data(event, timezone=zone)
    t = Template(
        "{{ event.time | localtime }}|{{ received | localtime('%H:%M %Z') }}|{{ received }}",
        zone=zone,
    )
    assert t.render(data) == expected


def test_localtime_reads_iso_strings_and_unix_seconds() -> None:
    data = template_data(example("finalized-delivered.json"))
    t = Template(
        "{{ payload.sent_at | localtime('%H:%M:%S.%f') }}|{{ 0 | localtime('%Y %Z') }}|"
        "{{ '2022-01-15T12:00:00' | localtime }}|{{ '2022-01-15T12:00:00Z' | localtime }}|"
        "{{ '1649369986' | localtime('%H:%M') }}",
        zone="America/New_York",
    )
    assert t.render(data) == (
        "18:19:44.985000|1969 EST|2022-01-15 07:00:00 EST|2022-01-15 07:00:00 EST|18:19"
    )


def test_localtime_leaves_what_is_not_a_time_alone() -> None:
    data = template_data(example("finalized-failed.json"))
    t = Template(
        "[{{ payload.received_at | localtime }}]{{ 'soon' | localtime }}"
        "{{ true | localtime }}{{ 1e300 | localtime }}"
    )
    assert t.render(data) == "[]soonTrue1e+300"
    with pytest.raises(TemplateError, match="line 1: 'dict object' has no attribute 'nope'"):
        Template("{{ payload.nope | localtime }}").render(data)


def test_with_zone_gives_the_same_template_in_another_zone() -> None:
    data = template_data(example("finalized-delivered.json"))
    utc = Template("{{ received | localtime('%H:%M') }}", escape="mrkdwn", max_length=50)
    berlin = utc.with_zone("Europe/Berlin")
    assert (utc.render(data), berlin.render(data)) == ("22:19", "00:19")
    assert (berlin.escape, berlin.max_length, berlin.zone) == (
        "mrkdwn",
        50,
        ZoneInfo("Europe/Berlin"),
    )
    assert berlin != utc and berlin == utc.with_zone(ZoneInfo("Europe/Berlin"))
    assert hash(berlin) == hash(utc.with_zone("Europe/Berlin"))


def test_shorten() -> None:
    data = data_for("Hello wonderful world")
    assert Template("{{ text | shorten(11) }}").render(data) == "Hello wond…"
    assert Template("{{ text | shorten(100) }}").render(data) == "Hello wonderful world"
    assert Template("{{ text | shorten(8, '...') }}").render(data) == "Hello..."
    assert Template("{{ our_name | shorten(3) }}").render(data) == ""
    with pytest.raises(TemplateError, match="line 1: shorten needs a length of at least 1"):
        Template("{{ text | shorten(0) }}").render(data)


def test_get_zone() -> None:
    assert get_zone("Europe/Berlin") == ZoneInfo("Europe/Berlin")
    for bad in ["", "Mars/Olympus", "../../etc/passwd", "Europe/Berlin\x00", "/etc/localtime"]:
        with pytest.raises(ValueError, match="expected an IANA time zone"):
            get_zone(bad)
    with pytest.raises(ValueError, match="expected an IANA time zone"):
        Template("x", zone="Atlantis")


# --------------------------------------------------------------------------------------------
# Options of a sink


class SlackLike(voltd.SinkOptions):
    template: MrkdwnTemplate = pydantic.Field(
        "{{ their_number }}: {{ text }}", validate_default=True, description="the message"
    )
    subject: TextTemplate = pydantic.Field("SMS from {{ their_number }}", validate_default=True)
    html: HtmlTemplate | None = None
    digest: Annotated[Template, TemplateSpec("text", max_length=30, names=("events",))] | None = (
        None
    )
    timezone: TimeZone = pydantic.Field("UTC", validate_default=True, description="zone")


def problems(**options: Any) -> list[str]:
    with pytest.raises(pydantic.ValidationError) as info:
        SlackLike(**options)
    return validation_problems("voltd.toml", "sinks.slack", info.value, model=SlackLike)


def test_options_turn_strings_into_checked_templates_and_zones() -> None:
    opts = SlackLike(
        template="*{{ our_name }}* {{ text }}",
        html="<p>{{ text }}</p>",
        digest="{{ events | length }} new",
        timezone="America/New_York",
    )
    assert isinstance(opts.template, Template) and opts.template.escape == "mrkdwn"
    assert opts.subject.escape == "text" and opts.html is not None and opts.html.escape == "html"
    assert opts.digest is not None and opts.digest.max_length == 30
    assert opts.timezone == ZoneInfo("America/New_York")
    data = template_data(example("finalized-delivered.json"), timezone=opts.timezone)
    assert (
        opts.template.render(data)
        == "** Sending a message to myself to demonstrate using the GraphQL API"
    )
    assert opts.html.render({**data, "text": "<b>"}) == "<p>&lt;b&gt;</p>"
    assert opts.digest.render({**data, "events": [1] * 3}) == "3 new"
    # The defaults are checked templates too, and the model dumps back to what was written.
    assert (
        SlackLike().template.render(data)
        == "+15555550123: Sending a message to myself to demonstrate using the GraphQL API"
    )
    assert opts.model_dump() == {
        "template": "*{{ our_name }}* {{ text }}",
        "subject": "SMS from {{ their_number }}",
        "html": "<p>{{ text }}</p>",
        "digest": "{{ events | length }} new",
        "timezone": "America/New_York",
    }
    assert SlackLike(**opts.model_dump()) == opts
    schema = SlackLike.model_json_schema()["properties"]
    assert schema["template"]["type"] == "string" and schema["timezone"]["type"] == "string"
    assert schema["template"]["description"] == "the message"


def test_option_with_a_template_mistake_names_the_line() -> None:
    assert problems(template="*New SMS*\n\n{{ staus }}") == [
        "voltd.toml: sinks.slack.template: line 3: unknown variable 'staus' (did you mean "
        "'status'? known: direction, event, event_type, our_name, our_number, payload, "
        "received, status, text, their_number)"
    ]
    assert problems(subject="a\n{% if %}") == [
        "voltd.toml: sinks.slack.subject: line 2: Expected an expression, got 'end of "
        "statement block'"
    ]
    assert problems(html="{{ text | safe }}") == [
        "voltd.toml: sinks.slack.html: line 1: No filter named 'safe'."
    ]
    assert problems(digest="{{ events }}{{ oops }}") == [
        "voltd.toml: sinks.slack.digest: line 1: unknown variable 'oops' (known: direction, "
        "event, event_type, events, our_name, our_number, payload, received, status, text, "
        "their_number)"
    ]
    assert problems(template=42) == ["voltd.toml: sinks.slack.template: expected a template string"]


def test_option_with_a_wrong_zone_says_what_is_expected() -> None:
    for bad in ["Europe/Berln", "", 5, "UTC+2"]:
        assert problems(timezone=bad) == [f"voltd.toml: sinks.slack.timezone: {ZONE_EXPECTED}"]


def test_a_template_instance_is_accepted_and_fitted_to_the_option() -> None:
    given = Template("{{ text }}")  # text escaping, but the option is mrkdwn
    opts = SlackLike(template=given)
    assert opts.template.escape == "mrkdwn" and opts.template.source == "{{ text }}"
    exact = Template("{{ text }}", escape="mrkdwn")
    assert SlackLike(template=exact).template is exact
