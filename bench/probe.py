"""End-to-end probe: how long after its 200 does an event land in the file sink, under load?

wrk measures the acknowledgement only. While wrk drives voltd, this probe sends its own marked
events at a low fixed rate (default 15/s, ~1% of the load) on one keep-alive HTTPS connection
of its own, and a second thread tails the archive sink's files every few milliseconds. For each
probe it records when the request was written, when the 200 came back, and when its line was
first visible in the sink file, so ack→landed is the delivery delay an operator would see
(the line is visible as soon as the sink has written it; the sink's fsync follows).

Probe events are ordinary generated envelopes that the routes send to the archive only; their
envelope ids carry PROBE_MARK so that the tailer only parses the lines that matter and the
probes can be found in the sink files afterwards.
"""

from __future__ import annotations

import http.client
import re
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base import ENVELOPE_ID, HOST, SIG_HEADER, WEBHOOK_PATH
from load import percentiles
from report import check, fmt
from sinks import read_appended
from workload import BenchEvent, make_events

# Envelope ids are rfw_<8 hex>_<32 hex>; probes start the 32 with this (still valid hex, so
# the ids look like any other to voltd and to SinkReader).
PROBE_MARK = "ffff0000"
TAIL_INTERVAL = 0.005
LAND_TIMEOUT = 30.0
_ID_AFTER_TIME = re.compile(r"^rfw_[0-9a-f]{8}_")


def make_probe_events(count: int, seed: int, now: float) -> list[BenchEvent]:
    """`count` archive-only events with marked ids, from the same generator as the load."""
    out: list[BenchEvent] = []
    batch = 0
    while len(out) < count:
        batch += 1
        for e in make_events(count * 3, seed * 1000 + batch, now):
            if e.sinks != ("archive",):
                continue
            prefix = _ID_AFTER_TIME.match(e.id)
            assert prefix is not None
            new_id = prefix.group() + PROBE_MARK + e.id[prefix.end() + len(PROBE_MARK) :]
            body = e.body.replace(e.id.encode(), new_id.encode(), 1)
            out.append(BenchEvent(new_id, body, e.sinks))
            if len(out) == count:
                break
    return out


@dataclass
class Sample:
    """One probe request; times are time.monotonic() except `sent_unix` (for windowing)."""

    id: str
    sent: float
    sent_unix: float
    acked: float | None = None
    status: int | None = None
    error: str | None = None
    landed: float | None = None


class Probe:
    """Sender and tailer threads; `start()` before the load, `stop_sending()` after it."""

    def __init__(
        self,
        port: int,
        cafile: Path,
        events: list[BenchEvent],
        signatures: list[str],
        rate: float,
        archive_dir: Path | None,
    ) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(cafile))
        self.events = events
        self.signatures = signatures
        self.interval = 1.0 / rate
        self.archive_dir = archive_dir  # None: don't tail (the sink is down on purpose)
        self.samples: dict[str, Sample] = {}
        self._lock = threading.Lock()
        self._stop_send = threading.Event()
        self._stop_tail = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, name="probe-send", daemon=True)
        self._tailer = threading.Thread(target=self._tail_loop, name="probe-tail", daemon=True)
        self.ran_out = False

    def start(self) -> None:
        self._sender.start()
        if self.archive_dir is not None:
            self._tailer.start()

    def stop_sending(self) -> None:
        """Idempotent, and safe when the probe never started (an error before the load)."""
        self._stop_send.set()
        if self._sender.is_alive():
            self._sender.join()

    def close(self) -> None:
        """Stop both threads, whatever state the run ended in."""
        self.stop_sending()
        self._stop_tail.set()
        if self._tailer.is_alive():
            self._tailer.join()

    def wait_landed(self, timeout: float = LAND_TIMEOUT) -> bool:
        """Keep tailing until every acknowledged probe has landed (or the timeout)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                with self._lock:
                    if all(s.landed is not None for s in self.samples.values() if _ok(s)):
                        return True
                time.sleep(0.02)
            return False
        finally:
            self._stop_tail.set()
            if self._tailer.is_alive():
                self._tailer.join()

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(HOST, self.port, context=self.context, timeout=15)

    def _send_loop(self) -> None:
        """Open loop at a fixed rate, one request in flight; a slow answer delays the next
        send instead of causing a burst to catch up."""
        conn = self._connect()
        next_at = time.monotonic()
        try:
            for event, sig in zip(self.events, self.signatures, strict=True):
                if self._stop_send.wait(max(0.0, next_at - time.monotonic())):
                    return
                sample = Sample(event.id, time.monotonic(), time.time())
                with self._lock:
                    self.samples[event.id] = sample
                try:
                    conn.request(
                        "POST",
                        WEBHOOK_PATH,
                        body=event.body,
                        headers={"Content-Type": "application/json", SIG_HEADER: sig},
                    )
                    response = conn.getresponse()
                    response.read()
                    sample.acked = time.monotonic()
                    sample.status = response.status
                except (OSError, http.client.HTTPException) as exc:
                    sample.error = f"{type(exc).__name__}: {exc}"
                    conn.close()
                    conn = self._connect()
                next_at = max(next_at + self.interval, time.monotonic())
            self.ran_out = True
        finally:
            conn.close()

    def _tail_loop(self) -> None:
        """Poll the archive's files for appended bytes; stamp each probe line when first seen."""
        assert self.archive_dir is not None
        offsets: dict[Path, int] = {}
        files: list[Path] = []
        last_scan = 0.0
        mark = f"_{PROBE_MARK}".encode()
        while not self._stop_tail.is_set():
            now = time.monotonic()
            if now - last_scan > 0.1:  # new files (per number, per day) are rare
                files = list(self.archive_dir.rglob("*.jsonl")) if self.archive_dir.is_dir() else []
                last_scan = now
            for path in files:
                data = read_appended(path, offsets)
                if mark not in data:
                    continue
                seen = time.monotonic()
                with self._lock:
                    for m in ENVELOPE_ID.finditer(data):
                        sample = self.samples.get(m.group().decode())
                        if sample is not None and sample.landed is None:
                            sample.landed = seen
            self._stop_tail.wait(TAIL_INTERVAL)

    def acked_ids(self) -> list[str]:
        with self._lock:
            return [s.id for s in self.samples.values() if _ok(s)]

    def report(self, window: tuple[float, float] | None) -> dict[str, Any]:
        """Numbers for the probes sent inside `window` (unix start, end), i.e. under load."""
        with self._lock:
            all_samples = list(self.samples.values())
        inside = [s for s in all_samples if window is None or window[0] <= s.sent_unix <= window[1]]
        acked = [s for s in inside if _ok(s)]
        landed = [s for s in acked if s.landed is not None]
        ms = 1000.0
        statuses: dict[str, int] = {}
        for s in inside:
            key = str(s.status) if s.status is not None else "error"
            statuses[key] = statuses.get(key, 0) + 1
        return {
            "rate_per_s": 1.0 / self.interval,
            "sent_total": len(all_samples),
            "sent_under_load": len(inside),
            "acked": len(acked),
            "statuses": statuses,
            "first_error": next((s.error for s in inside if s.error), None),
            "landed": len(landed),
            # Acknowledged under load but not in the sink after the wait: a lost event.
            "acked_not_landed": len(acked) - len(landed) if self.archive_dir else None,
            "ack_ms": percentiles([((s.acked or 0) - s.sent) * ms for s in acked]),
            "ack_to_landed_ms": percentiles(
                [((s.landed or 0) - (s.acked or 0)) * ms for s in landed]
            ),
            "sent_to_landed_ms": percentiles([((s.landed or 0) - s.sent) * ms for s in landed]),
            "tail_interval_ms": TAIL_INTERVAL * ms,
            "ran_out_of_events": self.ran_out,
        }


def _ok(s: Sample) -> bool:
    return s.status is not None and 200 <= s.status < 300


def _line(label: str, p: dict[str, float]) -> str:
    return (
        f"  {label:<24} p50 {fmt(p.get('p50'), '.1f'):>7} ms   p99 {fmt(p.get('p99'), '.1f'):>7} ms"
        f"   max {fmt(p.get('max'), '.1f'):>7} ms"
    )


def report_e2e(r: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Print the e2e section; return (problems, checks). No target was set for the latency,
    so the only judgement is that every acknowledged probe reached the sink."""
    print()
    if "error" in r:
        print(f"e2e: FAILED: {r['error'].splitlines()[0]}")
        return [f"e2e: {r['error']}"], []
    print(
        f"e2e: {r['sent_under_load']} probe events at {r['rate_per_s']:g}/s during voltd's load, "
        f"on their own connection, routed to the archive; its files polled every "
        f"{r['tail_interval_ms']:g} ms"
    )
    print(_line("probe ack latency", r["ack_ms"]))
    print(_line("ack -> line in archive", r["ack_to_landed_ms"]))
    print(_line("sent -> line in archive", r["sent_to_landed_ms"]))
    problems: list[str] = []
    bad = {k: v for k, v in r["statuses"].items() if not k.startswith("2")}
    if bad:
        problems.append(
            f"e2e: probe answers other than 2xx: {bad}; first error: {r['first_error']}"
        )
    if r["acked_not_landed"]:
        problems.append(
            f"e2e: {r['acked_not_landed']} acknowledged probe events never reached the archive"
        )
    if not r["acked"]:
        problems.append("e2e: no probe was acknowledged during the load")
    if r["ran_out_of_events"]:
        print("  WARNING: the probe ran out of events before the load ended")
    print(
        f"  {r['landed']} of {r['acked']} acknowledged probes landed"
        + (" (none lost)" if not r["acked_not_landed"] else "")
    )
    return problems, [
        check(
            "e2e",
            "acknowledged probes that reached the sink",
            f"{r['landed']}/{r['acked']}",
            "all",
            bool(r["acked"]) and not r["acked_not_landed"],
        )
    ]
