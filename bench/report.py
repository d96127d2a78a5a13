"""Reporting: number formatting, target verdicts, and notes on runs that went wrong or were
disturbed by other work on the machine.
"""

from __future__ import annotations

from typing import Any

from base import NOISY_SHARE, indent


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def check(
    phase: str, what: str, shown: str, target: str, passed: bool | None, note: str = ""
) -> dict[str, Any]:
    """One target judged: PASS, FAIL, or n/a when this run could not measure it. `note` says
    why a verdict may not be trusted (the machine was busy)."""
    verdict = "n/a" if passed is None else "PASS" if passed else "FAIL"
    return {
        "phase": phase,
        "what": what,
        "value": shown,
        "target": target,
        "verdict": verdict,
        "note": note,
    }


def ratio_check(
    phase: str, what: str, ratio: float | None, target: float, note: str = "", spec: str = ".2f"
) -> dict[str, Any]:
    """A ratio judged against the least it may be (`>= target`x); n/a without a ratio."""
    return check(
        phase,
        what,
        fmt(ratio, spec) + "x",
        f">= {target:.2f}x",
        None if ratio is None else ratio >= target,
        note,
    )


def server_exit_problems(name: str, r: dict[str, Any]) -> list[str]:
    """A daemon that failed or did not exit 0 on SIGTERM is a problem whatever it measured."""
    problems = []
    if "error" in r:
        problems.append(f"{name}: {r['error']}")
    if r.get("exit_code") not in (0, None):
        problems.append(
            f"{name}: exited with status {r['exit_code']} after SIGTERM"
            + (" (killed after timeout)" if r.get("killed_after_sigterm_timeout") else "")
            + f"\n{indent(r.get('log_tail', ''))}"
        )
    return problems


def load_problems(name: str, r: dict[str, Any], connections: int) -> list[str]:
    """What went wrong in a wrk load (`load.summarize`'s numbers): non-2xx answers, more
    requests unanswered than can be in flight when wrk stops, socket errors."""
    problems = []
    if r["non2xx"]:
        problems.append(
            f"{name}: {r['non2xx']} non-2xx answers {r['status_codes']}; first: {r['first_error']}"
        )
    if r["in_flight_at_end"] > connections:
        problems.append(
            f"{name}: {r['sent']} requests sent but only {r['completed']} answered; more than "
            f"the {connections} that can be in flight when wrk stops"
        )
    errs = {k: v for k, v in r["socket_errors"].items() if v}
    if errs:
        problems.append(f"{name}: socket errors {errs}")
    return problems


def is_noisy(r: dict[str, Any]) -> bool:
    """Did other work take a noticeable share of the server's or the client's CPU?"""
    other = r.get("server_core_other_share") or 0.0
    steal = r.get("server_core_steal_share") or 0.0
    client_other = r.get("client_core_other_share") or 0.0
    return max(other + steal, client_other) > NOISY_SHARE


def noisy_note(*runs: dict[str, Any] | None) -> str:
    """A target's note when any of the runs it compares was disturbed (see `is_noisy`)."""
    return "noisy: other work on the CPUs" if any(r and is_noisy(r) for r in runs) else ""


def print_load_notes(name: str, r: dict[str, Any]) -> None:
    """Say when a load run was disturbed by other work on the machine, or ran out of events."""
    other = r.get("server_core_other_share") or 0.0
    steal = r.get("server_core_steal_share") or 0.0
    client_other = r.get("client_core_other_share") or 0.0
    if is_noisy(r):
        print(
            f"{name}: NOTE: the machine was not quiet: {100 * other:.0f}% of the server's "
            f"CPU went to other processes or kernel threads (for voltd partly the journal "
            f"doing its fsyncs), {100 * steal:.0f}% to the hypervisor, and "
            f"{100 * client_other:.0f}% of wrk's CPU to other processes; expect noise"
        )
    if r.get("cycled"):
        print(
            f"{name}: WARNING: the run outlasted the {r['events_in_pool']} unique events "
            f"and cycled; repeats are dedup answers for voltd. Use --events."
        )
