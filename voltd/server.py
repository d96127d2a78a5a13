"""The HTTP stage: the webhook handler, the admin app and the listeners' hypercorn settings.

Per request, the order is fixed by what may be trusted when: size limit, signature over the
raw bytes, then parse, replay window, route, durable spool commit — and only then `200`.
The daemon (voltd.daemon) wires this to the spool and the delivery workers.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from voltd import events as events_mod
from voltd.config import Config
from voltd.metrics import Inc, Metrics, RequestMetrics
from voltd.routing import Router
from voltd.spool import SpoolError, SpoolLike
from voltd.verify import Verifier, too_old

log = logging.getLogger("voltd.server")

JSON = "application/json"


class _Throttle:
    """At most `per_second` log lines per reason: a flood of bad requests must not flood logs."""

    def __init__(self, per_second: int = 5) -> None:
        self.per_second = per_second
        self.window: dict[str, tuple[int, int]] = {}

    def allow(self, reason: str) -> bool:
        now = int(time.monotonic())
        second, n = self.window.get(reason, (now, 0))
        if second != now:
            second, n = now, 0
        self.window[reason] = (second, n + 1)
        return n < self.per_second


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """What the configuration decides about ingest, swapped as one object on reload: a
    request reads it once, so it sees the old configuration or the new one, never a mix."""

    verifier: Verifier
    header: str
    max_age: float
    router: Router
    answer_probes: bool

    @classmethod
    def from_config(cls, config: Config) -> IngestSettings:
        v = config.verify
        return cls(
            verifier=Verifier(v.keys, v.algorithm, v.encoding),
            header=v.header,
            max_age=v.max_age,
            router=Router.from_config(config),
            answer_probes=config.server.answer_probes,
        )


@dataclass
class Ingest:
    """Everything the webhook handler needs, passed explicitly."""

    settings: IngestSettings
    spool: SpoolLike
    counters: Counter[str] = field(default_factory=Counter)
    throttle: _Throttle = field(default_factory=_Throttle)
    metrics: RequestMetrics = field(default_factory=RequestMetrics.nothing)

    def _reject(self, status: int, reason: str, detail: str) -> tuple[Response, Inc]:
        self.counters[f"rejected_{reason}"] += 1
        if self.throttle.allow(reason):
            log.info("%d %s from %s: %s", status, reason, request.remote_addr, detail)
        body = json.dumps({"ok": False, "error": detail}).encode()
        return Response(body, status=status, content_type=JSON), self.metrics.status(status)

    def _probe(self, kind: str | None, signed: bool) -> tuple[Response, Inc]:
        self.counters["probes"] += 1
        if self.throttle.allow("probe"):  # unsigned, so anyone can send them: never a flood
            log.info(
                "%s probe (type %r) from %s answered 200, not stored",
                "signed" if signed else "unsigned",
                kind,
                request.remote_addr,
            )
        answer = Response(b'{"ok": true, "probe": true}', status=200, content_type=JSON)
        return answer, self.metrics.probe

    async def handle(self) -> Response:
        self.spool.incoming += 1
        m = self.metrics
        started = time.perf_counter()
        outcome: Inc | None = None  # a request cut off (cancelled) is not counted
        try:
            response, outcome = await self._handle()
            return response
        except HTTPException as exc:  # from reading the body: 413, 408
            outcome = m.status(exc.code)
            raise
        except Exception:
            outcome = m.status(500)
            raise
        finally:
            self.spool.incoming -= 1
            if outcome is not None:
                outcome.inc()
                m.duration.observe(time.perf_counter() - started)

    async def _handle(self) -> tuple[Response, Inc]:
        """The answer, and the counter of its outcome."""
        body = await request.get_data(
            cache=False, as_text=False, parse_form_data=False
        )  # 413 above max_body_bytes
        settings = self.settings  # one configuration for the whole request
        signature = request.headers.get(settings.header)
        if signature is None:
            if settings.answer_probes:
                try:
                    parsed = events_mod.parse(body)
                except events_mod.EnvelopeError:
                    parsed = events_mod.Probe(None)
                if isinstance(parsed, events_mod.Probe):
                    return self._probe(parsed.type, signed=False)
            return self._reject(401, "unsigned", f"missing {settings.header} header")
        if not settings.verifier.verify(body, signature):
            return self._reject(401, "signature", "signature does not verify")
        try:
            parsed = events_mod.parse(body, signature)
        except events_mod.EnvelopeError as exc:
            return self._reject(400, "malformed", str(exc))
        if isinstance(parsed, events_mod.Probe):
            return self._probe(parsed.type, signed=True)
        event = parsed
        if too_old(event.time, settings.max_age, time.time()):
            return self._reject(401, "too_old", "envelope time is outside the accepted window")
        sinks = settings.router.route(event)
        try:
            stored = await self.spool.store(event, sinks)
        except SpoolError as exc:
            self.counters["spool_errors"] += 1
            body = json.dumps({"ok": False, "error": f"cannot store: {exc}"}).encode()
            return Response(body, status=503, content_type=JSON), self.metrics.status(503)
        if stored.duplicate:
            self.counters["duplicates"] += 1
            log.debug("duplicate %s, not routed again", event.id)
            out: dict[str, Any] = {"ok": True, "id": event.id, "duplicate": True}
            outcome = self.metrics.duplicate
        else:
            self.counters["accepted"] += 1
            if not sinks and self.throttle.allow("unrouted"):
                log.info("event %s matched no route and there is no [defaults] unmatched", event.id)
            out = {"ok": True, "id": event.id}
            outcome = self.metrics.accepted
        return Response(json.dumps(out).encode(), status=200, content_type=JSON), outcome


def make_webhook_app(ingest: Ingest, path: str, max_body_bytes: int) -> QuartTrio:
    app = QuartTrio("voltd")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.add_url_rule(path, "webhook", ingest.handle, methods=["POST"])

    async def too_large(_: Exception) -> Response:
        # The body is left unread, so the connection cannot be reused: say so, or a
        # keep-alive client sends its next request into a connection we are closing.
        ingest.counters["rejected_too_large"] += 1
        limit = app.config["MAX_CONTENT_LENGTH"]
        body = json.dumps({"ok": False, "error": f"body larger than {limit} bytes"}).encode()
        return Response(body, status=413, content_type=JSON, headers={"Connection": "close"})

    app.register_error_handler(413, too_large)
    return app


def make_admin_app(
    spool: SpoolLike,
    ingest: Ingest,
    serving: Callable[[], bool],
    sinks: Callable[[], dict[str, Any]] = dict,
    metrics: Metrics | None = None,
) -> QuartTrio:
    app = QuartTrio("voltd-admin")

    async def healthz() -> Response:
        problems = []
        if not serving():
            problems.append("not serving")
        try:
            with trio.fail_after(5):
                await spool.check_writable()
        except (SpoolError, trio.TooSlowError) as exc:
            problems.append(f"spool: {exc or 'commit took longer than 5s'}")
        # A paused or disabled sink is reported, not a failed check: ingest still works, and a
        # load balancer must keep sending Volt's requests here.
        body = {
            "ok": not problems,
            "problems": problems,
            "counters": dict(ingest.counters),
            "sinks": sinks(),
        }
        return Response(
            json.dumps(body).encode(), status=503 if problems else 200, content_type=JSON
        )

    app.add_url_rule("/healthz", "healthz", healthz, methods=["GET"])

    if metrics is not None:
        exposition = metrics.exposition

        async def scrape() -> Response:
            # The spool's counts are read on a thread first; the rendering itself is quick.
            body, content_type = await exposition(request.headers.get("Accept"))
            return Response(body, status=200, content_type=content_type)

        app.add_url_rule("/metrics", "metrics", scrape, methods=["GET"])
    return app


#: A peer that leaves our data unacknowledged this long (it stopped reading) is dropped: the
#: kernel aborts the connection, which ends hypercorn's otherwise unbounded write to it.
SEND_TIMEOUT = 10.0


class _HypercornConfig(HypercornConfig):
    """Keeps the SSL context hypercorn makes, so that SIGHUP can load a renewed certificate
    into it: new connections get the new certificate, open ones carry on."""

    ssl_context: ssl.SSLContext | None = None

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        if not hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux only
            return sockets
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            if sock.family in (socket.AF_INET, socket.AF_INET6):  # accepted ones inherit it
                sock.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(SEND_TIMEOUT * 1000)
                )
        return sockets

    def create_ssl_context(self) -> ssl.SSLContext | None:
        self.ssl_context = super().create_ssl_context()
        return self.ssl_context


def hypercorn_config(
    binds: list[str], certfile: Any = None, keyfile: Any = None
) -> _HypercornConfig:
    hc = _HypercornConfig()
    hc.bind = binds
    if certfile is not None:
        hc.certfile = str(certfile)
        hc.keyfile = str(keyfile)
    hc.accesslog = None
    hc.errorlog = logging.getLogger("voltd.listener")
    hc.include_server_header = False
    # What ends a slow or idle connection (tests/test_abuse.py): the TLS handshake within
    # 10 s; a connection without a request for `keep_alive_timeout` (5 s, also between
    # requests, see voltd.workarounds); a body within quart's 60 s; a read within `read_timeout`; a
    # write within SEND_TIMEOUT. `graceful_timeout` is a hard limit on shutdown: our requests
    # only wait for a spool commit, and one cut off there got no 200, so Volt sends it again.
    hc.ssl_handshake_timeout = 10.0
    hc.graceful_timeout = 3.0
    hc.read_timeout = 120
    return hc
