"""ruff (ruff.toml) is clean on everything in the repository that is Python."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing() -> None:
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "gateway", "tests", "bench", "examples",
                          "conf", "sdk"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
