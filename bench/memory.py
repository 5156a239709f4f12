"""Memory of ONE gateway worker holding 10,000 concurrent pending requests, and what the 10,001st gets.

    .venv/bin/python bench/memory.py [--held 10000] [--rejected 2000]

One gunicorn worker (real gevent worker, embedded broker), a service nobody consumes (``timeout_ms`` 120 s, so
every request stays pending), ``limits.max_in_flight`` = --held. Measured from ``/proc/<worker>/status`` VmRSS:

1. idle, after a warm-up (producer connected, one request of each kind served);
2. while ``wrk -c <held>`` holds that many requests (waits until ``gateway_in_flight`` == --held);
3. after --rejected more requests were sent one by one while the table is full: each must be
   ``503 too_many_in_flight`` at once, and RSS must not grow with them.

Needs ``wrk`` (``/usr/bin/wrk``) and a soft ``ulimit -n`` it can raise above held + 200 (the hard limit here is
20000; the script raises the soft limit for itself, wrk and gunicorn).
"""
from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.broker import EmbeddedBroker  # noqa: E402
from tests.support.harness import GunicornGateway, make_config, metric_value, wait_until, write_config  # noqa: E402
from tests.support.procs import vm_rss_kb, worker_pids  # noqa: E402


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, want)) if hard != resource.RLIM_INFINITY else max(soft, want)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def in_flight(gw: GunicornGateway) -> float:
    return metric_value(gw.metrics(), "gateway_in_flight")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held", type=int, default=10000, help="concurrent pending requests (= max_in_flight)")
    parser.add_argument("--rejected", type=int, default=2000, help="requests sent while the table is full")
    parser.add_argument("--hold-s", type=int, default=40, help="how long wrk keeps its connections")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if not wrk:
        print("needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    nofile = raise_nofile(args.held + 1000)
    if nofile < args.held + 200:
        print(f"ulimit -n is {nofile}; need {args.held + 200}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="gateway-memory-"))
    broker = EmbeddedBroker(log_path=work / "broker.log").start()
    gw: GunicornGateway | None = None
    load: subprocess.Popen[str] | None = None
    try:
        cfg = make_config(broker.bootstrap, {
            "hold": {"topic": "hold.requests", "methods": ["GET"], "timeout_ms": 120000, "partitions": 1},
            "quick": {"topic": "quick.requests", "methods": ["GET"], "timeout_ms": 200, "partitions": 1},
        }, limits={"max_in_flight": args.held})
        cfg["reply"]["partitions"] = 2
        from gateway.config import parse_config
        from gateway.kafka.admin import ensure_topics, wanted_topics
        parsed = parse_config(cfg)
        ensure_topics(parsed, wanted_topics(parsed))
        gw = GunicornGateway(write_config(work / "gateway.toml", cfg), broker.bootstrap, work, workers=1,
                             extra_env={"GATEWAY_WORKER_CONNECTIONS": str(args.held + 100),
                                        "GATEWAY_GRACEFUL_TIMEOUT": "3"})
        gw.wait_ready(120)
        (worker,) = worker_pids(gw.pid)
        # warm-up: producer connected, request path, 504 path, metrics rendered
        for _ in range(20):
            assert requests.get(gw.url + "/quick/warm", timeout=10).status_code == 504
        wait_until(lambda: in_flight(gw) == 0, 30, 0.2, "warm-up drained")
        time.sleep(1)
        idle_kb = vm_rss_kb(worker)
        print(f"worker {worker}: idle VmRSS {idle_kb / 1024:.1f} MiB", flush=True)

        load = subprocess.Popen(
            [wrk, "-c", str(args.held), "-t", "2", "-d", f"{args.hold_s}s", "--timeout", f"{args.hold_s + 30}s",
             gw.url + "/hold/x"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started = time.monotonic()
        wait_until(lambda: in_flight(gw) >= args.held, args.hold_s - 5, 0.25, f"{args.held} requests pending")
        fill_s = time.monotonic() - started
        time.sleep(1)
        held_kb = vm_rss_kb(worker)
        pending = in_flight(gw)
        print(f"{pending:.0f} pending after {fill_s:.1f} s: VmRSS {held_kb / 1024:.1f} MiB", flush=True)

        # the table is full: the next requests are refused at once, and cost no memory
        statuses: dict[str, int] = {}
        slowest = 0.0
        with requests.Session() as s:
            for i in range(args.rejected):
                t = time.monotonic()
                r = s.get(gw.url + "/hold/over", timeout=10)
                slowest = max(slowest, time.monotonic() - t)
                key = f"{r.status_code} {r.json().get('code', '') if r.status_code != 200 else ''}".strip()
                statuses[key] = statuses.get(key, 0) + 1
                if i == 0:
                    first = (r.status_code, r.json().get("code"), r.headers.get("Retry-After"))
        after_kb = vm_rss_kb(worker)
        still = in_flight(gw)
        print(f"request #{args.held + 1}: {first[0]} {first[1]} (Retry-After {first[2]}); "
              f"{args.rejected} over the limit: {statuses}, slowest {slowest * 1000:.0f} ms", flush=True)
        out, _ = load.communicate(timeout=args.hold_s + 60)
        load = None
        summary = "; ".join(line.strip() for line in out.splitlines()
                            if re.search(r"requests in|Socket errors|Non-2xx", line))

        per_req = (held_kb - idle_kb) * 1024 / max(1, pending)
        print()
        print("| one gateway worker | VmRSS |")
        print("|---|---:|")
        print(f"| idle (after warm-up) | {idle_kb / 1024:.1f} MiB |")
        print(f"| {pending:.0f} requests pending | {held_kb / 1024:.1f} MiB (+{(held_kb - idle_kb) / 1024:.1f} MiB, "
              f"{per_req / 1024:.1f} KiB per request) |")
        print(f"| + {args.rejected} requests refused 503 while full | {after_kb / 1024:.1f} MiB "
              f"({(after_kb - held_kb) / 1024:+.1f} MiB); still {still:.0f} pending |")
        print()
        print(f"wrk -c {args.held} (each connection's request was still pending when wrk stopped): {summary}")
        ok = first[:2] == (503, "too_many_in_flight") and statuses == {"503 too_many_in_flight": args.rejected}
        return 0 if ok and pending == args.held else 1
    finally:
        if load is not None:
            load.kill()
            load.wait()
        if gw is not None:
            gw.stop(20)
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
