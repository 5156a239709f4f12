"""Drive an HTTP server with wrk (keep-alive connections, closed loop) and read its numbers via a Lua script."""
from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from pathlib import Path

from .procstat import reaped_children_cpu
from .stats import CellResult

# wrk calls done() once at the end; latency percentiles are in microseconds, duration too.
_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d connect=%d read=%d write=%d " ..
                         "status=%d timeout=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("wrk not found: install it (Debian/Ubuntu: apt-get install wrk)")
    return path


def version() -> str:
    out = subprocess.run([wrk_binary(), "--version"], capture_output=True, text=True).stdout
    return out.split("Copyright")[0].strip()


class Wrk:
    """``wrk -t1 -c<n> -d<s>``: one wrk thread is far from saturating (it does >20k req/s on one core), and leaves
    the second core to the servers under test."""

    def __init__(self, threads: int = 1, timeout_s: int = 10) -> None:
        self.threads = threads
        self.timeout_s = timeout_s
        self._dir = Path(tempfile.mkdtemp(prefix="bench-wrk-"))
        self.script = self._dir / "report.lua"
        self.script.write_text(_LUA)

    def argv(self, url: str, connections: int, duration_s: float) -> list[str]:
        """wrk takes whole seconds only: *duration_s* is rounded up."""
        seconds = max(1, math.ceil(duration_s))
        return [wrk_binary(), f"-t{min(self.threads, connections)}", f"-c{connections}", f"-d{seconds}s",
                f"--timeout={self.timeout_s}s", "-s", str(self.script), url]

    def run(self, url: str, connections: int, duration_s: float) -> CellResult:
        """One wrk run; ``cpu["wrk"]`` is wrk's own CPU use (% of one core) over the run."""
        before = reaped_children_cpu()
        proc = subprocess.run(self.argv(url, connections, duration_s), capture_output=True, text=True,
                              timeout=duration_s + 60)
        wrk_cpu = reaped_children_cpu() - before
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
        v = {k: int(x) for k, x in (kv.split("=") for kv in line.split()[1:])}
        seconds = v["duration_us"] / 1e6
        errors = v["connect"] + v["read"] + v["write"] + v["status"] + v["timeout"]
        return CellResult(p50_ms=v["p50_us"] / 1000, p99_ms=v["p99_us"] / 1000, rps=v["requests"] / seconds,
                          requests=v["requests"], errors=errors, cpu={"wrk": 100 * wrk_cpu / seconds})

    def cleanup(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
