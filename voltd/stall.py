"""Notice a blocked event loop, and say which sink blocked it.

Everything in voltd shares one trio loop: a sink that makes a blocking call inside `send`
(`requests.post`, `smtplib`, `time.sleep`) stops ingest and every other sink until it returns.
A trio Instrument would see every task step, at a cost on every request; instead a task beats
a heartbeat a few times per 100 ms, and a plain thread watches it. When the beat is late by more
than `threshold`, the thread samples the loop thread's stack once (naming the sink from its
delivery frame and the blocking line), and when the loop turns again the task logs one warning
with how long it was blocked. Cost while nothing blocks: one short sleep per `interval`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import trio

log = logging.getLogger("voltd.stall")

#: Delivery frames whose `self` can say which sink is sending (voltd.delivery.SinkWorker).
_WORKER_METHODS = frozenset({"attempt", "_one_by_one"})


@dataclass(slots=True)
class _Sample:
    sink: str | None
    where: str


class StallWatch:
    """Run `run()` in the daemon's nursery; `identify(obj)` names the sink an object (the
    `self` of a delivery frame) delivers to, or None."""

    def __init__(
        self,
        identify: Callable[[object], str | None],
        *,
        threshold: float = 0.1,
        interval: float = 0.025,
    ) -> None:
        self.identify = identify
        self.threshold = threshold
        self.interval = interval
        self._beat = time.monotonic()
        self._sample: _Sample | None = None
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self.stalls = 0  # how many were logged (tests)

    async def run(self) -> None:
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        watcher = threading.Thread(target=self._watch, name="voltd-stall-watch", daemon=True)
        watcher.start()
        try:
            while True:
                await trio.sleep(self.interval)
                now = time.monotonic()
                late = now - self._beat - self.interval
                self._beat = now
                if late > self.threshold:
                    self._report(late, self._sample)
                self._sample = None
        finally:
            self._stop.set()

    def _report(self, late: float, sample: _Sample | None) -> None:
        self.stalls += 1
        if sample is None:
            log.warning("the event loop was blocked for %.0f ms", late * 1000)
            return
        who = f"sink {sample.sink!r}" if sample.sink else "voltd"
        log.warning(
            "the event loop was blocked for %.0f ms by %s (%s); a sink must run blocking "
            "calls with trio.to_thread.run_sync",
            late * 1000,
            who,
            sample.where,
        )

    def _watch(self) -> None:
        sampled_beat = None
        while not self._stop.wait(self.interval):
            beat = self._beat
            if time.monotonic() - beat > self.threshold + self.interval and beat != sampled_beat:
                sampled_beat = beat
                frame = sys._current_frames().get(self._loop_thread)
                if frame is not None:
                    self._sample = self._describe(frame)

    def _describe(self, frame: FrameType) -> _Sample:
        """The sink whose delivery frame is on the stack, and the innermost line."""
        innermost = traceback.extract_stack(frame, limit=1)
        where = "unknown"
        if innermost:
            last = innermost[-1]
            where = f"at {last.filename}:{last.lineno} in {last.name}"
        sink = None
        f: FrameType | None = frame
        while f is not None:
            if f.f_code.co_name in _WORKER_METHODS:
                sink = self.identify(f.f_locals.get("self"))
                if sink is not None:
                    break
            f = f.f_back
        return _Sample(sink, where)
