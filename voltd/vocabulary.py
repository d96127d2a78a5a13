"""The match vocabulary: the keys of a `match`/`exclude` table and the event field each reads.

The config validates these keys, routing compiles them and reads the event by them, and events
names the same payload fields; when each kept its own list, a key added to one could be
silently missing from another. This module is the one list they all import. It holds names
only, and imports nothing from voltd, so that any module can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "CASELESS_KEYS",
    "DIRECTIONS",
    "GLOB_CHARS",
    "MATCH_FIELDS",
    "MATCH_KEYS",
    "NUMBER_KEYS",
]

#: Each match key, in the order the documentation lists them, and what it reads from an event:
#: the name of the payload field, which is also how explanations name it. `number` has no
#: field of its own: it is computed from `direction` (see `Event.our_number`), hence "our number".
MATCH_FIELDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "number": "our number",
        "from": "from_number",
        "to": "to_number",
        "direction": "direction",
        "event": "event_type",
        "status": "status",
        "message_type": "type",
        "error_code": "error_code",
        "carrier": "carrier_name",
        "text": "text",
    }
)
#: Keys of a `match`/`exclude` table, in the order the documentation lists them.
MATCH_KEYS: Final[tuple[str, ...]] = tuple(MATCH_FIELDS)
#: Keys whose values are phone numbers, names from [numbers] or number globs.
NUMBER_KEYS: Final = frozenset({"number", "from", "to"})
#: Keys compared case-insensitively (values are stored lower-cased).
CASELESS_KEYS: Final = frozenset(
    {"direction", "event", "status", "message_type", "error_code", "carrier"}
)
#: The values of the payload's `direction` (and of the `direction` match key), lower-cased.
DIRECTIONS: Final = ("inbound", "outbound")
#: Characters that make a `number`/`from`/`to` value a glob rather than one number.
GLOB_CHARS: Final = frozenset("*?[")
