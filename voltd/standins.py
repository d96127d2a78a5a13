"""Stand-ins on loopback for Slack and for an SMTP server, so that `voltd demo` shows the
`slack` and `email` sinks delivering with nothing to set up.

Each runs in a thread of its own (they are the other side of the wire, not part of the
daemon) and keeps what it received. The SMTP one needs aiosmtpd, which is not a runtime
dependency of voltd (`uv run` installs it with the development group); without it the demo
says so and goes on without the e-mail sink.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class SlackStandIn:
    """Answers `ok` to every POST, as a Slack incoming webhook does, and keeps the JSON."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """A webhook URL shaped like Slack's (its path is the secret part)."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/services/T0DEMO/B0DEMO/not-a-real-token"

    def start(self) -> SlackStandIn:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                try:
                    stand_in.messages.append(json.loads(body))
                    status, answer = 200, b"ok"
                except ValueError:
                    status, answer = 400, b"invalid_payload"
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the demo prints what arrived itself

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class SmtpUnavailable(RuntimeError):
    """The SMTP stand-in cannot run here (aiosmtpd is not installed)."""


def _free_port() -> int:
    # aiosmtpd's controller cannot bind port 0 and report the port: pick one first.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class SmtpStandIn:
    """An SMTP server on loopback that accepts every mail and keeps it (plain SMTP: the
    demo's sink says `tls = "none"`, which voltd allows without a password on loopback)."""

    mails: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    _controller: Any = None

    def start(self) -> SmtpStandIn:
        try:
            from aiosmtpd.controller import Controller
        except ImportError as exc:
            raise SmtpUnavailable(
                "the SMTP stand-in needs aiosmtpd, which is not installed "
                "(`uv run` installs it with the development dependencies; "
                "or `pip install aiosmtpd`)"
            ) from exc
        stand_in = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                stand_in.mails.append(
                    (envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
                )
                return "250 OK"

        # aiosmtpd logs every SMTP command at INFO; the demo shows what arrived itself.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        self.port = _free_port()
        self._controller = Controller(Handler(), hostname=self.host, port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
