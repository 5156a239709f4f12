"""What the gateway's web layer costs per request, without Kafka: the gateway's own app (``create_app``, the request
path up to ``Gateway.call``) on the shipped gunicorn config, with the call answered at once in the worker.

    .venv/bin/python -m bench.webcost                      # lean path on, then off, alternating, 3 rounds
    .venv/bin/python -m bench.webcost --rounds 5 --clients 64 --seconds 8

Unlike a gateway cell, a worker here has no idle loops (reply reader, tails, group member) whose CPU a run amortises
over more or fewer requests: wrk drives it flat out, so its CPU per request is the HTTP stack plus the web layer.
It still rises when other work contends for the cores (the ceiling: 0.23 ms quiet, 0.8 ms with 180% of a core of
other load), so each run first waits for a quiet machine (``--quiet-wait``) and prints the other load, and each
round measures ``http.lean_path`` on and off back to back (the comparison behind the lean path, issue 9). The
ceiling (``--ceiling``: ``bench/ceiling.py``, a constant Flask view) is what the HTTP stack alone costs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from gateway.broker import free_port
from tests.support.harness import ROOT, Process, base_env, make_config, wait_until, write_config

from .procstat import CpuMeter, children
from .wrk import Wrk

PATH = "/echo/bench"


def stub_app() -> Any:
    """The gunicorn target: the gateway's app (``GATEWAY_CONFIG``) with Kafka replaced by an instant reply."""
    from gateway import create_app
    from gateway.config import load_config
    from gateway.protocol import Reply

    app = create_app(load_config())
    gw, variants = app.extensions["gateway"], app.extensions["variants"]
    body = b'{"method": "GET", "path": "/echo/bench", "note": "the web layer alone"}'
    gw.call = lambda svc, req: Reply(correlation_id=gw.worker_tag + bytes(8), status=200, body=body,
                                     content_type="application/json")
    gw.start = variants.start = lambda wait_ready=True: True
    variants.wait_ready = lambda timeout_s=None: True
    gw.stop = variants.stop = lambda: None
    return app


def wait_quiet(most_s: float, limit_pct: float = 25) -> None:
    """Until other work uses at most *limit_pct* of a core, for *most_s* at most: a starved worker serves fewer
    requests per wake-up, and its CPU per request rises with the contention (the ceiling: 0.23 ms quiet, 0.8 ms
    with 180% of other load)."""
    deadline = time.monotonic() + most_s
    while time.monotonic() < deadline:
        with CpuMeter({}) as meter:
            time.sleep(1.0)
        if meter.result["other"] <= limit_pct:
            return


def measure(target: str, lean: bool, clients: int, seconds: float, log_dir: Path, quiet_wait_s: float = 0
            ) -> tuple[float, float, float]:
    """(worker CPU ms per request, req/s, other load %) of one run."""
    port = free_port()
    cfg = make_config("127.0.0.1:9", {"echo": {"topic": "echo.requests", "methods": ["GET", "POST"]}},
                      http={"lean_path": lean})
    path = write_config(log_dir / f"gateway-{port}.toml", cfg)
    env = base_env("127.0.0.1:9", PORT=str(port), WEB_CONCURRENCY="2", GATEWAY_BIND=f"127.0.0.1:{port}",
                   GATEWAY_CONFIG=str(path))
    server = Process("webcost", [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "conf/gunicorn.conf.py"), target],
                     env, log_dir)
    wrk = Wrk()
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}{PATH}", timeout=5).status_code == 200, 30, 0.2,
                   "webcost server answering")
        wait_until(lambda: len(children(server.pid)) >= 2, 30, 0.2, "both workers up")
        url = f"http://127.0.0.1:{port}{PATH}"
        wait_quiet(quiet_wait_s)
        wrk.run(url, clients, 2)                                        # warm-up
        with CpuMeter({"workers": children(server.pid)}) as meter:
            result = wrk.run(url, clients, seconds)
        return 10 * meter.result["workers"] / result.rps, result.rps, meter.result["other"]
    finally:
        wrk.cleanup()
        server.stop()
        path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--ceiling", action="store_true", help="also the bare Flask ceiling, each round")
    parser.add_argument("--quiet-wait", type=float, default=60, help="seconds to wait for a quiet machine per run")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="webcost-"))
    runs: dict[str, list[float]] = {}
    kinds = [("lean path", "bench.webcost:app", True), ("Flask path", "bench.webcost:app", False)]
    if args.ceiling:
        kinds.append(("ceiling", "bench.ceiling:app", True))
    for i in range(args.rounds):
        for name, target, lean in kinds:
            ms, rps, other = measure(target, lean, args.clients, args.seconds, log_dir, args.quiet_wait)
            runs.setdefault(name, []).append(ms)
            print(f"round {i + 1} {name:10s} workers {ms:.3f} ms CPU/request {rps:7.0f} req/s other load {other:.0f}%",
                  flush=True)
            time.sleep(1)
    for name, values in runs.items():
        print(f"{name:10s} median {statistics.median(values):.3f} ms  (runs: {', '.join(f'{v:.3f}' for v in values)})")


def __getattr__(name: str) -> Any:
    """``bench.webcost:app`` builds the app when gunicorn's worker asks for it, not at import."""
    if name == "app":
        return stub_app()
    raise AttributeError(name)

if __name__ == "__main__":
    main()
