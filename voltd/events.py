"""Envelope parsing: from verified raw bytes to an Event that routing and sinks can read.

The raw body is kept next to the parsed form because sinks must be able to pass on exactly
what Volt sent, unknown fields included.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


class EnvelopeError(ValueError):
    """The body is not a usable envelope; the message is the short reason for the 400 answer."""


@dataclass(frozen=True, slots=True)
class Probe:
    """A request that is not a messaging event (Volt's registration test, other types)."""

    type: str | None


@dataclass(slots=True)
class Event:
    """One messaging envelope as Volt sent it.

    `raw` is the request body byte for byte; `envelope` its parsed JSON. `seq` is the spool's
    row number once stored.
    """

    id: str
    raw: bytes
    _envelope: dict[str, Any] | None = field(default=None, repr=False)
    seq: int | None = None
    _digest: bytes | None = field(default=None, repr=False)

    @property
    def envelope(self) -> dict[str, Any]:
        # An event read back from the spool is parsed only if a sink looks inside it: a file
        # sink with a fixed path writes `raw` as it is.
        if self._envelope is None:
            self._envelope = json.loads(self.raw)
        return self._envelope

    @property
    def payload(self) -> dict[str, Any]:
        return self.envelope["payload"]

    @property
    def time(self) -> int | float | None:
        t = self.envelope.get("time")
        return t if isinstance(t, int | float) and not isinstance(t, bool) else None

    def field(self, name: str) -> str | None:
        """A payload field as a string, or None when absent, null or not a scalar."""
        value = self.payload.get(name)
        if value is None or isinstance(value, dict | list):
            return None
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    @property
    def direction(self) -> str | None:
        d = self.field("direction")
        return d.lower() if d else None

    @property
    def our_number(self) -> str | None:
        """Our side of the conversation: the recipient when inbound, the sender when outbound."""
        d = self.direction
        if d == "inbound":
            return self.field("to_number")
        if d == "outbound":
            return self.field("from_number")
        return None

    @property
    def their_number(self) -> str | None:
        d = self.direction
        if d == "inbound":
            return self.field("from_number")
        if d == "outbound":
            return self.field("to_number")
        return None

    @property
    def digest(self) -> bytes:
        """Identity of the message content, for dedup together with the envelope id.

        Computed over the canonical JSON of `payload` rather than the raw body, so a retry that
        is re-serialized or re-timed by Volt still counts as the same event, while two distinct
        events that happen to share an envelope id (as the vendor's own two examples do) do not.
        """
        if self._digest is None:
            canon = json.dumps(
                self.payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
            self._digest = hashlib.sha256(canon.encode("utf-8", "surrogatepass")).digest()[:16]
        return self._digest

    def template_fields(self, names: Iterable[str] | None = None) -> dict[str, str]:
        """Values for sink path/message templates; every value is safe inside a file name.

        Pass the names a template uses: computing only those keeps per-event work small.
        """
        getters = _FIELD_GETTERS
        return {name: safe_component(getters[name](self)) for name in names or getters}


def _when(event: Event) -> _dt.datetime | None:
    t = event.time
    if t is None or not 0 <= t < 253402300800:
        return None
    return _dt.datetime.fromtimestamp(t, _dt.UTC)


def _strftime(fmt: str) -> Callable[[Event], str | None]:
    def get(event: Event) -> str | None:
        when = _when(event)
        return when.strftime(fmt) if when else None

    return get


_FIELD_GETTERS: dict[str, Callable[[Event], str | None]] = {
    "id": lambda e: e.id,
    "message_id": lambda e: e.field("id"),
    "our_number": lambda e: e.our_number,
    "their_number": lambda e: e.their_number,
    "from_number": lambda e: e.field("from_number"),
    "to_number": lambda e: e.field("to_number"),
    "direction": lambda e: e.direction,
    "event": lambda e: e.field("event_type"),
    "status": lambda e: e.field("status"),
    "type": lambda e: e.field("type"),
    "date": _strftime("%Y-%m-%d"),
    "month": _strftime("%Y-%m"),
    "hour": _strftime("%H"),
}
#: The fields a template may use, e.g. "archive/{our_number}/{date}.jsonl".
TEMPLATE_FIELDS: tuple[str, ...] = tuple(_FIELD_GETTERS)


_UNSAFE = re.compile(r"[^A-Za-z0-9+_.@-]")


def safe_component(value: str | None) -> str:
    """Make a value usable as one path component: event data must never steer a path."""
    if not value:
        return "unknown"
    cleaned = _UNSAFE.sub("_", value[:100])
    if cleaned.strip(".") == "":
        return "unknown"
    return cleaned


def parse(raw: bytes) -> Event | Probe:
    """Parse a (verified or probe) body into an Event, or a Probe for non-messaging types.

    Raises EnvelopeError with a short reason when the body is not an envelope at all.
    """
    try:
        text = raw.decode("utf-8")  # JSON on the wire is UTF-8 (RFC 8259), nothing else
    except UnicodeDecodeError:
        raise EnvelopeError("body is not UTF-8") from None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise EnvelopeError("body is not JSON") from None
    if not isinstance(doc, dict):
        raise EnvelopeError("envelope must be a JSON object")
    etype = doc.get("type")
    if not isinstance(etype, str):
        raise EnvelopeError("envelope needs a string 'type'")
    if etype != "messaging":
        return Probe(etype)
    eid = doc.get("id")
    if not isinstance(eid, str) or not eid:
        raise EnvelopeError("messaging envelope needs a non-empty string 'id'")
    if len(eid) > 200:
        raise EnvelopeError("envelope 'id' is longer than 200 characters")
    if _has_surrogate(eid):
        # A "\ud800" escape is valid JSON but no valid text: SQLite cannot store it as a key.
        raise EnvelopeError("envelope 'id' is not valid Unicode (a lone surrogate escape)")
    if not isinstance(doc.get("payload"), dict):
        raise EnvelopeError("messaging envelope needs an object 'payload'")
    t = doc.get("time")
    if t is not None and (isinstance(t, bool) or not isinstance(t, int | float)):
        raise EnvelopeError("envelope 'time' must be a number of seconds")
    return Event(id=eid, raw=raw, _envelope=doc)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def from_spool(seq: int, eid: str, raw: bytes) -> Event:
    """Rebuild an Event from what the spool stored (already validated at ingest)."""
    return Event(id=eid, raw=raw, seq=seq)


def as_json_line(raw: bytes) -> bytes:
    """The body as one line: line breaks, which valid JSON only has between tokens, become
    spaces, so every other byte is exactly what Volt sent."""
    return raw.strip().replace(b"\r", b" ").replace(b"\n", b" ")
