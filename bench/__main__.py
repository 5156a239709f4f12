"""``./dev bench``: floor, gateway and ceiling at 1 and 64 clients in one run; prints and saves a markdown table."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from .report import markdown, targets
from .run import ECHO, Bench, Settings
from .stats import CellResult

RESULTS = Path(__file__).resolve().parent / "results" / "latest.md"
PATHS = ("floor", "gateway", "ceiling")


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop every process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds before each cell (default 3)")
    parser.add_argument("--clients", default="1,64", help="concurrent clients per cell (default 1,64)")
    parser.add_argument("--echo", type=int, default=1, help="echo service processes, one group (default 1)")
    parser.add_argument("--reply-partitions", type=int, default=16, help="gateway reply topic partitions (16)")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="per cell, wait at most this many seconds for other work on the machine to stop (30)")
    parser.add_argument("--retries", type=int, default=1,
                        help="re-measure a cell that other work on the machine disturbed, at most this often (1)")
    parser.add_argument("--only", default=",".join(PATHS), help="subset of floor,gateway,ceiling")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"markdown output (default {RESULTS})")
    args = parser.parse_args(argv)
    clients = tuple(int(c) for c in args.clients.split(","))
    only = [p for p in PATHS if p in args.only.split(",")]
    settings = Settings(duration_s=args.duration, warmup_s=args.warmup, clients=clients, echo_processes=args.echo,
                        reply_partitions=args.reply_partitions, quiet_wait_s=args.quiet_wait,
                        retries=args.retries)

    logging.basicConfig(level=logging.WARNING)
    signal.signal(signal.SIGTERM, _terminate)
    began = time.monotonic()
    results: dict[tuple[str, int], CellResult] = {}
    bench = Bench(settings, progress=lambda msg: print(msg, flush=True))
    try:
        bench.start()
        for path in only:
            for n, result in getattr(bench, path)().items():
                results[(path, n)] = result
    finally:
        bench.close()

    setup = (f"{settings.duration_s:g} s measured + {settings.warmup_s:g} s warm-up per cell; "
             f"{settings.echo_processes} echo process(es) (python -m examples.echo, one group, request topic with "
             f"{ECHO['partitions']} partitions); gateway and ceiling: gunicorn -c conf/gunicorn.conf.py, "
             f"WEB_CONCURRENCY={settings.workers}, gevent, reply topic with {settings.reply_partitions} partitions; "
             f"wrk -t{settings.wrk_threads}, keep-alive, GET /echo/bench; "
             "floor: one kafka-python producer + one reply consumer on one reply partition, one loop keeping N "
             "requests outstanding; Kafka client settings: the gateway's defaults (gateway/config.py); "
             f"run took {time.monotonic() - began:.0f} s")
    text = markdown(results, min(clients), max(clients), setup, settings.other_limit_pct)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")
    for t in targets(results, min(clients), max(clients), settings.other_limit_pct):
        print(f"target {t.status}: {t.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
