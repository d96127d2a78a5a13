"""Routing invariants against a reference written from DESIGN §4, over random routes and events.

tests/test_routing.py already holds `route()` to a small oracle built on the loaded Config. The
reference here starts from the TOML the operator writes instead: it resolves names from
[numbers], strips formatting from number globs, lower-cases caseless keys and matches globs
with its own matcher, so a slip in the loader's normalization or in the router's compiled
globs shows up. On top of equality it checks the rules as relations between route sets:
exclude silences a route, a final route that fires makes later routes irrelevant, appending
routes only appends sinks, order only orders, and the unmatched default fills exactly the
empty answers. `explain()` must agree with `route()` route by route and key by key.

The properties are plain sync functions taking only `@given` arguments, for `fuzz/run.py`.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import examples
from tests.tomlw import toml_str, toml_value
from voltd import config, events
from voltd.events import Event
from voltd.keys import generate_signing_pair
from voltd.routing import Explanation, Router

# --------------------------------------------------------------------------------------------
# Writing route sets as TOML and loading them the way voltd does

_TMP: list[tempfile.TemporaryDirectory[str]] = []


@functools.cache
def _material() -> Path:
    """A config directory with a public key, made once per process."""
    tmp = tempfile.TemporaryDirectory(prefix="voltd-fuzz-routing-")
    _TMP.append(tmp)  # kept alive for the process; removed at exit
    generate_signing_pair(Path(tmp.name))
    return Path(tmp.name)


SINKS = ("a", "b", "c", "d", "archive")
# Names and numbers as written in [numbers] -> E.164, written down rather than computed.
NAMED = {"front-desk": "+15555550123", "support": "+442079460958"}
WRITTEN_NUMBERS = {
    "+1 (555) 555-0123": "+15555550123",
    "+1.555.555.0145": "+15555550145",
    "+15555550199": "+15555550199",
    "+44 20 7946 0958": "+442079460958",
}
HEADER = (
    '[verify]\npublic_keys = ["volt_id_rsa.pub"]\n\n[numbers]\n'
    'front-desk = "+1 (555) 555-0123"\nsupport = "+44 20 7946 0958"\n\n'
    + "".join(f'[sinks.{name}]\ntype = "custom"\n' for name in SINKS)
)


def load_router(routes: list[dict[str, Any]], unmatched: str | None) -> Router:
    """The router voltd would build from these [[routes]]; the file must be valid."""
    text = HEADER
    for route in routes:
        text += "\n[[routes]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in route.items())
    if unmatched is not None:
        text += f"\n[defaults]\nunmatched = {toml_str(unmatched)}\n"
    path = _material() / "routes.toml"
    path.write_text(text, encoding="utf-8")
    try:
        return Router.from_config(config.load(path))
    except config.ConfigError as e:  # a strategy bug, not a finding: show the file
        raise AssertionError(f"{e}\n---\n{text}") from None


# --------------------------------------------------------------------------------------------
# The reference: DESIGN §4's matching rules, written out plainly


def _glob_tokens(pattern: str) -> list[tuple[str, Any]]:
    """`*`, `?`, `[seq]`, `[!seq]` (with a-z ranges); a `[` without `]` is a plain character."""
    tokens: list[tuple[str, Any]] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            tokens.append(("star", None))
        elif c == "?":
            tokens.append(("any", None))
        elif c == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            ranges, j = [], 0
            while j < len(body):
                if j + 2 < len(body) and body[j + 1] == "-":
                    ranges.append((body[j], body[j + 2]))
                    j += 3
                else:
                    ranges.append((body[j], body[j]))
                    j += 1
            tokens.append(("set", (negate, ranges)))
            i = end
        else:
            tokens.append(("char", c))
        i += 1
    return tokens


def glob_match(pattern: str, value: str) -> bool:
    """Whole-string glob match, memoized on (token, position)."""
    tokens = _glob_tokens(pattern)

    @functools.cache
    def at(t: int, v: int) -> bool:
        if t == len(tokens):
            return v == len(value)
        kind, arg = tokens[t]
        if kind == "star":
            return any(at(t + 1, w) for w in range(v, len(value) + 1))
        if v == len(value):
            return False
        c = value[v]
        if kind == "char" and c != arg:
            return False
        if kind == "set":
            negate, ranges = arg
            if any(lo <= c <= hi for lo, hi in ranges) == negate:
                return False
        return at(t + 1, v + 1)

    return at(0, 0)


def _strip_number_formatting(glob: str) -> str:
    """DESIGN's number globs may be written with spaces, dots, dashes and parentheses."""
    out, in_set = [], False
    for c in glob:
        in_set = in_set or c == "["
        if in_set or c not in " -().":
            out.append(c)
        in_set = in_set and c != "]"
    return "".join(out)


def _field(payload: dict[str, Any], name: str) -> str | None:
    """A payload field as text; absent, null, arrays and objects never match anything."""
    value = payload.get(name)
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_PAYLOAD_FIELD = {
    "from": "from_number",
    "to": "to_number",
    "event": "event_type",
    "status": "status",
    "message_type": "type",
    "error_code": "error_code",
    "carrier": "carrier_name",
    "text": "text",
}


def event_value(key: str, payload: dict[str, Any]) -> str | None:
    direction = _field(payload, "direction")
    direction = direction.lower() if direction is not None else None
    if key == "direction":
        return direction
    if key == "number":  # our number: the recipient inbound, the sender outbound
        side = {"inbound": "to_number", "outbound": "from_number"}.get(direction or "")
        return _field(payload, side) if side else None
    return _field(payload, _PAYLOAD_FIELD[key])


def value_matches(key: str, written: Any, value: str) -> bool:
    """One configured value (as written in the file) against the event's value."""
    if key == "text":
        return re.search(written, value) is not None
    if key in ("number", "from", "to"):
        if written in NAMED:
            return value == NAMED[written]
        if written in WRITTEN_NUMBERS:
            return value == WRITTEN_NUMBERS[written]
        return glob_match(_strip_number_formatting(written), value)
    wanted = str(written).lower()
    if key == "direction":
        wanted = wanted.strip()
    if any(c in "*?[" for c in wanted):
        return glob_match(wanted, value.lower())
    return wanted == value.lower()


def condition(key: str, written: Any, payload: dict[str, Any]) -> bool:
    value = event_value(key, payload)
    values = written if isinstance(written, list) else [written]
    return value is not None and any(value_matches(key, w, value) for w in values)


def table_matches(table: dict[str, Any], payload: dict[str, Any]) -> bool:
    return all(condition(k, v, payload) for k, v in table.items())


def reference(
    routes: list[dict[str, Any]], unmatched: str | None, payload: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """(sinks, verdict per route: 'fired', 'excluded', 'no match' or 'skipped')."""
    sinks: list[str] = []
    verdicts: list[str] = []
    stopped = False
    for route in routes:
        if stopped:
            verdicts.append("skipped")
            continue
        if not table_matches(route.get("match", {}), payload):
            verdicts.append("no match")
        elif "exclude" in route and table_matches(route["exclude"], payload):
            verdicts.append("excluded")
        else:
            verdicts.append("fired")
            named = route["sinks"] if isinstance(route["sinks"], list) else [route["sinks"]]
            sinks += [s for s in dict.fromkeys(named) if s not in sinks]
            stopped = route.get("final", False)
    if "fired" not in verdicts and unmatched is not None:
        return [unmatched], verdicts
    return sinks, verdicts


# --------------------------------------------------------------------------------------------
# Strategies: route sets over every match key, events that hit and miss them

# No `$` (a `${` would be a secret reference) in generated text; brackets only from _GLOB_SET.
_PLAIN = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="$[]"), max_size=6
)
_GLOB_SET = st.builds(
    "[{}{}]".format,
    st.sampled_from(["", "!"]),
    st.lists(st.sampled_from(["a", "b", "x", "0", "1", "a-c", "0-4", "m-z", "."]), min_size=1,
             max_size=3).map("".join),
)  # fmt: skip
_GLOB = st.lists(
    st.one_of(_PLAIN, st.sampled_from(["*", "?", "**", "A", "é", "İ", "["]), _GLOB_SET),
    min_size=1,
    max_size=4,
).map("".join)
_NUMBER_GLOB = st.builds(
    "+{}".format,
    st.lists(
        st.one_of(
            st.sampled_from(["1", "5", "55", "555", "0", "44", "*", "?", " ", "-", "(", ")", "."]),
            st.builds("[{}{}-{}]".format, st.sampled_from(["", "!"]), st.sampled_from("0123"),
                      st.sampled_from("456789")),
        ),
        min_size=1, max_size=8,
    ).map("".join),
).filter(lambda g: any(c in "*?[" for c in g))  # fmt: skip

_CASELESS_POOLS = {
    "event": ["message.received", "message.*", "MESSAGE.FINALIZED", "message.?ent",
              "[mn]essage.sent"],
    "status": ["failed", "Delivered", "fail*", "[!d]*", "sent"],
    "message_type": ["sms", "MMS", "?MS"],
    "error_code": [702, 0, "7*", "40002", "", "[0-4]*"],
    "carrier": ["T-MOBILE*", "verizon", "*mobile*"],
}  # fmt: skip
_NUMBER_POOL = [*NAMED, *WRITTEN_NUMBERS, "+1555*", "+1 555-555-01[0-4]*", "+44*", "+1555555014?"]
_VALUE = {
    **{k: st.one_of(st.sampled_from(v), _GLOB, _PLAIN) for k, v in _CASELESS_POOLS.items()},
    "number": st.one_of(st.sampled_from(_NUMBER_POOL), _NUMBER_GLOB),
    "from": st.one_of(st.sampled_from(_NUMBER_POOL), _NUMBER_GLOB),
    "to": st.one_of(st.sampled_from(_NUMBER_POOL), _NUMBER_GLOB),
    "direction": st.sampled_from(["inbound", "outbound", "Inbound", "OUTBOUND", " inbound "]),
    "text": st.one_of(
        st.sampled_from(["(?i)stop", "^Send", "x?", "a|b", "$", "^$", r"\d{3}", "é"]),
        _PLAIN.map(re.escape),
    ),
}


@st.composite
def tables(draw: st.DrawFn, min_size: int = 0) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(config.MATCH_KEYS), min_size=min_size, max_size=3))
    out: dict[str, Any] = {}
    for key in dict.fromkeys(keys):
        one = _VALUE[key]
        out[key] = draw(st.one_of(one, st.lists(one, min_size=1, max_size=3)))
    return out


@st.composite
def route_dicts(draw: st.DrawFn, final: st.SearchStrategy[bool] | None = None) -> dict[str, Any]:
    route: dict[str, Any] = {}
    if draw(st.booleans()):
        route["match"] = draw(tables())
    if draw(st.integers(0, 2)) == 0:
        route["exclude"] = draw(tables(min_size=1))
    sinks = draw(st.lists(st.sampled_from(SINKS), min_size=1, max_size=3))
    route["sinks"] = sinks[0] if len(sinks) == 1 and draw(st.booleans()) else sinks
    is_final = draw(final if final is not None else st.integers(0, 3).map(lambda n: n == 0))
    if is_final or draw(st.booleans()):
        route["final"] = is_final
    return route


ROUTES = st.lists(route_dicts(), max_size=6)
NONFINAL_ROUTES = st.lists(route_dicts(final=st.just(False)), max_size=6)
UNMATCHED = st.sampled_from([None, "archive", "d"])

_EVENT_NUMBERS = st.one_of(
    st.sampled_from([*NAMED.values(), *WRITTEN_NUMBERS.values(), "+1 555 555 0123", ""]),
    st.from_regex(r"\+(1555555|44)[0-9]{0,5}", fullmatch=True),
)
_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 100_000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.just([]),
    st.just({"a": 1}),
)


def _field_strategy(pool: list[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(pool), st.text(max_size=8), _ODD)


PAYLOADS = st.fixed_dictionaries(
    {},
    optional={
        "direction": _field_strategy(["inbound", "outbound", "INBOUND", "Outbound", "",
                                      " inbound"]),
        "to_number": st.one_of(_EVENT_NUMBERS, _ODD),
        "from_number": st.one_of(_EVENT_NUMBERS, _ODD),
        "event_type": _field_strategy(["message.received", "message.sent", "Message.Finalized",
                                       "nessage.sent"]),
        "status": _field_strategy(["failed", "delivered", "FAILED", "sent", "queued"]),
        "type": _field_strategy(["SMS", "mms", "xMS"]),
        "error_code": _field_strategy(["702", 702, "40002", "", 0, "7"]),
        "carrier_name": _field_strategy(["T-MOBILE USA, INC.", "Verizon", "mobile"]),
        "text": _field_strategy(["Sending a msg", "STOP", "", "stop 123", "x"]),
    },
)  # fmt: skip


_FILLER = st.text(st.characters(codec="ascii", categories=("L", "N", "P", "Zs")), max_size=3)


def _instance(draw: st.DrawFn, pattern: str) -> str:
    """A string the glob `pattern` matches, so that routes fire often enough to matter."""
    out = []
    for kind, arg in _glob_tokens(pattern):
        if kind == "star":
            out.append(draw(_FILLER))
        elif kind == "any":
            out.append(draw(st.sampled_from("aZ7.é")))
        elif kind == "set":
            negate, ranges = arg
            pool = [lo for lo, _ in ranges] if not negate else "#Q~é5"
            ok = [c for c in pool if any(lo <= c <= hi for lo, hi in ranges) != negate]
            out.append(draw(st.sampled_from(ok)) if ok else "")
        else:
            out.append(arg)
    return "".join(out)


def _satisfy(draw: st.DrawFn, key: str, written: Any, payload: dict[str, Any]) -> None:
    """Set the payload fields read by `key` so that the configured value `written` matches."""
    if key in ("number", "from", "to"):
        if written in NAMED or written in WRITTEN_NUMBERS:
            value = NAMED.get(written) or WRITTEN_NUMBERS[written]
        else:
            value = _instance(draw, _strip_number_formatting(written))
        if key == "number":
            direction = draw(st.sampled_from(["inbound", "outbound", "OUTBOUND"]))
            payload["direction"] = direction
            key = "to" if direction.lower() == "inbound" else "from"
        payload[_PAYLOAD_FIELD[key]] = value
        return
    if key == "direction":
        payload["direction"] = draw(st.sampled_from([written.strip(), written.strip().upper()]))
    elif key == "text":
        payload["text"] = draw(st.from_regex(written))
    elif isinstance(written, int):
        payload[_PAYLOAD_FIELD[key]] = draw(st.sampled_from([written, str(written)]))
    else:
        value = _instance(draw, written) if any(c in "*?[" for c in written) else written
        payload[_PAYLOAD_FIELD[key]] = draw(st.sampled_from([value, value.upper(), value.title()]))


@st.composite
def payloads_for(draw: st.DrawFn, routes: list[dict[str, Any]]) -> dict[str, Any]:
    """A payload of which some fields are chosen to satisfy some conditions of the routes."""
    payload = dict(draw(PAYLOADS))
    wanted = [
        (key, value)
        for route in routes
        for table in (route.get("match", {}), route.get("exclude", {}))
        for key, values in table.items()
        for value in (values if isinstance(values, list) else [values])
    ]
    if wanted:
        for i in draw(st.lists(st.integers(0, len(wanted) - 1), max_size=4)):
            _satisfy(draw, *wanted[i], payload)
    return payload


def make_event(payload: dict[str, Any]) -> Event:
    body = {"type": "messaging", "id": "rfw_fuzz", "payload": payload, "time": 1}
    parsed = events.parse(json.dumps(body).encode())
    assert isinstance(parsed, Event)
    return parsed


# --------------------------------------------------------------------------------------------
# Properties


def _check_explanation(
    ex: Explanation,
    routes: list[dict[str, Any]],
    unmatched: str | None,
    payload: dict[str, Any],
    verdicts: list[str],
) -> None:
    """explain() tells the reference's story, route by route and key by key."""
    assert len(ex.routes) == len(routes)
    for i, (r, route, verdict) in enumerate(zip(ex.routes, routes, verdicts, strict=True)):
        assert r.index == i and r.final is route.get("final", False)
        assert r.evaluated == (verdict != "skipped")
        assert r.fired == (verdict == "fired")
        if not r.evaluated:
            assert r.match == () and r.exclude is None and not r.matched and not r.excluded
            continue
        match = route.get("match", {})
        assert [c.key for c in r.match] == list(match)
        assert [c.matched for c in r.match] == [condition(k, v, payload) for k, v in match.items()]
        assert r.matched == (verdict != "no match")
        if "exclude" in route:
            exclude = route["exclude"]
            assert r.exclude is not None and [c.key for c in r.exclude] == list(exclude)
            assert [c.matched for c in r.exclude] == [
                condition(k, v, payload) for k, v in exclude.items()
            ]
            assert r.excluded == table_matches(exclude, payload)
        else:
            assert r.exclude is None and not r.excluded
        assert all(c.reason.startswith(f"{c.key}: ") for c in (*r.match, *(r.exclude or ())))
    assert ex.unmatched == unmatched
    assert ex.default_applied == (unmatched is not None and "fired" not in verdicts)
    assert ex.render().endswith("sinks: " + (", ".join(ex.sinks) or "(none)"))


@examples(150)
@given(ROUTES, UNMATCHED, st.data())
def test_route_and_explain_follow_the_reference(
    routes: list[dict[str, Any]], unmatched: str | None, data: st.DataObject
) -> None:
    router = load_router(routes, unmatched)
    for payload in data.draw(st.lists(payloads_for(routes), min_size=1, max_size=8)):
        event = make_event(payload)
        expected, verdicts = reference(routes, unmatched, payload)
        sinks = router.route(event)
        assert sinks == expected, (payload, verdicts)
        assert len(set(sinks)) == len(sinks)
        ex = router.explain(event)
        assert ex.sinks == sinks
        _check_explanation(ex, routes, unmatched, payload, verdicts)


@examples(100)
@given(ROUTES, UNMATCHED, st.data())
def test_exclude_equal_to_match_silences_the_route(
    routes: list[dict[str, Any]], unmatched: str | None, data: st.DataObject
) -> None:
    """Exclude wins over match: a route excluding what it matches is as good as deleted."""
    candidates = [i for i, r in enumerate(routes) if r.get("match")]
    if not candidates:
        return
    k = data.draw(st.sampled_from(candidates), label="silenced route")
    silenced = [*routes[:k], {**routes[k], "exclude": routes[k]["match"]}, *routes[k + 1 :]]
    with_it = load_router(silenced, unmatched)
    without = load_router(routes[:k] + routes[k + 1 :], unmatched)
    for payload in data.draw(st.lists(payloads_for(routes), min_size=1, max_size=6)):
        event = make_event(payload)
        assert with_it.route(event) == without.route(event), payload
        assert not with_it.explain(event).routes[k].fired


@examples(100)
@given(ROUTES, ROUTES, UNMATCHED, st.data())
def test_a_final_route_that_fires_ends_the_evaluation(
    routes: list[dict[str, Any]],
    later: list[dict[str, Any]],
    unmatched: str | None,
    data: st.DataObject,
) -> None:
    """No route after a fired final route adds sinks; the routes before it keep theirs."""
    router = load_router(routes, unmatched)
    extended = load_router(routes + later, unmatched)
    for payload in data.draw(st.lists(payloads_for(routes + later), min_size=1, max_size=6)):
        event = make_event(payload)
        ex = router.explain(event)
        stop = next((r.index for r in ex.routes if r.fired and r.final), None)
        if stop is None:
            continue
        assert extended.route(event) == ex.sinks
        assert all(not r.evaluated for r in extended.explain(event).routes[stop + 1 :])
        before = load_router(routes[:stop], None).route(event)
        assert ex.sinks[: len(before)] == before


@examples(100)
@given(NONFINAL_ROUTES, NONFINAL_ROUTES, st.data())
def test_appending_routes_only_appends_sinks(
    routes: list[dict[str, Any]], more: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Fan-out in file order, each sink once at its first mention: order is stable."""
    short, long = load_router(routes, None), load_router(routes + more, None)
    for payload in data.draw(st.lists(payloads_for(routes + more), min_size=1, max_size=6)):
        event = make_event(payload)
        first, second = short.route(event), long.route(event)
        assert second[: len(first)] == first
        assert len(set(second)) == len(second)


@examples(100)
@given(NONFINAL_ROUTES, st.data())
def test_route_order_only_orders_the_sinks(
    routes: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Without final routes, which sinks fire does not depend on the order of the routes."""
    shuffled = data.draw(st.permutations(routes), label="shuffled")
    one, two = load_router(routes, None), load_router(shuffled, None)
    for payload in data.draw(st.lists(payloads_for(routes), min_size=1, max_size=6)):
        event = make_event(payload)
        assert sorted(one.route(event)) == sorted(two.route(event))


@examples(100)
@given(ROUTES, st.sampled_from(SINKS), st.data())
def test_unmatched_default_fills_exactly_the_empty_answers(
    routes: list[dict[str, Any]], default: str, data: st.DataObject
) -> None:
    """[defaults] unmatched is the answer exactly when no route fired, and only then."""
    plain, defaulted = load_router(routes, None), load_router(routes, default)
    for payload in data.draw(st.lists(payloads_for(routes), min_size=1, max_size=6)):
        event = make_event(payload)
        without = plain.route(event)
        assert defaulted.route(event) == (without or [default])
        assert defaulted.explain(event).default_applied == (not without)


@examples(300)
@given(st.one_of(_GLOB, _NUMBER_GLOB.map(_strip_number_formatting)), st.text(max_size=8))
def test_reference_glob_agrees_with_a_single_route(pattern: str, value: str) -> None:
    """The reference's glob matcher and voltd's compiled glob agree on one status condition
    (checked alone so a disagreement is shrunk to one pattern and one value)."""
    router = Router(
        [
            config.RouteConfig(
                "r", config.MatchSpec({"status": (pattern.lower(),)}), None, ["a"], False
            )
        ]
    )
    got = router.route(make_event({"status": value})) == ["a"]
    assert got == glob_match(pattern.lower(), value.lower()), (pattern, value)
