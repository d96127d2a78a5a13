"""The composition root: configuration → plugins → sinks → the running stages.

`configure` turns a config file into a `Plan` (the validated config, the plugins it can use,
its sinks built); `Daemon.run` opens the spool and runs, in one nursery, the HTTPS ingest, the
admin listener, the spool writer, the purge loop and one delivery worker per sink. Start-up and
SIGHUP reload both go through `configure` and `Daemon._apply`: there is one way in.

Shutdown (SIGTERM/SIGINT): stop accepting, let in-flight requests finish (their events are
committed or answered 503), give in-flight deliveries a grace period, then stop the writer.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import CollectorRegistry
from quart_trio import QuartTrio

from voltd import __version__, systemd, workarounds
from voltd.config import Config, load
from voltd.config.values import Rate
from voltd.delivery import Deliveries, DeliveryOptions, RetryPolicy, SinkWorker
from voltd.metrics import Metrics
from voltd.plugins import Registry, build_sinks, close_sink, discover, number_names
from voltd.server import (
    Ingest,
    IngestSettings,
    _HypercornConfig,
    hypercorn_config,
    make_admin_app,
    make_webhook_app,
)
from voltd.sink import Sink
from voltd.spool import Spool, SpoolError, SpoolLike
from voltd.stall import StallWatch

log = logging.getLogger("voltd.daemon")

PURGE_EVERY = 600.0
#: How often `STATUS=` (what `systemctl status` shows) is brought up to date, in seconds.
STATUS_EVERY = 5.0


@dataclass(frozen=True)
class Plan:
    """A configuration made ready to run: what start-up and every reload apply."""

    config: Config
    registry: Registry
    sinks: dict[str, Sink]


def configure(path: str | Path, *, write_key_cache: bool = False) -> Plan:
    """The configuration file, the plugins it can use and its sinks built: where `serve`,
    `check`, a SIGHUP reload and the demo all start. Raises ConfigError with every problem.

    `[verify] public_key_url` is fetched here (voltd.keyfetch, synchronous, 10 s at most);
    `write_key_cache` stores the result in the state directory: serve and reload set it,
    `check` must not."""
    from voltd.keyfetch import add_url_keys

    config = add_url_keys(load(path), write_cache=write_key_cache)
    registry = discover(config.plugin_dirs)
    return Plan(config, registry, build_sinks(config, registry))


def retry_policy(config: Config, sink: str | None = None) -> RetryPolicy:
    """`[retry]`, or for `sink`, with the keys of its own `retry` table over it."""
    r = config.retry
    own = config.sinks[sink].delivery.retry if sink is not None else None
    if own is not None:
        r = own.over(r)
    return RetryPolicy(r.initial, r.max_delay, r.give_up_after)


def sink_rate(config: Config, name: str, sink: Sink) -> float | None:
    """Calls per second for `sink`: its `rate`, else its type's `default_rate`, else none."""
    rate = config.sinks[name].delivery.rate
    if rate is None and sink.default_rate:
        rate = Rate.parse(sink.default_rate)
    return rate.per_second if rate is not None else None


#: Settings that only a restart changes (the listeners and the spool).
_RESTART_ONLY = (
    ("server.bind", lambda c: c.server.bind),
    ("server.path", lambda c: c.server.path),
    ("admin.bind", lambda c: c.admin.bind),
    ("spool.path", lambda c: c.spool.path),
    ("spool.url", lambda c: c.spool.url),
    ("spool.password", lambda c: c.spool.password),
)


def open_spool(config: Config, *, migrate: bool = False) -> SpoolLike:
    """The spool `[spool]` names: the SQLite file (created and migrated as it opens), or the
    PostgreSQL database, which `migrate` (`voltd serve --migrate`) first creates or brings
    up to date; without it a database that is not migrated is refused (SpoolError)."""
    conninfo = config.spool.conninfo
    if conninfo is None:
        return Spool(config.spool.path)
    from voltd.spool_pg import PgSpool
    from voltd.spool_pg import migrate as migrate_pg

    if migrate:
        migrate_pg(conninfo)
    return PgSpool(conninfo)


#: glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8


def _fewer_malloc_arenas(arenas: int = 2) -> None:
    """Give glibc's malloc at most `arenas` arenas, unless MALLOC_ARENA_MAX says otherwise.

    Every thread that allocates gets an arena of its own by default (up to 8 per core), and
    the spool's worker threads (many with PostgreSQL's connection pool) each keep their
    freed memory: the PostgreSQL drain grew RSS by 43 MB instead of 25 (bench/, pg-drain),
    at the same speed with two arenas. Elsewhere (musl, macOS) this does nothing."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_ARENA_MAX, arenas)


@dataclass
class Daemon:
    """A configured daemon; `run` serves until `shutdown` is set or a signal arrives."""

    plan: Plan
    shutdown: trio.Event = field(default_factory=trio.Event)
    delivery: DeliveryOptions = field(default_factory=DeliveryOptions)
    delivery_grace: float = 10.0
    #: Create or upgrade a PostgreSQL spool's schema at start-up (`voltd serve --migrate`).
    migrate: bool = False
    webhook_urls: list[str] = field(default_factory=list)
    admin_urls: list[str] = field(default_factory=list)
    ingest: Ingest | None = None
    deliveries: Deliveries | None = None
    metrics: Metrics | None = None  # made by `run` in a registry of its own, unless given
    _app: QuartTrio | None = None
    _tls: _HypercornConfig | None = None
    _startup: systemd.StartupExtender = field(default_factory=systemd.StartupExtender)

    @property
    def config(self) -> Config:
        return self.plan.config

    @property
    def sinks(self) -> dict[str, Sink]:
        return self.plan.sinks

    async def run(
        self,
        *,
        handle_signals: bool = True,
        task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        workarounds.apply()
        _fewer_malloc_arenas()
        # Opening (and migrating) a large spool blocks: systemd is asked for more time while
        # it takes long, until READY=1.
        self._startup = systemd.StartupExtender().__enter__()
        try:
            spool = await trio.to_thread.run_sync(
                partial(open_spool, self.config, migrate=self.migrate)
            )
            try:
                await self._run(spool, handle_signals, task_status)
            finally:
                spool.close()
        finally:
            self._startup.__exit__(None, None, None)

    async def _run(
        self, spool: SpoolLike, handle_signals: bool, task_status: trio.TaskStatus[Daemon]
    ) -> None:
        cfg = self.config
        if self.metrics is None:
            self.metrics = Metrics(CollectorRegistry(), __version__)
        metrics = self.metrics
        self.ingest = ingest = Ingest(
            IngestSettings.from_config(cfg), spool, metrics=metrics.requests
        )
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
            interval = systemd.watchdog_interval()
            if interval is not None:
                # WATCHDOG=1 only while the loop turns and the spool takes a commit.
                core.start_soon(systemd.watchdog, interval, spool.flush)
            core.start_soon(StallWatch(self._stalled_sink).run)
            stop_delivery = trio.Event()
            self.deliveries = Deliveries(self.delivery_grace)
            async with trio.open_nursery() as delivery:
                await delivery.start(self.deliveries.run, stop_delivery)
                await self._apply(self.plan, first=True)
                metrics.configured(reload=False, ok=True)
                metrics.watch(spool.gauges, self._sink_status)
                async with trio.open_nursery() as http:
                    http.start_soon(_announce_stopping, self.shutdown)
                    self._app = app = make_webhook_app(
                        ingest, cfg.server.path, cfg.server.max_body_bytes
                    )
                    self._tls = hc = hypercorn_config(
                        [str(b) for b in cfg.server.bind], cfg.server.certfile, cfg.server.keyfile
                    )
                    trigger: Callable[[], Awaitable[Any]] = self.shutdown.wait
                    binds = await http.start(
                        partial(hypercorn_serve, app, hc, shutdown_trigger=trigger)
                    )
                    self.webhook_urls = [b + cfg.server.path for b in binds]
                    if cfg.admin.bind is not None:
                        admin = make_admin_app(
                            spool, ingest, lambda: serving, self._sink_status, metrics
                        )
                        self.admin_urls = await http.start(
                            partial(
                                hypercorn_serve,
                                admin,
                                hypercorn_config([str(cfg.admin.bind)]),
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
                        log.info("admin (healthz, metrics) on %s", url)
                    self._startup.__exit__(None, None, None)
                    systemd.notify(self._ready_message())
                    core.start_soon(self._status_loop, spool)
                    task_status.started(self)
                serving = False
                log.info("listeners closed; letting in-flight deliveries finish")
                stop_delivery.set()
            with trio.move_on_after(5):
                await spool.flush()  # outcomes queued by the workers, before the writer stops
            core.cancel_scope.cancel()
        log.info("stopped")

    def _ready_message(self) -> str:
        """READY=1 with a STATUS= that says where we listen (tests read it too)."""
        status = "serving webhooks on " + " ".join(self.webhook_urls)
        if self.admin_urls:
            status += "; admin on " + " ".join(self.admin_urls)
        return f"READY=1\nSTATUS={status}"

    async def _status_loop(self, spool: SpoolLike) -> None:
        """`STATUS=` for `systemctl status`: where it listens and what waits, when it changes."""
        said = None
        while True:
            await trio.sleep(STATUS_EVERY)
            try:
                counts = await spool.gauges()
            except SpoolError:
                continue
            pending = sum(n for n, _, _ in counts.values())
            dead = sum(d for _, d, _ in counts.values())
            disabled = sorted(n for n, w in self._sink_status().items() if w["state"] == "disabled")
            text = f"serving on {' '.join(self.webhook_urls)}; {pending} pending"
            if dead:
                text += f", {dead} dead letters"
            if disabled:
                text += f"; disabled: {', '.join(disabled)}"
            if text != said:
                systemd.status(text)
                said = text

    def _sink_status(self) -> dict[str, Any]:
        """Each sink's state for /healthz: ok, paused or disabled, and why."""
        workers = self.deliveries.workers if self.deliveries is not None else {}
        return {name: worker.status() for name, worker in workers.items()}

    def _stalled_sink(self, worker: object) -> str | None:
        return worker.name if isinstance(worker, SinkWorker) else None

    async def _signals(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED):
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                    continue
                log.info("%s: shutting down", signal.Signals(signum).name)
                self.shutdown.set()
                return

    async def _purge_loop(self, spool: SpoolLike) -> None:
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
        systemd.reloading()  # then READY=1 either way: what Type=notify-reload expects
        try:
            return await self._reload()
        finally:
            systemd.notify("READY=1\nSTATUS=" + self._ready_message().split("STATUS=", 1)[1])

    async def _reload(self) -> bool:
        from voltd.config import ConfigError

        try:
            plan = await trio.to_thread.run_sync(
                partial(configure, self.config.source, write_key_cache=True)
            )
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays:\n%s", exc)
            if self.metrics is not None:
                self.metrics.configured(reload=True, ok=False)
            return False
        for key, get in _RESTART_ONLY:
            if get(self.config) != get(plan.config):
                log.warning("reload: a change of %s takes a restart; still using the old one", key)
        changed = await self._apply(plan)
        if self.metrics is not None:
            self.metrics.configured(reload=True, ok=True)
        log.info(
            "configuration reloaded: %d routes, %d sinks (%s)",
            len(plan.config.routes),
            len(self.sinks),
            ", ".join(f"{n} restarted" for n in changed) or "no sink restarted",
        )
        return True

    async def _apply(self, plan: Plan, *, first: bool = False) -> list[str]:
        """Make `plan` the running one: ingest settings swapped as one object, the TLS
        certificate reloaded, changed sinks restarted, unchanged ones kept (and enabled again
        if their endpoint had disabled them). Returns the sinks restarted."""
        assert self.ingest is not None and self.deliveries is not None
        old, new = self.plan.config, plan.config
        spool, deliveries = self.ingest.spool, self.deliveries
        self.ingest.settings = IngestSettings.from_config(new)
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
        changed = [n for n in deliveries.workers if new.sinks.get(n) != old.sinks.get(n)]
        async with trio.open_nursery() as stopping:
            for name in changed:
                stopping.start_soon(deliveries.stop, name)
        names = number_names(new)
        sinks: dict[str, Sink] = {}
        for name, sink in plan.sinks.items():
            policy = retry_policy(new, name)
            running = None if first else deliveries.workers.get(name)
            if running is not None:  # unchanged: keep the running one, drop the new copy
                running.policy, running.names = policy, names
                running.enable()
                sinks[name] = running.sink
                await close_sink(name, sink)
                continue
            sink.context.state._attach(spool)
            info = plan.registry.sink_types.get(new.sinks[name].type)
            origin = str(info.origin) if info is not None else ""
            worker = SinkWorker(
                name,
                sink,
                spool,
                policy,
                self.delivery,
                names=names,
                origin=origin,
                concurrency=new.sinks[name].delivery.concurrency,
                rate=sink_rate(new, name, sink),
                metrics=self.metrics.sink(name) if self.metrics is not None else None,
            )
            await deliveries.start(worker)
            sinks[name] = sink
        self.plan = Plan(new, plan.registry, sinks)
        return changed


async def _announce_stopping(shutdown: trio.Event) -> None:
    await shutdown.wait()
    systemd.notify("STOPPING=1")
