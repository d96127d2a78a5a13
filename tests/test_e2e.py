"""End to end: the real `voltd serve` process, real HTTPS on loopback, real SQLite, real files."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from tests.helpers import EXAMPLES, Daemon, make_event
from voltd.events import as_json_line
from voltd.keys import generate_signing_pair, make_self_signed_cert
from voltd.verify import Signer, load_private_key_file


def spool_counts(d: Daemon) -> tuple[int, int]:
    """(events, deliveries) in the spool file."""
    db = sqlite3.connect(f"file:{d.root / 'spool.db'}?mode=ro", uri=True)
    try:
        return (
            db.execute("SELECT COUNT(*) FROM events").fetchone()[0],
            db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0],
        )
    finally:
        db.close()


def test_vendor_examples_land_byte_for_byte(daemon: Daemon) -> None:
    daemon.configure(verify_extra='max_age = "0"')  # the vendor's examples are from 2022
    daemon.start()
    bodies = [
        (EXAMPLES / n).read_bytes() for n in ("finalized-delivered.json", "finalized-failed.json")
    ]
    compact = make_event(direction="outbound", our="+15555550145", unknown_field={"x": [1]})
    for body in [*bodies, compact]:
        r = daemon.post(body)
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True, "id": json.loads(body)["id"]}
    daemon.wait_for(lambda: len(daemon.lines("out/all.jsonl")) == 3)
    lines = daemon.lines("out/all.jsonl")
    # The two vendor examples share an envelope id but differ in content: both are events.
    assert lines[:2] == [as_json_line(b) for b in bodies]
    assert [json.loads(x) for x in lines[:2]] == [json.loads(b) for b in bodies]
    assert lines[2] == compact  # a compact body is kept byte for byte, unknown fields too
    assert json.loads(lines[2])["payload"]["unknown_field"] == {"x": [1]}
    assert daemon.stop() == 0


def test_bad_signatures_are_refused_and_nothing_is_stored(daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    body = make_event()
    good = daemon.signer.sign(body)
    other_key, _ = generate_signing_pair(tmp_path / "other")
    foreign = Signer(load_private_key_file(other_key)).sign(body)
    raw_sig = base64.b64decode(good)
    flipped = base64.b64encode(bytes([raw_sig[0] ^ 1]) + raw_sig[1:]).decode()
    cases = {
        "missing": None,
        "empty": "",
        "garbage": "not base64 at all!!",
        "wrong key": foreign,
        "bit flip": flipped,
        "truncated": good[:-8],
        "hex instead of base64": raw_sig.hex(),
        "non-ascii": "é".encode() * 40,
    }
    for name, sig in cases.items():
        r = daemon.post(body, signature=sig)
        assert r.status_code == 401, (name, r.status_code, r.text)
    tampered = body.replace(b"hello", b"HELLO")
    assert daemon.post(tampered, signature=good).status_code == 401
    # Unsigned messaging envelope is never taken for a probe.
    assert daemon.post(body, signature=None).status_code == 401
    assert spool_counts(daemon) == (0, 0)
    assert not (daemon.root / "out").exists()
    # ...and the daemon still serves a good request afterwards.
    assert daemon.post(body).status_code == 200
    assert daemon.stop() == 0


def test_malformed_bodies_get_400_and_the_daemon_keeps_serving(daemon: Daemon) -> None:
    daemon.start()
    cases = {
        b"hello": "not JSON",
        b"": "not JSON",
        b"[1, 2]": "object",
        b"{}": "type",
        b'{"type": "messaging"}': "id",
        b'{"type": "messaging", "id": "rfw_1"}': "payload",
        b'{"type": "messaging", "id": "rfw_1", "payload": []}': "payload",
        b'{"type": "messaging", "id": "rfw_1", "payload": {}, "time": "soon"}': "time",
        b"\xff\xfe\x00garbage": "not UTF-8",
    }
    for body, reason in cases.items():
        r = daemon.post(body)
        assert r.status_code == 400, (body, r.status_code)
        assert reason in r.json()["error"], (body, r.text)
    # A signed envelope of another type is a probe: 200, not stored.
    r = daemon.post(b'{"type": "test"}')
    assert (r.status_code, r.json()) == (200, {"ok": True, "probe": True})
    # Unsigned registration probes get a 2XX so that registration succeeds.
    for body in (b"", b"{}", b'{"type": "webhook.test"}'):
        r = daemon.post(body, signature=None)
        assert (r.status_code, r.json().get("probe")) == (200, True), body
    assert spool_counts(daemon) == (0, 0)
    # Size limit, method, path.
    big = make_event(text="x" * 70000)
    r = daemon.post(big)
    assert r.status_code == 413 and "larger than 65536 bytes" in r.json()["error"]
    assert r.headers["connection"] == "close"  # the unread body ends this connection
    assert daemon.client.get(daemon.url).status_code == 405
    assert daemon.post(make_event(), url=daemon.url + "/nope").status_code == 404
    # Still serving, and healthy.
    assert daemon.post(make_event()).status_code == 200
    health = httpx.get(daemon.admin_url + "/healthz")
    assert health.status_code == 200 and health.json()["ok"] is True
    assert daemon.stop() == 0


def test_routing_by_our_number_in_both_directions(daemon: Daemon) -> None:
    daemon.start()
    sent = {
        "front-desk/+15555550123-inbound.jsonl": make_event(direction="inbound"),
        "front-desk/+15555550123-outbound.jsonl": make_event(
            direction="outbound", status="delivered", event_type="message.finalized"
        ),
        "sales/+15555550145-inbound.jsonl": make_event(direction="inbound", our="+15555550145"),
        "sales/+15555550145-outbound.jsonl": make_event(
            direction="outbound", our="+15555550145", their="+15555550123"
        ),
    }
    # An outbound message from sales TO the front desk's number belongs to sales only:
    # `number` is our side of the conversation, not whichever field holds the number.
    for body in sent.values():
        assert daemon.post(body).status_code == 200
    stranger = make_event(direction="inbound", our="+15555550100")
    assert daemon.post(stranger).status_code == 200
    daemon.wait_for(lambda: len(daemon.lines("out/all.jsonl")) == 5)
    for rel, body in sent.items():
        daemon.wait_for(lambda rel=rel: len(daemon.lines("out/" + rel)) == 1)
        assert daemon.lines("out/" + rel) == [body], rel
    files = sorted(
        p.relative_to(daemon.root / "out").as_posix()
        for p in (daemon.root / "out").rglob("*.jsonl")
    )
    assert files == sorted(["all.jsonl", *sent])
    assert daemon.stop() == 0


def test_duplicates_are_delivered_once_even_across_restarts(daemon: Daemon) -> None:
    daemon.start()
    body = make_event()
    answers = [daemon.post(body).json() for _ in range(3)]
    assert [a.get("duplicate", False) for a in answers] == [False, True, True]
    # Volt re-sending the same event re-serialized and re-timed is still the same event.
    env = json.loads(body)
    env["time"] += 5
    assert daemon.post(json.dumps(env, indent=2).encode()).json()["duplicate"] is True
    daemon.wait_for(lambda: len(daemon.lines("out/all.jsonl")) == 1)
    assert daemon.stop() == 0
    daemon.start()
    assert daemon.post(body).json()["duplicate"] is True
    time.sleep(0.5)
    assert daemon.lines("out/all.jsonl") == [body]
    assert spool_counts(daemon)[0] == 1
    assert daemon.stop() == 0


def test_replay_window(daemon: Daemon) -> None:
    daemon.start()  # max_age 7d
    old = make_event(when=int(time.time()) - 8 * 86400)
    assert daemon.post(old).status_code == 401
    assert daemon.post(make_event(when=int(time.time()) - 6 * 86400)).status_code == 200
    env = json.loads(make_event())
    del env["time"]
    assert daemon.post(json.dumps(env).encode()).status_code == 401
    assert daemon.stop() == 0


@pytest.mark.slow
def test_kill_9_under_load_loses_no_acknowledged_event(daemon: Daemon) -> None:
    daemon.start()
    acked: list[str] = []
    total = 1500

    async def load() -> None:
        bodies = [make_event() for _ in range(total)]
        next_i = 0
        async with httpx.AsyncClient(verify=daemon.tls(), timeout=10) as client:

            async def sender() -> None:
                nonlocal next_i
                while next_i < len(bodies):
                    body = bodies[next_i]
                    next_i += 1
                    try:
                        r = await client.post(
                            daemon.url,
                            content=body,
                            headers={"X-Respond-Flow-Signature": daemon.signer.sign(body)},
                        )
                    except httpx.HTTPError:
                        return  # the daemon died under us: expected
                    if r.status_code == 200:
                        acked.append(json.loads(body)["id"])

            async def killer() -> None:
                while len(acked) < 300:  # noqa: ASYNC110 - polling a plain counter
                    await trio.sleep(0.01)
                assert daemon.proc is not None
                daemon.proc.kill()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                for _ in range(16):
                    nursery.start_soon(sender)

    trio.run(load)
    assert daemon.proc is not None and daemon.proc.wait(10) == -signal.SIGKILL
    assert 300 <= len(acked) < total, len(acked)
    daemon.start()

    def delivered() -> set[str]:
        return {json.loads(x)["id"] for x in daemon.lines("out/all.jsonl")}

    daemon.wait_for(lambda: set(acked) <= delivered(), timeout=60)
    assert daemon.stop() == 0


def test_sigterm_exits_0_and_notifies_systemd(daemon: Daemon) -> None:
    # Daemon.start() gives the process a NOTIFY_SOCKET of its own and waits for READY=1.
    daemon.start()
    assert "NOTIFY_SOCKET" not in os.environ  # the child's environment only
    status = f"STATUS=serving webhooks on {daemon.url}; admin on {daemon.admin_url}"
    assert daemon.notifications == [f"READY=1\n{status}"]
    assert daemon.post(make_event()).status_code == 200
    assert daemon.stop(signal.SIGTERM) == 0
    assert daemon.notifications == [f"READY=1\n{status}", "STOPPING=1"]
    daemon.start()
    assert daemon.stop(signal.SIGINT) == 0
    assert daemon.notifications[-1] == "STOPPING=1"


@pytest.mark.slow
def test_failing_sink_retries_then_dead_letters_and_replays(daemon: Daemon) -> None:
    body_cfg = """\
[[routes]]
name = "all"
sinks = ["all", "blocked"]

[sinks.all]
type = "file"
path = "out/all.jsonl"

[sinks.blocked]
type = "file"
path = "blocked/sub/events.jsonl"
"""
    daemon.configure(body=body_cfg, give_up_after="2s")
    (daemon.root / "blocked").write_text("a file where the sink wants a directory")
    daemon.start()
    body = make_event()
    assert daemon.post(body).status_code == 200
    # The healthy sink is not held up by the broken one.
    daemon.wait_for(lambda: daemon.lines("out/all.jsonl") == [body], timeout=5)
    spool = ["-c", str(daemon.config)]

    def cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "voltd", *args], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    daemon.wait_for(lambda: "blocked" in cli("spool", "dead", *spool), timeout=20)
    dead = json.loads(cli("spool", "dead", "--json", *spool))
    assert [(d["sink"], d["id"]) for d in dead] == [("blocked", json.loads(body)["id"])]
    assert dead[0]["attempts"] >= 2 and "cannot write" in dead[0]["error"]
    (daemon.root / "blocked").unlink()
    assert "1 dead letter" in cli("spool", "replay", *spool)
    daemon.wait_for(lambda: daemon.lines("blocked/sub/events.jsonl") == [body], timeout=20)
    status = cli("spool", "status", *spool)
    assert "blocked" in status
    assert daemon.stop() == 0


def test_pending_deliveries_for_a_removed_sink_are_reported(daemon: Daemon) -> None:
    daemon.configure(
        body='[[routes]]\nsinks = ["gone"]\n[sinks.gone]\ntype = "file"\npath = "blocked/x.jsonl"\n'
    )
    (daemon.root / "blocked").write_text("keeps the sink failing")
    daemon.start()
    assert daemon.post(make_event()).status_code == 200
    assert daemon.stop() == 0
    daemon.configure()  # the default routes: no sink named "gone" any more
    daemon.start()
    daemon.wait_for(
        lambda: any("sink 'gone', which is no longer configured" in line for line in daemon.log)
    )
    assert daemon.stop() == 0


def test_sighup_reloads_routes_sinks_and_certificate_and_refuses_a_broken_config(
    daemon: Daemon, tmp_path: Path
) -> None:
    daemon.start()
    first = make_event()
    assert daemon.post(first).status_code == 200
    daemon.wait_for(lambda: daemon.lines("out/all.jsonl") == [first])

    def hup_and_wait(text: str) -> None:
        seen = len(daemon.log)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(lambda: any(text in line for line in daemon.log[seen:]))

    # New routes and a new sink, applied without a restart.
    daemon.configure(
        body='[[routes]]\nsinks = ["second"]\n[sinks.second]\ntype = "file"\n'
        'path = "out/second.jsonl"\n'
    )
    hup_and_wait("configuration reloaded")
    second = make_event()
    assert daemon.post(second).status_code == 200
    daemon.wait_for(lambda: daemon.lines("out/second.jsonl") == [second])
    assert daemon.lines("out/all.jsonl") == [first]

    # A broken file is refused as a whole; the running configuration stays.
    good = daemon.config.read_text()
    daemon.config.write_text(good + '\n[sinks.broken]\ntype = "nope"\n')
    hup_and_wait("reload refused")
    assert any("sinks.broken.type" in line for line in daemon.log)
    third = make_event()
    assert daemon.post(third).status_code == 200
    daemon.wait_for(lambda: daemon.lines("out/second.jsonl") == [second, third])

    # A renewed certificate is served to new connections.
    daemon.config.write_text(good)
    fresh_cert, fresh_key = make_self_signed_cert(tmp_path / "renewed")
    os.replace(fresh_cert, daemon.root / "tls" / "cert.pem")
    os.replace(fresh_key, daemon.root / "tls" / "key.pem")
    hup_and_wait("configuration reloaded")
    host, port = daemon.url.split("//")[1].split("/")[0].rsplit(":", 1)
    served = ssl.get_server_certificate((host, int(port)))
    assert served.strip() == (daemon.root / "tls" / "cert.pem").read_text().strip()
    daemon.client.close()  # it trusts the old certificate only; the next post makes a new one
    daemon._client = None
    assert daemon.post(make_event()).status_code == 200
    assert daemon.stop() == 0
