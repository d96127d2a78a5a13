"""The first-party `email` sink (plugins/voltd_email): real SMTP to aiosmtpd on 127.0.0.1.

Nothing of smtplib is mocked: every mail goes over loopback to an aiosmtpd server (in a
thread of this process) that records what it got and answers as each test scripts it: 4xx or
5xx to MAIL, RCPT or DATA, STARTTLS with a private CA's certificate (the HTTP helper's `Pki`),
AUTH, implicit TLS. Most tests go through `voltd.testing` (the real config loader and delivery
worker); the digest across `kill -9` runs the real daemon (`tests.helpers.Daemon`).
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from voltd_email import (
    EmailSink,
    build_digest,
    build_message,
    digest_message_id,
    message_id,
)

import voltd
import voltd.testing as vt
from tests import test_http_helper as tls_helper
from tests.helpers import Daemon, make_event
from tests.test_http_helper import Pki, server_tls

# The private CA and the server certificate (for localhost and 127.0.0.1), module scoped.
pki = tls_helper.pki

USER = "voltd@example.com"
PASSWORD = "s3cret-Pa55word-never-shown"
NAMES = {number: name for name, number in vt.NUMBERS.items()}


# --------------------------------------------------------------------------------------------
# An SMTP server that records and answers as told


def free_port() -> int:
    """aiosmtpd cannot bind port 0: take one the kernel hands out, then free it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    data: bytes
    tls: bool
    login: str | None

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    def text(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]

    def html(self) -> str:
        part = self.message.get_body(("html",))
        assert part is not None
        return str(part.get_content())  # type: ignore[attr-defined]


@dataclass
class Handler:
    """Records accepted mails; `rcpt`/`mail`/`data` script replies (address -> reply)."""

    mails: list[Mail] = field(default_factory=list)
    rcpt: dict[str, str] = field(default_factory=dict)
    mail: str | None = None
    data: str | None = None
    attempts: list[list[str]] = field(default_factory=list)  # recipients tried per DATA
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, opts: Any):
        if self.mail is not None:
            return self.mail
        envelope.mail_from = address
        envelope.mail_options.extend(opts)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, opts: Any):
        reply = self.rcpt.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.attempts.append(list(envelope.rcpt_tos))
        if self.data is not None:
            return self.data
        auth = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        mail = Mail(
            envelope.mail_from,
            list(envelope.rcpt_tos),
            bytes(envelope.original_content or envelope.content),
            server.transport.get_extra_info("ssl_object") is not None,
            login,
        )
        with self.lock:
            self.mails.append(mail)
        return "250 Message accepted for delivery"

    def received(self) -> list[Mail]:
        with self.lock:
            return list(self.mails)


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any):
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False, auth_data=data if ok else None)


class Server:
    def __init__(self, **kwargs: Any) -> None:
        self.handler = Handler()
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()

    def close(self) -> None:
        self.controller.stop()

    def options(self, **more: Any) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "tls": "none",
            "from": "voltd <voltd@example.com>",
            "to": ["ops@example.com"],
            **more,
        }


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.fixture
def starttls_server(pki: Pki) -> Iterator[Server]:
    s = Server(
        tls_context=server_tls(pki),
        require_starttls=True,
        auth_required=True,
        authenticator=authenticator,
    )
    yield s
    s.close()


def tls_options(s: Server, **more: Any) -> dict[str, Any]:
    settings = {"tls": "starttls", "username": USER, "password": PASSWORD, "ca_file": "ca.pem"}
    return s.options(**{**settings, **more})


# --------------------------------------------------------------------------------------------
# What a person reads


async def test_volt_examples_are_mails_a_human_understands(server: Server) -> None:
    sink = vt.build_sink("email", server.options(cc=["Desk <desk@example.com>"]))
    events = vt.volt_examples()
    report = await vt.deliver(sink, events)
    assert len(report.delivered) == 2 and not report.dead and not report.pending
    delivered, failed = server.handler.received()
    for mail in (delivered, failed):
        assert mail.sender == "voltd@example.com"
        assert mail.recipients == ["ops@example.com", "desk@example.com"]
        msg = mail.message
        assert msg.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        assert msg["From"] == "voltd <voltd@example.com>"
        assert msg["To"] == "ops@example.com" and msg["Cc"] == "Desk <desk@example.com>"
        assert msg["Date"] and msg["Auto-Submitted"] == "auto-generated"
        assert msg["Message-ID"].startswith("<voltd.") and msg["Message-ID"].endswith(
            "@example.com>"
        )
    # The two examples share an envelope id but are two events: two Message-IDs.
    assert delivered.message["Message-ID"] != failed.message["Message-ID"]

    subject = failed.message["Subject"]
    assert subject == "Message failed to deliver: sales (+15555550145) → front-desk (+15555550123)"
    assert delivered.message["Subject"].startswith("Message delivered: sales (+15555550145)")
    text = failed.text()
    for words in (
        "Message failed to deliver",
        "front-desk (+15555550123)",
        "Blocked as spam - temporary",
        "flagged by a SPAM filter",
        "provider 40002, Volt 702",
        "T-MOBILE USA, INC.",
        "Sending a message to myself to demonstrate using the GraphQL API",
        "2022-04-07 22:19:46 UTC",
        "rf_o6aDxhawR227gt5wgZ2I",
        "rfw_6962ccb5_eb7654690ec04a0593cc645fd2353995",
    ):
        assert words in text, words
        assert words.replace("&", "&amp;") in failed.html(), words
    assert "Blocked as spam" not in delivered.text()
    html = failed.html()
    assert html.startswith("<!DOCTYPE html>") and "<style" not in html  # inline styles only
    # The same as the public function the README and `voltd demo` show.
    shown = build_message(events[1], server.options(), numbers=NAMES)
    assert shown.get_body(("plain",)).get_content() == text  # type: ignore[union-attr]
    await sink.aclose()


async def test_timezone_and_a_template_of_ones_own(server: Server) -> None:
    sink = vt.build_sink(
        "email",
        server.options(
            timezone="America/New_York",
            subject="[sms] {{ their_number }} {{ status }}",
            text="{{ headline }} at {{ received | localtime('%H:%M %Z') }}: {{ text }}",
            html="<p>{{ text }}</p>",
        ),
    )
    event = vt.make_event(text="<b>hi</b>", when=1649369986)
    assert (await vt.deliver(sink, [event])).delivered == [event]
    (mail,) = server.handler.received()
    assert mail.message["Subject"] == "[sms] +15555550199 received"
    assert mail.text() == "Message received at 18:19 EDT: <b>hi</b>\n"
    assert "<p>&lt;b&gt;hi&lt;/b&gt;</p>" in mail.html()


async def test_threads_per_conversation(server: Server) -> None:
    sink = vt.build_sink("email", server.options())
    first, second, third = (
        vt.make_event(their="+15555550111", text=f"number {i}") for i in range(3)
    )
    elsewhere = vt.make_event(their="+15555550122")
    # A retry of the second mail (as after a crash between the server's 250 and voltd's
    # commit) has the same headers as the first time.
    for event in (first, second, second, elsewhere, third):
        assert (await vt.deliver(sink, [event])).delivered == [event]
    m1, m2, again, other, m3 = (m.message for m in server.handler.received())
    assert m1["In-Reply-To"] is None and m1["References"] is None
    assert other["In-Reply-To"] is None and other["References"] is None
    assert m2["In-Reply-To"] == m1["Message-ID"] and m2["References"] == m1["Message-ID"]
    assert m3["In-Reply-To"] == m2["Message-ID"]
    assert m3["References"].split() == [m1["Message-ID"], m2["Message-ID"]]
    for header in ("Message-ID", "In-Reply-To", "References"):
        assert again[header] == m2[header]
    assert m1["Message-ID"] == message_id("test", first, "voltd@example.com")
    # Another sink relaying the same event sends another Message-ID.
    assert message_id("other", first, "voltd@example.com") != m1["Message-ID"]


HOSTILE = (
    "<script>alert(1)</script></td></tr></table><a href='javascript:x'>click</a> "
    "*bold* _it_ <!channel> <https://evil.example|click> &amp; "
    "\u202eevil.exe\u202c RTL שלום 🎉👍 NUL\x00BEL\x07ESC\x1b DEL\x7f "
    "line\r\nBcc: victim@example.com\r\n\r\nbody? \ud800 lone surrogate"
)


async def test_hostile_sms_text_renders_safely(server: Server) -> None:
    sink = vt.build_sink(
        "email",
        server.options(subject="SMS: {{ text }} \r\nBcc: subject@example.com"),
    )
    # Three conversations: no threading headers.
    hostile = vt.make_event(text=HOSTILE, their="+15555550101")
    huge = vt.make_event(text="x" * 99_000 + "é" * 1_000, their="+15555550102")
    injected = vt.make_event(
        text="hello\r\nBcc: victim@example.com\nX-Evil: 1", their="+15555550103"
    )
    report = await vt.deliver(sink, [hostile, huge, injected])
    assert len(report.delivered) == 3, report
    mails = server.handler.received()
    assert len(mails) == 3
    for mail in mails:
        msg = mail.message
        assert mail.recipients == ["ops@example.com"]  # the envelope: nobody else
        assert set(msg.keys()) == {
            "Subject",
            "From",
            "To",
            "Date",
            "Message-ID",
            "Auto-Submitted",
            "X-Mailer",
            "MIME-Version",
            "Content-Type",
        }
        assert msg["Bcc"] is None and msg["X-Evil"] is None
        subject = msg["Subject"]
        assert "\n" not in subject and "\r" not in subject and len(subject) <= 200
        assert not msg.defects
        for part in msg.iter_parts():
            assert not part.defects
            assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert max(len(line) for line in mail.data.split(b"\r\n")) <= 998
    text, html = mails[0].text(), mails[0].html()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;" in html and "href='javascript" not in html
    assert "&amp;amp;" in html and "&lt;!channel&gt;" in html
    assert "<script>alert(1)</script>" in text  # plain text is shown as it is
    assert "🎉👍" in text and "שלום" in text and "🎉👍" in html
    assert "NUL\ufffdBEL\ufffdESC\ufffd" in text and "\x00" not in text + html
    assert "\r" not in text and "line\nBcc: victim@example.com\n\nbody?" in text
    assert mails[0].message["Subject"].startswith("SMS: <script>alert(1)</script>")
    assert "\u202e" not in mails[0].message["Subject"]
    assert "x" * 10_000 in mails[1].text() and len(mails[1].text()) <= 100_001
    assert mails[2].message["Subject"] == (
        "SMS: hello Bcc: victim@example.com X-Evil: 1 Bcc: subject@example.com"
    )


# --------------------------------------------------------------------------------------------
# TLS and AUTH


async def test_starttls_with_a_private_ca_and_login(starttls_server: Server, pki: Pki) -> None:
    sink = vt.build_sink("email", tls_options(starttls_server), config_dir=pki.dir)
    events = vt.volt_examples()
    assert len((await vt.deliver(sink, events)).delivered) == 2
    mails = starttls_server.handler.received()
    assert len(mails) == 2
    assert all(m.tls and m.login == USER for m in mails)


async def test_implicit_tls(pki: Pki) -> None:
    ctx = server_tls(pki)
    s = Server(ssl_context=ctx, authenticator=authenticator, auth_require_tls=False)
    try:
        sink = vt.build_sink(
            "email",
            s.options(tls="implicit", username=USER, password=PASSWORD, ca_file=str(pki.ca)),
        )
        assert isinstance(sink, EmailSink) and sink.options.port == s.port
        implicit = {k: v for k, v in s.options(tls="implicit").items() if k != "port"}
        assert vt.build_sink("email", implicit).options.smtp_port == 465
        event = vt.make_event()
        assert (await vt.deliver(sink, [event])).delivered == [event]
        (mail,) = s.handler.received()
        assert mail.tls and mail.login == USER
        # Without the private CA the certificate is not trusted: retried, never sent.
        plain = vt.build_sink("email", s.options(tls="implicit"))
        ((_, error),) = (await vt.deliver(plain, [vt.make_event()])).pending
        assert "certificate is not trusted" in error and "ca_file" in error
        assert len(s.handler.received()) == 1
    finally:
        s.close()


async def test_a_server_without_starttls_is_refused(server: Server) -> None:
    sink = vt.build_sink("email", server.options(tls="starttls", username=USER, password=PASSWORD))
    report = await vt.deliver(sink, vt.volt_examples())
    assert report.disabled is not None and not report.delivered and not report.dead
    assert "does not offer STARTTLS" in report.disabled
    assert "nothing was sent in plain text" in report.disabled
    assert "voltd spool retry --sink test" in report.disabled
    assert server.handler.attempts == [] and server.handler.received() == []


async def test_wrong_password_disables_and_is_never_shown(
    starttls_server: Server, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-" + PASSWORD
    sink = vt.build_sink("email", tls_options(starttls_server, password=wrong), config_dir=pki.dir)
    assert wrong not in repr(sink.options)
    report = await vt.deliver(sink, vt.volt_examples())
    assert report.disabled is not None and not report.delivered
    assert "login refused: 535" in report.disabled
    assert "voltd spool retry --sink test" in report.disabled
    assert starttls_server.handler.received() == []
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith("mail.")]
    assert any("disabled" in line for line in ours)
    for text in [report.disabled, *ours]:
        assert wrong not in text and PASSWORD not in text


def test_password_never_in_voltd_check(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path)
    body = f"""\
[[routes]]
name = "all"
sinks = ["mail"]

[sinks.mail]
type = "email"
host = "{{host}}"
tls = "{{tls}}"
username = "{USER}"
password = "{PASSWORD}"
from = "voltd@example.com"
to = ["ops@example.com"]
"""
    daemon.configure(body=body.format(host="smtp.example.com", tls="starttls"))
    ok = subprocess.run(
        [sys.executable, "-m", "voltd", "check", "-c", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    daemon.configure(body=body.format(host="smtp.example.com", tls="none"))
    bad = subprocess.run(
        [sys.executable, "-m", "voltd", "check", "-c", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert 'tls = "none" with a password would send it in plain text' in bad.stderr + bad.stdout
    for out in (ok.stdout, ok.stderr, bad.stdout, bad.stderr):
        assert PASSWORD not in out


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"tls": "none", "host": "smtp.example.com", "username": "u", "password": PASSWORD},
            'tls = "none" with a password',
        ),
        ({"username": "u"}, "username and password go together"),
        ({"password": PASSWORD}, "username and password go together"),
        ({"to": []}, "sinks.test.to: expected at least 1 item"),
        ({"to": ["not an address"]}, "to[0]: 'not an address' is not"),
        ({"to": ["a@example.com, b@example.com"]}, "is not one e-mail address"),
        ({"from": "ops@exämple.com"}, "not ASCII"),
        ({"cc": ["x@example.com\r\nBcc: y@example.com"]}, "line break or control character"),
        ({"host": "smtp://mail.example.com"}, "expected a host name"),
        ({"tls": "ssl"}, "tls"),
        ({"timeout": "2m"}, "at most 60s"),
        ({"digest": "soon"}, "digest"),
        ({"timezone": "Mars/Base"}, "IANA time zone"),
        ({"subject": "{{ staus }}"}, "unknown variable 'staus'"),
        ({"html": "{% if %}"}, "html: line 1"),
        ({"ca_file": "missing.pem"}, "ca_file"),
        ({"tls": "none", "ca_file": "ca.pem"}, "ca_file is set but"),
    ],
)
def test_config_errors_are_clear(options: dict[str, Any], expected: str) -> None:
    base = {"host": "127.0.0.1", "from": "voltd@example.com", "to": ["ops@example.com"]}
    with pytest.raises(vt.ConfigError) as info:
        vt.build_sink("email", {**base, **options})
    message = str(info.value)
    assert expected in message, message
    assert PASSWORD not in message


async def test_loopback_relay_may_take_a_password_in_plain_text() -> None:
    auth = Server(authenticator=authenticator, auth_require_tls=False)
    try:
        sink = vt.build_sink("email", auth.options(username=USER, password=PASSWORD))
        event = vt.make_event()
        assert (await vt.deliver(sink, [event])).delivered == [event]
        assert auth.handler.received()[0].login == USER
    finally:
        auth.close()


async def test_auth_not_offered_disables(server: Server) -> None:
    sink = vt.build_sink("email", server.options(username=USER, password=PASSWORD))
    report = await vt.deliver(sink, [vt.make_event()])
    assert report.disabled is not None and "does not offer AUTH" in report.disabled
    assert server.handler.received() == []


# --------------------------------------------------------------------------------------------
# Answers


@pytest.mark.parametrize(
    ("where", "reply", "outcome", "words"),
    [
        ("data", "451 4.3.0 Try again later", "pending", "451 4.3.0 Try again later"),
        ("data", "421 4.7.0 Closing", "pending", "421"),
        ("data", "554 5.7.1 Message rejected as spam", "dead", "554 5.7.1 Message rejected"),
        ("rcpt", "450 4.2.1 Mailbox busy", "pending", "450 4.2.1 Mailbox busy"),
        ("rcpt", "550 5.1.1 No such user", "dead", "ops@example.com: 550 5.1.1 No such user"),
        ("mail", "451 4.3.2 Later", "pending", "sender refused for now: 451"),
        ("mail", "553 5.7.1 Sender not allowed", "disabled", "refuses the sender voltd@"),
        ("mail", "552 5.3.4 Too big", "dead", "too big"),
    ],
)
async def test_answers_become_outcomes(
    server: Server, where: str, reply: str, outcome: str, words: str
) -> None:
    if where == "rcpt":
        server.handler.rcpt["ops@example.com"] = reply
    else:
        setattr(server.handler, where, reply)
    sink = vt.build_sink("email", server.options())
    report = await vt.deliver(sink, [vt.make_event()])
    errors = [e for _, e in report.dead + report.pending] + [report.disabled or ""]
    got = {"dead": report.dead, "pending": report.pending, "disabled": report.disabled}
    assert got[outcome], report
    assert any(words in e for e in errors), errors
    assert server.handler.received() == []


async def test_nobody_listening_is_retried() -> None:
    sink = vt.build_sink(
        "email",
        {
            "host": "127.0.0.1",
            "port": free_port(),
            "tls": "none",
            "from": "a@example.com",
            "to": ["b@example.com"],
        },
    )
    ((_, error),) = (await vt.deliver(sink, [vt.make_event()])).pending
    assert "RetryableError: SMTP 127.0.0.1:" in error and "refused" in error.lower()


async def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:  # accepts (the kernel does), never says a word
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        sink = vt.build_sink(
            "email",
            {
                "host": "127.0.0.1",
                "port": port,
                "tls": "none",
                "from": "a@example.com",
                "to": ["b@example.com"],
                "timeout": "300ms",
            },
        )
        started = time.monotonic()
        ((_, error),) = (await vt.deliver(sink, [vt.make_event()])).pending
        assert time.monotonic() - started < 5
        assert "no answer within 0.3s" in error


async def test_one_recipient_refused_for_good_then_replayed_only_to_it(server: Server) -> None:
    server.handler.rcpt["bad@example.com"] = "550 5.1.1 <bad@example.com>: No such user"
    sink = vt.build_sink("email", server.options(to=["ops@example.com"], cc=["bad@example.com"]))
    event = vt.make_event()
    report = await vt.deliver(sink, [event])
    ((dead, error),) = report.dead
    assert dead is event
    assert "bad@example.com: 550 5.1.1" in error and "ops@example.com" not in error
    assert "sent to 1 other recipient" in error and "voltd spool replay" in error
    (first,) = server.handler.received()
    assert first.recipients == ["ops@example.com"]
    # The address is fixed on the server's side; a replay mails only the one who missed it.
    del server.handler.rcpt["bad@example.com"]
    assert (await vt.deliver(sink, [event])).delivered == [event]
    first, replayed = server.handler.received()
    assert replayed.recipients == ["bad@example.com"]
    assert replayed.message["Message-ID"] == first.message["Message-ID"]
    assert replayed.message["Cc"] == "bad@example.com"  # the same mail, headers and all
    # And once everyone has it, the bookkeeping is gone: another replay goes to everyone.
    assert (await vt.deliver(sink, [event])).delivered == [event]
    assert server.handler.received()[-1].recipients == ["ops@example.com", "bad@example.com"]


async def test_one_recipient_refused_for_now_is_retried_alone(server: Server) -> None:
    server.handler.rcpt["busy@example.com"] = "451 4.2.0 Mailbox busy, try later"
    sink = vt.build_sink("email", server.options(to=["ops@example.com", "busy@example.com"]))
    event = vt.make_event()
    ((_, error),) = (await vt.deliver(sink, [event])).pending
    assert "busy@example.com: 451 4.2.0 Mailbox busy" in error and "retried for those" in error
    del server.handler.rcpt["busy@example.com"]
    assert (await vt.deliver(sink, [event])).delivered == [event]
    assert [m.recipients for m in server.handler.received()] == [
        ["ops@example.com"],
        ["busy@example.com"],
    ]


async def test_the_sink_keeps_the_contract(server: Server) -> None:
    await vt.check_sink(vt.build_sink("email", server.options()))
    await vt.check_sink(vt.build_sink("email", server.options(digest="1s")))
    # A refusing server, too: only SinkErrors escape.
    server.handler.data = "554 no"
    await vt.check_sink(vt.build_sink("email", server.options()))
    assert len(server.handler.received()) == 5  # two mails; two digests of one, one of both


# --------------------------------------------------------------------------------------------
# Digests


def digest_events(mail: Mail) -> list[str]:
    return [
        line.removeprefix("Event id: ")
        for line in mail.text().splitlines()
        if line.startswith("Event id: ")
    ]


async def test_digest_collects_a_window_into_one_mail(server: Server) -> None:
    sink = vt.build_sink("email", server.options(digest="1s"))
    assert isinstance(sink, EmailSink)
    assert sink.takes_batches and sink.batch_window == 1.0 and sink.max_batch == 500
    per_event = vt.build_sink("email", server.options())
    assert not per_event.takes_batches and per_event.batch_window == 0.0

    events = [*vt.volt_examples(), vt.make_event(text="<i>hi</i>"), vt.make_event()]
    started = time.monotonic()
    report = await vt.deliver(sink, events)
    assert len(report.delivered) == 4
    assert time.monotonic() - started >= 0.9  # the window
    (mail,) = server.handler.received()
    msg = mail.message
    assert msg["Subject"].startswith("SMS digest: 4 events (2 received, 1 delivered, 1 failed)")
    assert msg["Message-ID"] == digest_message_id("test", events, "voltd@example.com")
    assert msg["Message-ID"] == digest_message_id("test", events[::-1], "voltd@example.com")
    text = mail.text()
    assert "By status:\n  received: 2\n  delivered: 1\n  failed: 1" in text
    assert "Blocked as spam - temporary (provider 40002, Volt 702): 1" in text
    assert "front-desk (+15555550123): 2" in text and "sales (+15555550145): 2" in text
    assert "1 of 4" in text and "4 of 4" in text
    assert sorted(digest_events(mail)) == sorted(e.id for e in events)
    assert "&lt;i&gt;hi&lt;/i&gt;" in mail.html() and "4 of 4" in mail.html()
    shown = build_digest(events, server.options(), numbers=NAMES)
    assert shown.get_body(("plain",)).get_content() == text  # type: ignore[union-attr]


async def test_digest_recipient_refused_dead_letters_each_event_once(server: Server) -> None:
    server.handler.rcpt["bad@example.com"] = "550 5.1.1 No such user"
    sink = vt.build_sink(
        "email", server.options(digest="200ms", to=["ops@example.com", "bad@example.com"])
    )
    events = [vt.make_event(), vt.make_event()]
    report = await vt.deliver(sink, events)
    assert len(report.dead) == 2 and all("bad@example.com: 550" in e for _, e in report.dead)
    # ops got the digest once; voltd's one-by-one retry mailed only bad@ (refused again).
    (mail,) = server.handler.received()
    assert mail.recipients == ["ops@example.com"] and len(digest_events(mail)) == 2


@pytest.mark.slow
def test_digest_survives_kill_9_and_sends_one_mail_per_window(
    server: Server, tmp_path: Path
) -> None:
    daemon = Daemon(tmp_path)
    daemon.configure(
        body=f"""\
[[routes]]
name = "all"
sinks = ["mail"]

[sinks.mail]
type = "email"
host = "127.0.0.1"
port = {server.port}
tls = "none"
from = "voltd@example.com"
to = ["ops@example.com"]
digest = "3s"
"""
    )
    try:
        daemon.start()
        bodies = [
            make_event(text=f"first window {i}", status="failed" if i < 2 else "received")
            for i in range(5)
        ]
        first_post = time.monotonic()
        for body in bodies:
            assert daemon.post(body).status_code == 200
        assert time.monotonic() - first_post < 2.5, "posting took longer than the window"
        assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL  # within the window
        assert server.handler.received() == []

        daemon.start()
        daemon.wait_for(lambda: len(server.handler.received()) >= 1, timeout=20)
        time.sleep(1.5)  # nothing more comes
        (mail,) = server.handler.received()
        ids = sorted(json.loads(b)["id"] for b in bodies)
        assert sorted(digest_events(mail)) == ids
        text = mail.text()
        assert text.startswith("SMS digest: 5 events")
        assert "received: 3" in text and "failed: 2" in text

        more = [make_event(text=f"second window {i}") for i in range(3)]
        for body in more:
            assert daemon.post(body).status_code == 200
        daemon.wait_for(lambda: len(server.handler.received()) >= 2, timeout=20)
        first, second = server.handler.received()
        assert sorted(digest_events(second)) == sorted(json.loads(b)["id"] for b in more)
        assert second.message["Message-ID"] != first.message["Message-ID"]
        assert daemon.stop() == 0
    finally:
        daemon.close()


# --------------------------------------------------------------------------------------------
# The plugin's surface


def test_registered_through_the_entry_point() -> None:
    sink = vt.build_sink(
        "email", {"host": "smtp.example.com", "from": "a@example.com", "to": ["b@example.com"]}
    )
    assert type(sink) is EmailSink and isinstance(sink, voltd.Sink)
    assert sink.options.smtp_port == 587 and sink.options.tls == "starttls"
    assert sink.options.timeout == 30.0 and sink.options.digest == 0.0


def test_public_functions_work_without_a_sink() -> None:
    event = vt.volt_examples()[1]
    msg = build_message(event)  # example addresses
    assert msg["To"] == "you@localhost"
    assert "Message failed to deliver" in msg["Subject"]
    threaded = build_message(event, in_reply_to="<a@x>", references=["<a@x>"])
    assert threaded["In-Reply-To"] == "<a@x>" and threaded["References"] == "<a@x>"
    with pytest.raises(ValueError, match="at least one event"):
        build_digest([])
