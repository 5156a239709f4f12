"""Fault injection under continuous load, as a table: the scenarios of ``tests/test_faults.py`` (``scenarios.py``)
run one after the other, their reports to stderr, the README's markdown fault table to stdout.

    .venv/bin/python -m tests.support.faults                 # every scenario, then the markdown table
    .venv/bin/python -m tests.support.faults scale kill9     # some of them (scale second hup kill9 broker slow)
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections import Counter
from typing import Any, Callable

from .lab import SETTLE_S, Lab
from .loadgen import FRESH, KEEPALIVE, OK, Result, summarize
from .scenario import Run, ScenarioFailed
from .scenarios import (
    held_results,
    scenario_broker_restart,
    scenario_hup,
    scenario_kill9,
    scenario_scale,
    scenario_second_instance,
    scenario_slow_crash,
)

SCENARIOS: dict[str, tuple[str, Callable[..., Run]]] = {
    "scale": ("(a) scale 2→4→2 workers (TTIN/TTOU)", scenario_scale),
    "second": ("(b) 2nd instance joins, SIGTERM", scenario_second_instance),
    "hup": ("(c) rolling reload (HUP)", scenario_hup),
    "kill9": ("(d) kill -9 one worker", scenario_kill9),
    "broker": ("(e) broker stop + restart (empty)", scenario_broker_restart),
    "slow": ("(f) service slow, then kill -9", scenario_slow_crash),
}


def _codes(results: list[Result]) -> str:
    c = Counter(f"{r.status or 'conn'} {r.error}".strip() for r in results if r.outcome != OK)
    return ", ".join(f"{n}× {k}" for k, n in c.most_common()) or "none"


CONVERGED = {"scale": [("up", "up_settled_s"), ("down", "down_settled_s")],
             "second": [("join", "join_settled_s"), ("leave", "leave_settled_s")],
             "hup": [("reload", "reload_settled_s")], "kill9": [("replaced", "replaced_settled_s")],
             "slow": [("start", "start_settled_s")]}


def converged(key: str, facts: dict[str, Any]) -> str:
    """When the reply group converged after each event of the scenario (seconds after the event)."""
    parts = []
    for label, fact in CONVERGED.get(key, []):
        if fact in facts:
            value = facts[fact]
            parts.append(f"{label} {value} s" if value is not None else f"{label} NOT within {SETTLE_S:.0f} s")
    return ", ".join(parts) or "–"


def produced_once(run: Run) -> str:
    if run.produced is None:
        return "–"
    bad = run.not_produced_once()
    return "yes" if not bad else "; ".join(f"{len(v)}× {k}" for k, v in bad.items())


def note(key: str, run: Run) -> str:
    f = run.facts
    text = ""
    if key == "kill9" and "held_by_victim" in f:
        text = f"killed worker held {f['held_by_victim']} requests; failures {_codes(run.failed())}"
    elif key == "broker" and "detect_s" in f:
        outage = run.phase("outage")
        worst = max((r.latency for r in outage), default=0) * 1000
        text = (f"outage: {len(outage)} requests, {_codes(outage)}, slowest {worst:.0f} ms; first 200 "
                f"{f.get('first_200_after_restart_s')} s, every client {f.get('all_clients_served_s')} s, every "
                f"worker ready {f.get('all_workers_ready_s')} s after the restart; topics back "
                + ("with their configured partition counts" if f.get("topics_after_restart") ==
                   f.get("topics_configured") else f"as {f.get('topics_after_restart')} (configured "
                   f"{f.get('topics_configured')}; the workers "
                   f"{'adopted' if f.get('reply_topic_adopted') else 'did NOT adopt'} the reply topic's count)"))
    elif key == "slow" and run.results:
        text = (f"{_codes(run.failed())}; {f.get('late_replies_on_topic')} replies came after the deadline, all "
                f"counted late" if run.replies.get("late") == f.get("late_replies_on_topic") else
                f"{_codes(run.failed())}; late counted {run.replies.get('late')} of "
                f"{f.get('late_replies_on_topic')} late replies")
        text += f"; in flight 0 {f.get('in_flight_zero_after_crash_s')} s after the kill"
    elif key == "second" and "held_by_2nd_at_sigterm" in f:
        text = f"2nd held {f['held_by_2nd_at_sigterm']} requests at SIGTERM"
    elif key == "hup" and "held_at_hup" in f:
        held = held_results(run)
        text = (f"old workers held {len(held)} requests when their stop began, "
                f"{sum(r.outcome == OK for r in held)} answered ok; new workers serving "
                f"{f.get('reload_ready_s')} s after the HUP")
    if key in ("scale", "second", "hup") and run.failed():
        text += f"; failures {_codes(run.failed())}"
    if run.error:
        text += f" ERROR {run.error.splitlines()[0][:160]}"
    return text.strip("; ")


def table(rows: list[tuple[str, str, Run]]) -> str:
    out = ["| scenario | requests (keep-alive + fresh) | ok | failed | mismatched | stale-connection retries | "
           "refused | each produced once | p99 ms | late | foreign | duplicate | group converged | notes |",
           "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|"]
    for key, label, run in rows:
        s = summarize(run.results)
        r = run.replies
        out.append(f"| {label} | {s.requests} ({s.styles.get(KEEPALIVE, 0)} + {s.styles.get(FRESH, 0)}) | {s.ok} | "
                   f"{s.failed} | {s.mismatched} | {s.stale_retries} | {len(run.refusals)} | {produced_once(run)} | "
                   f"{s.p99_ms:.0f} | {r.get('late', '-')} | {r.get('foreign', '-')} | {r.get('duplicate', '-')} | "
                   f"{converged(key, run.facts)} | {note(key, run)} |")
    return "\n".join(out)


def run_scenarios(keys: list[str], clients: int = 50, verbose: bool = True) -> list[tuple[str, str, Run]]:
    """Run the scenarios in order (one shared lab; the broker restart in a lab of its own)."""
    rows = []
    shared: Lab | None = None
    try:
        for key in keys:
            label, fn = SCENARIOS[key]
            started = time.monotonic()
            own = key == "broker"
            if not own and shared is None:
                shared = Lab().__enter__()
            lab = Lab().__enter__() if own else shared
            assert lab is not None
            try:
                run = fn(lab, clients=clients)
            except ScenarioFailed as exc:
                run = exc.run
            except Exception as exc:  # noqa: BLE001 - a scenario that could not start is a row, not the end
                run = Run(key, label, error=f"{type(exc).__name__}: {exc}", log_dir=str(lab.log_dir))
                traceback.print_exc()
            finally:
                if own:
                    lab.close()
            if verbose:
                print(f"{run.report()}\n  ({time.monotonic() - started:.0f} s)\n", file=sys.stderr, flush=True)
            rows.append((key, label, run))
    finally:
        if shared is not None:
            shared.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.faults",
                                     description="Fault injection under load; prints the markdown fault table.")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"which ones (default: all, in this order): {' '.join(SCENARIOS)}")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    args = parser.parse_args(argv)
    unknown = [k for k in args.scenarios if k not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {' '.join(unknown)}; choose from {' '.join(SCENARIOS)}")
    rows = run_scenarios(args.scenarios or list(SCENARIOS), args.clients)
    print(table(rows))
    return 1 if any(run.error for *_, run in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
