"""`GET /metrics` on the admin listener: a real daemon after a known mix of requests and
deliveries, scraped over HTTP and parsed with prometheus_client's own parsers; the values are
what was sent. And contrib/: every metric its dashboard and alerts name exists."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

import voltd
from tests.helpers import Daemon, make_event
from voltd.metrics import DELIVERY_OUTCOMES, OTHER, RELOAD_OUTCOMES, REQUEST_OUTCOMES
from voltd.spool import SpoolDB, State

REPO = Path(__file__).resolve().parent.parent
CONTRIB = REPO / "contrib"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"

GONE_PLUGIN = """
import voltd

class Gone(voltd.Sink):
    async def send(self, event):
        raise voltd.EndpointGone("POST https://crm.example.com: 410 Gone")

@voltd.hookimpl
def register_sink_types(register):
    register("gone", Gone)
"""

#: archive: a file sink that works; relay: an http sink to a closed port that gives up after
#: 1 s (retries, then dead letters); crm: a sink whose endpoint is gone (disabled, waiting).
SINKS = """\
[[routes]]
name = "all"
sinks = ["archive", "relay", "crm"]

[sinks.archive]
type = "file"
path = "out/archive.jsonl"

[sinks.relay]
type = "http"
url = "http://127.0.0.1:{port}/hook"
retry = {{ initial = "50ms", max_delay = "200ms", give_up_after = "1s" }}

[sinks.crm]
type = "gone"
"""
SINK_NAMES = {"archive", "relay", "crm"}


# --------------------------------------------------------------------------------------------
# Scraping and reading a scrape


@dataclass
class Scrape:
    content_type: str
    text: str
    families: dict[str, str]  # family name -> type
    samples: dict[str, list[tuple[dict[str, str], float]]]  # sample name -> (labels, value)

    def value(self, name: str, **labels: str) -> float:
        """The one sample `name` with exactly these labels (KeyError if absent)."""
        found = [v for lab, v in self.samples.get(name, []) if lab == labels]
        if len(found) != 1:
            raise KeyError(f"{name}{labels}: {len(found)} samples; have {self.samples.get(name)}")
        return found[0]

    def by(self, name: str, label: str, **where: str) -> dict[str, float]:
        """Samples of `name` keyed by `label`, among those whose labels include `where`."""
        return {
            lab[label]: v
            for lab, v in self.samples.get(name, [])
            if where.items() <= lab.items() and label in lab
        }


def scrape(d: Daemon, accept: str | None = None) -> Scrape:
    headers = {"Accept": accept} if accept else {}
    r = httpx.get(d.admin_url + "/metrics", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    parse = openmetrics_families if accept == OPENMETRICS else text_string_to_metric_families
    families: dict[str, str] = {}
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in parse(r.text):
        families[family.name] = family.type
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return Scrape(r.headers["content-type"], r.text, families, samples)


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------
# One daemon, one known mix of requests and deliveries, for the tests below


@dataclass
class Run:
    daemon: Daemon
    before: Scrape  # right after start-up
    after: Scrape  # once every delivery has settled
    event_ids: list[str]
    first_post: float  # wall clock just before the first accepted event was sent
    scraped_at: float


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    d = Daemon(tmp_path_factory.mktemp("metrics"))
    (d.root / "plugins").mkdir()
    (d.root / "plugins" / "gone.py").write_text(GONE_PLUGIN)
    d.configure(body=SINKS.format(port=closed_port()), plugin_dirs=True)
    d.start()
    try:
        before = scrape(d)
        bodies = [make_event(text=f"hello {i}") for i in range(3)]
        first_post = time.time()
        for body in bodies:  # accepted: 3
            assert d.post(body).status_code == 200
        assert d.post(bodies[0]).json()["duplicate"] is True  # duplicate: 1
        probe = json.dumps({"type": "test", "id": "probe-1"}).encode()
        assert d.post(probe, signature=None).json()["probe"] is True  # probe: 2
        assert d.post(probe).json()["probe"] is True
        assert d.post(make_event(), signature=None).status_code == 401  # 401: 2
        assert d.post(make_event(), signature="bm90IGEgc2lnbmF0dXJl").status_code == 401
        assert d.post(b"this is not JSON").status_code == 400  # 400: 1
        assert d.post(b"x" * 70_000).status_code == 413  # 413: 1 (max_body_bytes 65536)

        def settled() -> bool:
            s = scrape(d)
            return (
                len(d.lines("out/archive.jsonl")) == 3
                and s.by("voltd_sink_dead_letters", "sink").get("relay") == 3
                and s.by("voltd_sink_pending", "sink").get("relay") == 0
                and s.value("voltd_sink_state", sink="crm", state="disabled") == 1
            )

        d.wait_for(settled, timeout=30)
        time.sleep(1.1)  # past the spool counts' 1 s cache: the scrape below reads anew
        scraped_at = time.time()
        after = scrape(d)
        yield Run(d, before, after, [json.loads(b)["id"] for b in bodies], first_post, scraped_at)
        assert d.stop() == 0
    finally:
        d.close()


def test_requests_are_counted_by_outcome(run: Run) -> None:
    zero = {o: 0.0 for o in (*REQUEST_OUTCOMES, OTHER)}
    assert run.before.by("voltd_requests_total", "outcome") == zero
    assert run.after.by("voltd_requests_total", "outcome") == {
        **zero,
        "accepted": 3,
        "duplicate": 1,
        "probe": 2,
        "401": 2,
        "400": 1,
        "413": 1,
    }
    after = run.after
    assert after.families["voltd_request_duration_seconds"] == "histogram"
    assert after.value("voltd_request_duration_seconds_count") == 10
    assert after.value("voltd_request_duration_seconds_bucket", le="+Inf") == 10
    assert 0 < after.value("voltd_request_duration_seconds_sum") < 10 * 5


def test_deliveries_are_counted_per_sink_and_outcome(run: Run) -> None:
    s = run.after
    archive = s.by("voltd_deliveries_total", "outcome", sink="archive")
    assert archive == {"delivered": 3, "retry": 0, "dead": 0}
    relay = s.by("voltd_deliveries_total", "outcome", sink="relay")
    assert relay["delivered"] == 0 and relay["dead"] == 3 and relay["retry"] >= 1
    crm = s.by("voltd_deliveries_total", "outcome", sink="crm")
    assert crm["delivered"] == 0 and crm["dead"] == 0 and crm["retry"] >= 1  # waits, disabled
    # One latency per delivered event, none for the others.
    assert s.value("voltd_delivery_latency_seconds_count", sink="archive") == 3
    assert s.value("voltd_delivery_latency_seconds_count", sink="relay") == 0
    assert 0 < s.value("voltd_delivery_latency_seconds_sum", sink="archive") < 3 * 10
    # Sink calls: the file sink takes batches (1 to 3 calls); each failing sink was called.
    assert 1 <= s.value("voltd_delivery_attempt_duration_seconds_count", sink="archive") <= 3
    assert s.value("voltd_delivery_attempt_duration_seconds_count", sink="relay") >= 1
    assert s.value("voltd_delivery_attempt_duration_seconds_count", sink="crm") >= 1


def test_sink_gauges_say_what_the_spool_holds(run: Run) -> None:
    s = run.after
    assert s.by("voltd_sink_pending", "sink") == {"archive": 0, "relay": 0, "crm": 3}
    assert s.by("voltd_sink_dead_letters", "sink") == {"archive": 0, "relay": 3, "crm": 0}
    assert s.by("voltd_sink_in_flight", "sink") == {"archive": 0, "relay": 0, "crm": 0}
    age = s.by("voltd_sink_oldest_pending_age_seconds", "sink")
    assert age["archive"] == 0 and age["relay"] == 0
    # The crm sink's first event has waited since it was sent (give or take the scrape).
    assert run.scraped_at - run.first_post - 2 <= age["crm"] <= time.time() - run.first_post
    states = {sink: s.by("voltd_sink_state", "state", sink=sink) for sink in SINK_NAMES}
    assert states == {
        "archive": {"ok": 1, "paused": 0, "disabled": 0},
        "relay": {"ok": 0, "paused": 1, "disabled": 0},  # failing: tried again after a pause
        "crm": {"ok": 0, "paused": 0, "disabled": 1},
    }
    # The same numbers as `voltd spool status`.
    db = SpoolDB(run.daemon.root / "spool.db", readonly=True)
    try:
        status = db.status()
    finally:
        db.close()
    for sink in SINK_NAMES:
        assert status[sink]["pending"] == s.value("voltd_sink_pending", sink=sink)
        assert status[sink]["dead"] == s.value("voltd_sink_dead_letters", sink=sink)


def test_openmetrics_is_negotiated(run: Run) -> None:
    om = scrape(run.daemon, OPENMETRICS)
    assert om.content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert om.text.endswith("# EOF\n")
    assert om.value("voltd_requests_total", outcome="accepted") == 3
    assert om.value("voltd_build_info", version=voltd.__version__, python=_python(om)) == 1
    plain = scrape(run.daemon, "text/plain")
    assert plain.content_type.startswith("text/plain") and "# EOF" not in plain.text
    assert run.after.content_type.startswith("text/plain")  # no Accept: the text format


def _python(s: Scrape) -> str:
    (labels, _), *_ = s.samples["voltd_build_info"]
    return labels["python"]


#: A phone number (E.164 or written), a long run of digits, an event id, a UUID, an address.
UNBOUNDED = re.compile(
    r"\+?\d[\d ().-]{6,}\d|\d{5,}|evt_|[0-9a-f]{8}-[0-9a-f]{4}|\d+\.\d+\.\d+\.\d+|:\d{2,5}$",
    re.IGNORECASE,
)


def test_labels_are_bounded(run: Run) -> None:
    s = run.after
    allowed = {
        "outcome": {*REQUEST_OUTCOMES, OTHER, *DELIVERY_OUTCOMES, *RELOAD_OUTCOMES},
        "sink": SINK_NAMES,
        "state": {"ok", "paused", "disabled"},
        "version": {voltd.__version__},
        "python": {_python(s)},
    }
    seen: set[str] = set()
    for name, samples in s.samples.items():
        if not name.startswith("voltd_"):
            continue
        for labels, _ in samples:
            for key, value in labels.items():
                seen.add(key)
                if key == "le":
                    assert value == "+Inf" or math.isfinite(float(value))
                    continue
                assert key in allowed, (name, key, value)
                assert value in allowed[key], (name, key, value)
                if key != "python":  # "3.11.9" is a version, not an address
                    assert not UNBOUNDED.search(value), (name, key, value)
                assert not any(i in value for i in run.event_ids)
    assert seen == {"le", *allowed}


def test_process_metrics_and_build_info_are_there(run: Run) -> None:
    s = run.after
    assert s.value("process_resident_memory_bytes") > 10 * 2**20
    assert s.value("process_cpu_seconds_total") > 0
    assert s.value("process_open_fds") > 0
    assert s.value("process_start_time_seconds") <= run.first_post
    assert "python_info" in s.samples  # the platform collector
    assert "python_gc_objects_collected_total" in s.samples
    assert s.value("voltd_build_info", version=voltd.__version__, python=_python(s)) == 1
    # At start-up: the configuration was loaded, no reload yet.
    b = run.before
    assert b.by("voltd_config_reloads_total", "outcome") == {"success": 0, "failure": 0}
    assert b.value("voltd_config_last_reload_successful") == 1
    assert 0 < b.value("voltd_config_last_reload_success_timestamp_seconds") <= run.first_post
    assert not [n for n in s.samples if n.endswith("_created")]  # no doubled series


# --------------------------------------------------------------------------------------------
# Reloads


def test_reloads_are_counted(daemon: Daemon) -> None:
    daemon.start()
    started = scrape(daemon).value("voltd_config_last_reload_success_timestamp_seconds")
    assert daemon.proc is not None

    def hup_and_wait(text: str) -> Scrape:
        seen = len(daemon.log)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(lambda: any(text in line for line in daemon.log[seen:]))
        return scrape(daemon)

    time.sleep(0.05)  # a later timestamp for the reload below
    good = hup_and_wait("configuration reloaded")
    assert good.by("voltd_config_reloads_total", "outcome") == {"success": 1, "failure": 0}
    assert good.value("voltd_config_last_reload_successful") == 1
    reloaded = good.value("voltd_config_last_reload_success_timestamp_seconds")
    assert started < reloaded <= time.time()

    daemon.config.write_text(daemon.config.read_text() + '\n[sinks.broken]\ntype = "nope"\n')
    bad = hup_and_wait("reload refused")
    assert bad.by("voltd_config_reloads_total", "outcome") == {"success": 1, "failure": 1}
    assert bad.value("voltd_config_last_reload_successful") == 0
    assert bad.value("voltd_config_last_reload_success_timestamp_seconds") == reloaded
    assert daemon.stop() == 0


# --------------------------------------------------------------------------------------------
# The spool's counts, and no global state


def test_spool_gauges_match_the_full_report(tmp_path: Path) -> None:
    db = SpoolDB(tmp_path / "spool.db")
    try:
        stored = db.insert((make_event_obj(i), ["a", "b"]) for i in range(5))
        seqs = [s.seq for s in stored]
        db.conn.execute("UPDATE deliveries SET state = ? WHERE sink = 'a'", (int(State.DELIVERED),))
        db.conn.execute(
            "UPDATE deliveries SET state = ? WHERE sink = 'b' AND event_seq <= ?",
            (int(State.DEAD), seqs[1]),
        )
        report = db.report()
        gauges = db.gauges()
        assert set(gauges) == {"b"}  # nothing pending or dead for a
        pending, dead, oldest = gauges["b"]
        assert (pending, dead) == (report["b"]["pending"], report["b"]["dead"]) == (3, 2)
        assert oldest is not None
        assert abs((time.time() - oldest) - report["b"]["oldest_pending_age"]) < 1
    finally:
        db.close()


def make_event_obj(i: int) -> voltd.Event:
    from voltd.events import parse

    event = parse(make_event(text=f"event {i}"))
    assert isinstance(event, voltd.Event)
    return event


def test_importing_registers_nothing_globally() -> None:
    code = (
        "import prometheus_client, voltd.metrics, voltd.server, voltd.delivery, voltd.daemon\n"
        "names = [m.name for m in prometheus_client.REGISTRY.collect()]\n"
        "assert not [n for n in names if n.startswith('voltd')], names\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------------------------
# contrib/: the Grafana dashboard and the Prometheus alerts

#: The series a family of each type has, as PromQL names them.
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
    "info": ("_info",),
    "gauge": ("",),
    "unknown": ("",),
}


def _series(name: str, families: dict[str, str]) -> str | None:
    """The family that series `name` belongs to, stripping the suffix its type has."""
    for family, kind in families.items():
        for suffix in SERIES_SUFFIXES.get(kind, ("",)):
            if name == family + suffix:
                return family
    return None


def _named(path: Path) -> set[str]:
    return set(re.findall(r"\bvoltd_[a-z0-9_]*[a-z0-9]", path.read_text()))


def test_contrib_names_only_metrics_that_exist(run: Run) -> None:
    families = run.after.families
    dashboard, alerts = CONTRIB / "grafana-dashboard.json", CONTRIB / "prometheus-alerts.yml"
    json.loads(dashboard.read_text())  # a JSON model
    for path in (dashboard, alerts):
        names = _named(path)
        assert names, path
        missing = sorted(n for n in names if _series(n, families) is None)
        assert not missing, f"{path.name} names metrics that a scrape does not have: {missing}"
    # Suffixes are stripped by type: a histogram's base name is not a series of its own.
    assert _series("voltd_request_duration_seconds_bucket", families)
    assert _series("voltd_request_duration_seconds", families) is None
    assert _series("voltd_requests", families) is None
    # The dashboard shows every family voltd has.
    shown = {_series(n, families) for n in _named(dashboard)}
    assert shown == {f for f in families if f.startswith("voltd_")}


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not on PATH (Debian: apt-get install prometheus)")
    out = subprocess.run(
        [promtool, "check", "rules", str(CONTRIB / "prometheus-alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
