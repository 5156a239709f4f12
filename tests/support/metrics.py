"""A gateway's metrics, read from its ``PROMETHEUS_MULTIPROC_DIR`` (the very files ``/metrics`` renders).

A scenario chooses that directory per gateway, so the numbers include what a stopped instance or a killed worker
counted before it went away, which a scrape after the fact cannot see; per-worker gauges (ready, owned and read
reply partitions) say when a rebalance settled.
"""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from .harness import metric_value

OUTCOMES = ("delivered", "late", "foreign", "duplicate", "invalid")   # gateway_replies_total{outcome}


def read_metrics_dir(path: Path) -> str:
    """What /metrics renders from a gateway's multiprocess directory (also after the gateway stopped)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    for _ in range(20):
        try:
            return generate_latest(registry).decode()
        except struct.error:  # a worker that is just starting created its file but did not size it yet
            time.sleep(0.01)
    return generate_latest(registry).decode()


def worker_gauges(path: Path) -> dict[int, dict[str, float]]:
    """Per worker pid: its live gauges (owned / read partitions, ready, in flight) from the metric files."""
    # prometheus_client's multiprocess files read per pid (its public API only sums them over the workers):
    # a module of the library, not its documented API; tests/test_library_internals.py fails if it changes
    from prometheus_client.mmap_dict import MmapedDict

    out: dict[int, dict[str, float]] = {}
    for f in path.glob("gauge_livesum_*.db"):
        pid = int(f.stem.rsplit("_", 1)[1])
        try:
            values = list(MmapedDict.read_all_values_from_file(str(f)))
        except (OSError, struct.error):
            continue
        gauges = out.setdefault(pid, {})
        for key, value, *_ in values:
            name = json.loads(key)[1]
            gauges[name] = gauges.get(name, 0.0) + value
    return out


def reply_counts(text: str) -> dict[str, float]:
    return {o: metric_value(text, "gateway_replies_total", f'outcome="{o}"') for o in OUTCOMES}

