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

    png = tmp_path / "latest.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "latest.md").read_text().startswith("| path |")
