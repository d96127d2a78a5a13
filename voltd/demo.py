"""`voltd demo`: the whole pipeline on loopback, with nothing to set up.

It makes a throwaway signing key and TLS certificate, writes a config, starts the real
daemon (the same `Daemon` that `voltd serve` runs) on free loopback ports, signs and sends
the vendor's example payloads plus inbound/outbound variants over HTTPS, and shows what each
request got and where each event landed.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import logging
import os
import ssl
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import httpx
import trio

from voltd.daemon import Daemon, configure
from voltd.keys import generate_signing_pair, make_self_signed_cert
from voltd.standins import SlackStandIn, SmtpStandIn, SmtpUnavailable
from voltd.verify import Signer, load_private_key_file

CONFIG = """\
# Written by `voltd demo`. Start it yourself with: voltd serve -c {dir}/config.toml
[server]
bind = ["127.0.0.1:0"]        # port 0: any free port
path = "/webhooks"
certfile = "tls/cert.pem"
keyfile = "tls/key.pem"

[admin]
bind = "127.0.0.1:0"

[verify]
public_keys = ["keys/volt_id_rsa.pub"]
# The vendor's example payloads are from 2022; a real deployment keeps the default (7d).
max_age = "0"

[spool]
path = "spool.db"

[retry]
initial = "200ms"
max_delay = "5s"
give_up_after = "1m"

[numbers]
front-desk = "+1 (555) 555-0123"
sales = "+1 555 555 0145"

[[routes]]
name = "archive everything"
sinks = ["archive"]

[[routes]]
name = "delivery failures"
match = {{ status = ["failed"] }}
sinks = ["failures", "ops-slack"{mail_sink}]
final = true

[[routes]]
name = "front desk inbound"
match = {{ number = ["front-desk"], event = ["message.received"] }}
sinks = ["front-desk", "ops-slack"{mail_sink}]

[[routes]]
name = "sales outbound"
match = {{ number = ["sales"], direction = ["outbound"] }}
exclude = {{ status = ["failed"] }}
sinks = ["sales"]

[sinks.archive]
type = "file"
path = "out/archive/{{our_number}}/{{date}}.jsonl"

[sinks.failures]
type = "file"
path = "out/failures.jsonl"

[sinks.front-desk]
type = "file"
path = "out/front-desk/{{event}}.jsonl"

[sinks.sales]
type = "file"
path = "out/sales/{{status}}.jsonl"

# A stand-in for Slack on loopback. A real webhook URL is a secret: keep it out of the file,
# e.g. webhook_url = "${{env:SLACK_OPS_URL}}". Slack takes about a message a second, so the
# sink's default rate is "1/s", and events that queue up go out as one summary message.
[sinks.ops-slack]
type = "slack"
webhook_url = "{slack_url}"
timezone = "America/New_York"
{mail_table}"""

MAIL_TABLE = """
# A stand-in SMTP server on loopback, plain SMTP: tls = "none" is allowed only without a
# password or to a loopback host. A real server keeps the default, tls = "starttls".
[sinks.ops-mail]
type = "email"
host = "127.0.0.1"
port = {port}
tls = "none"
from = "voltd@demo.invalid"
to = ["front-desk@demo.invalid"]
timezone = "America/New_York"
"""


@dataclass
class Sent:
    label: str
    status: int
    answer: str
    event_id: str | None


def _example(name: str) -> bytes:
    return resources.files("voltd").joinpath("examples", name).read_bytes()


def _variants(now: int) -> list[tuple[str, bytes]]:
    """The vendor's two examples as-is, plus variants for the other directions and events."""
    delivered = _example("finalized-delivered.json")
    failed = _example("finalized-failed.json")
    base = json.loads(delivered)

    def variant(eid: str, **changes: object) -> bytes:
        env = json.loads(json.dumps(base))
        env["id"] = eid
        env["time"] = now
        env["payload"].update(changes)
        return json.dumps(env).encode()

    inbound = variant(
        "rfw_demo_inbound_1",
        id="rf_demo_in_1",
        direction="inbound",
        event_type="message.received",
        status="received",
        from_number="+15555550199",
        to_number="+15555550123",
        text="Hi! Is the front desk open on Sunday?",
        sent_at=None,
        completed_at=None,
    )
    sent = variant(
        "rfw_demo_sent_1",
        id="rf_demo_out_1",
        direction="outbound",
        event_type="message.sent",
        status="sent",
        from_number="+15555550145",
        to_number="+15555550177",
        text="Your order has shipped.",
        completed_at=None,
    )
    return [
        ("vendor example: finalized, delivered (outbound)", delivered),
        ("vendor example: finalized, failed (outbound)", failed),
        ("inbound message to the front desk", inbound),
        ("outbound message sent by sales", sent),
    ]


async def _drive(workdir: Path) -> list[Sent]:
    plan = configure(workdir / "config.toml")
    config = plan.config
    signer = Signer(load_private_key_file(workdir / "keys" / "volt_signing_key.pem"))
    daemon = Daemon(plan)
    sent: list[Sent] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: daemon.run(handle_signals=False, task_status=task_status)
        )
        url = daemon.webhook_urls[0]
        print(f"daemon listening on {url} (admin: {daemon.admin_urls[0]}/healthz)\n")
        tls = ssl.create_default_context(cafile=str(workdir / "tls" / "cert.pem"))
        async with httpx.AsyncClient(verify=tls, timeout=10) as client:

            async def post(label: str, body: bytes, signature: str | None) -> None:
                headers = {"Content-Type": "application/json"}
                if signature is not None:
                    headers[config.verify.header] = signature
                r = await client.post(url, content=body, headers=headers)
                try:
                    eid = json.loads(body).get("id")
                except ValueError:
                    eid = None
                sent.append(Sent(label, r.status_code, r.text, eid))
                print(f"  {r.status_code}  {label}\n       -> {r.text}")

            print("sending:")
            variants = _variants(int(time.time()))
            (workdir / "events").mkdir(exist_ok=True)
            for i, (_label, body) in enumerate(variants, 1):
                (workdir / "events" / f"event{i}.json").write_bytes(body)
            for label, body in variants:
                await post(label, body, signer.sign(body))
            first = variants[0][1]
            await post("the first event again (Volt retry)", first, signer.sign(first))
            tampered = first.replace(b"delivered", b"DELIVERED")
            await post("tampered body, original signature", tampered, signer.sign(first))
            await post("no signature", variants[2][1], None)
            await post("signed, but not JSON", b"hello", signer.sign(b"hello"))
            await post("registration probe (unsigned {})", b"{}", None)

        # Wait for every delivery to land.
        assert daemon.ingest is not None
        with trio.move_on_after(15):
            while True:
                status = await daemon.ingest.spool.status()
                if all(c["pending"] == 0 for c in status.values()):
                    break
                await trio.sleep(0.05)
        daemon.shutdown.set()
    return sent


def run_demo(directory: Path | None = None) -> int:
    workdir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="voltd-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "config.toml").exists():
        print(f"voltd demo: {workdir} already holds a demo; give an empty or new --dir")
        return 1
    # The demo narrates each step itself; the daemon's own log lines would only repeat it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("voltd").setLevel(logging.WARNING)
    print(f"voltd demo in {workdir}\n")
    generate_signing_pair(workdir / "keys")
    make_self_signed_cert(workdir / "tls")
    slack = SlackStandIn().start()
    smtp: SmtpStandIn | None = None
    try:
        smtp = SmtpStandIn().start()
    except SmtpUnavailable as exc:
        print(f"note: {exc}; the demo goes on without the e-mail sink\n")
    try:
        (workdir / "config.toml").write_text(
            CONFIG.format(
                dir=workdir,
                slack_url=slack.url,
                mail_sink=', "ops-mail"' if smtp else "",
                mail_table=MAIL_TABLE.format(port=smtp.port) if smtp else "",
            )
        )
        print(
            "made a throwaway signing key pair (keys/), TLS certificate (tls/) and config.toml;"
            f"\nstand-ins on loopback: Slack at {slack.url.split('/services')[0]}"
            + (f", SMTP at {smtp.host}:{smtp.port}" if smtp else "")
            + "\n"
        )
        sent = trio.run(_drive, workdir)
    finally:
        slack.stop()
        if smtp is not None:
            smtp.stop()

    print("\nwhere each event landed:")
    out = workdir / "out"
    landed: dict[str, list[str]] = {}
    for path in sorted(out.rglob("*.jsonl")) if out.exists() else []:
        for line in path.read_bytes().splitlines():
            env = json.loads(line)
            key = f"{env['id']} ({env['payload'].get('status')})"
            landed.setdefault(key, []).append(str(path.relative_to(workdir)))
    for key, paths in landed.items():
        print(f"  {key}")
        for p in paths:
            print(f"      {p}")
    _show_slack(workdir, slack.messages)
    if smtp is not None:
        _show_mail(workdir, smtp.mails)
    ok = sum(1 for s in sent if s.status == 200)
    cmd = "uv run voltd" if "UV" in os.environ else "voltd"  # from a clone, uv runs it
    print(
        f"\n{ok} of {len(sent)} requests answered 200; {len(landed)} distinct events delivered."
        f"\nEverything is in {workdir}: config.toml, events/, spool.db, out/."
        f"\nTry: {cmd} check -c {workdir}/config.toml"
        f"\n     {cmd} route -c {workdir}/config.toml {workdir}/events/event2.json"
        f"\n     {cmd} spool status -c {workdir}/config.toml"
    )
    expected_ok = 6  # four events, one retry, one probe; the three bad requests are refused
    expected_mails = 2 if smtp is not None else 0  # the failure, the front desk's text
    good = ok == expected_ok and len(landed) == 4 and len(slack.messages) >= 1
    return 0 if good and (smtp is None or len(smtp.mails) == expected_mails) else 1


def _show_slack(workdir: Path, messages: list[dict[str, object]]) -> None:
    """Print what the Slack stand-in received, and keep it in out/slack/."""
    print(f"\nwhat Slack received ({len(messages)} message{'s' * (len(messages) != 1)}):")
    folder = workdir / "out" / "slack"
    folder.mkdir(parents=True, exist_ok=True)
    for i, message in enumerate(messages, 1):
        text = json.dumps(message, indent=2, ensure_ascii=False)
        (folder / f"message{i}.json").write_text(text + "\n")
        print(f"  out/slack/message{i}.json:")
        print("\n".join("    " + line for line in text.splitlines()))


def _show_mail(workdir: Path, mails: list[tuple[str, list[str], bytes]]) -> None:
    """Print the mails the SMTP stand-in received (headers and the text part), and keep them
    in out/mail/ as .eml files a mail program opens."""
    print(f"\nwhat the SMTP server received ({len(mails)} mail{'s' * (len(mails) != 1)}):")
    folder = workdir / "out" / "mail"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (sender, recipients, content) in enumerate(mails, 1):
        (folder / f"mail{i}.eml").write_bytes(content)
        message = email.message_from_bytes(content, policy=email.policy.default)
        print(f"  out/mail/mail{i}.eml (from {sender} to {', '.join(recipients)}):")
        for name in ("Subject", "From", "To", "Message-ID", "In-Reply-To"):
            if message[name]:
                print(f"    {name}: {message[name]}")
        assert isinstance(message, email.message.EmailMessage)
        body = message.get_body(("plain",))
        if body is not None:
            assert isinstance(body, email.message.EmailMessage)
            print()
            print("\n".join("    " + line for line in body.get_content().splitlines()))
        print()
