"""CPU time per process, read from /proc (Linux): who uses the cores while a cell is measured."""
from __future__ import annotations

import os
import resource
import time
from typing import Mapping

from tests.support.procs import children, cpu_seconds  # the one copy of the /proc scans (bench and tests)

__all__ = ["CpuMeter", "children", "comm", "cpu_seconds", "machine_busy_ticks", "reaped_children_cpu"]
_TICK = os.sysconf("SC_CLK_TCK")


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def reaped_children_cpu() -> float:
    """CPU seconds of all children this process has waited for (wrk runs are measured as a delta of this)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class CpuMeter:
    """CPU use of named process groups over a window, as % of one core (200% = both cores of a 2-core box).

    ``result["machine"]`` is the whole machine's busy time (everything but idle/iowait) over the same window,
    ``result["other"]`` what of it the named groups do not explain (other work on a shared machine)."""

    def __init__(self, groups: Mapping[str, list[int]]) -> None:
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self._start: dict[str, float] = {}
        self._t0 = 0.0
        self.result: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        sample = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.groups.items()}
        sample["machine"] = machine_busy_ticks() / _TICK
        return sample

    def start(self) -> None:
        self._start = self._sample()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        wall = max(1e-9, time.monotonic() - self._t0)
        end = self._sample()
        self.result = {name: 100.0 * (end[name] - self._start[name]) / wall for name in end}
        self.result["other"] = max(0.0, self.result["machine"] - sum(self.result[n] for n in self.groups))
        return self.result

    def __enter__(self) -> "CpuMeter":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def machine_busy_ticks() -> float:
    """Busy jiffies of all CPUs (everything but idle and iowait) from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    values = [int(v) for v in parts]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return float(sum(values[:8]) - idle)  # guest times are already counted in user/nice
