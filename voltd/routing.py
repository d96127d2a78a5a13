"""Routing: which sinks get an event, decided by the `[[routes]]` of the configuration.

`Router.route` runs for every request, so everything that can be decided from the config alone
(number names, globs, regular expressions, lower-casing of configured values) is done once in
`Router.from_config`; per event only a few dict lookups, set lookups and regex matches remain.
`Router.explain` answers the same question slowly, with a reason for every key, for
`voltd route`. Both are built from the same compiled conditions, and the tests hold their
answers equal over random events and route sets.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from voltd.config import Config, MatchSpec, RouteConfig
from voltd.events import Event
from voltd.vocabulary import CASELESS_KEYS, GLOB_CHARS, MATCH_FIELDS, NUMBER_KEYS

__all__ = ["ConditionResult", "Explanation", "RouteResult", "Router"]

#: How each match key reads the event: the payload field, and its name in explanations.
#: `number` is computed from `direction` (see `Event.our_number`).
_FIELDS: Final = MATCH_FIELDS


def _scalar(value: object) -> str | None:
    """`Event.field` on an already fetched value; inlined here because it runs per key."""
    if type(value) is str:
        return value
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _is_glob(value: str) -> bool:
    return any(c in GLOB_CHARS for c in value)


class _Condition:
    """One key of a match/exclude table, compiled: a value matches if any configured one does."""

    __slots__ = ("exact", "glob", "key", "regexes", "shown", "tests")

    def __init__(self, key: str, values: Sequence[str], written: Sequence[str]) -> None:
        self.key = key
        self.regexes: tuple[re.Pattern[str], ...] = ()
        self.exact: frozenset[str] = frozenset()
        self.glob: re.Pattern[str] | None = None
        # Per value: how explanations show it, and a test for that value alone.
        self.tests: tuple[tuple[str, Callable[[str], bool]], ...]
        if key == "text":
            self.regexes = tuple(re.compile(v) for v in values)
            self.tests = tuple((f"/{r.pattern}/", _searcher(r)) for r in self.regexes)
            self.shown = tuple(shown for shown, _ in self.tests)
            return
        globs = [v for v in values if _is_glob(v)]
        self.exact = frozenset(v for v in values if not _is_glob(v))
        if globs:
            # fnmatch.translate anchors each alternative at the end; match() anchors the start.
            self.glob = re.compile("|".join(fnmatch.translate(g) for g in globs))
        shown = []
        tests: list[tuple[str, Callable[[str], bool]]] = []
        for value, original in zip(values, written, strict=True):
            if key in NUMBER_KEYS:
                label = value if original == value else f"{original!r} ({value})"
            else:
                label = original
            shown.append(label)
            if _is_glob(value):
                tests.append(
                    (label, _searcher(re.compile(fnmatch.translate(value)), anchored=True))
                )
            else:
                tests.append((label, value.__eq__))
        self.shown = tuple(shown)
        self.tests = tuple(tests)

    def explain(self, event: Event, value: str | None) -> ConditionResult:
        """The verdict `_all_match` reaches for this key, value by value, with the reason."""
        subject = _subject(self.key, event)
        if value is None:
            return ConditionResult(self.key, False, f"{self.key}: {subject}, so it never matches")
        for label, test in self.tests:
            if test(value):
                return ConditionResult(self.key, True, f"{self.key}: {subject} matched {label}")
        options = ", ".join(self.shown)
        verb = "matched none of" if self.key == "text" else "is not one of"
        return ConditionResult(self.key, False, f"{self.key}: {subject} {verb} {options}")


def _searcher(pattern: re.Pattern[str], *, anchored: bool = False) -> Callable[[str], bool]:
    if anchored:
        return lambda v: pattern.match(v) is not None
    return lambda v: pattern.search(v) is not None


def _short(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _subject(key: str, event: Event) -> str:
    """How the event's side of a condition is described: the value and where it came from."""
    name = _FIELDS[key]
    if key == "number":
        direction = event.direction
        if direction not in ("inbound", "outbound"):
            raw = event.field("direction")
            why = "missing" if raw is None else f"{_short(raw)}, neither inbound nor outbound"
            return f"our number is unknown (direction is {why})"
        source = "to_number" if direction == "inbound" else "from_number"
        value = event.our_number
        if value is None:
            return f"our number ({direction}, {source}) is missing or null"
        return f"our number {value} ({direction}, {source})"
    value = event.direction if key == "direction" else event.field(name)
    if value is None:
        return f"{name} is missing or null"
    if key in NUMBER_KEYS:
        return f"{name} {value}"
    return _short(value)


class _Route:
    """A route compiled for evaluation; `exclude` None means nothing is excluded."""

    __slots__ = ("exclude", "fast_exclude", "fast_match", "final", "match", "name", "sinks")

    def __init__(self, config: RouteConfig) -> None:
        self.name = config.name
        self.match = _compile(config.match)
        self.exclude = _compile(config.exclude) if config.exclude is not None else None
        # AND does not care about order, so route() tests cheap set lookups before globs and
        # regexes; explain() keeps the file's order, which is what the operator reads.
        self.fast_match = tuple(sorted(self.match, key=_cost))
        self.fast_exclude = (
            tuple(sorted(self.exclude, key=_cost)) if self.exclude is not None else None
        )
        self.sinks = tuple(dict.fromkeys(config.sinks))
        self.final = config.final


def _cost(condition: _Condition) -> int:
    if condition.regexes:
        return 2
    return 1 if condition.glob is not None else 0


def _compile(spec: MatchSpec) -> tuple[_Condition, ...]:
    return tuple(
        _Condition(key, values, spec.written.get(key, values))
        for key, values in spec.conditions.items()
    )


def _all_match(conditions: tuple[_Condition, ...], values: dict[str, str | None]) -> bool:
    """`all(c.test(...))`, inlined: this loop is the per-request cost of routing."""
    for c in conditions:
        value = values[c.key]
        if value is None:
            return False
        if value in c.exact:
            continue
        glob = c.glob
        if glob is not None and glob.match(value) is not None:
            continue
        for regex in c.regexes:
            if regex.search(value) is not None:
                break
        else:
            return False
    return True


@dataclass(frozen=True, slots=True)
class ConditionResult:
    """One key of a match or exclude table: did it match, and the sentence saying why."""

    key: str
    matched: bool
    reason: str


@dataclass(frozen=True, slots=True)
class RouteResult:
    """What happened to one route for one event.

    `evaluated` is False for routes after a final route that fired; then `match` and
    `exclude` are empty. `excluded` means every key of `exclude` matched.
    """

    index: int
    name: str
    evaluated: bool
    matched: bool
    excluded: bool
    fired: bool
    final: bool
    sinks: tuple[str, ...]
    match: tuple[ConditionResult, ...]
    exclude: tuple[ConditionResult, ...] | None


@dataclass(frozen=True, slots=True)
class Explanation:
    """The dry-run answer for one event: every route's verdict, the default, and the sinks."""

    event_id: str
    summary: str
    routes: tuple[RouteResult, ...]
    unmatched: str | None
    default_applied: bool
    sinks: list[str]

    def render(self) -> str:
        """Readable text for the terminal."""
        lines = [f"event {self.event_id}: {self.summary}"]
        if not self.routes:
            lines.append("  no routes are configured")
        stopper: RouteResult | None = None
        for r in self.routes:
            title = f"  route {r.index + 1} {r.name!r}"
            if not r.evaluated:
                assert stopper is not None
                lines.append(
                    f"{title}: skipped (route {stopper.index + 1} {stopper.name!r} is final "
                    "and fired)"
                )
                continue
            if r.fired:
                verdict = f"FIRED -> {', '.join(r.sinks)}"
                if r.final:
                    verdict += " (final: later routes are not evaluated)"
                    stopper = r
            elif r.matched and r.excluded:
                verdict = "not fired (matched, but excluded)"
            else:
                verdict = "not fired (match failed)"
            lines.append(f"{title}: {verdict}")
            if not r.match:
                lines.append("      match: (none) every event matches")
            else:
                lines.append("      match (all keys must match):")
                lines.extend(_reason_line(c) for c in r.match)
            if r.exclude is not None:
                outcome = "every key matched: excluded" if r.excluded else "not excluded"
                lines.append(f"      exclude ({outcome}):")
                lines.extend(_reason_line(c) for c in r.exclude)
        if self.unmatched is None:
            lines.append("  unmatched default: none configured")
        elif self.default_applied:
            lines.append(f"  unmatched default: {self.unmatched} (no route fired)")
        else:
            lines.append(f"  unmatched default: {self.unmatched} not used (a route fired)")
        lines.append(f"sinks: {', '.join(self.sinks) if self.sinks else '(none)'}")
        return "\n".join(lines)


def _reason_line(c: ConditionResult) -> str:
    return f"        {'yes' if c.matched else 'no '}  {c.reason}"


def _summary(event: Event) -> str:
    parts = []
    for label, value in (
        ("direction", event.direction),
        ("event", event.field("event_type")),
        ("status", event.field("status")),
        ("our number", event.our_number),
        ("their number", event.their_number),
    ):
        parts.append(f"{label} {value if value is not None else '(none)'}")
    return ", ".join(parts)


class Router:
    """Decides the sinks for each event; immutable, so a reload simply builds a new one."""

    __slots__ = ("_extract", "_routes", "_unmatched")

    def __init__(self, routes: Sequence[RouteConfig], unmatched: str | None = None) -> None:
        self._routes = tuple(_Route(r) for r in routes)
        self._unmatched = unmatched
        used: dict[str, None] = {}
        for route in self._routes:
            for condition in (*route.match, *(route.exclude or ())):
                used[condition.key] = None
        self._extract = tuple((key, _FIELDS[key], key in CASELESS_KEYS) for key in used)

    @classmethod
    def from_config(cls, config: Config) -> Router:
        return cls(config.routes, config.defaults.unmatched)

    def _values(self, event: Event) -> dict[str, str | None]:
        """The event's side of every key any route uses, read once per event.

        Same results as `Event.field`/`Event.our_number`, without a method call per key.
        """
        payload = event._payload
        direction = _scalar(payload.get("direction"))
        if direction is not None:
            direction = direction.lower()
        values: dict[str, str | None] = {}
        for key, name, caseless in self._extract:
            if key == "number":
                if direction == "inbound":
                    value = _scalar(payload.get("to_number"))
                elif direction == "outbound":
                    value = _scalar(payload.get("from_number"))
                else:
                    value = None
            elif key == "direction":
                value = direction
            else:
                value = _scalar(payload.get(name))
                if caseless and value is not None:
                    value = value.lower()
            values[key] = value
        return values

    def route(self, event: Event) -> list[str]:
        """Sink names for `event`, in first-seen order, each once."""
        values = self._values(event)
        out: list[str] = []
        fired = False
        for route in self._routes:
            if not _all_match(route.fast_match, values):
                continue
            if route.fast_exclude is not None and _all_match(route.fast_exclude, values):
                continue
            fired = True
            for sink in route.sinks:
                if sink not in out:
                    out.append(sink)
            if route.final:
                break
        if not fired and self._unmatched is not None:
            return [self._unmatched]
        return out

    def explain(self, event: Event) -> Explanation:
        """Every route's verdict with a reason per key; `sinks` always equals `route(event)`."""
        values = self._values(event)
        results: list[RouteResult] = []
        sinks: list[str] = []
        fired_any = False
        stopped = False
        for i, route in enumerate(self._routes):
            if stopped:
                results.append(
                    RouteResult(
                        i,
                        route.name,
                        False,
                        False,
                        False,
                        False,
                        route.final,
                        route.sinks,
                        (),
                        None,
                    )
                )
                continue
            match = tuple(c.explain(event, values[c.key]) for c in route.match)
            matched = all(c.matched for c in match)
            exclude = None
            excluded = False
            if route.exclude is not None:
                exclude = tuple(c.explain(event, values[c.key]) for c in route.exclude)
                excluded = all(c.matched for c in exclude)
            fired = matched and not excluded
            if fired:
                fired_any = True
                for sink in route.sinks:
                    if sink not in sinks:
                        sinks.append(sink)
                stopped = route.final
            results.append(
                RouteResult(
                    i,
                    route.name,
                    True,
                    matched,
                    excluded,
                    fired,
                    route.final,
                    route.sinks,
                    match,
                    exclude,
                )
            )
        default_applied = not fired_any and self._unmatched is not None
        if default_applied:
            assert self._unmatched is not None
            sinks = [self._unmatched]
        return Explanation(
            event.id, _summary(event), tuple(results), self._unmatched, default_applied, sinks
        )
