"""Routing: which sinks get an event, and `explain` telling the same story with reasons."""

from __future__ import annotations

import fnmatch
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tomlw import toml_value
from voltd import config, events
from voltd.config import MatchSpec
from voltd.events import Event
from voltd.keys import generate_signing_pair
from voltd.routing import Router

HEADER = """
[verify]
public_keys = ["volt_id_rsa.pub"]

[numbers]
front-desk = "+1 (555) 555-0123"
support = "+1 555 555 0145"

[sinks.a]
type = "file"
[sinks.b]
type = "file"
[sinks.c]
type = "file"
[sinks.archive]
type = "file"
"""


@pytest.fixture(scope="module")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("routing")
    generate_signing_pair(d)
    return d


def make_router(confdir: Path, routes: str, unmatched: str | None = None) -> Router:
    text = HEADER + routes
    if unmatched is not None:
        text += f"\n[defaults]\nunmatched = {json.dumps(unmatched)}\n"
    path = confdir / "config.toml"
    path.write_text(text, encoding="utf-8")
    return Router.from_config(config.load(path))


def event(**payload: Any) -> Event:
    base: dict[str, Any] = {
        "id": "rf_1",
        "to_number": "+15555550123",
        "from_number": "+15555550199",
        "direction": "inbound",
        "type": "SMS",
        "text": "hello there",
        "status": "delivered",
        "event_type": "message.received",
        "error_code": None,
        "carrier_name": "T-MOBILE USA, INC.",
        "media": [],
    }
    base.update(payload)
    for key in [k for k, v in payload.items() if v is _ABSENT]:
        del base[key]
    parsed = events.parse(
        json.dumps({"type": "messaging", "id": "rfw_1", "payload": base, "time": 1}).encode()
    )
    assert isinstance(parsed, Event)
    return parsed


_ABSENT = object()


def test_our_number_is_recipient_inbound_and_sender_outbound(confdir: Path) -> None:
    r = make_router(confdir, "[[routes]]\nmatch = { number = 'front-desk' }\nsinks = 'a'\n")
    assert r.route(event(direction="inbound", to_number="+15555550123")) == ["a"]
    assert r.route(event(direction="outbound", from_number="+15555550123", to_number="+1")) == ["a"]
    # Our number on the other side of the conversation is not "our number".
    assert r.route(event(direction="inbound", from_number="+15555550123", to_number="+1")) == []
    assert r.route(event(direction="outbound", to_number="+15555550123")) == []
    assert r.route(event(direction="INBOUND")) == ["a"]
    assert r.route(event(direction=None)) == []
    assert r.route(event(direction="sideways")) == []


def test_from_and_to_are_the_payload_fields(confdir: Path) -> None:
    r = make_router(
        confdir,
        "[[routes]]\nmatch = { from = '+1 555 555 0199' }\nsinks = 'a'\n"
        "[[routes]]\nmatch = { to = 'support' }\nsinks = 'b'\n",
    )
    assert r.route(event()) == ["a"]
    assert r.route(event(direction="outbound", to_number="+15555550145")) == ["a", "b"]
    assert r.route(event(from_number="+15555550100")) == []


def test_number_globs_and_names(confdir: Path) -> None:
    r = make_router(
        confdir,
        "[[routes]]\nmatch = { number = ['+1 555 555 01[0-2]*'] }\nsinks = 'a'\n"
        "[[routes]]\nmatch = { number = ['+44*', 'support'] }\nsinks = 'b'\n"
        "[[routes]]\nmatch = { number = '+1555555014?' }\nsinks = 'c'\n",
    )
    assert r.route(event(to_number="+15555550123")) == ["a"]
    assert r.route(event(to_number="+15555550145")) == ["b", "c"]
    assert r.route(event(to_number="+442079460958")) == ["b"]
    assert r.route(event(to_number="+15555550345")) == []


def test_string_globs_and_case_insensitivity(confdir: Path) -> None:
    r = make_router(
        confdir,
        "[[routes]]\nmatch = { event = 'Message.*', status = ['FAILED', 'undeliv*'] }\n"
        "sinks = 'a'\n"
        "[[routes]]\nmatch = { carrier = 't-mobile*', message_type = 'sms' }\nsinks = 'b'\n"
        "[[routes]]\nmatch = { error_code = [702, '40*'] }\nsinks = 'c'\n",
    )
    assert r.route(event(event_type="MESSAGE.FINALIZED", status="Failed")) == ["a", "b"]
    assert r.route(event(status="undelivered", carrier_name="Verizon")) == ["a"]
    assert r.route(event(type="MMS")) == []
    assert r.route(event(error_code=702, type="MMS")) == ["c"]
    assert r.route(event(error_code="40002", type="MMS")) == ["c"]
    assert r.route(event(error_code="7020", type="MMS")) == []


def test_missing_and_null_fields_never_match(confdir: Path) -> None:
    r = make_router(
        confdir,
        "[[routes]]\nmatch = { status = '*' }\nsinks = 'a'\n"
        "[[routes]]\nmatch = { text = '.*' }\nsinks = 'b'\n"
        "[[routes]]\nmatch = { carrier = '*' }\nsinks = 'c'\n"
        "[[routes]]\nexclude = { error_code = '*' }\nsinks = 'archive'\n",
    )
    assert r.route(event(error_code="1")) == ["a", "b", "c"]
    # A null field never matches, so it never excludes either.
    assert r.route(event(status=None, text=None, carrier_name=_ABSENT)) == ["archive"]
    # Lists and objects are not scalars: they never match.
    assert r.route(event(status=["x"], text={"a": 1}, carrier_name=[])) == ["archive"]


def test_text_is_a_regex_search(confdir: Path) -> None:
    r = make_router(
        confdir,
        "[[routes]]\nmatch = { text = ['(?i)\\bstop\\b', '^URGENT'] }\nsinks = 'a'\n",
    )
    assert r.route(event(text="please STOP now")) == ["a"]
    assert r.route(event(text="URGENT: call")) == ["a"]
    assert r.route(event(text="unstoppable, urgent")) == []


def test_all_keys_must_match_any_value_may(confdir: Path) -> None:
    r = make_router(
        confdir,
        "[[routes]]\nmatch = { direction = 'inbound', status = ['failed', 'delivered'] }\n"
        "sinks = 'a'\n",
    )
    assert r.route(event(status="failed")) == ["a"]
    assert r.route(event(status="delivered")) == ["a"]
    assert r.route(event(status="sent")) == []
    assert r.route(event(direction="outbound")) == []


def test_exclude_removes_only_when_all_its_keys_match(confdir: Path) -> None:
    r = make_router(
        confdir,
        "[[routes]]\nexclude = { status = 'failed', number = 'support' }\nsinks = 'a'\n",
    )
    assert r.route(event(status="failed", to_number="+15555550145")) == []
    assert r.route(event(status="failed")) == ["a"]
    assert r.route(event(to_number="+15555550145")) == ["a"]


def test_fan_out_final_and_each_sink_once(confdir: Path) -> None:
    r = make_router(
        confdir,
        "[[routes]]\nmatch = { status = 'failed' }\nsinks = ['b', 'a']\nfinal = true\n"
        "[[routes]]\nmatch = { direction = 'inbound' }\nsinks = ['a', 'c', 'a']\n"
        "[[routes]]\nsinks = ['archive', 'c']\n",
    )
    assert r.route(event()) == ["a", "c", "archive"]
    assert r.route(event(status="failed")) == ["b", "a"]
    assert r.route(event(direction="outbound")) == ["archive", "c"]


def test_final_route_that_does_not_fire_stops_nothing(confdir: Path) -> None:
    r = make_router(
        confdir,
        "[[routes]]\nmatch = { status = 'failed' }\nexclude = { direction = 'inbound' }\n"
        "sinks = 'a'\nfinal = true\n"
        "[[routes]]\nsinks = 'b'\n",
    )
    assert r.route(event(status="failed")) == ["b"]
    assert r.route(event(status="failed", direction="outbound")) == ["a"]


def test_unmatched_default_only_when_nothing_fired(confdir: Path) -> None:
    routes = "[[routes]]\nmatch = { status = 'failed' }\nsinks = 'a'\n"
    r = make_router(confdir, routes, unmatched="archive")
    assert r.route(event(status="failed")) == ["a"]
    assert r.route(event()) == ["archive"]
    assert make_router(confdir, routes).route(event()) == []
    assert make_router(confdir, "", unmatched="c").route(event()) == ["c"]


def test_empty_match_matches_everything(confdir: Path) -> None:
    r = make_router(confdir, "[[routes]]\nmatch = {}\nsinks = 'a'\n[[routes]]\nsinks = 'b'\n")
    assert r.route(event(direction=None, status=None)) == ["a", "b"]


def test_router_from_plain_route_configs() -> None:
    spec = MatchSpec({"status": ("failed",)}, {"status": ("Failed",)})
    r = Router([config.RouteConfig("r", spec, None, ["x"], False)], unmatched="y")
    assert r.route(event(status="FAILED")) == ["x"]
    assert r.route(event()) == ["y"]


# --------------------------------------------------------------------------------------------
# explain


def test_explain_reasons_and_render(confdir: Path) -> None:
    r = make_router(
        confdir,
        "[[routes]]\nname = 'front desk inbound'\n"
        "match = { number = ['front-desk'], event = ['message.received'] }\nsinks = ['a']\n"
        "[[routes]]\nname = 'failures'\nmatch = { status = 'failed', carrier = 'T-Mobile*' }\n"
        "exclude = { error_code = '7*' }\nsinks = ['b']\nfinal = true\n"
        "[[routes]]\nname = 'all outbound'\nmatch = { direction = 'outbound', text = 'x+' }\n"
        "sinks = 'c'\n"
        "[[routes]]\nname = 'later'\nsinks = 'c'\n",
        unmatched="archive",
    )
    e = event(
        direction="outbound",
        from_number="+15555550123",
        to_number="+15555550199",
        event_type="message.finalized",
        status="failed",
        error_code="40002",
    )
    ex = r.explain(e)
    assert ex.sinks == r.route(e) == ["b"]
    first, second, third, fourth = ex.routes
    assert first.evaluated and first.matched is False and first.fired is False
    assert [c.reason for c in first.match] == [
        "number: our number +15555550123 (outbound, from_number) matched 'front-desk' "
        "(+15555550123)",
        "event: 'message.finalized' is not one of message.received",
    ]
    assert [c.matched for c in first.match] == [True, False]
    assert second.fired and second.final and not second.excluded
    assert [c.reason for c in second.match] == [
        "status: 'failed' matched failed",
        "carrier: 'T-MOBILE USA, INC.' matched T-Mobile*",
    ]
    assert second.exclude is not None
    assert second.exclude[0].reason == "error_code: '40002' is not one of 7*"
    assert not third.evaluated and not fourth.evaluated and third.match == ()
    assert ex.default_applied is False and ex.unmatched == "archive"

    text = ex.render()
    assert "number: our number +15555550123 (outbound, from_number) matched 'front-desk'" in text
    assert "event: 'message.finalized' is not one of message.received" in text
    assert "route 2 'failures': FIRED -> b (final: later routes are not evaluated)" in text
    assert "route 3 'all outbound': skipped (route 2 'failures' is final and fired)" in text
    assert "unmatched default: archive not used (a route fired)" in text
    assert text.rstrip().endswith("sinks: b")


def test_explain_default_missing_fields_and_exclusion(confdir: Path) -> None:
    r = make_router(
        confdir,
        "[[routes]]\nname = 'texts'\nmatch = { text = ['stop', 'go'], number = 'support' }\n"
        "sinks = 'a'\n"
        "[[routes]]\nname = 'not failed'\nexclude = { status = 'fail*' }\nsinks = 'b'\n",
        unmatched="archive",
    )
    e = event(text=None, status="failed", direction=None)
    ex = r.explain(e)
    assert ex.sinks == r.route(e) == ["archive"] and ex.default_applied
    assert [c.reason for c in ex.routes[0].match] == [
        "text: text is missing or null, so it never matches",
        "number: our number is unknown (direction is missing), so it never matches",
    ]
    assert ex.routes[1].matched and ex.routes[1].excluded and not ex.routes[1].fired
    text = ex.render()
    assert "route 2 'not failed': not fired (matched, but excluded)" in text
    assert "match: (none) every event matches" in text
    assert "exclude (every key matched: excluded):" in text
    assert "status: 'failed' matched fail*" in text
    assert "unmatched default: archive (no route fired)" in text
    assert text.rstrip().endswith("sinks: archive")

    e2 = event(text="please go", status="sent", direction="inbound", to_number="+15555550145")
    ex2 = r.explain(e2)
    assert ex2.routes[0].match[0].reason == "text: 'please go' matched /go/"
    assert ex2.routes[0].match[1].reason == (
        "number: our number +15555550145 (inbound, to_number) matched 'support' (+15555550145)"
    )
    assert ex2.sinks == ["a", "b"]


def test_explain_without_routes(confdir: Path) -> None:
    ex = make_router(confdir, "").explain(event())
    assert ex.sinks == [] and "no routes are configured" in ex.render()
    assert "unmatched default: none configured" in ex.render()


# --------------------------------------------------------------------------------------------
# Property: route() follows the documented semantics, and explain() agrees with it

_MATCH_POOLS: dict[str, list[Any]] = {
    "number": ["front-desk", "+1 555 555 0123", "+1555*", "+44*", "+1555555014?", "support"],
    "from": ["front-desk", "+1555*", "+15555550199"],
    "to": ["support", "+1 555-555-01[0-3]*"],
    "direction": ["inbound", "outbound", "Inbound"],
    "event": ["message.received", "message.*", "MESSAGE.FINALIZED"],
    "status": ["failed", "delivered", "fail*"],
    "message_type": ["sms", "MMS"],
    "error_code": [702, "7*", "40002"],
    "carrier": ["T-MOBILE*", "verizon"],
    "text": ["(?i)stop", "^Send", "GraphQL", "x?"],
}


@st.composite
def _spec(draw: st.DrawFn, min_keys: int = 0) -> dict[str, list[Any]]:
    keys = draw(st.lists(st.sampled_from(list(_MATCH_POOLS)), min_size=min_keys, max_size=3))
    return {
        k: draw(st.lists(st.sampled_from(_MATCH_POOLS[k]), min_size=1, max_size=3)) for k in keys
    }


_ROUTE = st.fixed_dictionaries(
    {
        "match": st.one_of(_spec(), _spec(min_keys=1), _spec(min_keys=2)),
        "exclude": st.one_of(st.none(), _spec(min_keys=1)),
        "sinks": st.lists(st.sampled_from(["a", "b", "c", "archive"]), min_size=1, max_size=3),
        "final": st.booleans(),
    }
)
_NUMBERS = st.sampled_from(["+15555550123", "+15555550145", "+442079460958", "+15555550199"])
_EVENTS = st.fixed_dictionaries(
    {
        "direction": st.sampled_from(["inbound", "outbound", "INBOUND", None, "sideways"]),
        "to_number": st.one_of(_NUMBERS, st.none()),
        "from_number": st.one_of(_NUMBERS, st.none()),
        "event_type": st.sampled_from(["message.received", "message.finalized", None]),
        "status": st.sampled_from(["failed", "Delivered", "sent", None]),
        "type": st.sampled_from(["SMS", "mms", None]),
        "error_code": st.sampled_from([None, "702", 702, "", "40002"]),
        "carrier_name": st.sampled_from(["T-MOBILE USA, INC.", "Verizon", None]),
        "text": st.one_of(st.none(), st.sampled_from(["Sending a msg", "STOP", ""]), st.text()),
    }
)


def _oracle_value(key: str, e: Event) -> str | None:
    names = {
        "from": "from_number",
        "to": "to_number",
        "event": "event_type",
        "message_type": "type",
        "carrier": "carrier_name",
    }
    if key == "number":
        return e.our_number
    if key == "direction":
        return e.direction
    return e.field(names.get(key, key))


def _oracle_spec(spec: MatchSpec, e: Event) -> bool:
    for key, values in spec.conditions.items():
        value = _oracle_value(key, e)
        if value is None:
            return False
        if key == "text":
            ok = any(re.search(v, value) for v in values)
        elif key in config.CASELESS_KEYS:
            ok = any(fnmatch.fnmatchcase(value.lower(), v.lower()) for v in values)
        else:
            ok = any(fnmatch.fnmatchcase(value, v) for v in values)
        if not ok:
            return False
    return True


def _oracle(cfg: config.Config, e: Event) -> list[str]:
    out: list[str] = []
    fired = False
    for route in cfg.routes:
        if _oracle_spec(route.match, e) and not (
            route.exclude is not None and _oracle_spec(route.exclude, e)
        ):
            fired = True
            out.extend(s for s in route.sinks if s not in out)
            if route.final:
                break
    if not fired and cfg.defaults.unmatched:
        return [cfg.defaults.unmatched]
    return out


@settings(max_examples=100, deadline=None)
@given(
    routes=st.lists(_ROUTE, max_size=5),
    unmatched=st.sampled_from([None, "archive"]),
    payloads=st.lists(_EVENTS, min_size=1, max_size=15),
)
def test_route_matches_semantics_and_explain_agrees(
    confdir: Path,
    routes: list[dict[str, Any]],
    unmatched: str | None,
    payloads: list[dict[str, Any]],
) -> None:
    text = HEADER
    for route in routes:
        text += "\n[[routes]]\n"
        for key, value in route.items():
            if value is not None and value != {}:
                text += f"{key} = {toml_value(value) if key != 'final' else str(value).lower()}\n"
    if unmatched:
        text += f"\n[defaults]\nunmatched = {json.dumps(unmatched)}\n"
    (confdir / "prop.toml").write_text(text, encoding="utf-8")
    cfg = config.load(confdir / "prop.toml")
    router = Router.from_config(cfg)
    for payload in payloads:
        e = event(**payload)
        sinks = router.route(e)
        assert sinks == _oracle(cfg, e)
        assert len(sinks) == len(set(sinks))
        explanation = router.explain(e)
        assert explanation.sinks == sinks
        assert explanation.default_applied == (
            unmatched is not None and not any(r.fired for r in explanation.routes)
        )
        assert all(not r.fired for r in explanation.routes if not r.evaluated)
        assert explanation.render()


# --------------------------------------------------------------------------------------------
# Cost


def test_routing_is_cheap(confdir: Path) -> None:
    routes = "".join(
        f"[[routes]]\nmatch = {{ number = ['+1555555{i:04d}', 'support'], "
        f"event = 'message.*', status = ['failed', 'undelivered'] }}\n"
        f"exclude = {{ carrier = 'verizon*' }}\nsinks = ['a', 'b']\n"
        for i in range(8)
    )
    r = make_router(confdir, routes, unmatched="archive")
    e = event(to_number="+15555550145", status="failed")
    assert r.route(e) == ["a", "b"]
    n = 5000
    start = time.perf_counter()
    for _ in range(n):
        r.route(e)
    per_call = (time.perf_counter() - start) / n
    assert per_call < 200e-6  # generous: a few microseconds on an ordinary machine
