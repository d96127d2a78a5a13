"""Envelope parsing: from verified raw bytes to an Event that routing and sinks can read.

The raw body is kept next to the parsed form because sinks must be able to pass on exactly
what Volt sent, unknown fields included.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from voltd.vocabulary import DIRECTIONS, MATCH_FIELDS

# Payload field names, from the vocabulary that config and routing share.
_FROM, _TO, _DIRECTION, _EVENT, _STATUS, _TYPE, _TEXT = (
    MATCH_FIELDS[k] for k in ("from", "to", "direction", "event", "status", "message_type", "text")
)
_INBOUND, _OUTBOUND = DIRECTIONS


class EnvelopeError(ValueError):
    """The body is not a usable envelope; the message is the short reason for the 400 answer."""


@dataclass(frozen=True, slots=True)
class Probe:
    """A request that is not a messaging event (Volt's registration test, other types)."""

    type: str | None


class Event:
    """One messaging event as Volt sent it, read-only: what every sink is handed.

    `raw` is the request body byte for byte (pass it on unchanged: unknown fields included);
    `envelope` and `payload` are its parsed JSON as read-only mappings (arrays as tuples), and
    `to_dict()` gives a fresh, plain copy to modify. The properties below read the payload
    fields Volt documents, as strings (None when absent, null, or not a scalar).
    """

    __slots__ = ("_digest", "_doc", "_id", "_names", "_raw", "_seq", "_signature", "_view")

    def __init__(
        self,
        id: str,
        raw: bytes,
        *,
        doc: dict[str, Any] | None = None,
        seq: int | None = None,
        names: Mapping[str, str] | None = None,
        signature: str | None = None,
    ) -> None:
        self._id = id
        self._raw = raw
        self._signature = signature
        self._doc = doc  # parsed on first use: a file sink with a fixed path never needs it
        self._seq = seq
        self._names: Mapping[str, str] = names if names is not None else {}
        self._digest: bytes | None = None
        self._view: Mapping[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Event(id={self._id!r}, seq={self._seq!r})"

    @property
    def id(self) -> str:
        """The envelope id (`rfw_…`)."""
        return self._id

    @property
    def raw(self) -> bytes:
        """The request body exactly as Volt sent (and signed) it."""
        return self._raw

    @property
    def volt_signature(self) -> str | None:
        """Volt's signature header as it came with `raw` (it verified), to pass on so that a
        receiver can check Volt itself; None for events stored before voltd kept it."""
        return self._signature

    @property
    def seq(self) -> int | None:
        """The spool's number for this event (stable across retries), once stored."""
        return self._seq

    @property
    def _envelope(self) -> dict[str, Any]:
        # Internal, mutable-by-nobody plain dict: routing reads it per request.
        doc = self._doc
        if doc is None:
            doc = self._doc = json.loads(self._raw)
        return doc

    @property
    def _payload(self) -> dict[str, Any]:
        return self._envelope["payload"]  # type: ignore[no-any-return]

    @property
    def envelope(self) -> Mapping[str, Any]:
        """The parsed envelope, read-only (`type`, `id`, `payload`, `time`, and any more)."""
        if self._view is None:
            self._view = _frozen(self._envelope)
        return self._view

    @property
    def payload(self) -> Mapping[str, Any]:
        """The envelope's `payload`, read-only."""
        return self.envelope["payload"]  # type: ignore[no-any-return]

    def to_dict(self) -> dict[str, Any]:
        """A fresh, plain copy of the envelope, yours to change."""
        return json.loads(self._raw)  # type: ignore[no-any-return]

    def json_line(self) -> bytes:
        """The body on one line (see `as_json_line`): a JSON Lines record."""
        return as_json_line(self._raw)

    @property
    def time(self) -> int | float | None:
        """The envelope's `time` (Unix seconds), or None."""
        t = self._envelope.get("time")
        return t if isinstance(t, int | float) and not isinstance(t, bool) else None

    @property
    def when(self) -> _dt.datetime | None:
        """The envelope's `time` as an aware UTC datetime, or None."""
        return _when(self)

    def field(self, name: str) -> str | None:
        """A payload field as a string, or None when absent, null or not a scalar."""
        value = self._payload.get(name)
        if value is None or isinstance(value, dict | list):
            return None
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    @property
    def direction(self) -> str | None:
        """`inbound` or `outbound` (lower-cased), or what else Volt sent."""
        d = self.field(_DIRECTION)
        return d.lower() if d else None

    @property
    def our_number(self) -> str | None:
        """Our side of the conversation: the recipient when inbound, the sender when outbound."""
        d = self.direction
        if d == _INBOUND:
            return self.field(_TO)
        if d == _OUTBOUND:
            return self.field(_FROM)
        return None

    @property
    def their_number(self) -> str | None:
        """The other party: the sender when inbound, the recipient when outbound."""
        d = self.direction
        if d == _INBOUND:
            return self.field(_FROM)
        if d == _OUTBOUND:
            return self.field(_TO)
        return None

    @property
    def our_name(self) -> str | None:
        """The `[numbers]` name of our number (e.g. "front-desk"), or None."""
        number = self.our_number
        return self._names.get(number) if number is not None else None

    @property
    def message_id(self) -> str | None:
        """The message's id (`rf_…`); the same for every event about one message."""
        return self.field("id")

    @property
    def status(self) -> str | None:
        """The message's status: `received`, `sent`, `delivered`, `failed`, ..."""
        return self.field(_STATUS)

    @property
    def event_type(self) -> str | None:
        """What happened: `message.received`, `message.sent`, `message.finalized`, ..."""
        return self.field(_EVENT)

    @property
    def text(self) -> str | None:
        """The SMS text: anyone can send it, so treat it as hostile in any markup."""
        return self.field(_TEXT)

    @property
    def digest(self) -> bytes:
        """Identity of the message content, for dedup together with the envelope id.

        Computed over the canonical JSON of `payload` rather than the raw body, so a retry that
        is re-serialized or re-timed by Volt still counts as the same event, while two distinct
        events that happen to share an envelope id (as the vendor's own two examples do) do not.
        """
        if self._digest is None:
            canon = json.dumps(
                self._payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
            self._digest = hashlib.sha256(canon.encode("utf-8", "surrogatepass")).digest()[:16]
        return self._digest

    def path_values(self, names: Iterable[str] | None = None) -> dict[str, str]:
        """Values for file path templates (`PATH_FIELDS`), each safe as one file name: event
        data can never steer a path. For messages, use `voltd.templates` instead.

        Pass the names a template uses: computing only those keeps per-event work small.
        """
        getters = _FIELD_GETTERS
        return {name: safe_component(getters[name](self)) for name in names or getters}


def _frozen(value: Any) -> Any:
    """A read-only deep view of parsed JSON: tables as mappings, arrays as tuples."""
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


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
    "from_number": lambda e: e.field(_FROM),
    "to_number": lambda e: e.field(_TO),
    "direction": lambda e: e.direction,
    "event": lambda e: e.field(_EVENT),
    "status": lambda e: e.field(_STATUS),
    "type": lambda e: e.field(_TYPE),
    "date": _strftime("%Y-%m-%d"),
    "month": _strftime("%Y-%m"),
    "hour": _strftime("%H"),
}
#: The fields a file path template may use, e.g. "archive/{our_number}/{date}.jsonl".
PATH_FIELDS: tuple[str, ...] = tuple(_FIELD_GETTERS)


_UNSAFE = re.compile(r"[^A-Za-z0-9+_.@-]")


def safe_component(value: str | None) -> str:
    """Make a value usable as one path component: event data must never steer a path."""
    if not value:
        return "unknown"
    cleaned = _UNSAFE.sub("_", value[:100])
    if cleaned.strip(".") == "":
        return "unknown"
    return cleaned


def parse(raw: bytes, signature: str | None = None) -> Event | Probe:
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
    return Event(eid, raw, doc=doc, signature=signature)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def from_spool(seq: int, eid: str, raw: bytes, signature: str | None = None) -> Event:
    """Rebuild an Event from what the spool stored (already validated at ingest)."""
    return Event(eid, raw, seq=seq, signature=signature)


def with_names(event: Event, names: Mapping[str, str]) -> Event:
    """Give a stored event the `[numbers]` names, for `Event.our_name` (delivery does this)."""
    event._names = names
    return event


def as_json_line(raw: bytes) -> bytes:
    """The body as one line: line breaks, which valid JSON only has between tokens, become
    spaces, so every other byte is exactly what Volt sent."""
    return raw.strip().replace(b"\r", b" ").replace(b"\n", b" ")
