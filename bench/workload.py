"""The workload: realistic events, signed like Volt signs them, and the voltd configuration
whose routes they exercise (with `expected_sinks`, which must agree with those routes), and
`Setup`, everything one run prepared for its phases.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime as dt
import json
import math
import random
import string
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base import HOST, TARGET_BODY_BYTES, WEBHOOK_PATH, BenchError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# -- events ---------------------------------------------------------------------------------


OUR_NUMBERS = {
    "front-desk": "+12125550123",
    "sales": "+14155550142",
    "support": "+13125550199",
}
OUR_WEIGHTS = (0.4, 0.35, 0.25)
THEIR_AREAS = ("212", "646", "718", "415", "510", "312", "773", "617", "206", "303", "512")
CARRIERS = (
    "T-MOBILE USA, INC.",
    "VERIZON WIRELESS",
    "AT&T WIRELESS",
    "US CELLULAR",
    "GOOGLE (GRASSHOPPER)",
)
WORDS = (
    "hi there thanks for reaching out your appointment is confirmed for tomorrow at 10am "
    "please reply YES to confirm or call us to reschedule we have received your order and "
    "it will ship within two business days can you send a photo of the receipt the tracking "
    "number is in the link below our office is closed on monday see you soon have a great day "
    "sorry we missed your call when is a good time to talk reminder your balance is due friday "
    "text STOP to opt out café déjà vu 👍 🙂"
).split()
FAILURES = (
    (
        "702",
        "40002",
        "Blocked as spam - temporary",
        "The message was flagged by a SPAM filter and was not delivered. This is a temporary "
        "condition.",
    ),
    (
        "703",
        "40008",
        "Unreachable destination",
        "The destination handset is unreachable or switched off.",
    ),
    (
        "704",
        "40300",
        "Blocked due to STOP message",
        "The recipient has opted out of messages from this number.",
    ),
)
# (direction, event_type, status, weight)
KINDS = (
    ("inbound", "message.received", "received", 0.40),
    ("outbound", "message.sent", "sent", 0.20),
    ("outbound", "message.finalized", "delivered", 0.30),
    ("outbound", "message.finalized", "failed", 0.10),
)


@dataclass(frozen=True, slots=True)
class BenchEvent:
    """One unsigned event, with the sinks that the generated routes should send it to."""

    id: str
    body: bytes
    sinks: tuple[str, ...]


def _iso(t: float) -> str:
    """Volt's timestamp style: millisecond precision, explicit +00:00."""
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


def _text(rng: random.Random, length: int) -> str:
    words: list[str] = []
    size = 0
    while size < length:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words).capitalize()


def expected_sinks(our_name: str, direction: str, event_type: str, status: str) -> tuple[str, ...]:
    """What the routes in `voltd_config` must deliver this event to (kept next to them)."""
    sinks = ["archive"]
    if our_name == "front-desk" and event_type == "message.received":
        sinks.append("front-desk-inbox")
    if status == "failed" and our_name != "support":
        sinks.append("failures")
        return tuple(sinks)  # that route is final
    if our_name == "sales" and direction == "outbound":
        sinks.append("sales-outbound")
    return tuple(sinks)


def make_events(count: int, seed: int, now: float) -> list[BenchEvent]:
    """Unique, realistic messaging envelopes of about TARGET_BODY_BYTES compact JSON each.

    The mix (direction, status, event type, our number) is random but seeded, so runs are
    comparable; ids are random so that events never collide with a spool from another run.
    """
    rng = random.Random(seed)
    kinds = [k[:3] for k in KINDS]
    kind_weights = [k[3] for k in KINDS]
    names = list(OUR_NUMBERS)
    out: list[BenchEvent] = []
    t = int(now)
    alnum = string.ascii_letters + string.digits
    for _ in range(count):
        direction, event_type, status = rng.choices(kinds, kind_weights)[0]
        our_name = rng.choices(names, OUR_WEIGHTS)[0]
        ours = OUR_NUMBERS[our_name]
        theirs = f"+1{rng.choice(THEIR_AREAS)}55501{rng.randrange(100):02d}"
        to_number, from_number = (ours, theirs) if direction == "inbound" else (theirs, ours)
        mms = rng.random() < 0.08
        occurred = now - rng.uniform(0.2, 3.0)
        failure = rng.choice(FAILURES) if status == "failed" else (None, None, None, None)
        payload: dict[str, Any] = {
            "message_app_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "id": "rf_" + "".join(rng.choices(alnum, k=20)),
            "to_number": to_number,
            "from_number": from_number,
            "valid_until": _iso(occurred + 3600),
            "type": "MMS" if mms else "SMS",
            "text": "",
            "sent_at": None if direction == "inbound" else _iso(occurred - 1.1),
            "received_at": _iso(occurred - 0.4) if direction == "inbound" else None,
            "provider_error_code": failure[1],
            "provider_error_detail": failure[3],
            "provider_error_title": failure[2],
            "carrier_name": rng.choice(CARRIERS),
            "error_code": failure[0],
            "status": status,
            "parts": 1,
            "messaging_profile_id": "40017bf5-8809-4640-9925-da5c732667b7",
            "media": (
                [
                    {
                        "url": f"https://media.respondflow.com/{uuid.uuid4().hex}.jpg",
                        "content_type": "image/jpeg",
                        "size": rng.randrange(20_000, 900_000),
                    }
                ]
                if mms
                else []
            ),
            "encoding": "GSM-7",
            "direction": direction,
            "completed_at": _iso(occurred) if event_type == "message.finalized" else None,
            "occurred_at": _iso(occurred),
            "event_type": event_type,
        }
        env_id = f"rfw_{t:08x}_{uuid.uuid4().hex}"
        envelope = {"type": "messaging", "id": env_id, "payload": payload, "time": t}
        base = len(json.dumps(envelope, separators=(",", ":")).encode())
        text = _text(rng, max(20, TARGET_BODY_BYTES - base + rng.randrange(-80, 80)))
        payload["text"] = text
        if not text.isascii():
            payload["encoding"] = "UCS-2"
        body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
        sinks = expected_sinks(our_name, direction, event_type, status)
        out.append(BenchEvent(env_id, body, sinks))
    return out


def _sign_chunk(private_pem: bytes, bodies: list[bytes]) -> list[str]:
    """Worker: sign bodies as our default says Volt does (PKCS#1 v1.5, SHA-256, base64).

    Signing is done here with `cryptography` directly, not with voltd's own signer, so that a
    shared mistake cannot make the benchmark pass against a broken verifier.
    """
    key = serialization.load_pem_private_key(private_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return [
        base64.b64encode(key.sign(b, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")
        for b in bodies
    ]


def sign_all(private_key_path: Path, bodies: Sequence[bytes], workers: int) -> list[str]:
    """RSA signing is the slow part of setup (~3,500/s per core): spread it over all CPUs."""
    pem = private_key_path.read_bytes()
    if len(bodies) < 2000 or workers < 2:
        return _sign_chunk(pem, list(bodies))
    chunk = math.ceil(len(bodies) / (workers * 4))
    parts = [list(bodies[i : i + chunk]) for i in range(0, len(bodies), chunk)]
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_sign_chunk, [pem] * len(parts), parts)
        return [sig for part in results for sig in part]


def write_requests_file(
    path: Path, events: Sequence[BenchEvent], signatures: Sequence[str]
) -> None:
    """The format requests.lua reads: a signature line, then the body line, per request."""
    with path.open("wb") as f:
        for event, sig in zip(events, signatures, strict=True):
            if b"\n" in event.body:
                raise BenchError("a generated body contains a line break")
            f.write(sig.encode("ascii") + b"\n" + event.body + b"\n")


def check_signature(public_key_path: Path, body: bytes, signature: str) -> None:
    """Self-test of the bench's own signing against the public key voltd will be given."""
    key = serialization.load_ssh_public_key(public_key_path.read_bytes())
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(base64.b64decode(signature), body, padding.PKCS1v15(), hashes.SHA256())


# -- voltd configuration --------------------------------------------------------------------


ARCHIVE_PATH = "archive/{our_number}/{date}.jsonl"
# The relay phases' `http` sink (bench/relay.py); it is not a file sink, so not in SINK_DIRS.
RELAY_SINK = "relay"


def voltd_config(
    port: int,
    admin_port: int,
    *,
    keys_dir: Path | None = None,
    archive_path: str | None = ARCHIVE_PATH,
    relay: str | None = None,
    spool_url: str | None = None,
) -> str:
    """A realistic configuration (DESIGN.md §4): named numbers, fan-out, a final route.

    The ingest comparison uses it as is. The backlog phases vary only the archive sink: a
    path that cannot be written (the sink is down) or no archive sink at all (its deliveries
    wait in the spool), so that everything else about the daemon stays the same. `keys_dir`
    is where the certificate and public key are when the config lives in another directory.
    `relay` (the relay phases) is the body of a `[sinks.relay]` table: the archive route then
    sends every event to that sink as well (`RELAY_SINK`). `spool_url` (the PostgreSQL phases,
    bench/shared.py) puts the spool in that database instead of `spool.db`.
    """
    keys = "" if keys_dir is None else f"{keys_dir}/"
    spool = 'path = "spool.db"' if spool_url is None else f"url = {json.dumps(spool_url)}"
    archive_route = archive_sink = relay_sink = ""
    if archive_path is not None:
        also = f', "{RELAY_SINK}"' if relay is not None else ""
        archive_route = f"""
[[routes]]
name = "archive everything"
match = {{ direction = ["inbound", "outbound"] }}
sinks = ["archive"{also}]
"""
        archive_sink = f"""
[sinks.archive]
type = "file"
path = "{archive_path}"
"""
    if relay is not None:
        assert archive_path is not None, "the relay rides on the archive route"
        relay_sink = f"\n[sinks.{RELAY_SINK}]\n{relay.strip()}\n"
    return f"""\
# Written by bench/run.py for one benchmark run.
[server]
bind = ["{HOST}:{port}"]
path = "{WEBHOOK_PATH}"
certfile = "{keys}tls/cert.pem"
keyfile = "{keys}tls/key.pem"

[admin]
bind = "{HOST}:{admin_port}"

[verify]
public_keys = ["{keys}volt_id_rsa.pub"]

[spool]
{spool}

[numbers]
front-desk = "+1 (212) 555-0123"
sales = "+1 (415) 555-0142"
support = "+1 (312) 555-0199"
{archive_route}
[[routes]]
name = "front desk inbound"
match = {{ number = ["front-desk"], event = ["message.received"] }}
sinks = ["front-desk-inbox"]

[[routes]]
name = "delivery failures"
match = {{ status = ["failed"] }}
exclude = {{ number = ["support"] }}
sinks = ["failures"]
final = true

[[routes]]
name = "sales outbound"
match = {{ number = ["sales"], direction = ["outbound"] }}
sinks = ["sales-outbound"]
{archive_sink}
[sinks.front-desk-inbox]
type = "file"
path = "inbox/front-desk/{{date}}.jsonl"

[sinks.failures]
type = "file"
path = "failures/{{date}}.jsonl"

[sinks.sales-outbound]
type = "file"
path = "sales/{{event}}/{{date}}.jsonl"
{relay_sink}"""


SINK_DIRS = {
    "archive": "archive",
    "front-desk-inbox": "inbox",
    "failures": "failures",
    "sales-outbound": "sales",
}


# -- one run --------------------------------------------------------------------------------


@dataclass
class Setup:
    """Everything both halves share: files, keys, events, pinning, wrk."""

    args: argparse.Namespace
    workdir: Path
    voltd_dir: Path
    certfile: Path
    public_key: Path
    warmup_file: Path
    main_file: Path
    warmup_events: list[BenchEvent]
    main_events: list[BenchEvent]
    sanity: tuple[bytes, str]
    server_cpu: int | None
    client_cpu: int | None
    wrk: str
    # The e2e probe's own events (archive only), signed like the load; empty without probe.
    probe_events: list[BenchEvent] = field(default_factory=list)
    probe_signatures: list[str] = field(default_factory=list)
    # The relay latency probe's events (archive route, so also the relay), signed: one set
    # for the idle measurement, one for the measurement under load; empty without them.
    relay_idle_events: list[BenchEvent] = field(default_factory=list)
    relay_idle_signatures: list[str] = field(default_factory=list)
    relay_probe_events: list[BenchEvent] = field(default_factory=list)
    relay_probe_signatures: list[str] = field(default_factory=list)
