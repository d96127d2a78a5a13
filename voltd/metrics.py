"""What voltd measures and how it is exposed: the Prometheus metrics behind `GET /metrics` on
the admin listener.

Three kinds of numbers:

- counted where they happen, on the hot paths: webhook requests by outcome and how long they
  took (voltd.server), delivery outcomes, sink call durations and receive-to-delivered latency
  per sink (voltd.delivery), configuration reloads (voltd.daemon). Those paths only touch
  label children bound once (`RequestMetrics`, `SinkMetrics`): a counter increment is about
  0.4 µs, a histogram observation about 0.8 µs, and no labels are looked up per request;
- read at scrape time (`SinkGauges`): per sink, what the spool holds (pending, dead letters,
  the oldest pending event's age) and what its worker is doing (state, in flight). The spool
  is queried on a thread of its own (`Spool.gauges`), before the exposition is rendered, and
  at most once a second however often it is scraped;
- the process (CPU, memory, file descriptors), the interpreter's garbage collector, and
  `voltd_build_info`.

Everything lives in a `CollectorRegistry` that the composition root makes (voltd.daemon), never
in prometheus_client's global one: importing this module registers nothing. Label values are
bounded: sink names from the configuration, fixed outcomes and states, never a number, an id
or an address.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics import disable_created_metrics
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from voltd.spool import SpoolError

log = logging.getLogger("voltd.metrics")

#: `voltd_requests_total{outcome}`: what the webhook handler answered. 200s are told apart
#: (a new event, a duplicate, a registration probe); everything else is its status code.
REQUEST_OUTCOMES = ("accepted", "duplicate", "probe", "400", "401", "408", "413", "500", "503")
#: Any other status an HTTP error inside the handler could carry (none is known to).
OTHER = "other"
#: `voltd_deliveries_total{sink,outcome}`: each delivery outcome recorded in the spool. `retry`
#: also counts the deliveries of a batch that were not tried because the sink failed first
#: (they wait for the same backoff), and a disabled sink's waiting ones.
DELIVERY_OUTCOMES = ("delivered", "retry", "dead")
SINK_STATES = ("ok", "paused", "disabled")
RELOAD_OUTCOMES = ("success", "failure")

#: Webhook requests: about 1-30 ms on a quiet or busy core, a group commit included.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: One sink call (`send` or `send_batch`): a local write to an HTTP round trip, up to the
#: attempt timeout (60 s).
ATTEMPT_BUCKETS = (*REQUEST_BUCKETS, 30.0, 60.0)
#: Received → delivered: ~0.1 s normally (delivery lingers 100 ms to batch), minutes to hours
#: while a sink is down and its events wait.
LATENCY_BUCKETS = (
    *(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    *(300.0, 900.0, 3600.0, 14400.0, 86400.0),
)

#: A scrape reuses spool counts younger than this: two Prometheus servers (or a flood of
#: requests to the admin port) cost one query a second at most.
SPOOL_QUERY_TTL = 1.0


class Inc(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Observe(Protocol):
    def observe(self, amount: float) -> None: ...


class _Nothing:
    """Stands in for a metric where nothing is measured (workers and ingest built outside the
    daemon: tests, tools, the benchmark's in-process parts)."""

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


_NOTHING = _Nothing()


@dataclass(frozen=True, slots=True)
class RequestMetrics:
    """The webhook handler's label children, bound once."""

    accepted: Inc
    duplicate: Inc
    probe: Inc
    statuses: Mapping[int, Inc]
    other: Inc
    duration: Observe

    def status(self, code: int | None) -> Inc:
        """The counter for an answer with this status code (not on the accepting path)."""
        return self.statuses.get(code or 500, self.other)

    @classmethod
    def nothing(cls) -> RequestMetrics:
        return cls(_NOTHING, _NOTHING, _NOTHING, {}, _NOTHING, _NOTHING)


@dataclass(frozen=True, slots=True)
class SinkMetrics:
    """One sink's label children, bound once (per sink, not per attempt)."""

    delivered: Inc
    retry: Inc
    dead: Inc
    attempt: Observe  # seconds per sink call
    latency: Observe  # seconds from the spool commit to the confirmed delivery

    @classmethod
    def nothing(cls) -> SinkMetrics:
        return cls(_NOTHING, _NOTHING, _NOTHING, _NOTHING, _NOTHING)


#: Per sink from the spool: pending deliveries, dead letters, when the oldest pending event
#: arrived (wall clock, None when nothing is pending).
SpoolCounts = Mapping[str, tuple[int, int, float | None]]


class SinkGauges:
    """A collector for what is read at scrape time: the spool's counts per sink (refreshed by
    `refresh`, awaited before rendering) and each worker's state and sends in flight."""

    def __init__(
        self,
        read: Callable[[], Awaitable[SpoolCounts]],
        workers: Callable[[], Mapping[str, Mapping[str, Any]]],
    ) -> None:
        self._read = read
        self._workers = workers
        self._counts: SpoolCounts | None = None
        self._read_at = -SPOOL_QUERY_TTL
        self._lock = trio.Lock()

    async def refresh(self) -> None:
        async with self._lock:  # scrapes at once share one query
            if trio.current_time() - self._read_at < SPOOL_QUERY_TTL:
                return
            try:
                self._counts = await self._read()
            except SpoolError as exc:
                log.error("/metrics: cannot read the spool's counts: %s", exc)
                self._counts = None  # left out rather than stale
            self._read_at = trio.current_time()

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        counts, workers = self._counts, self._workers()
        pending, dead, age, in_flight, state = self._families()
        now = time.time()
        if counts is not None:
            for sink in sorted({*counts, *workers}):
                n, d, oldest = counts.get(sink, (0, 0, None))
                pending.add_metric([sink], n)
                dead.add_metric([sink], d)
                age.add_metric([sink], max(0.0, now - oldest) if oldest is not None else 0.0)
        for sink, status in sorted(workers.items()):
            in_flight.add_metric([sink], status["in_flight"])
            for s in SINK_STATES:
                state.add_metric([sink, s], 1.0 if status["state"] == s else 0.0)
        yield from (pending, dead, age, in_flight, state)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        """pending, dead letters, oldest pending age, in flight, state: empty families."""
        by_sink = [
            ("voltd_sink_pending", "Deliveries waiting in the spool (due or retrying)."),
            (
                "voltd_sink_dead_letters",
                "Deliveries given up on (`voltd spool dead`, `voltd spool replay`).",
            ),
            (
                "voltd_sink_oldest_pending_age_seconds",
                "Age of the oldest event still pending for the sink (0 when none is).",
            ),
            ("voltd_sink_in_flight", "Deliveries handed to the sink, not answered yet."),
        ]
        state = GaugeMetricFamily(
            "voltd_sink_state",
            "1 for the sink's current state (ok; paused: failing, tried again after a pause; "
            "disabled: its endpoint is gone, until a reload), 0 for the others.",
            labels=["sink", "state"],
        )
        return (*(GaugeMetricFamily(n, h, labels=["sink"]) for n, h in by_sink), state)


class Metrics:
    """Every metric voltd exposes, in `registry` (made by the composition root)."""

    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.registry = r = registry
        # No `*_created` series beside each counter and histogram: they would double the
        # series Prometheus stores, for a start time that process_start_time_seconds gives.
        # (A process-wide switch of prometheus_client; voltd is the process.)
        disable_created_metrics()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Info("voltd_build", "voltd's release and the Python running it.", registry=r).info(
            {"version": version, "python": platform.python_version()}
        )
        requests = Counter(
            "voltd_requests",
            "Webhook requests by outcome: accepted, duplicate, probe (all 200) or the status.",
            ["outcome"],
            registry=r,
        )
        duration = Histogram(
            "voltd_request_duration_seconds",
            "Webhook requests, from the handler's start to its answer (spool commit included).",
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        for outcome in REQUEST_OUTCOMES:  # every outcome shows, 0 until it happens
            requests.labels(outcome)
        self.requests = RequestMetrics(
            accepted=requests.labels("accepted"),
            duplicate=requests.labels("duplicate"),
            probe=requests.labels("probe"),
            statuses={int(o): requests.labels(o) for o in REQUEST_OUTCOMES if o.isdigit()},
            other=requests.labels(OTHER),
            duration=duration,
        )
        self._deliveries = Counter(
            "voltd_deliveries",
            "Delivery outcomes recorded per sink: delivered, retry (waits for a later attempt) "
            "or dead (a dead letter).",
            ["sink", "outcome"],
            registry=r,
        )
        self._attempt = Histogram(
            "voltd_delivery_attempt_duration_seconds",
            "Duration of one sink call (`send`, or `send_batch` for a batch).",
            ["sink"],
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self._latency = Histogram(
            "voltd_delivery_latency_seconds",
            "From the event's spool commit (its 200) to its confirmed delivery, per sink.",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._sinks: dict[str, SinkMetrics] = {}
        reloads = Counter(
            "voltd_config_reloads",
            "Configuration reloads (SIGHUP): success, or failure (the running one stays).",
            ["outcome"],
            registry=r,
        )
        self._reloaded = {o: reloads.labels(o) for o in RELOAD_OUTCOMES}
        self._last_success = Gauge(
            "voltd_config_last_reload_success_timestamp_seconds",
            "When the running configuration was loaded (start-up or the last good reload).",
            registry=r,
        )
        self._last_ok = Gauge(
            "voltd_config_last_reload_successful",
            "1 if the last configuration load or reload succeeded, 0 if it was refused.",
            registry=r,
        )
        self.gauges: SinkGauges | None = None

    def sink(self, name: str) -> SinkMetrics:
        """The label children of sink `name`, made once (a restarted worker shares them)."""
        m = self._sinks.get(name)
        if m is None:
            d = self._deliveries
            m = self._sinks[name] = SinkMetrics(
                delivered=d.labels(name, "delivered"),
                retry=d.labels(name, "retry"),
                dead=d.labels(name, "dead"),
                attempt=self._attempt.labels(name),
                latency=self._latency.labels(name),
            )
        return m

    def configured(self, *, reload: bool, ok: bool) -> None:
        """A configuration was loaded at start-up, or a reload succeeded or was refused."""
        if reload:
            self._reloaded["success" if ok else "failure"].inc()
        self._last_ok.set(1 if ok else 0)
        if ok:
            self._last_success.set_to_current_time()

    def watch(
        self,
        read: Callable[[], Awaitable[SpoolCounts]],
        workers: Callable[[], Mapping[str, Mapping[str, Any]]],
    ) -> None:
        """Report the spool's counts (`read`) and the workers' status at every scrape (in
        place of what an earlier run of the daemon watched)."""
        if self.gauges is not None:
            self.registry.unregister(self.gauges)
        self.gauges = SinkGauges(read, workers)
        self.registry.register(self.gauges)

    async def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The body and content type of a scrape: OpenMetrics when `accept` asks for it,
        else Prometheus' text format."""
        if self.gauges is not None:
            await self.gauges.refresh()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
