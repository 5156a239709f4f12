"""Where a gateway worker's CPU goes: CPU-time samples of the workers, under load or idle, grouped by layer.

    python -m bench.profile --clients 64 --ppr 16        # a bench gateway cell (fresh broker, echo), wrk at 64
    python -m bench.profile --idle                       # idle workers with the shipped conf/gateway.toml

The workers run the shipped gunicorn config plus a SIGPROF sampler (bench/gunicorn_cpuprof.conf.py,
bench/cpuprof.py: why not py-spy is said there). Writes the collapsed stacks of both workers (``--out``: open
in speedscope.app or feed to flamegraph.pl) and prints, per layer and per loop, the share of the samples and, under
load, CPU ms per request (both workers' /proc CPU over the window × the share ÷ the requests wrk completed in it);
idle, % of a core per worker.

A sample is charged to the leaf-most frame outside the standard library: kafka-python frames to the produce path
when the stack holds ``kafka/producer/`` (``send`` and the sender loop), to the fetch path when it holds
``kafka/consumer/`` (``poll``, fetcher, record parsing), else to the network client or the coordinator. The second
table groups by loop: the root-most frame of the greenlet (or thread) the sample ran in.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

import requests

from gateway.broker import free_port
from tests.support.harness import ROOT, Process, base_env, metric_value, wait_until

if TYPE_CHECKING:
    from .run import Bench
    from .stats import CellResult

T = TypeVar("T")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
LAYERS = [  # (layer, substring of the file path); first match of the leaf-most non-stdlib frame wins
    ("prometheus_client (metrics)", "/prometheus_client/"),
    ("gateway code", "/gateway/"),
    ("Flask / werkzeug dispatch", "/flask/"),
    ("Flask / werkzeug dispatch", "/werkzeug/"),
    ("gunicorn HTTP (parse, respond, keep-alive)", "/gunicorn/"),
    ("gevent hub / greenlet switching", "/gevent/"),
    ("gevent hub / greenlet switching", "/greenlet/"),
    ("marshmallow", "/marshmallow/"),
]


def parse_frame(frame: str) -> tuple[str, str, str]:
    m = _FRAME.match(frame)
    return (m.group("func"), m.group("file"), m.group("line") or "") if m else (frame, "", "")


def _stdlib(path: str) -> bool:
    return "/lib/python3" in path and "site-packages" not in path or path.startswith("<")


def layer(frames: list[str]) -> str:
    """The layer one sample (root -> leaf frames) is charged to."""
    files = [parse_frame(f)[1] for f in frames]
    for path in reversed(files):
        if _stdlib(path):
            continue
        if "/kafka/" in path:
            if any("/kafka/producer/" in p for p in files):
                return "kafka-python produce path (send, sender loop, record batches)"
            if any("/kafka/consumer/" in p for p in files):
                return "kafka-python fetch/parse path (poll, fetcher, record parsing)"
            if "/kafka/coordinator/" in path:
                return "kafka-python group coordinator (heartbeat, join)"
            return "kafka-python network client (client_async, conn, protocol)"
        for name, needle in LAYERS:
            if needle in path:
                return name
        return "other libraries"
    return "standard library only"


def loop(frames: list[str]) -> str:
    """The loop (greenlet or thread body) a sample ran in: its root-most frame that is not gevent's plumbing."""
    for frame in frames:
        func, path, line = parse_frame(frame)
        if "/gevent/" in path or "/greenlet/" in path or _stdlib(path):
            continue
        short = path.split("site-packages/")[-1].split("/wt-bench/")[-1]
        return f"{func} ({short}:{line})"
    func, path, _ = parse_frame(frames[0]) if frames else ("?", "", "")
    return f"{func} ({path.rsplit('/', 2)[-1] if path else ''}) [gevent/stdlib only]"


def summarize(raw: str) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    layers: Counter[str] = Counter()
    loops: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        total += n
        layers[layer(frames)] += n
        loops[loop(frames)] += n
        if frames:
            func, path, _ = parse_frame(frames[-1])
            leaves[f"{func} ({path.split('site-packages/')[-1].split('/lib/python3.11/')[-1]})"] += n
    return layers, loops, leaves, total


def report(raw: str, cpu_pct: float, requests: int, window_s: float, title: str) -> str:
    layers, loops, leaves, total = summarize(raw)
    per_req = requests > 0
    cpu_ms_total = cpu_pct / 100 * window_s * 1000  # CPU ms the worker used in the window
    head = (f"{title}: {total} samples over {window_s:.1f} s; workers' CPU {cpu_pct:.1f}% of a core"
            + (f", {requests} requests, {cpu_ms_total / requests:.3f} ms CPU per request" if per_req else ""))
    out = [head, ""]
    for name, counter, limit in (("layer", layers, 20), ("loop (greenlet / thread root)", loops, 12),
                                 ("leaf function (self time)", leaves, 25)):
        unit = "| CPU ms per request |" if per_req else "| % of a core |"
        out += [f"| {name} | share of samples {unit}", "|---|---:|---:|"]
        for key, n in counter.most_common(limit):
            share = n / total if total else 0.0
            val = f"{share * cpu_ms_total / requests:.3f}" if per_req else f"{share * cpu_pct:.1f}"
            out.append(f"| {key} | {100 * share:.1f}% | {val} |")
        out.append("")
    return "\n".join(out)


def start_gunicorn(stack: ExitStack, log_dir: Path, env: dict[str, str], conf: str) -> tuple[Process, str]:
    """Two gateway workers under ``bench/<conf>`` (the shipped gunicorn config plus a recorder), each reading only
    its own reply partitions once this returns."""
    port = free_port()
    env = {**env, "PORT": str(port), "WEB_CONCURRENCY": "2", "GATEWAY_BIND": f"127.0.0.1:{port}"}
    proc = Process(f"gunicorn-{conf.split('.')[0]}", [sys.executable, "-m", "gunicorn", "-c",
                                                      str(ROOT / "bench" / conf), "gateway.wsgi:app"], env, log_dir)
    stack.callback(proc.stop)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"gunicorn exited: {proc.log()[-2000:]}")
        metrics = requests.get(url + "/metrics", timeout=5).text
        partitions = metric_value(metrics, "gateway_reply_partitions_owned")
        return (metric_value(metrics, "gateway_workers_ready") >= 2 and partitions > 0
                and 0 < metric_value(metrics, "gateway_reply_partitions_read") <= partitions)  # none borrowed

    wait_until(ready, 90, 0.3, "2 gateway workers ready, each reading only its own partitions")
    return proc, url


def under_load(bench: Bench, url: str, clients: int, seconds: float, measure: Callable[[], T]) -> tuple[T, CellResult]:
    """wrk at *url* with *clients* for 2 s of warm-up, then *measure()* (about *seconds* long), then 2 s more;
    returns what *measure* returned and wrk's result."""
    result: dict[str, CellResult] = {}
    load = threading.Thread(target=lambda: result.update(r=bench.wrk.run(url, clients, seconds + 4)))
    load.start()
    time.sleep(2)  # warm
    measured = measure()
    load.join()
    return measured, result["r"]


def sample(prof_dir: Path, workers: list[int], seconds: float) -> tuple[str, float, float]:
    """Record for *seconds*; returns (collapsed stacks of all workers, their CPU % of a core, the window)."""
    from .procstat import cpu_seconds

    before = sum(cpu_seconds(w) for w in workers)
    t0 = time.monotonic()
    (prof_dir / "on").touch()
    time.sleep(seconds)
    (prof_dir / "on").unlink()
    window = time.monotonic() - t0
    cpu = 100 * (sum(cpu_seconds(w) for w in workers) - before) / window
    (prof_dir / "dump").touch()
    files = [prof_dir / f"{w}.txt" for w in workers]
    wait_until(lambda: all(f.exists() for f in files), 30, 0.2, "workers' stacks written")
    time.sleep(0.2)  # written in one call; let it land
    return "".join(f.read_text() for f in files), cpu, window


def main(argv: list[str] | None = None) -> int:
    from .procstat import children
    from .run import PATH, Bench, Settings

    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--ppr", type=int, default=16, help="reply partitions per worker (16)")
    parser.add_argument("--idle", action="store_true", help="idle workers, shipped conf/gateway.toml, instead")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds recorded (10; idle: 20)")
    parser.add_argument("--client", default="kafka-python", choices=["kafka-python", "librdkafka"],
                        help="kafka.client of the gateway under load (librdkafka's C threads are sampled as "
                             "whatever the main thread runs: trust the CPU total, not their share)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "gateway-profile.txt")
    args = parser.parse_args(argv)
    bench = Bench(Settings())
    prof_dir = Path(tempfile.mkdtemp(prefix="bench-cpuprof-"))
    try:
        with ExitStack() as stack:
            if args.idle:
                raw, cpu, window, requests_done, title = _idle(stack, bench, prof_dir, args)
            else:
                config, _ = bench._kafka(stack, args.ppr * bench.s.workers, args.client)  # noqa: SLF001 - same package
                bootstrap = config.kafka.bootstrap_servers[0]
                env = base_env(bootstrap, GATEWAY_CONFIG=str(bench.log_dir / "gateway.toml"))
                proc, url = start_gunicorn(stack, bench.log_dir, {**env, "BENCH_CPUPROF_DIR": str(prof_dir)},
                                           "gunicorn_cpuprof.conf.py")
                workers = children(proc.pid)
                (raw, cpu, window), load = under_load(bench, url + PATH, args.clients, args.duration,
                                                      lambda: sample(prof_dir, workers, args.duration))
                rps = load.rps
                requests_done = int(rps * window)
                title = (f"both workers ({args.client}) at {args.clients} clients, {args.ppr} reply partitions per "
                         f"worker, {rps:.0f} req/s")
    finally:
        bench.close()
    args.out.write_text(raw)
    print(report(raw, cpu, requests_done, window, title))
    print(f"collapsed stacks: {args.out} (speedscope.app opens them)")
    return 0


def _idle(stack: ExitStack, bench: Bench, prof_dir: Path, args: argparse.Namespace
          ) -> tuple[str, float, float, int, str]:
    from gateway.broker import EmbeddedBroker
    from gateway.config import load_config
    from gateway.kafka.admin import ensure_topics, wanted_topics

    from .procstat import children

    broker = EmbeddedBroker(log_path=bench.log_dir / "broker.log").start()
    stack.callback(broker.stop)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PROMETHEUS_", "KAFKA_"))}
    env.update(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, PYTHONUNBUFFERED="1")
    config = load_config(ROOT / "conf" / "gateway.toml", env)
    ensure_topics(config, wanted_topics(config))
    proc, _ = start_gunicorn(stack, bench.log_dir, {**env, "BENCH_CPUPROF_DIR": str(prof_dir)},
                             "gunicorn_cpuprof.conf.py")
    time.sleep(10)  # settle: groups joined, start-up done
    duration = args.duration if args.duration != 10.0 else 20.0
    raw, cpu, window = sample(prof_dir, children(proc.pid), duration)
    return raw, cpu, window, 0, "both idle workers, shipped conf/gateway.toml (default settings)"


if __name__ == "__main__":
    sys.exit(main())
