"""A short ``./dev bench`` so the benchmark cannot break unnoticed: every path one cell, then the idle mode.

Not a performance test: it asserts that the run completes and that every cell served requests without errors,
never how fast (the numbers of a 1 s cell on a shared machine mean nothing).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)  # ~40 s on a quiet machine; cells start slower on a loaded one
def test_bench_smoke_run(tmp_path: Path) -> None:
    assert shutil.which("wrk"), "wrk is not installed: ./dev test installs it when run as root (apt-get install wrk)"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--clients", "2", "--ppr", "1", "--duration", "1", "--warmup", "0",
         "--quiet-wait", "0", "--retries", "0", "--idle-duration", "2", "--idle-settle", "1",
         "--out-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=290)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "| path | reply partitions per reader | clients | p50 ms |" in out
    assert "Targets:" in out and "target " in out

    data = json.loads((tmp_path / "latest.json").read_text())
    cells = {c["path"]: c for c in data["cells"]}
    assert set(cells) == {"floor", "baseline", "gateway", "gateway-rd", "ceiling"}
    for path, cell in cells.items():
        assert cell["requests"] > 0, f"{path} served no request: {cell}"
        assert cell["errors"] == 0, f"{path} had errors: {cell}"
    idle = data["idle"]
    assert idle is not None
    assert any(name.startswith("worker") for name in idle["cpu"]), idle
    assert {"broker", "echo", "orders"} <= set(idle["cpu"]), idle
    assert {"worker1", "worker2"} <= set(idle["defaults"]), idle   # the idle worker with the default settings

    png = tmp_path / "latest.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "latest.md").read_text()
    assert md.startswith("| path |")
    assert "What the default path's numbers are made of" in md and "kafka-python alone (floor client)" in md, md


def test_the_report_splits_the_gateways_cpu_into_http_kafka_client_and_the_rest() -> None:
    from bench.report import obstacles
    from bench.run import Cell
    from bench.stats import CellResult

    def cell(p50: float, rps: float, cpu: dict[str, float]) -> CellResult:
        return CellResult(p50_ms=p50, p99_ms=2 * p50, rps=rps, requests=int(8 * rps), errors=0, cpu=cpu)

    lines = obstacles({Cell("gateway", 1, 64): cell(40, 1500, {"workers": 120, "machine": 180}),
                       Cell("ceiling", 0, 64): cell(10, 6000, {"workers": 150}),
                       Cell("floor", 1, 64): cell(30, 1600, {"floor client": 40}),
                       Cell("gateway", 1, 1): cell(10.7, 90, {}), Cell("floor", 1, 1): cell(10.5, 92, {}),
                       Cell("baseline", 1, 1): cell(9.0, 106, {})})
    # 120% / 1500 req/s = 0.80 ms; ceiling 150% / 6000 = 0.25; floor 40% / 1600 = 0.25; the rest 0.30
    assert "gateway workers 0.80 ms = HTTP alone (ceiling workers) 0.25 + kafka-python alone (floor client) 0.25 " \
        "+ the rest 0.30" in lines[0], lines
    assert lines[1] == "- p50 at 1 client, 1 per reader: kafka-python alone (floor, no HTTP) 10.50 ms, gateway " \
        "10.70 ms, baseline (aiokafka) 9.00 ms", lines
    assert obstacles({Cell("gateway", 1, 64): cell(40, 1500, {"workers": 120})}) == []   # nothing to compare with


def test_the_idle_worker_target_is_judged_on_the_default_settings_and_shows_dev_runs_workers() -> None:
    from bench.idle import IdleResult
    from bench.report import targets

    idle = IdleResult(20, {"broker": 5.0, "worker1": 3.4, "worker2": 3.2, "echo": 1.0}, 0.0, 13.0,
                      {"worker1": 1.9, "worker2": 2.1, "other": 0.0})
    worker, dev_run = targets({}, idle)
    assert worker.met and worker.value == 2.1, worker       # the worse of the two default-settings workers
    assert "worker1 1.9%, worker2 2.1%" in worker.detail and "worker1 3.4%, worker2 3.2%" in worker.detail, worker
    assert dev_run.met and round(dev_run.value, 1) == 12.6, dev_run
    idle.defaults["worker2"] = 3.5
    assert not targets({}, idle)[0].met
    idle.defaults["other"] = 60.0                            # another run on the machine during that window
    assert targets({}, idle)[0].status == "MISSED, but INCONCLUSIVE", targets({}, idle)[0]


def test_the_report_says_whether_the_baselines_rate_fits_the_machines_cpu_at_all() -> None:
    from bench.report import budget, obstacles
    from bench.run import Cell
    from bench.stats import CellResult

    def cell(rps: float, cpu: dict[str, float]) -> CellResult:
        return CellResult(p50_ms=20, p99_ms=40, rps=rps, requests=int(8 * rps), errors=0, cpu=cpu)

    gw = cell(2000, {"workers": 100, "broker": 60, "echo": 6, "wrk": 4, "machine": 170, "other": 3})
    # 2 cores at 3200 req/s: 0.625 ms per request; broker + echo + wrk 70% at 2000 req/s = 0.35; left 0.275
    line = budget(3200, gw, least_ms=0.45, cores=2)
    assert "2 cores give 0.62 ms per request; broker, echo and wrk take 0.35" in line, line
    assert "leaving the workers 0.28 ms against 0.45 for HTTP alone + kafka-python alone: out of reach on this " \
        "machine: less than HTTP and kafka-python alone cost." in line, line
    # spent: 0.35 + workers 100% at 2000 req/s = 0.50 + 0.35 = 0.85 ms: 2 cores serve at most 2353 req/s
    assert "At the 0.85 ms the gateway's cell spent per request (workers included) the 2 cores serve at most 2353 " \
        "req/s (0.74× the baseline's); it served 2000 with the machine at 170% of 200%: the difference is waiting" \
        in line, line
    assert "within reach of the CPU." in budget(1000, gw, least_ms=0.45, cores=2)   # 2.0 - 0.35 = 1.65 left
    lines = obstacles({Cell("gateway", 1, 64): gw, Cell("ceiling", 0, 64): cell(6000, {"workers": 150}),
                       Cell("floor", 1, 64): cell(1600, {"floor client": 40}),
                       Cell("baseline", 1, 64): cell(3200, {"baseline": 30})})
    assert any(line.startswith("- CPU budget for the baseline's 3200 req/s") for line in lines), lines


def test_the_timeline_tools_hooks_exist_in_the_installed_kafka_python_and_its_offsets_are_per_request() -> None:
    from bench.timeline import hook_points, offsets, table

    for cls, name in hook_points():   # private kafka-python methods bench/timeline.py wraps
        assert callable(cls.__dict__.get(name)), f"{cls.__name__}.{name} is gone: update bench/timeline.py"
    text = ("\nin 10.000\nhanded 10.0002\nbuilt:fetch 10.0004\nbuilt:fetch 10.0009\ndispatch 10.008\n"
            "\nin 20.000\nhanded 20.0004\ndispatch 20.010\n"
            "\nhanded 30.0\n")                       # a segment that does not start with an arrival is skipped
    per_event = offsets(text)
    assert per_event["in"] == [0.0, 0.0]
    assert [round(v, 3) for v in per_event["handed"]] == [0.2, 0.4]
    assert [round(v, 3) for v in per_event["built:fetch"]] == [0.4]    # first occurrence per request only
    assert [round(v, 3) for v in per_event["dispatch"]] == [8.0, 10.0]
    rows = table(per_event).splitlines()
    assert rows[2].startswith("| request reached the app") and rows[-1].startswith("| reply dispatched"), rows
    assert any(r.startswith("| fetch request built") and "| 1 |" in r for r in rows), rows   # 1 of 2: kept
