"""Delivery: one task per sink pulls its due deliveries from the spool and hands them to the
sink, so a slow or dead sink never holds up another sink or ingest.

Every attempt ends in an Outcome committed to the spool: delivered, retry at a later time
(exponential backoff with jitter), or dead letter once `give_up_after` has passed since the
event arrived (or at once on a PermanentError). A delivery that was in flight when the
process died is simply still pending in the spool and is sent again: at-least-once.

A failing sink is paused as a whole (at least as long as its `Retry-After` asked); a sink
whose endpoint is gone (`EndpointGone`) is disabled until a reload, its events waiting.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from voltd.defaults import RETRY_GIVE_UP_AFTER, RETRY_INITIAL, RETRY_MAX_DELAY
from voltd.events import Event, with_names
from voltd.metrics import SinkMetrics
from voltd.plugins import close_sink
from voltd.sink import EndpointGone, PermanentError, RetryableError, Sink, SinkError
from voltd.spool import Due, Outcome, SinkChange, SpoolError, SpoolLike, State

log = logging.getLogger("voltd.delivery")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial: float = RETRY_INITIAL
    max_delay: float = RETRY_MAX_DELAY
    give_up_after: float = RETRY_GIVE_UP_AFTER

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Delay before attempt `attempts + 1`: doubling from `initial`, capped, with jitter.

        "Equal jitter" (half fixed, half random) keeps retries of one outage from arriving in
        lockstep while never retrying much sooner than the schedule says.
        """
        exp = min(attempts - 1, 60)
        base = min(self.max_delay, self.initial * math.pow(2, exp))
        r = (rng or random).random()
        return base / 2 + base / 2 * r


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    batch_size: int = 256
    attempt_timeout: float = 60.0  # a sink call that takes longer counts as a retryable failure
    idle_poll: float = 2.0  # also picks up `voltd spool replay` done by another process
    # After a wake-up, wait this long so that one batch (and one fsync) carries the events
    # of several ingest commits instead of one each.
    linger: float = 0.1
    record_retry_pause: float = 1.0
    # A failing sink is tried again after the retry policy's delay for its run of failures,
    # but at least this often, so that it is noticed soon when it comes back.
    max_pause: float = 60.0


_NEVER = 1e18  # a time after every retry
#: Confirmed sends are handed to the spool at least this often (seconds), or per this many:
#: a crash re-sends at most about that much beyond what was in flight.
CONFIRM_WINDOW = 0.002
CONFIRM_BATCH = 32


class Pace:
    """The `rate` delivery setting: sink calls evenly spaced, `per_second` at most, shared by
    all of a sink's concurrent sends (a burst never goes out faster than the rate)."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self._next = 0.0

    async def wait(self) -> None:
        now = trio.current_time()
        at = max(now, self._next)
        self._next = at + self.interval
        if at > now:
            await trio.sleep_until(at)


def _timeout_or(exc: Exception, options: DeliveryOptions) -> Exception:
    if isinstance(exc, trio.TooSlowError):
        return TimeoutError(f"no answer within {options.attempt_timeout:g}s")
    return exc


#: What an SMS text becomes in an error message (see `_without_texts`).
TEXT_REDACTED = "[message text]"
_SCRUB_PREFIX = 24  # characters: a cut-off echo of a text is found by its start


def _without_texts(message: str, events: Iterable[Event]) -> str:
    """`message` without the SMS texts of `events`. A receiver that echoes what it was sent in
    its error (an HTTP 400 page quoting the body, an SMTP reply) must not carry a customer's
    text into the log, the spool's error column or `voltd spool dead`: those are read by
    people who should see that a delivery failed, not what was written. The text is found as
    written and as JSON escapes it, also when the echo was cut off."""
    for event in events:
        text = event.text
        if not text or len(text) < 4:
            continue
        forms = {text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
        for form in forms:
            probe = form[:_SCRUB_PREFIX]
            start = message.find(probe)
            while start >= 0:
                end = start + len(probe)
                while end < len(message) and end - start < len(form):
                    if message[end] != form[end - start]:
                        break
                    end += 1
                message = message[:start] + TEXT_REDACTED + message[end:]
                start = message.find(probe, start + len(TEXT_REDACTED))
    return message


def _describe(exc: BaseException, events: Iterable[Event] = ()) -> str:
    text = _without_texts(str(exc) or type(exc).__name__, events)
    return f"{type(exc).__name__}: {text}"[:1000]


class SinkWorker:
    """Delivers to one sink until cancelled."""

    def __init__(
        self,
        name: str,
        sink: Sink,
        spool: SpoolLike,
        policy: RetryPolicy,
        options: DeliveryOptions | None = None,
        *,
        names: Mapping[str, str] | None = None,
        origin: str = "",
        concurrency: int = 1,
        rate: float | None = None,
        metrics: SinkMetrics | None = None,
    ) -> None:
        self.name = name
        #: Outcomes, sink call durations and delivery latency (voltd.metrics), bound once.
        self.metrics = metrics or SinkMetrics.nothing()
        self.sink = sink
        self.spool = spool
        self.policy = policy
        self.options = options or DeliveryOptions()
        self.names: Mapping[str, str] = names or {}  # `[numbers]`, for Event.our_name
        self.origin = origin  # the plugin, for reports of its bugs
        self.stopping = False
        #: Why the sink is disabled (its endpoint said it is gone), or None. A disabled sink
        #: is not tried again until `enable()` (a reload); its events wait in the spool.
        self.disabled: str | None = None
        self._enabled = trio.Event()
        self._bug_reported = False
        #: Attempts in a row that failed with a retryable error, and when to try again.
        #: While a sink is failing, new events wait with the rest instead of each being
        #: tried, failing and recorded on its own: a sink that is down costs ingest nothing.
        self.failures = 0
        self.paused_until: float | None = None
        # A worker that starts (daemon start, sink changed by a reload) may find deliveries
        # that an earlier one scheduled for later: its first success makes them due too.
        self._fresh = True
        #: Events per attempt: a sink may say it takes more at once (`max_batch`), which
        #: matters when a backlog drains (one write and fsync per batch for a file).
        self.batch_size = sink.max_batch or self.options.batch_size
        self.batches = sink.takes_batches
        #: A digest sink's window (`Sink.batch_window`): due events wait until the oldest
        #: has waited this long since it arrived.
        self.window = max(0.0, float(getattr(sink, "batch_window", 0.0) or 0.0))
        self._poke = trio.Event()  # ends a window's wait early: stopping
        #: Sends at once (`concurrency`; 1 keeps the order) and their pace (`rate`).
        self.concurrency = concurrency
        self.pace = Pace(rate) if rate else None
        if concurrency > 1 and not self.batches:
            # Each attempt ends with its lanes draining one by one and a spool read: bigger
            # attempts make those gaps rarer.
            self.batch_size = max(self.batch_size, 64 * concurrency)
        self.in_flight = 0
        #: When the sink was last enabled after being disabled: the time it waited disabled
        #: does not count towards `give_up_after` (see `_gives_up`).
        self._enabled_at: float | None = None
        self.last_error: str | None = None
        self.state_since = time.time()
        self._published: tuple[Any, ...] | None = None
        self._published_at = 0.0
        #: The last outcomes queued without waiting (`record_soon`): committed before the
        #: spool is asked what is due again, or it would offer them once more.
        self._queued: trio.Event | None = None
        self._attempted: Sequence[Due] = ()  # the last attempt's deliveries
        #: Confirmed sends not yet handed to the spool: handed over together every
        #: `CONFIRM_WINDOW` seconds or `CONFIRM_BATCH` outcomes, one writer trip for several.
        self._confirmed: list[Outcome] = []
        self._confirmed_at = 0.0
        self._gap = 1.0  # a moving average of the time between two confirmations (seconds)
        self._last_confirmed = 0.0

    @property
    def state(self) -> str:
        """`ok`, `paused` (failing: retried after a pause) or `disabled` (endpoint gone)."""
        if self.disabled is not None:
            return "disabled"
        return "paused" if self.failures else "ok"

    def status(self) -> dict[str, Any]:
        """What /healthz and `voltd spool status` say about this sink."""
        return {
            "state": self.state,
            "reason": self.disabled if self.disabled is not None else self.last_error,
            "since": self.state_since,
            "next_attempt": self.paused_until if self.failures else None,
            "in_flight": self.in_flight,
            "last_error": self.last_error,
        }

    def enable(self, why: str = "reload") -> None:
        """Lift a `disabled` state (reload, `voltd spool retry`), or end a pause: what
        waited is tried at once."""
        if self.disabled is not None:
            log.info(
                "sink %s: enabled again by %s (was disabled: %s)", self.name, why, self.disabled
            )
            self.disabled = None
            self._enabled_at = time.time()
            self.state_since = self._enabled_at
        self.paused_until = None
        self._fresh = True  # its first success makes everything waiting due now
        self._enabled.set()
        self._publish(force=True)

    def _publish(self, *, force: bool = False) -> None:
        """Keep this sink's row in the spool's `sink_status` current for `voltd spool status`
        (another process): at once on a change of state, else at most once a second."""
        # Per send: only a tuple is built until something is to be written.
        paused = self.failures and self.disabled is None
        key = (
            self.state,
            self.disabled if self.disabled is not None else self.last_error,
            self.paused_until if paused else None,
            self.in_flight,
        )
        if key == self._published:
            return
        now = time.monotonic()
        was = self._published
        # A new state, or going busy or idle, at once; a changing in-flight count, each second.
        force = force or was is None or was[:3] != key[:3] or (was[3] == 0) != (key[3] == 0)
        if not force and now - self._published_at < 1.0:
            return
        if self.spool.record_soon((), status=(self.name, self.status())) is not None:
            self._published, self._published_at = key, now

    async def _retry_requested(self) -> bool:
        """Whether `voltd spool retry --sink` asked for this sink since its state began."""
        try:
            asked = await self.spool.retry_requested(self.name)
        except SpoolError:
            return False
        return asked is not None and asked >= self.state_since

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED):
        """Deliver until stopped, touching the spool as little as possible: every spool call
        is a thread hop, and on a busy single core those hops are the cost that matters."""
        task_status.started()
        try:
            await self._run()
        finally:
            # Another instance sharing the spool may take the sink over at once.
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.spool.release_sink(self.name)

    async def _next_due_at(self) -> float | None:
        """When the next delivery falls due; None (and a log line) when the spool cannot
        say (a PostgreSQL spool during a database restart): the idle poll asks again."""
        try:
            return await self.spool.next_due_at(self.name)
        except SpoolError as exc:
            log.error("sink %s: cannot read the spool: %s", self.name, exc)
            return None

    async def _my_turn(self) -> bool:
        """Whether this process delivers to the sink now. A sink that keeps its order
        (`concurrency = 1`) is delivered to by one process at a time: with a shared
        (PostgreSQL) spool, the instance that holds its lock; the others stand by."""
        if self.concurrency != 1:
            return True
        return await self.spool.acquire_sink(self.name)  # SpoolError: cannot tell now

    async def _run(self) -> None:
        opts = self.options
        next_retry = await self._next_due_at()  # left pending by a restart
        self._publish(force=True)
        standby = False
        while not self.stopping:
            if self.disabled is not None or (
                self.paused_until is not None and time.time() < self.paused_until
            ):
                # Disabled until enabled; paused until the pause ends. Either way new events
                # wait, and `voltd spool retry --sink` (another process) is noticed.
                self._enabled = trio.Event()
                left = opts.idle_poll
                if self.disabled is None and self.paused_until is not None:
                    left = min(left, max(0.0, self.paused_until - time.time()))
                with trio.move_on_after(left):
                    await self._enabled.wait()
                if not self._enabled.is_set() and await self._retry_requested():
                    self.enable("voltd spool retry")
                continue
            try:
                mine = await self._my_turn()
            except SpoolError as exc:
                log.error("sink %s: cannot read the spool: %s", self.name, exc)
                await self._hold(time.time() + opts.idle_poll)
                continue
            if not mine:
                # Another instance delivers to it. Ask again at the idle poll, not at every
                # wake-up: the lock's holder is woken by the same commits.
                if not standby:
                    log.info("sink %s: delivered by another instance; standing by", self.name)
                standby = True
                await self._hold(time.time() + opts.idle_poll)
                continue
            if standby:
                standby = False
                log.info("sink %s: this instance delivers to it now", self.name)
                next_retry = await self._next_due_at()
            wake = self.spool.wakeup(self.name)
            now = time.time()
            if next_retry is not None and next_retry <= now:
                next_retry = None  # the query below takes those
            if self._queued is not None:
                await self._queued.wait()
                self._queued = None
            try:
                due = await self.spool.due(self.name, now, self.batch_size)
                if not due and self.failures:
                    # A failing sink's pause is over: try it with what is due soonest, so
                    # that it is noticed when it is back even if nothing new arrived.
                    due = await self.spool.due(self.name, _NEVER, self.batch_size)
            except SpoolError as exc:
                log.error("sink %s: cannot read the spool: %s", self.name, exc)
                await trio.sleep(opts.idle_poll)
                continue
            if due and self.window and len(due) < self.batch_size:
                until = min(d.received_at for d in due) + self.window
                if until > time.time():
                    # A digest collects: new events do not wake it, the window's end does.
                    await self._hold(until)
                    continue
            if due:
                outcomes, failure = await self.attempt(due, record_early=True)
                if not isinstance(failure, EndpointGone):  # that one has a line of its own
                    self._log(outcomes)
                await self._record(outcomes, self._after(failure))
                self._publish()  # idle again (or paused, disabled: already said)
                for o in outcomes:
                    if o.state is State.PENDING and (next_retry is None or o.next_at < next_retry):
                        next_retry = o.next_at
                if len(due) == self.batch_size:
                    continue  # a full batch: more is probably waiting
            # Nothing more is due. Sleep until new deliveries commit, a retry falls due, or
            # the idle poll, which also notices `voltd spool replay` run by another process.
            timeout = opts.idle_poll
            if next_retry is not None:
                timeout = min(timeout, max(0.0, next_retry - time.time()))
            woken = False
            with trio.move_on_after(timeout):
                await wake.wait()
                woken = True
            if woken and self.batches and self.pace is None:
                # A sink that takes batches waits a moment so one call (one write and fsync
                # for a file) carries several commits' events; one that sends event by event
                # gains nothing from waiting, and its latency is what it is measured by. A
                # paced one (Slack) sends the first event at once: its pace collects the rest.
                await trio.sleep(opts.linger)
            else:
                next_retry = await self._next_due_at()

    async def _hold(self, until: float) -> None:
        """Wait until `until` (wall clock, as the spool's times), or until stopped."""
        self._poke = trio.Event()
        if self.stopping:
            return
        with trio.move_on_after(max(0.0, until - time.time())):
            await self._poke.wait()

    def stop_soon(self) -> None:
        """Ask the worker to stop: it finishes what is in flight, leaves the rest pending."""
        self.stopping = True
        self._poke.set()
        self.spool.wake(self.name)

    async def attempt(
        self, due: Sequence[Due], *, record_early: bool = False
    ) -> tuple[list[Outcome], Exception | None]:
        """Deliver what is due; say what happened to each delivery, and the retryable error
        that stopped the sink, if one did.

        With `record_early`, each event a `send` confirmed is queued for the spool's next
        commit at once and left out of the result: a crash then re-sends what was in flight,
        not a whole batch. (A `send_batch` is one confirmation, recorded after it.)
        """
        names = self.names
        self._attempted = due  # for error messages without the texts (`_without_texts`)
        for d in due:
            with_names(d.event, names)
        self._publish()
        if not self.batches or len(due) == 1:
            return await self._one_by_one(due, record_early)
        if self.pace is not None:
            await self.pace.wait()
        self.in_flight += len(due)
        self._publish()
        started = time.perf_counter()
        try:
            with trio.fail_after(self.options.attempt_timeout):
                await self.sink.send_batch([d.event for d in due])
        except PermanentError:
            self.metrics.attempt.observe(time.perf_counter() - started)
            # One undeliverable event must not take its neighbours down with it.
            return await self._one_by_one(due, record_early)
        except Exception as exc:  # noqa: BLE001 - any sink failure is retryable by contract
            self.metrics.attempt.observe(time.perf_counter() - started)
            exc = self._unexpected(_timeout_or(exc, self.options))
            return [self._failed(d, exc, permanent=False) for d in due], exc
        finally:
            self.in_flight -= len(due)
        self.metrics.attempt.observe(time.perf_counter() - started)
        return [self._delivered(d) for d in due], None

    async def _send_one(self, d: Due, early: bool) -> tuple[Outcome | None, Exception | None]:
        """One `send`, paced: its outcome (None when already queued for the spool), or the
        retryable error that stops the sink."""
        if self.pace is not None:
            await self.pace.wait()
        self.in_flight += 1
        self._publish()
        started = time.perf_counter()
        try:
            with trio.fail_after(self.options.attempt_timeout):
                await self.sink.send(d.event)
        except PermanentError as exc:
            self.metrics.attempt.observe(time.perf_counter() - started)
            return self._failed(d, exc, permanent=True), None
        except Exception as exc:  # noqa: BLE001 - any sink failure is retryable by contract
            self.metrics.attempt.observe(time.perf_counter() - started)
            return None, self._unexpected(_timeout_or(exc, self.options))
        finally:
            self.in_flight -= 1
        self.metrics.attempt.observe(time.perf_counter() - started)
        outcome = self._delivered(d)
        if not early:
            return outcome, None
        now = trio.current_time()
        self._gap += (min(now - self._last_confirmed, 1.0) - self._gap) / 8
        self._last_confirmed = now
        if not self._confirmed:
            self._confirmed_at = now
        self._confirmed.append(outcome)
        # Confirmations that come slowly are handed over one by one; only when they come
        # quickly does one wait for a few neighbours, never much longer than CONFIRM_WINDOW.
        if (
            self._gap * 2 >= CONFIRM_WINDOW
            or len(self._confirmed) >= CONFIRM_BATCH
            or now - self._confirmed_at >= CONFIRM_WINDOW
        ):
            self._hand_over()
        return None, None

    def _hand_over(self) -> None:
        """Queue the confirmed outcomes for the spool's next commit (when its queue is full,
        they stay for the next hand-over or the end of the attempt)."""
        if self._confirmed:
            queued = self.spool.record_soon(self._confirmed)
            if queued is not None:
                self._queued, self._confirmed = queued, []

    def _confirmed_left(self) -> list[Outcome]:
        """At the end of an attempt: hand over what is left, or return it to be recorded."""
        self._hand_over()
        left, self._confirmed = self._confirmed, []
        return left

    def _unexpected(self, exc: Exception) -> Exception:
        """A sink should raise SinkError subclasses; anything else is a plugin bug, retried
        like a RetryableError and reported with its traceback once per run of failures."""
        if not isinstance(exc, SinkError | TimeoutError) and not self._bug_reported:
            self._bug_reported = True
            log.error(
                "sink %s: %s raised an unexpected %s (a plugin bug; retried like a retryable "
                "error)",
                self.name,
                self.origin or "its plugin",
                type(exc).__name__,
                exc_info=exc,
            )
        return exc

    async def _one_by_one(
        self, due: Sequence[Due], early: bool = False
    ) -> tuple[list[Outcome], Exception | None]:
        """`send` each event: in order, or `concurrency` at a time. The first retryable
        failure stops new sends; what was not sent waits for the same backoff rather than
        each running into the same wall."""
        out: list[Outcome] = []
        failure: Exception | None = None
        position = 0

        async def lane() -> None:
            nonlocal position, failure
            while failure is None and position < len(due):
                d = due[position]
                position += 1
                outcome, exc = await self._send_one(d, early)
                if exc is not None:
                    failure = failure or exc
                    out.append(self._failed(d, exc, permanent=False))
                elif outcome is not None:
                    out.append(outcome)

        lanes = min(self.concurrency, len(due))
        if lanes <= 1:
            await lane()
        else:
            async with trio.open_nursery() as nursery:
                for _ in range(lanes):
                    nursery.start_soon(lane)
        out.extend(self._confirmed_left())
        if failure is not None:
            out.extend(self._failed(d, failure, permanent=False) for d in due[position:])
        return out, failure

    def _after(self, failure: Exception | None) -> SinkChange | None:
        """Pause a failing sink, or resume one that works again; the spool change to go with
        it: expire what waited past `give_up_after`, or make everything waiting due now."""
        now = time.time()
        if failure is None:
            recovered = self.failures > 0 or self._fresh
            if self.failures:
                self.state_since = now
            self.failures, self.paused_until, self._fresh = 0, None, False
            self._bug_reported = False
            self._publish(force=recovered)
            return SinkChange(self.name, release=True) if recovered else None
        self.last_error = _describe(failure, (d.event for d in self._attempted))
        if isinstance(failure, EndpointGone):
            # Nothing expires while disabled: the events wait for the operator, however long.
            self.disabled = self.last_error
            self.state_since = now
            log.error(
                "sink %s: disabled, its endpoint is gone (%s); its events wait in the spool "
                "until a reload (SIGHUP) or `voltd spool retry --sink %s`",
                self.name,
                self.disabled,
                self.name,
            )
            self._publish(force=True)
            return None
        if not self.failures:
            self.state_since = now
        self.failures += 1
        pause = min(self.policy.delay(self.failures), self.options.max_pause)
        asked = failure.retry_after if isinstance(failure, RetryableError) else None
        if asked is not None and asked > 0:
            # The other side said when: the whole sink waits, not each event on its own.
            pause = max(pause, min(asked, self.policy.max_delay))
        self.paused_until = now + pause
        self._publish(force=True)
        return SinkChange(
            self.name,
            expire_before=now - self.policy.give_up_after if self._gives_up(now) else None,
            error=f"gave up after {self.policy.give_up_after:g}s; last error {self.last_error}",
        )

    def _gives_up(self, now: float) -> bool:
        """Whether waiting events may become dead letters now: not within `give_up_after` of
        the sink being enabled after it was disabled (an operator's repair gets a full try)."""
        return self._enabled_at is None or now - self._enabled_at >= self.policy.give_up_after

    def _delivered(self, d: Due) -> Outcome:
        m = self.metrics
        m.delivered.inc()
        m.latency.observe(time.time() - d.received_at)
        return Outcome(self.name, d.event.seq or 0, State.DELIVERED, d.attempts + 1)

    def _failed(self, d: Due, exc: BaseException, *, permanent: bool) -> Outcome:
        attempts = d.attempts + 1
        now = time.time()
        seq = d.event.seq or 0
        err = _describe(exc, (d.event,))
        if isinstance(exc, EndpointGone):  # waits, due again when the sink is enabled
            self.metrics.retry.inc()
            return Outcome(self.name, seq, State.PENDING, attempts, now, err)
        if permanent or (now - d.received_at >= self.policy.give_up_after and self._gives_up(now)):
            self.metrics.dead.inc()
            return Outcome(self.name, seq, State.DEAD, attempts, now, err)
        self.metrics.retry.inc()
        return Outcome(
            self.name, seq, State.PENDING, attempts, now + self.policy.delay(attempts), err
        )

    def _log(self, outcomes: Sequence[Outcome]) -> None:
        """One line per batch and kind of failure: a sink that is down for an hour must not
        write a line per event per attempt."""
        failed = [o for o in outcomes if o.state is State.PENDING]
        dead = [o for o in outcomes if o.state is State.DEAD]
        if failed:
            soonest = min(o.next_at for o in failed) - time.time()
            log.warning(
                "sink %s: %d deliver%s failed (%s); next retry in %.3gs",
                self.name,
                len(failed),
                "y" if len(failed) == 1 else "ies",
                failed[0].error,
                max(soonest, 0.0),
            )
        if dead:
            self._log_dead(len(dead), dead[0].error)

    def _log_dead(self, n: int, error: str | None) -> None:
        log.error(
            "sink %s: %d deliver%s became dead letters (%s); "
            "see `voltd spool dead`, resend with `voltd spool replay`",
            self.name,
            n,
            "y" if n == 1 else "ies",
            error,
        )

    async def _record(self, outcomes: list[Outcome], change: SinkChange | None = None) -> None:
        """Commit outcomes; if the spool refuses, keep trying (the sends already happened)."""
        while True:
            try:
                expired = await self.spool.record(outcomes, change)
                if expired and change is not None:
                    self.metrics.dead.inc(expired)
                    self._log_dead(expired, change.error)
                return
            except SpoolError as exc:
                log.error("sink %s: cannot record outcomes: %s", self.name, exc)
                await trio.sleep(self.options.record_retry_pause)


class Deliveries:
    """Owns the sink workers, so that one can be stopped or added (configuration reload)
    while the others keep running."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.workers: dict[str, SinkWorker] = {}
        self._scopes: dict[str, tuple[trio.CancelScope, trio.Event]] = {}
        self._nursery: trio.Nursery | None = None

    async def run(
        self, stop: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Until `stop`; then every worker gets `grace` seconds to finish what is in flight."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await stop.wait()
            async with trio.open_nursery() as stopping:
                for name in list(self.workers):
                    stopping.start_soon(self.stop, name)
            self._nursery = None

    async def start(self, worker: SinkWorker) -> None:
        assert self._nursery is not None, "Deliveries.run is not running"
        scope, done = trio.CancelScope(), trio.Event()

        async def supervised(task_status: trio.TaskStatus[None]) -> None:
            try:
                with scope:
                    await worker.run(task_status=task_status)
            finally:
                done.set()

        self.workers[worker.name] = worker
        self._scopes[worker.name] = (scope, done)
        await self._nursery.start(supervised, name=f"voltd sink {worker.name}")

    async def stop(self, name: str) -> None:
        """Stop one worker: what is in flight may finish within `grace`, the rest stays
        pending in the spool. Then the sink is closed."""
        worker = self.workers.pop(name)
        scope, done = self._scopes.pop(name)
        worker.stop_soon()
        scope.deadline = trio.current_time() + self.grace
        await done.wait()
        await close_sink(name, worker.sink)


async def run_workers(
    workers: Mapping[str, SinkWorker],
    stop: trio.Event,
    grace: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a fixed set of workers until `stop` (see Deliveries)."""
    deliveries = Deliveries(grace)
    async with trio.open_nursery() as nursery:
        await nursery.start(deliveries.run, stop)
        for w in workers.values():
            await deliveries.start(w)
        task_status.started()
