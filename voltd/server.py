"""The daemon: HTTPS ingest, admin listener, spool writer and delivery tasks in one nursery.

Per request, the order is fixed by what may be trusted when: size limit, signature over the
raw bytes, then parse, replay window, route, durable spool commit — and only then `200`.

Shutdown (SIGTERM/SIGINT): stop accepting, let in-flight requests finish (their events are
committed or answered 503), give in-flight deliveries a grace period, then stop the writer.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio import worker_context as _hypercorn_worker_context
from quart import Response, request
from quart_trio import QuartTrio

from voltd import events as events_mod
from voltd import systemd
from voltd.config import Config
from voltd.delivery import Deliveries, DeliveryOptions, RetryPolicy, SinkWorker
from voltd.routing import Router
from voltd.sink import Sink
from voltd.spool import Spool, SpoolError
from voltd.verify import Verifier, too_old

log = logging.getLogger("voltd.server")

JSON = "application/json"
PURGE_EVERY = 600.0


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


@dataclass
class Ingest:
    """Everything the webhook handler needs, passed explicitly."""

    verifier: Verifier
    header: str
    max_age: float
    router: Router
    spool: Spool
    answer_probes: bool
    counters: Counter[str] = field(default_factory=Counter)
    throttle: _Throttle = field(default_factory=_Throttle)

    def _reject(self, status: int, reason: str, detail: str) -> Response:
        self.counters[f"rejected_{reason}"] += 1
        if self.throttle.allow(reason):
            log.info("%d %s from %s: %s", status, reason, request.remote_addr, detail)
        body = json.dumps({"ok": False, "error": detail}).encode()
        return Response(body, status=status, content_type=JSON)

    def _probe(self, kind: str | None, signed: bool) -> Response:
        self.counters["probes"] += 1
        if self.throttle.allow("probe"):  # unsigned, so anyone can send them: never a flood
            log.info(
                "%s probe (type %r) from %s answered 200, not stored",
                "signed" if signed else "unsigned",
                kind,
                request.remote_addr,
            )
        return Response(b'{"ok": true, "probe": true}', status=200, content_type=JSON)

    async def handle(self) -> Response:
        self.spool.incoming += 1
        try:
            return await self._handle()
        finally:
            self.spool.incoming -= 1

    async def _handle(self) -> Response:
        body = await request.get_data(cache=False)  # 413 above max_body_bytes
        signature = request.headers.get(self.header)
        if signature is None:
            if self.answer_probes:
                try:
                    parsed = events_mod.parse(body)
                except events_mod.EnvelopeError:
                    parsed = events_mod.Probe(None)
                if isinstance(parsed, events_mod.Probe):
                    return self._probe(parsed.type, signed=False)
            return self._reject(401, "unsigned", f"missing {self.header} header")
        if not self.verifier.verify(body, signature):
            return self._reject(401, "signature", "signature does not verify")
        try:
            parsed = events_mod.parse(body)
        except events_mod.EnvelopeError as exc:
            return self._reject(400, "malformed", str(exc))
        if isinstance(parsed, events_mod.Probe):
            return self._probe(parsed.type, signed=True)
        event = parsed
        if too_old(event.time, self.max_age, time.time()):
            return self._reject(401, "too_old", "envelope time is outside the accepted window")
        sinks = self.router.route(event)
        try:
            stored = await self.spool.store(event, sinks)
        except SpoolError as exc:
            self.counters["spool_errors"] += 1
            body = json.dumps({"ok": False, "error": f"cannot store: {exc}"}).encode()
            return Response(body, status=503, content_type=JSON)
        if stored.duplicate:
            self.counters["duplicates"] += 1
            log.debug("duplicate %s, not routed again", event.id)
            out = {"ok": True, "id": event.id, "duplicate": True}
        else:
            self.counters["accepted"] += 1
            if not sinks and self.throttle.allow("unrouted"):
                log.info("event %s matched no route and there is no [defaults] unmatched", event.id)
            out = {"ok": True, "id": event.id}
        return Response(json.dumps(out).encode(), status=200, content_type=JSON)


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


def make_admin_app(spool: Spool, ingest: Ingest, serving: Callable[[], bool]) -> QuartTrio:
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
        body = {"ok": not problems, "problems": problems, "counters": dict(ingest.counters)}
        return Response(
            json.dumps(body).encode(), status=503 if problems else 200, content_type=JSON
        )

    app.add_url_rule("/healthz", "healthz", healthz, methods=["GET"])
    return app


#: A peer that leaves our data unacknowledged this long (it stopped reading) is dropped: the
#: kernel aborts the connection, which ends hypercorn's otherwise unbounded write to it.
SEND_TIMEOUT = 10.0


def _keep_alive_timer_survives_cancellation() -> None:
    """hypercorn 0.17/0.18's trio worker re-arms a connection's keep-alive timer from the
    request's task, which quart-trio has cancelled by then: the timer never runs again, so an
    idle keep-alive connection stays open for good and holds up shutdown. Re-arming under a
    shield makes `keep_alive_timeout` apply after every request (tests/test_abuse.py)."""
    single_task = _hypercorn_worker_context.TrioSingleTask
    restart = single_task.restart
    if getattr(restart, "_voltd_shielded", False):
        return

    async def shielded(self: Any, task_group: Any, action: Callable[..., Any]) -> None:
        with trio.CancelScope(shield=True):
            await restart(self, task_group, action)

    shielded._voltd_shielded = True  # type: ignore[attr-defined]
    single_task.restart = shielded  # type: ignore[method-assign]


_keep_alive_timer_survives_cancellation()


class _OncePer:
    """A logging filter: at most one record per `seconds`. trio logs an accept failure (too
    many open files) with a traceback every 0.1 s per listener; one line now and then says it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last = -seconds
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self.last < self.seconds:
            self.dropped += 1
            return False
        if self.dropped:
            record.msg = f"{record.msg} ({self.dropped} more like it not logged)"
            self.dropped = 0
        self.last = now
        return True


logging.getLogger("trio.serve_listeners").addFilter(_OncePer(10.0))


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


def _hypercorn_config(
    binds: list[str], certfile: Any = None, keyfile: Any = None
) -> _HypercornConfig:
    hc = _HypercornConfig()
    hc.bind = binds
    if certfile is not None:
        hc.certfile = str(certfile)
        hc.keyfile = str(keyfile)
    hc.accesslog = None
    hc.errorlog = logging.getLogger("voltd.http")
    hc.include_server_header = False
    # What ends a slow or idle connection (tests/test_abuse.py): the TLS handshake within
    # 10 s; a connection without a request for `keep_alive_timeout` (5 s, also between
    # requests, see above); a body within quart's 60 s; a read within `read_timeout`; a
    # write within SEND_TIMEOUT. `graceful_timeout` is a hard limit on shutdown: our requests
    # only wait for a spool commit, and one cut off there got no 200, so Volt sends it again.
    hc.ssl_handshake_timeout = 10.0
    hc.graceful_timeout = 3.0
    hc.read_timeout = 120
    return hc


async def _announce_stopping(shutdown: trio.Event) -> None:
    await shutdown.wait()
    systemd.notify("STOPPING=1")


@dataclass
class Daemon:
    """A configured daemon; `run` serves until `shutdown` is set or a signal arrives."""

    config: Config
    sinks: Mapping[str, Sink]
    shutdown: trio.Event = field(default_factory=trio.Event)
    delivery: DeliveryOptions = field(default_factory=DeliveryOptions)
    delivery_grace: float = 10.0
    webhook_urls: list[str] = field(default_factory=list)
    admin_urls: list[str] = field(default_factory=list)
    ingest: Ingest | None = None
    deliveries: Deliveries | None = None
    _app: QuartTrio | None = None
    _tls: _HypercornConfig | None = None

    async def run(
        self, *, handle_signals: bool = True, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        cfg = self.config
        spool = Spool(cfg.spool.path)
        try:
            await self._run(spool, handle_signals, task_status)
        finally:
            spool.close()

    def _policy(self) -> RetryPolicy:
        r = self.config.retry
        return RetryPolicy(r.initial, r.max_delay, r.give_up_after)

    async def _run(self, spool: Spool, handle_signals: bool, task_status) -> None:
        cfg = self.config
        ingest = Ingest(
            verifier=Verifier(cfg.verify.keys, cfg.verify.algorithm, cfg.verify.encoding),
            header=cfg.verify.header,
            max_age=cfg.verify.max_age,
            router=Router.from_config(cfg),
            spool=spool,
            answer_probes=cfg.server.answer_probes,
        )
        self.ingest = ingest
        serving = False
        for sink, counts in (await spool.status()).items():
            if sink not in self.sinks and counts["pending"]:
                log.warning(
                    "the spool holds %d pending deliveries for sink %r, which is no longer "
                    "configured: they wait until it is configured again",
                    counts["pending"],
                    sink,
                )
        async with trio.open_nursery() as core:
            await core.start(spool.writer)
            if handle_signals:
                await core.start(self._signals)
            core.start_soon(self._purge_loop, spool)
            stop_delivery = trio.Event()
            self.deliveries = deliveries = Deliveries(self.delivery_grace)
            async with trio.open_nursery() as delivery:
                await delivery.start(deliveries.run, stop_delivery)
                policy = self._policy()
                for name, sink in self.sinks.items():
                    await deliveries.start(SinkWorker(name, sink, spool, policy, self.delivery))
                async with trio.open_nursery() as http:
                    http.start_soon(_announce_stopping, self.shutdown)
                    self._app = app = make_webhook_app(
                        ingest, cfg.server.path, cfg.server.max_body_bytes
                    )
                    self._tls = hc = _hypercorn_config(
                        [str(b) for b in cfg.server.bind], cfg.server.certfile, cfg.server.keyfile
                    )
                    trigger: Callable[[], Awaitable[Any]] = self.shutdown.wait
                    binds = await http.start(
                        partial(hypercorn_serve, app, hc, shutdown_trigger=trigger)
                    )
                    self.webhook_urls = [b + cfg.server.path for b in binds]
                    if cfg.admin.bind is not None:
                        admin = make_admin_app(spool, ingest, lambda: serving)
                        self.admin_urls = await http.start(
                            partial(
                                hypercorn_serve,
                                admin,
                                _hypercorn_config([str(cfg.admin.bind)]),
                                shutdown_trigger=trigger,
                            )
                        )
                    serving = True
                    # Everything loaded so far (libraries, phone metadata, config) lives as
                    # long as the process: move it out of the collector's way, so that full
                    # collections walk only what requests create (they set p99 otherwise).
                    gc.collect()
                    gc.freeze()
                    for url in self.webhook_urls:
                        log.info("serving webhooks on %s", url)
                    for url in self.admin_urls:
                        log.info("admin (healthz) on %s", url)
                    systemd.notify("READY=1")
                    task_status.started(self)
                serving = False
                log.info("listeners closed; letting in-flight deliveries finish")
                stop_delivery.set()
            core.cancel_scope.cancel()
        log.info("stopped")

    async def _signals(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                    continue
                log.info("%s: shutting down", signal.Signals(signum).name)
                self.shutdown.set()
                return

    async def _purge_loop(self, spool: Spool) -> None:
        while True:
            try:
                n = await spool.purge(time.time() - self.config.spool.retention)
                if n:
                    log.info("purged %d delivered events older than the retention", n)
            except SpoolError as exc:
                log.error("%s", exc)
            await trio.sleep(PURGE_EVERY)

    async def reload(self) -> bool:
        """SIGHUP: apply the configuration file again without dropping a request.

        A configuration with any problem is refused as a whole and the running one stays.
        Routes, numbers, verification, limits, retry, sinks and the TLS certificate change
        in place; listeners and the spool file need a restart, which is said in the log.
        """
        from voltd.config import ConfigError
        from voltd.plugins import configure

        old = self.config
        try:
            new, _, built = await trio.to_thread.run_sync(configure, old.source)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays:\n%s", exc)
            return False
        for key, was, now in (
            ("server.bind", old.server.bind, new.server.bind),
            ("server.path", old.server.path, new.server.path),
            ("admin.bind", old.admin.bind, new.admin.bind),
            ("spool.path", old.spool.path, new.spool.path),
        ):
            if was != now:
                log.warning("reload: a change of %s takes a restart; still using the old one", key)
        assert self.ingest is not None and self.deliveries is not None
        ingest, deliveries = self.ingest, self.deliveries
        # Plain attribute swaps: a request reads them without awaiting in between, so it
        # sees either the old configuration or the new one, never a mix.
        ingest.verifier = Verifier(new.verify.keys, new.verify.algorithm, new.verify.encoding)
        ingest.header = new.verify.header
        ingest.max_age = new.verify.max_age
        ingest.answer_probes = new.server.answer_probes
        ingest.router = Router.from_config(new)
        if self._app is not None:
            self._app.config["MAX_CONTENT_LENGTH"] = new.server.max_body_bytes
        tls = self._tls.ssl_context if self._tls is not None else None
        if tls is not None and new.server.certfile is not None:
            try:
                tls.load_cert_chain(new.server.certfile, new.server.keyfile)
            except (OSError, ssl.SSLError) as exc:
                log.error(
                    "reload: the TLS certificate could not be loaded (%s); keeping the old", exc
                )
        self.config = new
        policy = self._policy()
        changed = [n for n in deliveries.workers if new.sinks.get(n) != old.sinks.get(n)]
        async with trio.open_nursery() as stopping:
            for name in changed:
                stopping.start_soon(deliveries.stop, name)
        sinks: dict[str, Sink] = {}
        for name, sink in built.items():
            running = deliveries.workers.get(name)
            if running is not None:  # unchanged: keep the running one, drop the new copy
                running.policy = policy
                sinks[name] = running.sink
                close = getattr(sink, "aclose", None)
                if close is not None:
                    await close()
            else:
                await deliveries.start(SinkWorker(name, sink, ingest.spool, policy, self.delivery))
                sinks[name] = sink
        self.sinks = sinks
        log.info(
            "configuration reloaded: %d routes, %d sinks (%s)",
            len(new.routes),
            len(sinks),
            ", ".join(f"{n} restarted" for n in changed) or "no sink restarted",
        )
        return True
