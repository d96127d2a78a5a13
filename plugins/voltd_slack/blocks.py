"""The Slack messages of the `slack` sink, built as plain Block Kit dicts (no SDK needed).

Everything from an event is untrusted (anyone can send an SMS), so every string taken from it
goes through `clean` (no control characters, no lone surrogates: valid JSON, sane rendering)
and then either into a `plain_text` object, which Slack never parses, or through
`escape_mrkdwn` into `mrkdwn`, where `& < >` become entities: no mention, channel ping or link
can come from the data. Slack's limits hold by construction: every piece has a budget, and
cutting happens after escaping, never inside an entity (`&amp;`) or a link (`<url|label>`).

Lengths are counted in UTF-16 code units (`size`), which is never less than the characters
Slack counts, so an emoji-heavy SMS stays within the limits too.
"""

from __future__ import annotations

import datetime as _dt
import re
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, overload
from zoneinfo import ZoneInfo

import voltd
from voltd.templates import Template, escape_mrkdwn, get_zone, template_data

# --------------------------------------------------------------------------------------------
# Slack's limits (https://docs.slack.dev/reference/block-kit/blocks) and our budgets

#: Blocks per message.
MAX_BLOCKS: Final = 50
#: A header block's plain text.
MAX_HEADER: Final = 150
#: A section block's text.
MAX_SECTION_TEXT: Final = 3000
#: Fields in one section, and the text of each.
MAX_FIELDS: Final = 10
MAX_FIELD_TEXT: Final = 2000
#: Elements of a context block.
MAX_CONTEXT_ELEMENTS: Final = 10
#: Our own ceiling for all the text of one message (blocks and the `text` fallback together),
#: well under the 12,000 characters past which Slack refuses or cuts a message.
MAX_MESSAGE_TEXT: Final = 10_000

#: A batch summary lists every event up to this many, else the first `FIRST_ITEMS`.
LIST_ALL_UP_TO: Final = 5
FIRST_ITEMS: Final = 10

ELLIPSIS: Final = "…"

# Budgets of the pieces (UTF-16 units); their sum stays under MAX_MESSAGE_TEXT.
_FIELD_BUDGET: Final = 300  # one field of the single-event message
_SUMMARY_FIELD_BUDGET: Final = 600  # one field of a batch summary
_DETAIL_BUDGET: Final = 1000
_MEDIA_BUDGET: Final = 1500
_CONTEXT_BUDGET: Final = 300
_FALLBACK_BUDGET: Final = 300
_ERRORS_BUDGET: Final = 1200
_LINE_BUDGET: Final = 280  # one event's line in a summary
_TEMPLATE_BUDGET: Final = 8000  # all of a template's sections
_TEMPLATE_FALLBACK: Final = 1000
_TEMPLATE_BLOCKS: Final = 45  # sections of a template batch, leaving room for the rest
_MAX_URL: Final = 1000
_MAX_MEDIA_LINKS: Final = 10

#: Statuses that mean the message did not get through.
FAILED_STATUSES: Final = frozenset(
    {"failed", "undelivered", "undeliverable", "rejected", "delivery_failed", "sending_failed"}
)
#: The mark shown before a status; anything else gets `:grey_question:`.
STATUS_MARKS: Final[Mapping[str, str]] = {
    "failed": ":x:",
    "undelivered": ":x:",
    "undeliverable": ":x:",
    "rejected": ":x:",
    "delivery_failed": ":x:",
    "sending_failed": ":x:",
    "delivered": ":white_check_mark:",
    "received": ":incoming_envelope:",
    "sent": ":outbox_tray:",
    "queued": ":hourglass_flowing_sand:",
    "sending": ":hourglass_flowing_sand:",
    "accepted": ":hourglass_flowing_sand:",
    "scheduled": ":hourglass_flowing_sand:",
}

_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S %Z"

# --------------------------------------------------------------------------------------------
# Text: clean, measure, escape, cut

# C0 and C1 controls except tab and line feed (carriage returns become line feeds first).
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")
_PARTIAL_ENTITY: Final = re.compile(r"&[a-z]{0,3}\Z")
#: Bidirectional isolates around data inside a line of ours: an RTL override (U+202E) in an
#: SMS then cannot reorder the rest of the line.
_ISOLATE: Final = ("\u2068", "\u2069")


def clean(value: object, *, one_line: bool = False) -> str:
    """`value` as text fit for JSON and display: lone surrogates (valid in JSON, not in
    UTF-8) become U+FFFD, control characters go, and with `one_line` all whitespace runs
    (line breaks included) become one space. Emoji and right-to-left text are untouched."""
    text = value if isinstance(value, str) else str(value)
    text = _SURROGATE.sub("\ufffd", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if one_line:
        text = " ".join(text.split())
    return text


def size(text: str) -> int:
    """Length in UTF-16 code units: at least what Slack counts, whatever it counts in."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _prefix(text: str, units: int) -> str:
    """The longest prefix of `text` of at most `units` UTF-16 code units."""
    keep = text[:units]
    excess = size(keep) - units
    while excess > 0:  # each code point is one or two units: one or two rounds
        keep = keep[: len(keep) - excess]
        excess = size(keep) - units
    return keep


def cut(text: str, limit: int, *, markup: bool = False) -> str:
    """`text` in at most `limit` UTF-16 units, ending in "…" when shortened.

    With `markup` (escaped mrkdwn), never inside an entity like `&amp;` nor inside a
    `<…>` link or mention: data never leaves a bare `<` after escaping, so one is always
    markup of ours or of the operator's template, and is dropped whole rather than broken.
    """
    if size(text) <= limit:
        return text
    keep = _prefix(text, limit - len(ELLIPSIS))
    if markup:
        keep = _unbroken(keep)
    return keep.rstrip() + ELLIPSIS


def _unbroken(keep: str) -> str:
    """`keep` less a trailing partial entity or unclosed `<…>`."""
    m = _PARTIAL_ENTITY.search(keep)
    if m:
        keep = keep[: m.start()]
    lt = keep.rfind("<")
    if lt > keep.rfind(">"):
        keep = keep[:lt]
    return keep


def mrkdwn(value: object, limit: int, *, one_line: bool = True) -> str:
    """Untrusted data as mrkdwn: cleaned, escaped (`& < >`), then cut to `limit`."""
    return cut(escape_mrkdwn(clean(value, one_line=one_line)), limit, markup=True)


def plain(value: object, limit: int, *, one_line: bool = True) -> str:
    """Untrusted data for a plain_text object: cleaned and cut (Slack parses nothing)."""
    return cut(clean(value, one_line=one_line), limit)


def isolated(text: str) -> str:
    """Data set apart from the line around it for bidirectional text (see `_ISOLATE`)."""
    return f"{_ISOLATE[0]}{text}{_ISOLATE[1]}" if text else text


# --------------------------------------------------------------------------------------------
# Block Kit objects


def _plain_text(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, "emoji": False}


def _md(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def header(text: str) -> dict[str, Any]:
    """A header block; `text` is plain (not escaped), cut to 150."""
    shown = cut(clean(text, one_line=True), MAX_HEADER) or "Volt event"
    return {"type": "header", "text": _plain_text(shown)}


def section(text: str, *, markup: bool = True) -> dict[str, Any]:
    """A section of mrkdwn (already escaped) or, with `markup=False`, of plain text."""
    shown = cut(text, MAX_SECTION_TEXT, markup=markup)
    return {"type": "section", "text": _md(shown) if markup else _plain_text(shown)}


def fields_section(fields: Iterable[str]) -> dict[str, Any] | None:
    """A section of up to 10 mrkdwn fields (already escaped), each cut to 2000; None
    without any."""
    items = [cut(f, MAX_FIELD_TEXT, markup=True) for f in fields if f][:MAX_FIELDS]
    return {"type": "section", "fields": [_md(f) for f in items]} if items else None


def context(*texts: str) -> dict[str, Any] | None:
    """A context block of mrkdwn texts (already escaped); None without any."""
    items = [cut(t, MAX_SECTION_TEXT, markup=True) for t in texts if t][:MAX_CONTEXT_ELEMENTS]
    return {"type": "context", "elements": [_md(t) for t in items]} if items else None


def _message(fallback: str, blocks: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    present = [b for b in blocks if b is not None]
    return {
        "text": fallback or "Volt event",
        "blocks": present[:MAX_BLOCKS],
        # A media link must not unfold into a preview of whatever the sender attached.
        "unfurl_links": False,
        "unfurl_media": False,
    }


def message_size(message: Mapping[str, Any]) -> int:
    """All the text of a message (the `text` fallback and every text object in its blocks),
    in UTF-16 units: what `MAX_MESSAGE_TEXT` bounds."""
    total = size(str(message.get("text", "")))
    stack: list[Any] = list(message.get("blocks", []))
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            if item.get("type") in ("plain_text", "mrkdwn") and isinstance(item.get("text"), str):
                total += size(item["text"])
            else:
                stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


# --------------------------------------------------------------------------------------------
# Reading an event


def _is_failure(event: voltd.Event) -> bool:
    status = (event.status or "").lower()
    return status in FAILED_STATUSES or "fail" in status or "undeliver" in status


def _status_key(event: voltd.Event) -> str:
    """The status as one short, clean, lower-case word (for counting and marks)."""
    return clean(event.status or "unknown", one_line=True).lower()[:40] or "unknown"


def _mark(status: str) -> str:
    if status in STATUS_MARKS:
        return STATUS_MARKS[status]
    return ":x:" if "fail" in status or "undeliver" in status else ":grey_question:"


def _numbers_of(event: voltd.Event) -> tuple[str | None, str | None]:
    """(our number, theirs), or (from, to) when the direction is unknown."""
    if event.direction in ("inbound", "outbound"):
        return event.our_number, event.their_number
    return event.field("from_number"), event.field("to_number")


class _Names:
    """Names of our numbers (`[numbers]`), for labels like "front-desk (+15555550123)"."""

    def __init__(self, numbers: Mapping[str, str] | None) -> None:
        self.numbers: Mapping[str, str] = numbers or {}

    def name(self, number: str | None, event: voltd.Event | None = None) -> str | None:
        if number is None:
            return None
        name = self.numbers.get(number)
        if name is None and event is not None and number == event.our_number:
            name = event.our_name
        return name

    def short(self, number: str | None, event: voltd.Event | None = None) -> str:
        """Plain text: the name, else the number."""
        if number is None:
            return "an unknown number"
        return clean(self.name(number, event) or number, one_line=True)[:60]

    def label(self, number: str | None, event: voltd.Event | None = None) -> str:
        """mrkdwn: "name (number)", else the number, escaped."""
        if number is None:
            return "_unknown_"
        shown = mrkdwn(number, 40)
        name = self.name(number, event)
        return f"{mrkdwn(name, 60)} ({shown})" if name else shown


def _parse_time(value: Any) -> _dt.datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        when = _dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=_dt.UTC)


def event_time(event: voltd.Event) -> _dt.datetime | None:
    """When it happened: the payload's `occurred_at`, else the envelope's `time`."""
    return _parse_time(event.payload.get("occurred_at")) or event.when


def _local(when: _dt.datetime | None, zone: ZoneInfo, fmt: str = _TIME_FORMAT) -> str | None:
    if when is None:
        return None
    try:
        return when.astimezone(zone).strftime(fmt)
    except (OverflowError, ValueError, OSError):
        return None


def _error_title(event: voltd.Event) -> str | None:
    """The provider's error title with its codes, as plain one-line text, or None."""
    title = event.field("provider_error_title")
    codes = [
        f"{what} {clean(code, one_line=True)[:20]}"
        for what, code in (
            ("provider", event.field("provider_error_code")),
            ("Volt", event.field("error_code")),
        )
        if code
    ]
    if not title and not codes:
        return None
    text = clean(title, one_line=True)[:200] if title else "error"
    return f"{text} ({', '.join(codes)})" if codes else text


def _media_urls(event: voltd.Event) -> list[Any]:
    media = event.payload.get("media")
    return list(media) if isinstance(media, list | tuple) else []


def _link(item: Any) -> str | None:
    """An http(s) link for a media item (a URL, or an object with one), escaped, or None."""
    url = item
    if isinstance(item, Mapping):
        url = next(
            (item[k] for k in ("url", "media_url", "uri", "href") if isinstance(item.get(k), str)),
            None,
        )
    if not isinstance(url, str) or not url or len(url) > _MAX_URL:
        return None
    if any(c.isspace() or not c.isprintable() for c in url):
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    # `|` would end the URL part of `<url|label>`; escaping makes `<`, `>` and `&` harmless.
    return escape_mrkdwn(url.replace("|", "%7C"))


# --------------------------------------------------------------------------------------------
# One event


def headline(event: voltd.Event, numbers: Mapping[str, str] | None = None) -> str:
    """What happened, in words (plain text): "Message to +1… failed to deliver"."""
    names = _Names(numbers)
    ours, theirs = _numbers_of(event)
    direction = event.direction
    status = _status_key(event)
    shown = clean(event.status, one_line=True)[:40] if event.status else None
    if direction == "inbound":
        if _is_failure(event):
            return f"Text from {names.short(theirs)} to {names.short(ours, event)} failed"
        if status == "received" or event.event_type == "message.received" or shown is None:
            return f"New text to {names.short(ours, event)}"
        return f"Text to {names.short(ours, event)} {shown}"
    if direction == "outbound":
        to = names.short(theirs)
        if _is_failure(event):
            return f"Message to {to} failed to deliver"
        if status == "delivered":
            return f"Text delivered to {to}"
        if status == "sent":
            return f"Text sent to {to}"
        return f"Text to {to}: {shown}" if shown else f"Text to {to}"
    what = shown or clean(event.event_type or "event", one_line=True)[:60]
    return f"Volt message {what}"


def _fields(event: voltd.Event, names: _Names, zone: ZoneInfo) -> list[str]:
    def field(label: str, value: str | None) -> str | None:
        return f"*{label}*\n{cut(value, _FIELD_BUDGET - 40, markup=True)}" if value else None

    def data(value: str | None, limit: int = 200) -> str | None:
        return mrkdwn(value, limit) if value else None

    status = _status_key(event)
    direction = event.direction
    frm, to = event.field("from_number"), event.field("to_number")
    kind = [data(event.field("type"), 20)]
    parts = event.field("parts")
    if parts:
        kind.append(data(f"{parts} part{'' if parts == '1' else 's'}", 30))
    media = _media_urls(event)
    if media:
        kind.append(f"{len(media)} media")
    candidates = [
        field("Status", f"{_mark(status)} {mrkdwn(event.status, 60)}" if event.status else None),
        field("Direction", data(direction.capitalize() if direction else None, 40)),
        field("From", names.label(frm, event) if frm else None),
        field("To", names.label(to, event) if to else None),
        field("Error", data(_error_title(event), 240)),
        field("Carrier", data(event.field("carrier_name"))),
        field("Time", data(_local(event_time(event), zone))),
        field("Type", " · ".join(k for k in kind if k)),
        field("Event", data(event.event_type, 80)),
    ]
    return [c for c in candidates if c][:MAX_FIELDS]


def _code(value: str) -> str:
    """An id as inline code (escaped; a backquote would end the code span)."""
    return "`" + mrkdwn(value, 100).replace("`", "'") + "`"


def _media_section(event: voltd.Event) -> dict[str, Any] | None:
    media = _media_urls(event)
    if not media:
        return None
    text = f"*Media* ({len(media)})"
    shown = 0
    for i, item in enumerate(media[:_MAX_MEDIA_LINKS], start=1):
        link = _link(item)
        piece = f"<{link}|media {i}>" if link else f"media {i} (not a web link)"
        line = f"\n• {piece}"
        if size(text) + size(line) > _MEDIA_BUDGET - 40:
            break
        text += line
        shown += 1
    if shown < len(media):
        text += f"\n…and {len(media) - shown} more"
    return section(text)


def default_message(
    event: voltd.Event,
    *,
    timezone: str | ZoneInfo = "UTC",
    numbers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The default message for one event (see `message_for`)."""
    zone = get_zone(timezone)
    names = _Names(numbers)
    title = headline(event, numbers)
    blocks = [header(title), fields_section(_fields(event, names, zone))]
    detail = event.field("provider_error_detail")
    if detail:
        blocks.append(section(f"*Provider error detail*\n{mrkdwn(detail, _DETAIL_BUDGET)}"))
    text = clean(event.text, one_line=False).strip() if event.text else ""
    if text:
        shown = cut(text, MAX_SECTION_TEXT)
        note = f" (shortened; {len(text):,} characters in all)" if shown != text else ""
        blocks.append(section(f"*Text*{note}"))
        blocks.append(section(shown, markup=False))  # plain: exactly as sent, never parsed
    media = _media_section(event)
    if media is not None:
        blocks.append(media)
    ids = [f"event {_code(event.id)}"]
    if event.message_id:
        ids.insert(0, f"Volt message {_code(event.message_id)}")
    blocks.append(context(" · ".join(i for i in ids if i)))
    fallback = escape_mrkdwn(title)
    error = _error_title(event)
    if error and _is_failure(event):
        fallback += f": {mrkdwn(error, 200)}"
    elif text and event.direction == "inbound":
        fallback += f": {isolated(mrkdwn(text, 120))}"
    return _message(cut(fallback, _FALLBACK_BUDGET, markup=True), blocks)


# --------------------------------------------------------------------------------------------
# Several events at once (a burst)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counter.most_common())


def summary_headline(events: Sequence[voltd.Event], numbers: Mapping[str, str] | None) -> str:
    """What a burst was, in words: "37 texts failed to deliver", "120 events: 37 failed, …"."""
    n = len(events)
    statuses = Counter(_status_key(e) for e in events)
    directions = {e.direction for e in events}
    if directions == {"outbound"} and all(_is_failure(e) for e in events):
        return f"{n} texts failed to deliver"
    if directions == {"inbound"} and statuses.keys() == {"received"}:
        ours = {e.our_number for e in events}
        if len(ours) == 1:
            return f"{n} new texts to {_Names(numbers).short(ours.pop(), events[0])}"
        return f"{n} new texts to {len(ours)} numbers"
    if directions == {"outbound"} and len(statuses) == 1:
        return f"{n} texts {next(iter(statuses))}"
    return f"{n} events: {_counts(statuses)}"


def _top(counter: Counter[str], limit: int, unit: str, budget: int) -> str:
    """`counter`'s lines, most common first, within `budget`, then what is left out."""
    lines: list[str] = []
    shown = 0
    for key, n in counter.most_common(limit):
        line = f"{key}: {n}"
        if size("\n".join([*lines, line])) > budget - 60:
            break
        lines.append(line)
        shown += n
    rest = sum(counter.values()) - shown
    if rest:
        lines.append(f"…and {rest} more {unit}")
    return "\n".join(lines)


def _line(event: voltd.Event, names: _Names, zone: ZoneInfo, time_format: str) -> str:
    """One event as one readable line of mrkdwn."""
    ours, theirs = _numbers_of(event)
    our_label = mrkdwn(names.short(ours, event), 60)
    their_label = mrkdwn(names.short(theirs), 60)
    arrow = f"{their_label} → {our_label}" if event.direction == "inbound" else (
        f"{our_label} → {their_label}"
    )
    status = _status_key(event)
    parts = [f"{_mark(status)} {mrkdwn(event.status or 'unknown', 40)}", arrow]
    when = _local(event_time(event), zone, time_format)
    if when:
        parts.insert(0, f"`{when}`")
    error = _error_title(event) if _is_failure(event) else None
    if error:
        parts.append(isolated(mrkdwn(error, 100)))
    if event.text:
        parts.append(f"“{isolated(mrkdwn(event.text, 80))}”")
    media = _media_urls(event)
    if media:
        parts.append(f"{len(media)} media")
    return cut(" · ".join(parts), _LINE_BUDGET, markup=True)


def _time_format(times: list[_dt.datetime], zone: ZoneInfo) -> str:
    days = {_local(t, zone, "%Y-%m-%d") for t in times}
    return "%H:%M:%S" if len(days) <= 1 else "%b %d %H:%M"


def default_summary(
    events: Sequence[voltd.Event],
    *,
    timezone: str | ZoneInfo = "UTC",
    numbers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The default message for a burst of events (see `summary_for`)."""
    if len(events) == 1:
        return default_message(events[0], timezone=timezone, numbers=numbers)
    zone = get_zone(timezone)
    names = _Names(numbers)
    n = len(events)
    title = summary_headline(events, numbers)

    statuses: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    theirs: set[str] = set()
    directions: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    times: list[_dt.datetime] = []
    for e in events:
        status = _status_key(e)
        statuses[f"{_mark(status)} {mrkdwn(status, 40)}"] += 1
        our, their = _numbers_of(e)
        ours[names.label(our, e)] += 1
        if their is not None:
            theirs.add(their)
        directions[mrkdwn(e.direction or "unknown", 20)] += 1
        if _is_failure(e):
            errors[mrkdwn(_error_title(e) or "no error given", 240)] += 1
        when = event_time(e)
        if when is not None:
            times.append(when)

    budget = _SUMMARY_FIELD_BUDGET
    fields = [
        f"*By status*\n{_top(statuses, 8, 'in other statuses', budget)}",
        f"*Our numbers*\n{_top(ours, 8, 'on other numbers', budget)}",
        f"*Other parties*\n{len(theirs)} number{'' if len(theirs) == 1 else 's'}",
        "*Direction*\n" + " · ".join(f"{c} {d}" for d, c in directions.most_common(4)),
    ]
    if times:
        first, last = _local(min(times), zone), _local(max(times), zone)
        span = first if first == last else f"{first} to\n{last}"
        fields.append(f"*Time*\n{span}")
    blocks = [header(title), fields_section(fields)]
    if errors:
        lines: list[str] = []
        for text, count in errors.most_common(5):
            line = f"• {text}: {count}"
            if size("\n".join([*lines, line])) > _ERRORS_BUDGET - 100:
                break
            lines.append(line)
        blocks.append(section("*Most common errors*\n" + "\n".join(lines)))

    listed = n if n <= LIST_ALL_UP_TO else FIRST_ITEMS
    time_format = _time_format(times, zone)
    heading = "*Events*" if listed >= n else f"*The first {listed} of {n}*"
    text = heading
    shown = 0
    for e in events[:listed]:
        line = "\n" + _line(e, names, zone, time_format)
        if size(text) + size(line) > MAX_SECTION_TEXT - 60:
            break
        text += line
        shown += 1
    if shown < n:
        text += f"\n…and {n - shown} more"
    blocks.append(section(text))
    return _message(cut(escape_mrkdwn(title), _FALLBACK_BUDGET, markup=True), blocks)


# --------------------------------------------------------------------------------------------
# A template's output


def _split_at(text: str, limit: int) -> int:
    """Where to end a piece of at most `limit` units: a line break, else a space, else
    anywhere that is not inside an entity or a `<…>`."""
    keep = _unbroken(_prefix(text, limit))
    if not keep:  # one `<…>` longer than a section: it cannot stay whole
        return max(len(_prefix(text, limit)), 1)
    for sep in ("\n", " "):
        at = keep.rfind(sep)
        if at >= len(keep) // 2:
            return at + 1
    return len(keep)


def template_sections(rendered: str, budget: int = _TEMPLATE_BUDGET) -> list[dict[str, Any]]:
    """A template's mrkdwn output as section blocks of at most 3000 each, `budget` in all."""
    text = cut(clean(rendered).strip(), budget, markup=True)
    out: list[dict[str, Any]] = []
    while text:
        at = len(text) if size(text) <= MAX_SECTION_TEXT else _split_at(text, MAX_SECTION_TEXT)
        piece, text = text[:at].rstrip(), text[at:].lstrip()
        if piece:
            out.append(section(piece))
    return out


def _render(
    template: Template, event: voltd.Event, zone: ZoneInfo, numbers: Mapping[str, str]
) -> str:
    return clean(template.render(template_data(event, timezone=zone, numbers=numbers))).strip()


def template_message(
    event: voltd.Event,
    template: Template,
    *,
    timezone: str | ZoneInfo = "UTC",
    numbers: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """One event through the operator's template (see `message_for`); None when it renders
    only whitespace. Raises `voltd.templates.TemplateError`."""
    rendered = _render(template, event, get_zone(timezone), numbers or {})
    if not rendered:
        return None
    return _message(cut(rendered, _TEMPLATE_FALLBACK, markup=True), template_sections(rendered))


def template_summary(
    events: Sequence[voltd.Event],
    template: Template,
    *,
    timezone: str | ZoneInfo = "UTC",
    numbers: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """A burst through the operator's template (see `summary_for`); None when every event
    renders only whitespace. Raises `voltd.templates.TemplateError`."""
    if len(events) == 1:
        return template_message(events[0], template, timezone=timezone, numbers=numbers)
    zone = get_zone(timezone)
    rendered = [(e, _render(template, e, zone, numbers or {})) for e in events]
    posted = [(e, r) for e, r in rendered if r]
    if not posted:
        return None
    blocks: list[dict[str, Any] | None] = []
    total = 0
    shown = 0
    per_event = max(200, min(MAX_SECTION_TEXT, _TEMPLATE_BUDGET // len(posted)))
    for _, text in posted:
        piece = cut(text, per_event if shown else MAX_SECTION_TEXT, markup=True)
        if len(blocks) >= _TEMPLATE_BLOCKS or total + size(piece) > _TEMPLATE_BUDGET:
            break
        blocks.append(section(piece))
        total += size(piece)
        shown += 1
    statuses = Counter(_status_key(e) for e, _ in posted)
    title = f"{len(posted)} event{'' if len(posted) == 1 else 's'}: {_counts(statuses)}"
    if shown < len(posted):
        more = f"…and {len(posted) - shown} more ({mrkdwn(title, 250)})"
        blocks.append(context(cut(more, _CONTEXT_BUDGET, markup=True)))
    return _message(cut(mrkdwn(title, _FALLBACK_BUDGET), _FALLBACK_BUDGET, markup=True), blocks)


# --------------------------------------------------------------------------------------------
# The public entry points


@overload
def message_for(
    event: voltd.Event,
    *,
    timezone: str | ZoneInfo = ...,
    numbers: Mapping[str, str] | None = ...,
    template: None = ...,
) -> dict[str, Any]: ...


@overload
def message_for(
    event: voltd.Event,
    *,
    timezone: str | ZoneInfo = ...,
    numbers: Mapping[str, str] | None = ...,
    template: Template | None = ...,
) -> dict[str, Any] | None: ...


def message_for(
    event: voltd.Event,
    *,
    timezone: str | ZoneInfo = "UTC",
    numbers: Mapping[str, str] | None = None,
    template: Template | None = None,
) -> dict[str, Any] | None:
    """The JSON body the sink POSTs to Slack for one event, as a dict.

    `timezone`: where times are shown; `numbers`: our numbers' names, E.164 -> name (as
    `SinkContext.numbers`), else the names the event carries. With a `template` (mrkdwn,
    `voltd.templates.MrkdwnTemplate`) its output is the message, and None means it rendered
    only whitespace (nothing is posted); `TemplateError` when it cannot render.
    """
    if template is None:
        return default_message(event, timezone=timezone, numbers=numbers)
    return template_message(event, template, timezone=timezone, numbers=numbers)


@overload
def summary_for(
    events: Sequence[voltd.Event],
    *,
    timezone: str | ZoneInfo = ...,
    numbers: Mapping[str, str] | None = ...,
    template: None = ...,
) -> dict[str, Any]: ...


@overload
def summary_for(
    events: Sequence[voltd.Event],
    *,
    timezone: str | ZoneInfo = ...,
    numbers: Mapping[str, str] | None = ...,
    template: Template | None = ...,
) -> dict[str, Any] | None: ...


def summary_for(
    events: Sequence[voltd.Event],
    *,
    timezone: str | ZoneInfo = "UTC",
    numbers: Mapping[str, str] | None = None,
    template: Template | None = None,
) -> dict[str, Any] | None:
    """The one message the sink POSTs for a burst of events (`send_batch`); for a single
    event, `message_for`'s. Arguments as for `message_for`."""
    if not events:
        raise ValueError("summary_for needs at least one event")
    if template is None:
        return default_summary(events, timezone=timezone, numbers=numbers)
    return template_summary(events, template, timezone=timezone, numbers=numbers)


__all__ = [
    "MAX_BLOCKS",
    "MAX_FIELDS",
    "MAX_FIELD_TEXT",
    "MAX_HEADER",
    "MAX_MESSAGE_TEXT",
    "MAX_SECTION_TEXT",
    "clean",
    "cut",
    "message_for",
    "message_size",
    "size",
    "summary_for",
]
