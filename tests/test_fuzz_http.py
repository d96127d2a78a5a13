"""Properties of the webhook handler, checked with generated requests; also fuzz targets.

Three ways in, all held to the same promises (DESIGN.md §3):

- in process: the real `Ingest` and Quart app, a real SQLite spool, real file sinks, driven
  by Quart's test client (no sockets, so hundreds of examples take seconds);
- the real `voltd serve` over HTTPS with httpx (few examples, one daemon per test);
- hand-written bytes over a TLS socket, so that hypercorn's own request parsing is fuzzed too.

The promises: never a 5xx (nothing here makes the spool fail); every answer of the app is a
status §3 lists, with a JSON body; nothing is stored or delivered unless its exact bytes were
signed with our key; a validly signed, valid, fresh event is 200 and lands byte for byte.

Requests are generated as recipes (`Request`, `Raw`) and only turned into bytes when sent:
envelope times are relative to that moment and signatures are made then, so a failure that
hypothesis replays later fails the same way. The module-level `test_*` properties set up
everything themselves (no fixtures), and `fuzz_live_*` start their own daemon, so
`fuzz/run.py` can run all of them as fuzz targets.
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
from hypothesis import event, example, given
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from tests.helpers import NOTIFY_SOCKET_NAME, Daemon, examples, make_event
from voltd import events as events_mod
from voltd.daemon import configure
from voltd.delivery import Deliveries, DeliveryOptions, RetryPolicy, SinkWorker
from voltd.events import as_json_line
from voltd.plugins import build_sinks
from voltd.routing import Router
from voltd.server import Ingest, IngestSettings, make_webhook_app
from voltd.spool import Spool
from voltd.verify import Verifier

HEADER = "X-Respond-Flow-Signature"
PATH = "/webhooks"
LIMIT = 65536  # tests/helpers.py's max_body_bytes
MAX_AGE = 7 * 86400  # tests/helpers.py's max_age
#: What §3 lists for a POST to the webhook path; 503 needs a spool failure, which none makes.
CONTRACT = frozenset({200, 400, 401, 413})

# Every event goes to two file sinks; one puts sender-controlled fields into the file path.
ROUTES = """\
[[routes]]
name = "everything"
sinks = ["all", "by-number"]

[sinks.all]
type = "file"
path = "out/all.jsonl"
fsync = false

[sinks.by-number]
type = "file"
path = "out/by/{our_number}/{direction}/{event}/{their_number}-{date}.jsonl"
fsync = false
"""
#: All a deployment directory may hold: event data must never create files elsewhere.
LAYOUT = {"keys", "tls", "config.toml", "spool.db", "spool.db-wal", "spool.db-shm", "out"}
LAYOUT_LOCK = "spool.db.lock"


# --------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class Ago:
    """Envelope `time`: this many seconds before the request is sent."""

    seconds: int


@dataclass(frozen=True)
class Fresh:
    """Envelope `id`: a new unique id each time the request is sent (so never a duplicate)."""


@dataclass(frozen=True)
class Pairs:
    """A JSON object written out pair by pair, so that keys may repeat."""

    items: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Body:
    """A request body: JSON `doc` (with `Ago`/`Fresh`/`Pairs` placeholders) written in
    `style` and `encoding`, or `raw` bytes in which @ID@ and @TIME@ are filled in."""

    doc: Any = None
    raw: bytes | None = None
    style: str = "compact"  # compact | pretty | ascii
    encoding: str = "utf-8"
    pad_to: int | None = None  # grow the payload's "pad" string until the body has this size


@dataclass(frozen=True)
class Sig:
    """One signature header: its name, and how its value is made from the signed body."""

    kind: str = "valid"
    arg: bytes | str | int = b""
    name: str = HEADER


#: Kinds whose value verifies exactly when the body sent is the body signed.
GOOD = frozenset({"valid", "urlsafe", "spaced"})


@dataclass(frozen=True)
class Request:
    """A POST to the webhook path; `tamper` changes the body after it was signed."""

    body: Body
    sigs: tuple[Sig, ...] = ()
    tamper: tuple[str, int, int] | None = None  # (flip | insert | delete, position, byte)
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Sent:
    """A request as bytes, with what the oracle needs to know about its signatures."""

    body: bytes
    headers: list[tuple[str, str]]
    verdicts: list[bool]  # per header carrying the signature name: should it verify?


def _fill(doc: Any, now: float) -> Any:
    if isinstance(doc, Ago):
        return int(now) - doc.seconds
    if isinstance(doc, Fresh):
        return "rfw_" + uuid.uuid4().hex
    if isinstance(doc, dict):
        return {k: _fill(v, now) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_fill(v, now) for v in doc]
    if isinstance(doc, Pairs):
        return Pairs(tuple((k, _fill(v, now)) for k, v in doc.items))
    return doc


def _json(doc: Any, style: str) -> str:
    if isinstance(doc, Pairs):
        return "{" + ",".join(f"{_json(k, style)}:{_json(v, style)}" for k, v in doc.items) + "}"
    if style == "pretty":
        return json.dumps(doc, indent=2, ensure_ascii=False)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=style == "ascii")


def _encode(text: str, encoding: str) -> bytes:
    errors = "surrogatepass" if encoding.startswith("utf") else "replace"
    return text.encode(encoding, errors)


def render_body(body: Body, now: float) -> bytes:
    if body.raw is not None:
        raw = body.raw.replace(b"@ID@", f"rfw_{uuid.uuid4().hex}".encode())
        return raw.replace(b"@TIME@", str(int(now) - 60).encode())
    doc = _fill(body.doc, now)
    data = _encode(_json(doc, body.style), body.encoding)
    if body.pad_to is not None and isinstance(doc, dict) and isinstance(doc.get("payload"), dict):
        doc["payload"]["pad"] = ""
        short = len(_encode(_json(doc, body.style), body.encoding))
        doc["payload"]["pad"] = "x" * max(0, body.pad_to - short)
        data = _encode(_json(doc, body.style), body.encoding)
    return data


def _tampered(data: bytes, tamper: tuple[str, int, int] | None) -> bytes:
    if tamper is None:
        return data
    op, pos, byte = tamper
    pos = pos % (len(data) + 1)
    if op == "insert":
        return data[:pos] + bytes([byte]) + data[pos:]
    if not data:
        return bytes([byte])
    pos = min(pos, len(data) - 1)
    if op == "delete":
        return data[:pos] + data[pos + 1 :]
    return data[:pos] + bytes([data[pos] ^ (byte or 1)]) + data[pos + 1 :]


def _signature(sig: Sig, signed: bytes, ledger: Ledger) -> tuple[str, bool]:
    """The header value, and whether it is a valid signature of `signed`."""
    if sig.kind == "other":
        assert isinstance(sig.arg, bytes)
        return ledger.sign(sig.arg), False
    if sig.kind == "b64":
        assert isinstance(sig.arg, bytes)
        return base64.b64encode(sig.arg).decode(), False
    if sig.kind == "text":
        return str(sig.arg), False
    # Values made from a valid signature are recorded as signed only if sent as valid.
    good = ledger.sign(signed, record=sig.kind in GOOD)
    raw = base64.b64decode(good)
    if sig.kind == "urlsafe":
        return base64.urlsafe_b64encode(raw).decode().rstrip("="), True
    if sig.kind == "spaced":
        return f" {good}\t", True
    if sig.kind == "truncated":  # at least one data character short: never valid
        data = good.rstrip("=")
        return data[: int(sig.arg) % len(data)], False
    if sig.kind == "flipped":
        bit = int(sig.arg) % (len(raw) * 8)
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        return base64.b64encode(bytes(flipped)).decode(), False
    if sig.kind == "hex":
        return raw.hex(), False
    return good, True


def render(req: Request, ledger: Ledger, now: float) -> Sent:
    signed = render_body(req.body, now)
    body = _tampered(signed, req.tamper)
    headers: list[tuple[str, str]] = []
    verdicts: list[bool] = []
    for sig in req.sigs:
        value, valid = _signature(sig, signed, ledger)
        headers.append((sig.name, value))
        if sig.name.lower() == HEADER.lower():
            other = sig.kind == "other" and sig.arg == body
            verdicts.append((valid and body == signed) or other)
    headers.extend(req.headers)
    return Sent(body, headers, verdicts)


# --------------------------------------------------------------------------------------------
# The oracle: DESIGN.md §3, given whether the signature verifies


def _usable_time(t: object) -> float | None:
    if t is None or isinstance(t, bool) or not isinstance(t, int | float):
        return None
    try:
        value = float(t)
    except OverflowError:  # an integer past float range is no usable time
        return None
    return value if math.isfinite(value) else None


def _signed_status(body: bytes, now: float) -> int:
    try:
        parsed = events_mod.parse(body)
    except events_mod.EnvelopeError:
        return 400
    if isinstance(parsed, events_mod.Probe):
        return 200
    t = _usable_time(parsed.envelope.get("time"))
    return 200 if t is not None and now - t <= MAX_AGE else 401


def _unsigned_status(body: bytes) -> int:
    try:
        parsed = events_mod.parse(body)
    except events_mod.EnvelopeError:
        return 200  # a registration probe
    return 200 if isinstance(parsed, events_mod.Probe) else 401


def expected(sent: Sent, now: float) -> set[int]:
    """The statuses §3 allows. With several signature headers, any one of them may count."""
    if len(sent.body) > LIMIT:
        return {413}
    if not sent.verdicts:
        return {_unsigned_status(sent.body)}
    return {_signed_status(sent.body, now) if ok else 401 for ok in sent.verdicts}


# --------------------------------------------------------------------------------------------
# What the spool and the sinks hold


class Ledger:
    """What we signed, and what the spool and file sinks gained since we last looked."""

    def __init__(self, root: Path, sign: Callable[[bytes], str]) -> None:
        self.root = root
        self._sign = sign
        self.signed: set[bytes] = set()
        self.signed_lines: set[bytes] = set()
        self.stored_ids: set[str] = set()
        self._seq = 0
        self._sizes: dict[Path, int] = {}

    def sign(self, body: bytes, *, record: bool = True) -> str:
        """A valid signature of `body`; `record` says it is sent as one."""
        if record:
            self.signed.add(body)
            self.signed_lines.add(as_json_line(body))
        return self._sign(body)

    def new_rows(self) -> list[tuple[str, bytes]]:
        db = sqlite3.connect(f"file:{self.root / 'spool.db'}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT seq, envelope_id, body FROM events WHERE seq > ? ORDER BY seq",
                (self._seq,),
            ).fetchall()
        finally:
            db.close()
        if rows:
            self._seq = rows[-1][0]
        out = [(eid, bytes(body)) for _, eid, body in rows]
        for eid, body in out:  # the promise that matters most: only signed bytes are stored
            assert body in self.signed, f"stored a body that was never signed: {body[:200]!r}"
            self.stored_ids.add(eid)
        return out

    def new_lines(self) -> list[bytes]:
        # NOTIFY_SOCKET_NAME: the test's own socket for the daemon's sd_notify (tests/helpers.py).
        assert {p.name for p in self.root.iterdir()} <= LAYOUT | {LAYOUT_LOCK, NOTIFY_SOCKET_NAME}
        lines: list[bytes] = []
        out = self.root / "out"
        for path in sorted(out.rglob("*.jsonl")) if out.exists() else ():
            start, size = self._sizes.get(path, 0), path.stat().st_size
            if size > start:
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read(size - start)
                assert data.endswith(b"\n"), path
                self._sizes[path] = start + len(data)
                lines.extend(data.split(b"\n")[:-1])
        for line in lines:
            assert line in self.signed_lines, f"a sink got a line never signed: {line[:200]!r}"
        if out.exists():
            assert {p.name for p in out.iterdir()} <= {"all.jsonl", "by"}
        return lines


def judge(
    ledger: Ledger,
    sent: Sent,
    now: float,
    status: int,
    content_type: str | None,
    answer: bytes,
    rows: list[tuple[str, bytes]],
) -> dict[str, Any]:
    """Check one answer against §3 and the spool; returns the parsed answer."""
    context = f"status {status}, answer {answer[:300]!r}"
    event(f"answer {status}")
    assert status < 500, context
    assert status in CONTRACT, context
    assert status in expected(sent, now), f"expected {expected(sent, now)}; {context}"
    assert (content_type or "").startswith("application/json"), context
    doc = json.loads(answer)
    assert isinstance(doc, dict) and doc.get("ok") is (status == 200), context
    if doc.get("probe") or status != 200:
        assert not rows, context
    elif doc.get("duplicate"):
        assert not rows and doc["id"] in ledger.stored_ids, context
    else:
        assert rows == [(doc["id"], sent.body)], (rows, context)
    return doc


# --------------------------------------------------------------------------------------------
# Strategies

_WEIRD_TEXT = ["", " ", "\x00", "\ud800", "\udfff", "\U0001f600", "\u202e", "é", "..", "\n"]
_WEIRD_TEXT += ["../../etc/passwd", "a/b\\c", "x" * 200, "x" * 201, "+15555550123"]
_EXTREMES = [-1, 2**53 + 1, 2**63, -(2**63) - 1, 10**400, -(10**400), 1e308, -1e308, 5e-324]
_EXTREMES += [-0.0, math.inf, -math.inf, math.nan]


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Pick a strategy by weight: `one_of` and `sampled_from` favour their first and last
    entries, which made rare, slow cases (64 KiB bodies) common."""
    total = sum(w for w, _ in choices)

    @st.composite
    def pick(draw: st.DrawFn) -> Any:
        n = draw(st.integers(0, total - 1))
        for w, strategy in choices:
            if n < w:
                return draw(strategy)
            n -= w
        raise AssertionError(n)

    return pick()


texts = st.text(max_size=20) | st.sampled_from(_WEIRD_TEXT)
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.sampled_from(_EXTREMES) | texts
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
numbers = st.sampled_from(["+15555550123", "+15555550145", "+442071838750"]) | texts
#: Fresh, future, and (past max_age) stale envelope times, kept well away from the boundary.
ages = st.sampled_from([0, 60, 3600, 6 * 86400, -3600, -(10**6), 8 * 86400, 10**10])
fresh_ages = st.sampled_from([0, 60, 3600, 6 * 86400, -3600, -(10**6)])


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": draw(st.just("rf_0123456789") | texts),
        "to_number": draw(numbers),
        "from_number": draw(numbers),
        "direction": draw(st.sampled_from(["inbound", "outbound", "OUTBOUND"]) | texts),
        "type": draw(st.sampled_from(["SMS", "MMS"])),
        "text": draw(st.text(max_size=40) | st.sampled_from(_WEIRD_TEXT)),
        "status": draw(st.sampled_from(["received", "delivered", "failed"]) | texts),
        "event_type": draw(st.sampled_from(["message.received", "message.finalized"]) | texts),
        "media": draw(st.lists(texts, max_size=2)),
        "error_code": draw(st.none() | st.integers(0, 99999)),
    }
    for key in draw(st.lists(st.sampled_from(sorted(payload)), max_size=2, unique=True)):
        payload[key] = draw(json_values)  # any field may have any type
    payload.update(draw(st.dictionaries(texts, json_values, max_size=2)))  # unknown fields
    return payload


@st.composite
def valid_envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """Envelopes that must be accepted: unique id, fresh time, payload of any shape."""
    env: dict[str, Any] = {"type": "messaging", "id": Fresh(), "payload": draw(payloads())}
    env["time"] = Ago(draw(fresh_ages))
    extra = draw(st.dictionaries(texts, json_values, max_size=2))
    env.update({k: v for k, v in extra.items() if k not in env})
    return env


@st.composite
def envelopes(draw: st.DrawFn) -> Any:
    """Near-valid envelopes: fields dropped, retyped, stale, or doubled with other values."""
    env: dict[str, Any] = {
        "type": draw(st.just("messaging") | st.sampled_from(["test", "MESSAGING"]) | texts),
        "id": draw(st.just(Fresh()) | st.uuids().map(lambda u: f"rfw_{u.hex}") | texts),
        "payload": draw(payloads()),
        "time": draw(ages.map(Ago) | st.sampled_from(_EXTREMES) | json_values),
    }
    for key in draw(st.lists(st.sampled_from(sorted(env)), max_size=2, unique=True)):
        if draw(st.booleans()):
            del env[key]
        else:
            env[key] = draw(json_values)
    if draw(st.booleans()):
        return env
    # Duplicate keys: json.loads keeps the last one; the spool must store what was signed.
    items = list(env.items())
    for key in draw(st.lists(st.sampled_from(["type", "id", "payload", "time"]), max_size=2)):
        value = draw(json_values | st.just("messaging") | st.builds(Fresh))
        items.insert(draw(st.integers(0, len(items))), (key, value))
    return Pairs(tuple(items))


def _nested(depth: int, opener: str) -> bytes:
    """A fresh event nested `depth` deep. Depths are either shallow or far past any recursion
    limit, because where exactly parsing gives up depends on the caller's stack depth."""
    inner = ("[" * depth + "]" * depth) if opener == "[" else ('{"a":' * depth + "1" + "}" * depth)
    return (
        b'{"type":"messaging","id":"@ID@","time":@TIME@,"payload":{"deep":' + inner.encode() + b"}}"
    )


#: Bodies JSON text cannot easily be generated for: each is an event, fresh unless said.
SPECIAL = [
    b'{"type":"messaging","id":"@ID@","time":@TIME@,"payload":{"n":' + b"9" * 5000 + b"}}",
    b'{"type":"messaging","id":"@ID@","time":1' + b"0" * 400 + b',"payload":{}}',  # huge int
    b'{"type":"messaging","id":"@ID@","time":-1' + b"0" * 400 + b',"payload":{}}',
    b'{"type":"messaging","id":"@ID@","time":1e999,"payload":{}}',  # infinity: stale
    b'{"type":"messaging","id":"@ID@","time":NaN,"payload":{}}',
    b'\xef\xbb\xbf{"type":"messaging","id":"@ID@","time":@TIME@,"payload":{}}',  # UTF-8 BOM
    b'{"type":"messaging","id":"@ID@\\ud800","time":@TIME@,"payload":{}}',  # lone surrogate
    b'{"type":"messaging","id":"@ID@\xed\xa0\x80","time":@TIME@,"payload":{}}',  # same, raw
    b'{"type":"messaging","id":"@ID@\\u0000","time":@TIME@,"payload":{}}',
    b'{"type":"messaging","id":"@ID@","time":@TIME@,"payload":{"text":"\xff"}}',  # not UTF-8
    b'{"type":"messaging","id":"@ID@","time":@TIME@,"payload":{},"payload":[]}',
]


def _utf8_on_the_wire(body: Body) -> bool:
    """A lone surrogate written out raw is not UTF-8 (voltd answers 400); escaped it is."""
    try:
        _json(_fill(body.doc, 0.0), body.style).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


valid_bodies = st.builds(
    Body,
    doc=valid_envelopes(),
    style=st.sampled_from(["compact", "pretty", "ascii"]),
    pad_to=weighted((30, st.none()), (1, st.sampled_from([LIMIT - 1, LIMIT]))),  # slow: rare
).filter(_utf8_on_the_wire)
near_valid_bodies = st.builds(
    Body,
    doc=envelopes(),
    style=st.sampled_from(["compact", "pretty", "ascii"]),
    encoding=st.sampled_from(["utf-8"] * 4 + ["utf-8-sig", "utf-16", "utf-32-be", "latin-1"]),
)
bodies = weighted(
    (5, valid_bodies),
    (8, near_valid_bodies),
    (2, st.builds(Body, raw=st.binary(max_size=200))),
    (1, st.builds(Body, raw=st.builds(_nested, st.integers(1, 100) | st.just(8000), st.just("[")))),
    (1, st.builds(Body, raw=st.builds(_nested, st.integers(1, 100) | st.just(8000), st.just("{")))),
    (1, st.builds(Body, doc=valid_envelopes(), pad_to=st.sampled_from([LIMIT + 1, 10**6]))),
    (2, st.builds(Body, doc=json_values)),
    (1, st.builds(Body, raw=st.sampled_from(SPECIAL))),
)
sig_names = st.sampled_from([HEADER, HEADER.lower(), HEADER.upper()]) | st.sampled_from(
    ["X-Respond-Flow-Signatures", "X-RespondFlow-Signature", "Signature"]
)
bad_sigs = st.one_of(
    st.builds(Sig, st.just("truncated"), st.integers(0, 400)),
    st.builds(Sig, st.just("flipped"), st.integers(0, 2047)),
    st.builds(Sig, st.just("other"), st.binary(max_size=50)),
    st.builds(Sig, st.just("hex")),
    st.builds(Sig, st.just("b64"), st.binary(max_size=8) | st.binary(min_size=256, max_size=256)),
    st.builds(
        Sig,
        st.just("text"),
        st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=40)
        | st.sampled_from(["", " ", "=" * 344, "A" * 344, "A" * 5000, "é" * 40]),
    ),
)
good_sigs = st.builds(
    Sig, st.sampled_from(sorted(GOOD)), name=st.sampled_from([HEADER, HEADER.lower()])
)
any_sig = st.one_of(
    good_sigs, bad_sigs, st.builds(Sig, st.sampled_from(sorted(GOOD)), name=sig_names)
)
tampers = st.tuples(
    st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 10**6), st.integers(0, 255)
)
header_values = st.text(
    st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=30
)
extra_headers = st.tuples(
    st.sampled_from(
        ["Content-Type", "Content-Encoding", "User-Agent", "X-Forwarded-For", "X-Extra"]
    ),
    header_values
    | st.sampled_from(
        ["application/json", "text/plain", "multipart/form-data; boundary=zz", "gzip", ""]
    ),
)
requests = st.builds(
    Request,
    body=bodies,
    sigs=weighted(
        (2, good_sigs.map(lambda s: (s,))),
        (1, st.just(())),
        (1, st.lists(any_sig, min_size=1, max_size=2).map(tuple)),
    ),
    tamper=weighted((3, st.none()), (1, tampers)),
    headers=st.lists(extra_headers, max_size=2).map(tuple),
)
accepted = st.builds(
    Request,
    body=valid_bodies,
    sigs=good_sigs.map(lambda s: (s,)),
    headers=st.lists(extra_headers, max_size=2).map(tuple),
)
forgeries = st.one_of(
    st.builds(
        Request,
        body=valid_bodies,
        sigs=st.lists(bad_sigs, min_size=1, max_size=2).map(tuple),
        tamper=st.none() | tampers,
    ),
    st.builds(Request, body=valid_bodies, sigs=good_sigs.map(lambda s: (s,)), tamper=tampers),
)


# --------------------------------------------------------------------------------------------
# In process: the app, a spool and the sinks, with Quart's test client


@dataclass
class Exchange:
    status: int
    content_type: str | None
    answer: bytes
    deliveries: dict[str, dict[str, int]]  # per sink and state, once nothing is pending


class InProcess:
    """The webhook app on a real spool, with a real verifier, router and file sinks."""

    def __init__(self, root: Path) -> None:
        d = Daemon(root)  # the helpers' keys, certificate and config; never started here
        d.configure(body=ROUTES)
        plan = configure(d.config)
        self.config, self.registry = plan.config, plan.registry
        self.ledger = Ledger(root, d.signer.sign)
        # Built once (making the app costs more than a request); each example gives the
        # ingest its own spool, as a reload swaps attributes of a running one.
        self.ingest = Ingest(
            IngestSettings(
                verifier=Verifier(self.config.verify.keys),
                header=HEADER,
                max_age=MAX_AGE,
                router=Router.from_config(self.config),
                answer_probes=True,
            ),
            spool=None,  # type: ignore[arg-type]
        )
        self.app = make_webhook_app(self.ingest, PATH, LIMIT)

    async def exchange(self, body: bytes, headers: Sequence[tuple[str, str]]) -> Exchange:
        """One request, answered, and whatever it stored delivered by the real sink workers.
        The spool is opened per example: each example runs in its own trio.run."""
        spool = Spool(self.config.spool.path)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(spool.writer)
                self.ingest.spool = spool
                client = self.app.test_client()
                response = await client.post(PATH, data=body, headers=Headers(headers))
                answer = await response.get_data()
                status = await spool.status()
                if any(counts["pending"] for counts in status.values()):
                    stop = trio.Event()
                    deliveries = Deliveries(grace=5.0)
                    await nursery.start(deliveries.run, stop)
                    for name, sink in build_sinks(self.config, self.registry).items():
                        await deliveries.start(
                            SinkWorker(name, sink, spool, RetryPolicy(), PROMPTLY)
                        )
                    status = await _settled(spool)
                    stop.set()
                nursery.cancel_scope.cancel()
        finally:
            spool.close()
        return Exchange(response.status_code, response.content_type, answer, status)


#: Sink workers that deliver at once and notice a stop at once.
PROMPTLY = DeliveryOptions(linger=0.0, idle_poll=0.05)


async def _settled(spool: Spool) -> dict[str, dict[str, int]]:
    """Wait (10 s at most) until no delivery is pending: the workers have made them all."""
    with trio.move_on_after(10):
        while True:
            status = await spool.status()
            if not any(counts["pending"] for counts in status.values()):
                return status
            await trio.sleep(0.002)
    return status


_in_process: InProcess | None = None


def _scratch(prefix: str) -> Path:
    """A directory removed at exit, under TMPDIR if set (fuzz/run.py sets it, and removes it
    after a run that ends without atexit), else in memory if possible: fsync is not tested."""
    shm = Path("/dev/shm")
    memory = shm.is_dir() and not os.environ.get("TMPDIR")
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=shm if memory else None))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def in_process() -> InProcess:
    """One harness per process: the fuzz runner has no fixtures, and key generation is slow."""
    global _in_process
    if _in_process is None:
        _in_process = InProcess(_scratch("voltd-fuzz-http-"))
    return _in_process


async def check_in_process(req: Request) -> tuple[dict[str, Any], Sent]:
    h = in_process()
    now = time.time()
    sent = render(req, h.ledger, now)
    ex = await h.exchange(sent.body, sent.headers)
    rows = h.ledger.new_rows()
    doc = judge(h.ledger, sent, now, ex.status, ex.content_type, ex.answer, rows)
    assert all(c["pending"] == c["dead"] == 0 for c in ex.deliveries.values()), ex.deliveries
    lines = h.ledger.new_lines()
    assert lines == [as_json_line(body) for _, body in rows for _ in range(2)]
    return doc, sent


def _with_special_bodies(test: Callable[..., Any]) -> Callable[..., Any]:
    """Every SPECIAL body, validly signed, as an explicit example: checked on every run."""
    for raw in SPECIAL:
        test = example(req=Request(Body(raw=raw), sigs=(Sig(),)))(test)
    return test


# The properties are plain functions that call trio.run per example, not async tests: under
# pytest-trio every async @given test gets the same example-database key (its wrapper's), so
# failures found by fuzz/run.py would not be replayed by pytest, and one test's failures would
# be replayed in all the others.
@examples(200)
@_with_special_bodies
@given(req=requests)
def test_any_request_gets_a_contract_answer_and_only_signed_bytes_land(req: Request) -> None:
    trio.run(check_in_process, req)


@examples(100)
@given(req=accepted)
def test_signed_valid_events_are_accepted_and_land_byte_for_byte(req: Request) -> None:
    doc, _ = trio.run(check_in_process, req)
    assert doc.get("ok") is True and "probe" not in doc and "duplicate" not in doc, doc


@examples(80)
@given(req=forgeries)
def test_no_signature_verifies_other_bytes(req: Request) -> None:
    doc, sent = trio.run(check_in_process, req)
    if len(sent.body) <= LIMIT:  # a tampered body may grow past the limit: 413 comes first
        assert doc == {"ok": False, "error": "signature does not verify"}, doc


async def _signed_exchange(body: bytes) -> tuple[Exchange, list[tuple[str, bytes]]]:
    h = in_process()
    ex = await h.exchange(body, [(HEADER, h.ledger.sign(body))])
    return ex, h.ledger.new_rows()


async def test_signed_envelope_with_time_beyond_float_range_is_refused_not_a_500() -> None:
    """An integer time past float range is no usable time: 401. (`too_old` called
    math.isfinite on it, which raises OverflowError: the answer was 500.)"""
    body = b'{"type":"messaging","id":"rfw_huge_time","payload":{},"time":1' + b"0" * 400 + b"}"
    ex, rows = await _signed_exchange(body)
    assert (ex.status, rows) == (401, []), ex.answer


async def test_signed_envelope_with_lone_surrogate_id_is_refused_not_a_crash() -> None:
    """A lone surrogate ("\\ud800") is valid JSON, but SQLite cannot store it: such an id must
    be refused with 400. (It reached the spool writer, whose UnicodeEncodeError ended the writer
    task and with it the whole daemon.)"""
    body = b'{"type":"messaging","id":"rfw_\\ud800","payload":{},"time":%d}' % int(time.time())
    ex, rows = await _signed_exchange(body)
    assert (ex.status, rows) == (400, []), ex.answer


# --------------------------------------------------------------------------------------------
# The real daemon over HTTPS


class Live:
    """A started `voltd serve` and the ledger of what was signed for it."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.ledger = Ledger(daemon.root, daemon.signer.sign)
        self.sent = 0
        self._settled = 0  # the last spool row `settle` has seen delivered

    @classmethod
    def start(cls, daemon: Daemon, preexec_fn: Callable[[], None] | None = None) -> Live:
        daemon.configure(body=ROUTES)
        daemon.start(preexec_fn=preexec_fn)
        return cls(daemon)

    def alive(self) -> None:
        proc = self.daemon.proc
        assert proc is not None and proc.poll() is None, "\n".join(self.daemon.log[-40:])

    def still_serves(self) -> None:
        """The daemon is running, accepts a valid event, and has logged no traceback."""
        self.alive()
        body = make_event()
        r = self.daemon.post(body, signature=self.ledger.sign)
        assert r.status_code == 200, r.text
        assert self.ledger.new_rows()[-1:] == [(json.loads(body)["id"], body)]
        assert not [line for line in self.daemon.log if "Traceback" in line], self.daemon.log

    def settle(self) -> None:
        """Wait until every delivery is made; then the sinks got exactly the events stored
        since the last call, each in both sinks."""
        db = sqlite3.connect(f"file:{self.daemon.root / 'spool.db'}?mode=ro", uri=True)
        try:

            def settled() -> bool:
                q = "SELECT COUNT(*) FROM deliveries WHERE state != 1"
                return db.execute(q).fetchone()[0] == 0

            self.daemon.wait_for(settled)
            q = "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq"
            rows = db.execute(q, (self._settled,)).fetchall()
        finally:
            db.close()
        if rows:
            self._settled = rows[-1][0]
        lines = self.ledger.new_lines()
        want = [as_json_line(bytes(b)) for _, b in rows for _ in range(2)]
        assert sorted(lines) == sorted(want), (len(lines), len(want))


def _wire(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header values as an HTTP client may send them: UTF-8 bytes (obs-text), no control
    characters, no surrounding whitespace. The raw-socket test sends the rest."""
    out = []
    for name, value in headers:
        data = bytes(b for b in value.encode() if (b >= 0x20 and b != 0x7F) or b == 0x09)
        out.append((name.encode(), data.strip(b" \t")))
    return out


def check_live_https(live: Live, req: Request) -> None:
    now = time.time()
    sent = render(req, live.ledger, now)
    wire = _wire(sent.headers)
    r = live.daemon.client.post(live.daemon.url, content=sent.body, headers=wire)
    judge(
        live.ledger,
        sent,
        now,
        r.status_code,
        r.headers.get("content-type"),
        r.content,
        live.ledger.new_rows(),
    )
    live.alive()


def test_live_daemon_keeps_the_contract_over_https(daemon: Daemon) -> None:
    live = Live.start(daemon)

    @examples(30)
    @given(req=requests | accepted)
    def prop(req: Request) -> None:
        check_live_https(live, req)

    prop()
    live.still_serves()
    live.settle()
    assert daemon.stop() == 0


# --------------------------------------------------------------------------------------------
# The real daemon, raw bytes over TLS: hypercorn's parsing is part of what is tested

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FRAMING_HEADERS = {b"content-length", b"transfer-encoding", b"host", b"connection", b"expect"}


@dataclass(frozen=True)
class Raw:
    """One HTTP/1.1 request written byte by byte; `framing` says how the body is delimited."""

    body: Body
    sign: bool = True
    method: bytes = b"POST"
    target: bytes = PATH.encode()
    version: bytes = b"HTTP/1.1"
    host: bool = True
    headers: tuple[tuple[bytes, bytes], ...] = ()
    framing: str = "exact"
    arg: bytes = b""  # framing detail: a bad Content-Length value, a bad chunk

    def well_formed(self) -> bool:
        """Whether the whole §3 contract applies: a correct request, to the webhook path."""
        plain = (self.method, self.target, self.version, self.host, self.framing) == (
            b"POST",
            PATH.encode(),
            b"HTTP/1.1",
            True,
            "exact",
        )
        return plain and all(
            TOKEN.fullmatch(n)
            and n.lower() not in FRAMING_HEADERS | {HEADER.lower().encode()}
            and re.fullmatch(
                rb"[\x21-\x7e\x80-\xff]([\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?", v
            )
            and len(n) + len(v) < 4096
            for n, v in self.headers
        )

    def incomplete(self) -> bool:
        """The server must wait for more bytes than we send: no answer is expected."""
        return self.framing in ("long", "unterminated")


def render_raw(raw: Raw, ledger: Ledger, now: float) -> tuple[bytes, Sent]:
    body = render_body(raw.body, now)
    sent = Sent(body, [], [])
    lines = [raw.method + b" " + raw.target + b" " + raw.version]
    if raw.host:
        lines.append(b"Host: localhost")
    if raw.sign:
        lines.append(HEADER.encode() + b": " + ledger.sign(body).encode())
        sent.verdicts.append(True)
    lines.extend(n + b": " + v for n, v in raw.headers)
    payload = body
    n = len(body)
    framing = {
        "exact": [b"Content-Length: %d" % n],
        "none": [],
        "short": [b"Content-Length: %d" % max(0, n - 1)],
        "long": [b"Content-Length: %d" % (n + 10)],
        "bad": [b"Content-Length: " + raw.arg],
        "twice": [b"Content-Length: %d" % n, b"Content-Length: " + (raw.arg or b"%d" % n)],
        "huge": [b"Content-Length: 99999999999999999999999"],
        "chunked": [b"Transfer-Encoding: chunked"],
        "unterminated": [b"Transfer-Encoding: chunked"],
        "bad-chunk": [b"Transfer-Encoding: chunked"],
        "te-other": [b"Transfer-Encoding: " + (raw.arg or b"gzip")],
        "te-and-cl": [b"Transfer-Encoding: chunked", b"Content-Length: %d" % n],
    }[raw.framing]
    if raw.framing in ("chunked", "te-and-cl"):
        payload = (b"%x\r\n%s\r\n" % (n, body) if n else b"") + b"0\r\n\r\n"
    elif raw.framing == "unterminated":
        payload = b"%x\r\n%s\r\n" % (n + 1, body)
    elif raw.framing == "bad-chunk":
        payload = (raw.arg or b"zz") + b"\r\n" + body + b"\r\n0\r\n\r\n"
    lines.extend(framing)
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload, sent


def raw_exchange(daemon: Daemon, data: bytes, wait: float) -> tuple[int | None, bytes, bytes]:
    """Send bytes over a fresh TLS connection; (status, head, body) of the answer, if any."""
    url = urlsplit(daemon.url)
    assert url.hostname is not None and url.port is not None
    received = b""
    with (
        socket.create_connection((url.hostname, url.port), timeout=5) as tcp,
        daemon.tls().wrap_socket(tcp, server_hostname=url.hostname) as tls,
    ):
        try:
            tls.sendall(data)
        except OSError:
            pass  # the server may answer and close before reading everything
        tls.settimeout(wait)
        while True:
            try:
                chunk = tls.recv(65536)
            except OSError:  # TimeoutError included
                break
            if not chunk:
                break
            received += chunk
            head, sep, rest = received.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
            if sep and length and len(rest) >= int(length.group(1)):
                break
    head, _, rest = received.partition(b"\r\n\r\n")
    status = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    return (int(status.group(1)) if status else None), head, rest


def check_live_raw(live: Live, raw: Raw) -> None:
    now = time.time()
    data, sent = render_raw(raw, live.ledger, now)
    status, head, answer = raw_exchange(live.daemon, data, 0.3 if raw.incomplete() else 3.0)
    rows = live.ledger.new_rows()
    live.alive()
    event(f"raw {'well-formed' if raw.well_formed() else 'malformed'}: answer {status}")
    if raw.well_formed():
        assert status is not None, f"no answer to a well-formed request: {data[:300]!r}"
        ctype = re.search(rb"(?im)^content-type:\s*(\S+)", head)
        judge(live.ledger, sent, now, status, ctype and ctype.group(1).decode(), answer, rows)
        return
    if status is None:
        assert not rows
        return
    # Hypercorn itself answers some malformed requests (400, or 501 for a transfer coding it
    # does not implement, which RFC 9112 §6.1 prescribes); the app never answers 5xx.
    assert status < 500 or (status == 501 and raw.framing == "te-other"), (status, head, data[:300])
    if status in (401, 413) or (status == 200 and rows):
        assert b"application/json" in head.lower(), head
    if rows:
        assert status == 200 and rows == [(json.loads(answer)["id"], sent.body)]


def _usually(common: Any, *rare: Any) -> st.SearchStrategy[Any]:
    """`common` four times in five, otherwise one of `rare`."""
    return weighted((4, st.just(common)), (1, st.sampled_from(rare)))


token_names = st.from_regex(rb"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True)
bad_names = st.binary(max_size=12) | st.sampled_from(
    [b"", b"Bad Name", b"Na:me", b"N\x00", b"\xff\xfe", b" Lead", b"Trail ", b"(x)", b"X" * 300]
)
printable_values = st.from_regex(
    rb"[\x21-\x7e\x80-\xff]([\x20-\x7e\x80-\xff]{0,30}[\x21-\x7e])?", fullmatch=True
)
bad_values = st.binary(max_size=40) | st.sampled_from(
    [b"\x00", b"a\rb", b"a\nb", b"a\r\nInjected: 1", b" spaced ", b"\x7f", b""]
)
huge_values = st.integers(4000, 100_000).map(lambda n: b"v" * n)  # hypercorn stops at 16 KiB
raw_headers = weighted(
    (6, st.tuples(token_names, printable_values)),
    (2, st.tuples(bad_names, printable_values | bad_values)),
    (1, st.tuples(token_names, bad_values)),
    (1, st.tuples(token_names, huge_values)),
)
FRAMINGS = (
    "none short long bad twice huge chunked unterminated bad-chunk te-other te-and-cl".split()
)
raws = st.builds(
    Raw,
    body=weighted((3, valid_bodies), (1, st.builds(Body, raw=st.binary(max_size=100)))),
    sign=weighted((3, st.just(True)), (1, st.just(False))),
    method=_usually(b"POST", b"GET", b"post", b"PUT", b"P\x00ST", b"", b"X" * 100),
    target=_usually(
        PATH.encode(), b"/webhooks?a=1", b"/", b"*", b"https://x/webhooks", b"/%ff/..", b"/a" * 9000
    ),
    version=_usually(b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9", b"HTTX/1.1", b""),
    host=_usually(True, False),
    headers=st.lists(raw_headers, max_size=3).map(tuple),
    framing=_usually("exact", *FRAMINGS),
    arg=st.sampled_from([*b"abc -1 1e3 0x10 +5 \xd9\xa3 identity".split(), b"", b" 12", b"1, 2"]),
)


def test_live_daemon_survives_raw_http(daemon: Daemon) -> None:
    live = Live.start(daemon)

    @examples(30)
    @given(raw=raws)
    def prop(raw: Raw) -> None:
        check_live_raw(live, raw)

    prop()
    live.still_serves()
    live.settle()
    assert daemon.stop() == 0


# --------------------------------------------------------------------------------------------
# Fuzz targets for fuzz/run.py that need a daemon: they start their own, once per process

_live: Live | None = None


def _die_with_parent() -> None:
    """Run in the daemon's process before exec: SIGTERM when the fuzzing process ends, also
    when it ends without running atexit (libFuzzer exits that way). Linux only."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _live_daemon() -> Live:
    global _live
    if _live is None:
        daemon = Daemon(_scratch("voltd-fuzz-live-"))
        atexit.register(lambda: daemon.proc is not None and daemon.stop())
        _live = Live.start(daemon, _die_with_parent if sys.platform == "linux" else None)
    _live.sent += 1
    if _live.sent % 50 == 0:
        _live.still_serves()
        _live.settle()
    return _live


@examples(40)
@given(req=requests | accepted)
def fuzz_live_https(req: Request) -> None:
    check_live_https(_live_daemon(), req)


@examples(40)
@given(raw=raws)
def fuzz_live_raw(raw: Raw) -> None:
    check_live_raw(_live_daemon(), raw)
