"""An idle gateway worker with the DEFAULT settings (issue 9's target: ≤ 3% of a core), on a fresh embedded broker::

    python -m bench.idledefaults [--seconds 20]

`./dev bench --idle` measures `./dev run`, whose conf/gateway.toml shortens the fetch waits for the embedded
broker; this starts gunicorn (2 workers) with a config that sets nothing but the brokers and one echo service (so
every other setting is its default: Kafka's 500 ms fetch waits, the reply reader fetching only while requests
wait), sends a request, lets it settle, and prints each worker's CPU over the window.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from gateway.broker import EmbeddedBroker
from tests.support.harness import GunicornGateway, ServiceProcess, base_env, wait_until, write_config
from tests.support.procs import cpu_seconds, worker_pids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window (20)")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds between the last request and the window")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="idle-defaults-"))
    with EmbeddedBroker() as broker:
        config = write_config(work / "gateway.toml", {
            "kafka": {"bootstrap_servers": [broker.bootstrap]},
            "services": {"echo": {"topic": "echo.requests", "methods": ["GET"]}},
            # the embedded broker mishandles LeaveGroup (docs/broker.md); no effect on an idle worker's cost
            "reply": {"leave_group_on_stop": False}})
        subprocess.run([sys.executable, "-m", "gateway.cli", "topics"], check=True, capture_output=True,
                       env={**base_env(broker.bootstrap), "GATEWAY_CONFIG": str(config)})
        service = ServiceProcess("examples.echo", broker.bootstrap, work)
        gateway = GunicornGateway(config, broker.bootstrap, work, workers=2)
        try:
            gateway.wait_ready(90)
            wait_until(lambda: requests.get(gateway.url + "/echo/x", timeout=10).status_code == 200, 60, 0.5,
                       "the echo service answers through the gateway")
            time.sleep(args.settle)   # a measurement window, not a synchronisation
            pids = sorted(worker_pids(gateway.pid))
            before = {pid: cpu_seconds(pid) for pid in pids}
            started = time.monotonic()
            time.sleep(args.seconds)
            took = time.monotonic() - started
            print("| idle worker, default settings | CPU % of one core |\n|---|---:|")
            for pid in pids:
                print(f"| worker {pid} | {(cpu_seconds(pid) - before[pid]) / took * 100:.1f} |")
        finally:
            gateway.stop()
            service.stop()


if __name__ == "__main__":
    main()
