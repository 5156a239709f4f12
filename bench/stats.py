"""One cell's numbers, from wherever they were measured."""
from __future__ import annotations

import math
from dataclasses import dataclass, field


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (what HdrHistogram-style tools such as wrk report)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class CellResult:
    """p50/p99 in milliseconds, completed requests per second, failed requests, CPU % per process group, and
    for Kafka paths the p50 of the service leg (request record produced -> reply record produced, see hops.py)."""

    p50_ms: float
    p99_ms: float
    rps: float
    requests: int
    errors: int
    cpu: dict[str, float] = field(default_factory=dict)
    service_leg_p50_ms: float | None = None

    def cpu_ms_per_request(self, name: str) -> float:
        """CPU time *name* spent per completed request (ms): robust to other load, unlike latency."""
        return 10 * self.cpu.get(name, 0.0) / self.rps if self.rps else math.nan

    @classmethod
    def from_latencies(cls, latencies_s: list[float], duration_s: float, errors: int = 0) -> "CellResult":
        ordered = sorted(latencies_s)
        return cls(p50_ms=percentile(ordered, 50) * 1000, p99_ms=percentile(ordered, 99) * 1000,
                   rps=len(ordered) / duration_s, requests=len(ordered), errors=errors)
