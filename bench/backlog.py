"""Backlog phases: ingest while a sink is down, then how fast and in how much memory voltd
works off a backlog once the sink is back.

- `run_sinkdown`: voltd with the archive sink failing (its directory is a regular file, so
  every write raises ENOTDIR, an OSError the file sink turns into RetryableError), under the
  same wrk load as the normal voltd run. Ingest must not care: the target is accepted req/s
  at least 0.9x the normal run's. Then the sink is repaired (config fixed, SIGHUP) and the
  runner times until every acknowledged event is in the archive.
- `run_drain`: a spool pre-filled with a large backlog for the archive (written directly with
  voltd's SpoolDB, no HTTP), a daemon started without the archive sink (its deliveries wait),
  then the sink is configured and SIGHUP sent. Deliveries/s from that SIGHUP until the file
  holds every event is the drain rate (target 20,000/s); VmRSS is sampled throughout. With
  `spool_url` the same on a PostgreSQL spool (the `pg-drain` phase, bench/shared.py).
"""

from __future__ import annotations

import os
import shlex
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from base import (
    DRAIN_TIMEOUT,
    HOST,
    NOISY_SHARE,
    WARMUP_SECONDS,
    WEBHOOK_PATH,
    BenchError,
    indent,
    tail,
)
from load import summarize, wrk_load
from probe import Probe
from report import check, fmt, noisy_note, print_load_notes, ratio_check, server_exit_problems
from servers import (
    RssSampler,
    Server,
    cpu_busy_seconds,
    cpu_seconds,
    finish_server,
    free_port,
    launch_voltd,
    memory_mb,
    send_sanity,
)
from sinks import (
    LineCounter,
    SinkReader,
    expected_deliveries,
    spool_items,
    spool_pending,
    wait_drained,
)
from workload import ARCHIVE_PATH, SINK_DIRS, Setup, make_events, voltd_config

from voltd.spool import SpoolDB
from voltd.spool_pg import PgSpoolDB

# A regular file where the archive expects a directory: open() fails with ENOTDIR, which the
# file sink reports as RetryableError, so voltd keeps the deliveries and tries again later.
DOWN_ARCHIVE_PATH = "down/" + ARCHIVE_PATH
REPAIR_POLL = 0.005
PREFILL_CHUNK = 5000
DRAIN_TARGET_PER_S = 20_000
SINKDOWN_TARGET_RATIO = 0.9
# RSS counts as flat when the drain adds no more than this over the idle daemon with the
# backlog pending: a per-batch working set, not a copy of the backlog.
RSS_FLAT_MB = 32.0


def _repair(server: Server, config_path: Path, config_text: str) -> float:
    """Fix the config and SIGHUP: voltd reloads and (re)starts the changed sink's worker."""
    config_path.write_text(config_text)
    start = time.monotonic()
    os.kill(server.pid, signal.SIGHUP)
    return start


def _wait_archive(
    reader: SinkReader, wanted: list[str], start: float, timeout: float, held_back: int = 0
) -> dict[str, Any]:
    """Poll the archive until it holds every id in `wanted`; time the first arrival, the
    last, and when all but `held_back` (deliveries waiting out their own backoff) were in."""
    base = reader.lines("archive")
    first: float | None = None
    done: float | None = None
    bulk: float | None = None
    pending = list(dict.fromkeys(wanted))
    while time.monotonic() - start < timeout:
        reader.poll()
        now = time.monotonic()
        lines = reader.lines("archive") - base
        if first is None and lines > 0:
            first = now
        if bulk is None and lines >= len(pending) - held_back:
            bulk = now
        if lines >= len(pending):
            if not reader.missing("archive", pending):
                done = now
                break
        time.sleep(REPAIR_POLL)
    ids = reader.ids.get("archive", {})
    n = len(pending)
    return {
        "events": n,
        "complete": done is not None,
        "missing": len(reader.missing("archive", pending)) if done is None else 0,
        "duplicates": sum(c - 1 for c in ids.values() if c > 1),
        "first_line_s": None if first is None else first - start,
        "all_s": None if done is None else done - start,
        "per_s": n / (done - start) if done is not None else None,
        "held_back": held_back,
        "all_but_held_back_s": None if bulk is None else bulk - start,
        "all_but_held_back_per_s": (
            (n - held_back) / (bulk - start) if bulk is not None and n > held_back else None
        ),
    }


# -- ingest with a sink down, then repair -----------------------------------------------------


def run_sinkdown(setup: Setup, probe_rate: float | None) -> dict[str, Any]:
    """The normal load against voltd whose archive sink fails; then repair and drain."""
    directory = setup.workdir / "sinkdown"
    directory.mkdir()
    (directory / "down").write_text("a file where the archive sink wants a directory\n")
    port, admin_port = free_port(), free_port()
    url = f"https://{HOST}:{port}{WEBHOOK_PATH}"
    config = voltd_config(
        port, admin_port, keys_dir=setup.voltd_dir, archive_path=DOWN_ARCHIVE_PATH
    )
    print(f"\n[sinkdown] starting voltd with the archive sink down ({DOWN_ARCHIVE_PATH})")
    server = launch_voltd("voltd (archive down)", directory, config, admin_port, setup.server_cpu)
    out: dict[str, Any] = {
        "server_command": shlex.join(server.cmd),
        "down_because": f"{DOWN_ARCHIVE_PATH}: 'down' is a regular file (ENOTDIR)",
    }
    probe: Probe | None = None
    try:
        sanity_id = send_sanity(setup, port, server)
        print(f"[sinkdown] warm-up {WARMUP_SECONDS} s", flush=True)
        warm = wrk_load(setup, url, setup.warmup_file, WARMUP_SECONDS, "sinkdown-warmup", server)
        # The same probe load as the normal run (so both carry it), without tailing: the
        # archive is down, its lines can only appear after the repair.
        if probe_rate:
            probe = Probe(
                port, setup.certfile, setup.probe_events, setup.probe_signatures, probe_rate, None
            )
            probe.start()
        print(f"[sinkdown] measuring {setup.args.duration} s", flush=True)
        run = wrk_load(setup, url, setup.main_file, setup.args.duration, "sinkdown", server)
        if probe is not None:
            probe.stop_sending()
        out.update(summarize(run))
        if probe is not None:
            out["probe"] = probe.report((run.load_end - out["duration_s"], run.load_end))
        if server.proc is not None and server.proc.poll() is not None:
            raise BenchError(f"voltd died during the load:\n{indent(tail(server.log_path))}")
        out["backlog_at_load_end"] = spool_pending(directory / "spool.db", "archive")

        # A dead sink must not hold up the others: they should have everything already.
        reader = SinkReader(directory)
        wanted = expected_deliveries(run.accepted_ids, setup.main_events)
        others = {s: ids for s, ids in wanted.items() if s != "archive"}
        others_drain = wait_drained(reader, others, 0, DRAIN_TIMEOUT)
        out["other_sinks"] = {
            "all_delivered": others_drain.complete,
            "wait_s": others_drain.seconds,
            "missing": {s: len(m) for s, m in others_drain.missing.items()},
        }

        before = spool_pending(directory / "spool.db", "archive")
        out["backlog_at_repair"] = before
        archive_wanted = [
            sanity_id,
            *expected_deliveries(warm.accepted_ids, setup.warmup_events)["archive"],
            *wanted["archive"],
            *(probe.acked_ids() if probe is not None else []),
        ]
        horizon = max(0.0, before["latest_retry_in_s"] or 0.0)
        print(
            f"[sinkdown] {before['pending']} deliveries pending for the archive; repairing "
            f"(config + SIGHUP); retries are scheduled up to {horizon:.1f} s ahead",
            flush=True,
        )
        start = _repair(
            server,
            directory / "voltd.toml",
            voltd_config(port, admin_port, keys_dir=setup.voltd_dir),
        )
        out["repair"] = _wait_archive(
            reader, archive_wanted, start, horizon + DRAIN_TIMEOUT, before["scheduled_later"]
        )
    except BenchError as exc:
        print(f"[sinkdown] error: {exc}", flush=True)
        out["error"] = str(exc)
    finally:
        if probe is not None:
            probe.close()
        finish_server(server, out, "voltd-sinkdown")
    return out


# -- a large backlog: drain rate and memory -------------------------------------------------


def prefill(spool: Path | str, count: int, seed: int) -> list[str]:
    """Write `count` new events, each with one pending delivery to the archive, in big
    transactions: setup, not measurement. Returns their envelope ids. `spool` is a SQLite
    file, or the URL of a migrated PostgreSQL spool (voltd's `PgSpoolDB.insert`).

    (Making the events on all CPUs with a process pool was tried: on a shared 2-CPU machine
    it was no faster, so this stays simple.)
    """
    now = time.time()
    db: SpoolDB | PgSpoolDB = PgSpoolDB(spool) if isinstance(spool, str) else SpoolDB(spool)
    ids: list[str] = []
    try:
        for i in range(0, count, PREFILL_CHUNK):
            events = make_events(min(PREFILL_CHUNK, count - i), seed * 1_000_003 + i, now)
            db.insert(spool_items(events, ("archive",)))
            ids.extend(e.id for e in events)
    finally:
        db.close()
    return ids


def _drain_cpu(
    seconds: float,
    daemon_before: float | None,
    daemon_after: float | None,
    core_before: tuple[float, float] | None,
    core_after: tuple[float, float] | None,
) -> dict[str, float | None]:
    """Shares of the daemon's core during the drain: the daemon's own (near 100% means
    CPU-bound, well below means it waits, e.g. on fsync) and everything else's (noise)."""
    daemon = (
        daemon_after - daemon_before
        if daemon_before is not None and daemon_after is not None
        else None
    )
    core = core_after[0] - core_before[0] if core_before and core_after else None
    return {
        "daemon_share": daemon / seconds if daemon is not None and seconds else None,
        "other_share": (
            max(0.0, core - daemon) / seconds
            if core is not None and daemon is not None and seconds
            else None
        ),
    }


def run_drain(
    setup: Setup,
    backlog: int,
    *,
    spool_url: str | None = None,
    name: str = "drain",
    spool_mb: Callable[[], float] | None = None,
    db_cpu: Callable[[], float | None] | None = None,
    db_on_daemon_cpu: bool = True,
) -> dict[str, Any]:
    """Pre-filled backlog → daemon without the sink → configure the sink, SIGHUP → drained.

    `spool_url`: a fresh, migrated PostgreSQL spool instead of a SQLite file (`name` then
    names the phase, its directory and log; `spool_mb` measures the database's size, and
    `db_cpu` reads the database server's CPU seconds so far, which is then shown apart from
    other work on the daemon's CPU when `db_on_daemon_cpu`).
    """
    directory = setup.workdir / name
    directory.mkdir()
    spool: Path | str = spool_url if spool_url is not None else directory / "spool.db"
    kind = "PostgreSQL" if spool_url is not None else "SQLite"
    print(f"\n[{name}] writing a backlog of {backlog} events into a fresh {kind} spool", flush=True)
    t0 = time.monotonic()
    ids = prefill(spool, backlog, setup.args.seed + 7)
    out: dict[str, Any] = {
        "spool": kind,
        "backlog": backlog,
        "prefill_s": time.monotonic() - t0,
        "spool_mb": (
            spool_mb()
            if spool_mb is not None
            else sum(p.stat().st_size for p in directory.glob("spool.db*")) / 2**20
        ),
    }
    port, admin_port = free_port(), free_port()
    server = launch_voltd(
        f"voltd ({name})",
        directory,
        voltd_config(
            port, admin_port, keys_dir=setup.voltd_dir, archive_path=None, spool_url=spool_url
        ),
        admin_port,
        setup.server_cpu,
    )
    out["server_command"] = shlex.join(server.cmd)
    sampler = RssSampler(server.pid).start()
    try:
        rss: dict[str, Any] = {"ready": memory_mb(server.pid)}
        out["rss_mb"] = rss
        pending = spool_pending(spool, "archive")
        if pending["pending"] != backlog:
            raise BenchError(
                f"the spool holds {pending['pending']} archive deliveries, not {backlog}"
            )
        time.sleep(1.0)  # idle with the backlog pending: nothing should grow
        rss["backlog_pending"] = memory_mb(server.pid)
        counter = LineCounter(directory / SINK_DIRS["archive"])
        timeout = DRAIN_TIMEOUT + backlog / 1000
        print(
            f"[{name}] {backlog} deliveries pending; configuring the archive sink (SIGHUP), "
            f"draining (up to {timeout:.0f} s)",
            flush=True,
        )
        cpu_before = cpu_seconds(server.pid)
        core_before = cpu_busy_seconds(setup.server_cpu)
        db_before = db_cpu() if db_cpu is not None else None
        start = _repair(
            server,
            directory / "voltd.toml",
            voltd_config(port, admin_port, keys_dir=setup.voltd_dir, spool_url=spool_url),
        )
        first: float | None = None
        done: float | None = None
        at_first = 0
        while time.monotonic() - start < timeout:
            n = counter.poll()
            now = time.monotonic()
            if first is None and n:
                first, at_first = now, n
            if n >= backlog:
                done = now
                break
            time.sleep(REPAIR_POLL)
        end = done if done is not None else time.monotonic()
        out["cpu"] = _drain_cpu(
            end - start,
            cpu_before,
            cpu_seconds(server.pid),
            core_before,
            cpu_busy_seconds(setup.server_cpu),
        )
        db_after = db_cpu() if db_cpu is not None else None
        if db_before is not None and db_after is not None and end > start:
            # The database's own work is not a disturbance: shown apart.
            db_share = (db_after - db_before) / (end - start)
            out["cpu"]["db_share"] = db_share
            if out["cpu"]["other_share"] is not None and db_on_daemon_cpu:
                out["cpu"]["other_share"] = max(0.0, out["cpu"]["other_share"] - db_share)
        rss["peak_during_drain"] = sampler.peak(start, end)
        time.sleep(1.0)
        rss["after_drain"] = memory_mb(server.pid)
        out.update(
            {
                "complete": done is not None,
                "lines": counter.count,
                "first_line_s": None if first is None else first - start,
                "all_s": None if done is None else done - start,
                "per_s": backlog / (done - start) if done is not None else None,
                # Without the reload and the first batch: the steady rate.
                "per_s_after_first_line": (
                    (backlog - at_first) / (done - first)
                    if done is not None and first is not None and done > first
                    else None
                ),
            }
        )
        out["after"] = spool_pending(spool, "archive")
        # Every event exactly once (a full read of the archive: after the timing).
        reader = SinkReader(directory)
        reader.poll()
        have = reader.ids.get("archive", {})
        out["missing"] = sum(1 for i in ids if i not in have)
        out["duplicates"] = sum(c - 1 for c in have.values() if c > 1)
        out["rss_mb"]["samples"] = len(sampler.samples)
    except BenchError as exc:
        print(f"[{name}] error: {exc}", flush=True)
        out["error"] = str(exc)
    finally:
        sampler.stop()
        finish_server(server, out, f"voltd-{name}")
    if "rss_mb" in out:
        out["rss_mb"]["hwm_lifetime"] = (out["rss_mb"].get("after_drain") or {}).get("VmHWM")
    return out


# -- reporting ------------------------------------------------------------------------------


def report_sinkdown(
    r: dict[str, Any], normal: dict[str, Any] | None
) -> tuple[list[str], list[dict[str, Any]]]:
    """Print the sink-down section; return (problems, checks)."""
    print()
    problems = server_exit_problems("sinkdown", r)
    if "accepted_per_s" not in r:
        print(f"sinkdown: FAILED: {r.get('error', '?').splitlines()[0]}")
        return problems, [check("sinkdown", "req/s with a sink down vs normal", "-", "", None)]
    normal_rate = (normal or {}).get("accepted_per_s")
    ratio = r["accepted_per_s"] / normal_rate if normal_rate else None
    lat = r.get("latency_ms") or r.get("wrk_latency_ms") or {}
    print(f"sinkdown: the same load with the archive sink failing ({r['down_because']})")
    print_load_notes("sinkdown", r)
    print(
        f"  accepted req/s {r['accepted_per_s']:.1f}"
        + (
            f" vs {normal_rate:.1f} in the normal voltd run = {ratio:.2f}x"
            if ratio is not None
            else " (no normal voltd run in this invocation to compare with)"
        )
        + f"; p50 {fmt(lat.get('p50'))} ms, p99 {fmt(lat.get('p99'))} ms, "
        f"non-2xx {r['non2xx']}, CPU ms/req {fmt(r.get('server_cpu_ms_per_request'), '.3f')}"
    )
    if r["non2xx"]:
        problems.append(f"sinkdown: {r['non2xx']} non-2xx answers {r['status_codes']}")
    errs = {k: v for k, v in r["socket_errors"].items() if v}
    if errs:
        problems.append(f"sinkdown: socket errors {errs}")
    end = r.get("backlog_at_load_end")
    if end:
        print(
            f"  archive backlog at the end of the load: {end['pending']} pending deliveries "
            f"(spool, read-only), {end['attempts_made']} failed attempts so far"
        )
    others = r.get("other_sinks")
    if others:
        if others["all_delivered"]:
            print("  the other sinks had every acknowledged event meanwhile (not held up)")
        else:
            print(f"  the other sinks were MISSING events: {others['missing']}")
            problems.append(
                f"sinkdown: other sinks missing events while archive was down: {others['missing']}"
            )
    repair = r.get("repair")
    if repair:
        before = r["backlog_at_repair"]
        horizon = before["latest_retry_in_s"]
        if repair["complete"]:
            print(
                f"  repair (config fixed + SIGHUP): first line after "
                f"{fmt(repair['first_line_s'])} s; all {repair['events']} acknowledged events "
                f"in the archive after {repair['all_s']:.2f} s ({repair['per_s']:.0f}/s)"
            )
        else:
            print(f"  repair: NOT drained; {repair['missing']} acknowledged events missing")
            problems.append(
                f"sinkdown: {repair['missing']} acknowledged events never reached the archive "
                f"after the repair"
            )
        held = repair["held_back"]
        if held and repair["all_but_held_back_s"] is not None:
            print(
                f"  {held} of them had been tried during the outage and were scheduled by their "
                f"backoff up to {horizon:.1f} s after the repair: the restarted sink waits for "
                f"those; the other {repair['events'] - held} were in after "
                f"{repair['all_but_held_back_s']:.2f} s "
                f"({fmt(repair['all_but_held_back_per_s'], ',.0f')}/s)"
            )
        if repair["duplicates"]:
            print(f"  {repair['duplicates']} duplicate lines in the archive")
    if r.get("probe"):
        p = r["probe"]
        print(
            f"  probe during the load: {p['acked']} acknowledged, ack p50 "
            f"{fmt(p['ack_ms'].get('p50'), '.1f')} ms, p99 {fmt(p['ack_ms'].get('p99'), '.1f')} ms"
        )
    return problems, [
        ratio_check(
            "sinkdown",
            "req/s with the archive sink down vs normal",
            ratio,
            SINKDOWN_TARGET_RATIO,
            noisy_note(r, normal),
        )
    ]


def report_drain(
    r: dict[str, Any],
    phase: str = "drain",
    rate_target: float | None = DRAIN_TARGET_PER_S,
    detail: str | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Print the backlog drain and memory section; return (problems, checks). `phase` names
    it (`pg-drain` reuses it); without `rate_target` the rate is shown but not judged;
    `detail` is printed under the first line."""
    print()
    problems = server_exit_problems(phase, r)
    if "backlog" not in r:
        print(f"{phase}: FAILED: {r.get('error', '?').splitlines()[0]}")
        return problems, [check(phase, "backlog drain to the archive", "-", "", None)]
    print(
        f"{phase}: {r['backlog']} events pre-filled for the archive "
        f"({r['prefill_s']:.1f} s, {r.get('spool', 'SQLite')} spool {r['spool_mb']:.0f} MB); "
        f"daemon started without that sink, then it was configured and SIGHUP sent"
    )
    if detail:
        print(f"  {detail}")
    rate = r.get("per_s")
    if r.get("complete"):
        print(
            f"  all {r['backlog']} in the archive {r['all_s']:.2f} s after SIGHUP: "
            f"{rate:,.0f} events/s (first line after {fmt(r['first_line_s'], '.3f')} s; "
            f"{fmt(r['per_s_after_first_line'], ',.0f')}/s from then)"
        )
    elif "complete" in r:
        print(f"  NOT drained: {r['lines']} of {r['backlog']} lines in the archive")
        problems.append(f"{phase}: only {r['lines']} of {r['backlog']} events reached the archive")
    if r.get("missing"):
        problems.append(f"{phase}: {r['missing']} backlog events missing from the archive")
    if r.get("duplicates"):
        print(f"  {r['duplicates']} duplicate lines in the archive")
    cpu = r.get("cpu") or {}
    if cpu.get("daemon_share") is not None:
        print(
            f"  the daemon used {100 * cpu['daemon_share']:.0f}% of its CPU while draining "
            + (
                "(below 100%: it waits, on the database and the sink's fsyncs); other work took "
                if cpu.get("db_share") is not None
                else "(below 100%: it waits, mostly on the sink's fsyncs); other work took "
            )
            + f"{100 * (cpu.get('other_share') or 0):.0f}% of that CPU"
        )
    if cpu.get("db_share") is not None:
        print(f"  PostgreSQL used {100 * cpu['db_share']:.0f}% of a CPU meanwhile")
    rss = r.get("rss_mb") or {}

    def mb(key: str) -> float | None:
        v = rss.get(key)
        return v.get("VmRSS") if isinstance(v, dict) else v

    growth = None
    if mb("peak_during_drain") is not None and mb("backlog_pending") is not None:
        growth = mb("peak_during_drain") - mb("backlog_pending")  # type: ignore[operator]
    if rss:
        print(
            f"  RSS MB: ready {fmt(mb('ready'), '.1f')}, idle with the backlog pending "
            f"{fmt(mb('backlog_pending'), '.1f')}, peak during the drain "
            f"{fmt(mb('peak_during_drain'), '.1f')}, 1 s after {fmt(mb('after_drain'), '.1f')} "
            f"(VmHWM {fmt(rss.get('hwm_lifetime'), '.1f')}; sampled every 20 ms)"
        )
    if "error" in r:
        print(f"  FAILED: {r['error'].splitlines()[0]}")
    checks = []
    if rate_target is not None:
        checks.append(
            check(
                phase,
                f"backlog drain to the archive ({r['backlog']} events)",
                fmt(rate, ",.0f") + "/s",
                f">= {rate_target:,.0f}/s",
                None if rate is None else rate >= rate_target,
                "noisy: other work on the daemon's CPU"
                if (cpu.get("other_share") or 0.0) > NOISY_SHARE
                else "",
            )
        )
    return problems, [
        *checks,
        check(
            phase,
            "RSS growth while draining (peak - pending)",
            fmt(growth, "+.1f") + " MB",
            f"<= +{RSS_FLAT_MB:.0f} MB",
            None if growth is None else growth <= RSS_FLAT_MB,
        ),
    ]
