"""An idle gateway worker with the DEFAULT settings (issue 9's target: ≤ 3% of a core), on a fresh embedded broker::

    python -m bench.idledefaults [--seconds 20]

`./dev bench`'s idle step runs this after measuring `./dev run` (whose conf/gateway.toml shortens the fetch waits
for the embedded broker): gunicorn (2 workers) with a config that sets nothing but the brokers and one echo service
(so every other setting is its default: Kafka's 500 ms fetch waits, the reply reader fetching only while requests
wait); one request, a settling time, then each worker's CPU over the window.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import requests

from gateway.broker import EmbeddedBroker
from tests.support.harness import GunicornGateway, ServiceProcess, base_env, wait_until, write_config
from tests.support.procs import worker_pids

from .procstat import CpuMeter


def measure_defaults(duration_s: float, settle_s: float, log_dir: Path,
                     quiet: Callable[[dict[str, list[int]]], None] = lambda groups: None) -> dict[str, float]:
    """% of one core of each idle worker (``worker1``, ``worker2``), of the broker, the echo service and the
    gunicorn master, and of other work on the machine (``other``)."""
    with EmbeddedBroker() as broker:
        config = write_config(log_dir / "defaults.toml", {
            "kafka": {"bootstrap_servers": [broker.bootstrap]},
            "services": {"echo": {"topic": "echo.requests", "methods": ["GET"]}},
            # the embedded broker mishandles LeaveGroup (docs/broker.md); no effect on an idle worker's cost
            "reply": {"leave_group_on_stop": False}})
        subprocess.run([sys.executable, "-m", "gateway.cli", "topics"], check=True, capture_output=True,
                       env={**base_env(broker.bootstrap), "GATEWAY_CONFIG": str(config)})
        service = ServiceProcess("examples.echo", broker.bootstrap, log_dir)
        gateway = GunicornGateway(config, broker.bootstrap, log_dir, workers=2)
        try:
            gateway.wait_ready(90)
            wait_until(lambda: requests.get(gateway.url + "/echo/x", timeout=10).status_code == 200, 60, 0.5,
                       "the echo service answers through the gateway")
            time.sleep(settle_s)   # a measurement window, not a synchronisation
            groups = {f"worker{i}": [pid] for i, pid in enumerate(sorted(worker_pids(gateway.pid)), 1)}
            groups.update({"broker": [broker.pid] if broker.pid else [], "echo": [service.pid],
                           "gunicorn master": [gateway.pid]})   # ours: not counted as other work
            quiet(groups)
            with CpuMeter(groups) as meter:
                time.sleep(duration_s)
        finally:
            gateway.stop()
            service.stop()
    return {name: pct for name, pct in meter.result.items() if name != "machine"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window (20)")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds between the last request and the window")
    args = ap.parse_args()
    cpu = measure_defaults(args.seconds, args.settle, Path(tempfile.mkdtemp(prefix="idle-defaults-")))
    print("| idle worker, default settings | CPU % of one core |\n|---|---:|")
    for name, pct in cpu.items():
        print(f"| {name} | {pct:.1f} |")


if __name__ == "__main__":
    main()
