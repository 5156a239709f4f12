"""``./dev bench``: floor, baseline, gateway and ceiling at 1..128 clients and at 1 and 16 reply partitions per
reader, every cell on a fresh broker; then ``./dev run`` left idle. Prints the tables and the targets; writes
markdown, JSON and a PNG plot under bench/results/."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

from .plot import plot
from .report import markdown, targets, to_json
from .run import ECHO, PATH, PATHS, Bench, Cell, Settings
from .stats import CellResult

RESULTS = Path(__file__).resolve().parent / "results"
ALL = (*PATHS, "idle")


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop every process


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.split(","))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per cell (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each cell (default 2)")
    parser.add_argument("--clients", type=_ints, default=(1, 8, 32, 64, 128),
                        help="concurrent clients per cell (default 1,8,32,64,128)")
    parser.add_argument("--ppr", type=_ints, default=(1, 16),
                        help="reply partitions per reader (default 1,16): the gateway's reply topic has "
                             "workers × this many partitions, the floor's and the baseline's this many")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="per cell, wait at most this many seconds for other work on the machine to stop (30)")
    parser.add_argument("--retries", type=int, default=1,
                        help="re-measure a cell that other work on the machine disturbed, at most this often (1)")
    parser.add_argument("--only", default=",".join(ALL), help=f"subset of {','.join(ALL)}")
    parser.add_argument("--idle", action="store_true", help="only the idle measurement (= --only idle)")
    parser.add_argument("--idle-duration", type=float, default=20.0, help="idle: measured seconds (20)")
    parser.add_argument("--idle-settle", type=float, default=10.0,
                        help="idle: seconds between `./dev run` serving and the measurement (10)")
    parser.add_argument("--workers", type=int, default=2,
                        help="gunicorn workers of the gateway and ceiling cells, each reading ppr reply partitions (2)")
    parser.add_argument("--gateway-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a gateway config value for the cells (e.g. reply.poll_interval_ms=100); repeatable")
    parser.add_argument("--out-dir", type=Path, default=RESULTS,
                        help=f"where latest.md, latest.json and latest.png go (default {RESULTS})")
    args = parser.parse_args(argv)
    only = ["idle"] if args.idle else [p for p in ALL if p in args.only.split(",")]
    overrides: dict[str, dict[str, object]] = {}
    for item in args.gateway_set:
        name, _, value = item.partition("=")
        section, _, key = name.partition(".")
        overrides.setdefault(section, {})[key] = json.loads(value) if value[:1] in "0123456789-[{tf\"" else value
    settings = Settings(duration_s=args.duration, warmup_s=args.warmup, clients=args.clients, ppr=args.ppr,
                        quiet_wait_s=args.quiet_wait, retries=args.retries, overrides=overrides, workers=args.workers)

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.ERROR)  # the floor's "task ran for 0.1 s" on a busy machine
    signal.signal(signal.SIGTERM, _terminate)
    began = time.monotonic()
    results: dict[Cell, CellResult] = {}
    idle = None
    bench = Bench(settings, progress=lambda msg: print(msg, flush=True))
    print(f"logs in {bench.log_dir}", flush=True)
    try:
        for cell in settings.cells(tuple(p for p in PATHS if p in only)):
            results[cell] = bench.run(cell)
        if "idle" in only:
            from .idle import measure
            idle = measure(args.idle_duration, args.idle_settle, bench.quiet, bench.log_dir)
            print(idle.markdown(), flush=True)
    finally:
        bench.close()

    setup = (f"every cell on a fresh embedded broker (new topics, new echo, new server); {settings.duration_s:g} s "
             f"measured after {settings.warmup_s:g} s warm-up; echo: one `python -m bench.echo` (confluent-kafka), "
             f"request topic of {ECHO['partitions']} partitions; gateway: gunicorn -c conf/gunicorn.conf.py, "
             f"{settings.workers} gevent workers, reply topic of {settings.workers} × ppr partitions; baseline and "
             f"floor: one process reading a reply topic of ppr partitions; fetch wait {settings.fetch_max_wait_ms} ms "
             f"everywhere; wrk -t{settings.wrk_threads}, keep-alive, GET {PATH}; "
             + "".join(f"gateway config {a}; " for a in args.gateway_set) +
             f"run took {time.monotonic() - began:.0f} s")
    text = markdown(results, idle, setup, settings.other_limit_pct)
    print("\n" + text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "latest.md").write_text(text)
    other = max((r.cpu.get("other", 0.0) for r in results.values()), default=0.0)
    title = (f"./dev bench: every cell on a fresh embedded broker, {settings.duration_s:g} s measured per cell; "
             f"other work on the machine: up to {other:.0f}% of a core during a cell")
    (args.out_dir / "latest.json").write_text(to_json(results, idle, setup, title))
    if results:
        png = plot([{"path": c.path, "ppr": c.ppr, "clients": c.clients, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                     "rps": r.rps} for c, r in results.items()], args.out_dir / "latest.png", title)
        print(f"plot: {png}")
    print(f"written to {args.out_dir}/latest.md and latest.json")
    for t in targets(results, idle, settings.other_limit_pct):
        print(f"target {t.status}: {t.name}: {t.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
