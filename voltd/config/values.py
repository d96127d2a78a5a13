"""Parsers for the kinds of value a config holds: durations, phone numbers, number globs, addresses.

Each turns text as the operator writes it into the form voltd uses, or raises ValueError with
what was expected; none needs the rest of the file, so other code (and the tests) can use them
on their own. `_bind` and `_positive_duration` are the forms that the model's validators and
the cross-key checks share.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import phonenumbers

from voltd.config.errors import _Invalid
from voltd.vocabulary import GLOB_CHARS

DURATION_EXPECTED: Final = "expected a duration like 200ms, 2s, 5m, 1h or 7d"
NUMBER_EXPECTED: Final = "expected a phone number in international form like +1 555 555 0123"

_DIGITS = r"(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
_PLAIN_NUMBER = re.compile(_DIGITS)
_DURATION_PART = re.compile(rf"\s*({_DIGITS})\s*(ms|s|m|h|d)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | int | float) -> float:
    """Seconds from `200ms`, `2s`, `5m`, `1h`, `7d`, `1h30m` or a plain number of seconds.

    Units are lower-case only: `5M` could mean months to someone, and guessing is worse than
    asking.
    """
    if isinstance(value, bool):
        raise ValueError(DURATION_EXPECTED)
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(DURATION_EXPECTED) from None
    elif isinstance(value, str):
        text = value.strip()
        if _PLAIN_NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            seconds, pos = 0.0, 0
            while pos < len(text):
                m = _DURATION_PART.match(text, pos)
                if m is None:
                    raise ValueError(DURATION_EXPECTED)
                seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
                pos = m.end()
            if pos == 0:
                raise ValueError(DURATION_EXPECTED)
    else:
        raise ValueError(DURATION_EXPECTED)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(DURATION_EXPECTED)
    return seconds


_PHONE_CHARS: Final = frozenset("+0123456789 -().")
_NUMBER_FORMATTING: Final = frozenset(" -().")


def normalize_number(text: str) -> str:
    """E.164 for a number written in international form, formatting allowed.

    `is_possible_number` rather than `is_valid_number`: Volt's own examples use fictional 555
    numbers, which are possible but not valid, and an operator testing with them must not be
    told their config is wrong.
    """
    if not isinstance(text, str):
        raise ValueError(NUMBER_EXPECTED)
    t = text.strip()
    if (
        not t.startswith("+")
        or len(t) > 40
        or "+" in t[1:]
        or any(c not in _PHONE_CHARS for c in t)
    ):
        raise ValueError(NUMBER_EXPECTED)
    try:
        number = phonenumbers.parse(t, None)
    except phonenumbers.NumberParseException:
        raise ValueError(NUMBER_EXPECTED) from None
    if not phonenumbers.is_possible_number(number):
        raise ValueError(NUMBER_EXPECTED)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if len(e164) > 16:  # E.164 allows 15 digits; the library's metadata allows some more
        raise ValueError(NUMBER_EXPECTED)
    # The library may rewrite a number (a migrated numbering plan adds digits; all-zero
    # inputs lose some and change again when read back). Keep only what drops formatting and
    # at most a trunk prefix such as the 0 in "+44 (0)20": anything else is not what was meant.
    written = iter(c for c in t if c.isdigit())
    if not all(d in written for d in e164[1:]):
        raise ValueError(NUMBER_EXPECTED)
    again = phonenumbers.format_number(
        phonenumbers.parse(e164, None), phonenumbers.PhoneNumberFormat.E164
    )
    if again != e164:
        raise ValueError(NUMBER_EXPECTED)
    return e164


def _number_glob(text: str) -> str | None:
    """Strip formatting from a number glob, keeping `-` inside `[0-4]` ranges; None if invalid."""
    out: list[str] = []
    in_class = False
    for c in text.strip():
        if in_class:
            if c == "]":
                in_class = False
            elif c not in "0123456789-!":
                return None
            out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
        elif c in _NUMBER_FORMATTING:
            continue
        elif c in "+0123456789*?":
            out.append(c)
        else:
            return None
    glob = "".join(out)
    if in_class or not glob or not any(c in GLOB_CHARS for c in glob):
        return None
    return glob


@dataclass(frozen=True, slots=True)
class BindAddress:
    """One listening address; IPv6 hosts are kept without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> BindAddress:
        """`host:port` or `[v6]:port`; ValueError says what was expected."""
        expected = "expected host:port like 0.0.0.0:8443 or [::1]:8443"
        t = text.strip()
        if t.startswith("["):
            close = t.find("]")
            if close < 0 or t[close + 1 : close + 2] != ":":
                raise ValueError(expected)
            host, port_text = t[1:close], t[close + 2 :]
            if not _is_ipv6(host):
                raise ValueError(f"{expected}; the part in brackets is not an IPv6 address")
        else:
            host, sep, port_text = t.rpartition(":")
            if not sep or not host:
                raise ValueError(expected)
            if ":" in host:
                raise ValueError(f"{expected}; put an IPv6 address in brackets")
            if not _HOSTNAME.fullmatch(host):
                raise ValueError(f"{expected}; the host is not a host name or IP address")
        if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
            raise ValueError(f"{expected}; the port must be a number from 0 to 65535")
        return cls(host, int(port_text))


_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _bind(value: Any) -> BindAddress:
    if not isinstance(value, str):
        raise _Invalid("expected a string")
    return BindAddress.parse(value)


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise _Invalid("expected a duration greater than 0")
    return seconds


_T = TypeVar("_T")


def _or_none(parse: Callable[[Any], _T], value: Any) -> _T | None:
    """`parse(value)`, or None when it is not valid (the model reports why)."""
    try:
        return parse(value)
    except ValueError:
        return None


RATE_EXPECTED: Final = (
    'expected a rate like "50/s", "30/m" or "100/h" (calls per second, minute or hour)'
)
_RATE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*(s|m|h)\s*")
_RATE_PERIOD: Final = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Rate:
    """How many sink calls per period: `rate = "30/m"`."""

    count: float
    period: float  # seconds

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}[self.period]
        return f"{self.count:g}/{unit}"

    @classmethod
    def parse(cls, text: Any) -> Rate:
        """`"50/s"`, `"30/m"`, `"100/h"`; ValueError says what was expected."""
        m = _RATE.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            raise ValueError(RATE_EXPECTED)
        count = float(m.group(1))
        if not (0 < count <= 1_000_000):
            raise ValueError(RATE_EXPECTED + ", with a count above 0")
        return cls(count, _RATE_PERIOD[m.group(2)])
