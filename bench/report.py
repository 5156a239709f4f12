"""The results as markdown: the table, the targets, CPU per process, the machine."""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from importlib.metadata import version as pkg_version

from .stats import CellResult

PATHS = {
    "floor": "floor: kafka-python → Kafka → echo → Kafka → kafka-python",
    "gateway": "gateway: wrk → gunicorn (2 gevent workers) → Kafka → echo → Kafka → gateway → wrk",
    "ceiling": "ceiling: wrk → gunicorn (2 gevent workers) → bare Flask constant",
}


@dataclass
class Target:
    name: str
    value: float
    limit: float
    at_least: bool  # value >= limit (else value <= limit)
    detail: str
    disturbed: list[str]  # cells behind this target that other work on the machine disturbed

    @property
    def met(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    @property
    def status(self) -> str:
        verdict = "met" if self.met else "MISSED"
        return f"{verdict}, but INCONCLUSIVE" if self.disturbed else verdict

    def line(self) -> str:
        note = f" (disturbed by other work on the machine: {', '.join(self.disturbed)})" if self.disturbed else ""
        return f"- {self.name}: {self.detail} → **{self.status}**{note}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    from .wrk import version as wrk_version

    return (f"nproc {os.cpu_count()}, CPU {cpu_model()}, Python {platform.python_version()} "
            f"({sys.implementation.name}), {platform.system()} {platform.release()}; kafka-python "
            f"{pkg_version('kafka-python')}, gevent {pkg_version('gevent')}, gunicorn {pkg_version('gunicorn')}, "
            f"Flask {pkg_version('flask')}, {wrk_version()}")


def _disturbed(cells: dict[str, CellResult | None], limit: float) -> list[str]:
    return [f"{name} other load {r.cpu.get('other', 0):.0f}%" for name, r in cells.items()
            if r is not None and r.cpu.get("other", 0) > limit]


def targets(results: dict[tuple[str, int], CellResult], low: int, high: int, other_limit: float = 25.0
            ) -> list[Target]:
    """The two targets; a target whose cells ran while other work used > *other_limit* % is inconclusive."""
    out = []
    floor, gw = results.get(("floor", low)), results.get(("gateway", low))
    if floor and gw:
        limit = floor.p50_ms + 2
        out.append(Target(f"gateway p50 at {low} client ≤ floor p50 + 2 ms", gw.p50_ms, limit, False,
                          f"{gw.p50_ms:.2f} ms vs floor {floor.p50_ms:.2f} + 2 = {limit:.2f} ms",
                          _disturbed({f"floor@{low}": floor, f"gateway@{low}": gw}, other_limit)))
    ceil, gw = results.get(("ceiling", high)), results.get(("gateway", high))
    if ceil and gw:
        limit = 0.35 * ceil.rps
        out.append(Target(f"gateway req/s at {high} clients ≥ 35% of the ceiling", gw.rps, limit, True,
                          f"{gw.rps:.0f} req/s = {100 * gw.rps / ceil.rps:.1f}% of {ceil.rps:.0f} "
                          f"(needs ≥ {limit:.0f})",
                          _disturbed({f"ceiling@{high}": ceil, f"gateway@{high}": gw}, other_limit)))
    return out


def table(results: dict[tuple[str, int], CellResult]) -> str:
    rows = ["| path | clients | p50 ms | p99 ms | req/s | errors | service leg p50 ms | other load % |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (path, clients), r in results.items():
        leg = f"{r.service_leg_p50_ms:.0f}" if r.service_leg_p50_ms is not None else "–"
        rows.append(f"| {PATHS[path]} | {clients} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.rps:.0f} | {r.errors} | "
                    f"{leg} | {r.cpu.get('other', 0):.0f} |")
    return "\n".join(rows)


def cpu_table(results: dict[tuple[str, int], CellResult]) -> str:
    rows = ["| path | clients | CPU % of one core (CPU ms per request) | ours, ms/request |", "|---|---:|---|---:|"]
    for (path, clients), r in results.items():
        ours = [n for n in r.cpu if n not in ("machine", "other")]
        parts = ", ".join(f"{n} {r.cpu[n]:.0f}% ({r.cpu_ms_per_request(n):.2f})" for n in ours if r.cpu[n] >= 0.5)
        parts += f"; machine {r.cpu['machine']:.0f}%, other {r.cpu['other']:.0f}%"
        total = sum(r.cpu_ms_per_request(n) for n in ours)
        rows.append(f"| {path} | {clients} | {parts} | {total:.2f} |")
    return "\n".join(rows)


def markdown(results: dict[tuple[str, int], CellResult], low: int, high: int, setup: str,
             other_limit: float = 25.0) -> str:
    lines = [table(results), "", "Targets:", *(t.line() for t in targets(results, low, high, other_limit)), "",
             "CPU per process over the measured window (from /proc; `wrk` from its rusage; `floor client` is the "
             "bench process; `other` is work on the machine that is not this run's):", "",
             cpu_table(results), "", f"Machine: {machine()}", "", f"Setup: {setup}", ""]
    return "\n".join(lines)
