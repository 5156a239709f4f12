"""Where a gateway worker's CPU goes: py-spy samples of one worker, under load or idle, grouped by layer.

    python -m bench.profile --clients 64 --ppr 16        # a bench gateway cell, wrk at 64 clients
    python -m bench.profile --idle                       # an idle worker of `./dev run` (default settings)

Needs py-spy (``pip install py-spy``; not a dependency). Writes the collapsed stacks (``*.txt``: open in
speedscope.app or feed to flamegraph.pl) and prints, per layer, the share of the worker's samples and, under
load, CPU ms per request (the worker's /proc CPU over the window × the share ÷ the requests it served, assuming
the two workers split the load evenly, which their accept loop does within a few %).

A sample is attributed by its leaf-most frame outside the standard library: kafka-python frames to the produce
path when the stack holds ``kafka/producer/`` (``send`` and the sender loop), to the fetch path when it holds
``kafka/consumer/`` (``poll``, fetcher, record parsing), else to the network client or the coordinator. The
second table groups by loop: the root-most frame of the greenlet (or thread) the sample ran in.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

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
    head = (f"{title}: {total} samples; worker CPU {cpu_pct:.1f}% of a core"
            + (f", {requests} requests served by this worker (est.), {cpu_ms_total / requests:.3f} ms CPU per "
               "request" if per_req else ""))
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


def record(pid: int, seconds: float, out: Path, rate: int) -> None:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run([pyspy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(rate), "--nonblocking",
                    "--full-filenames", "--format", "raw", "-o", str(out)], check=True, capture_output=True,
                   timeout=seconds + 60)


def main(argv: list[str] | None = None) -> int:
    from .procstat import children, cpu_seconds
    from .run import PATH, Bench, Settings

    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--ppr", type=int, default=16, help="reply partitions per worker (16)")
    parser.add_argument("--idle", action="store_true", help="profile an idle worker of `./dev run` instead")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds recorded (10)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second (200)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "gateway-profile.txt")
    args = parser.parse_args(argv)
    bench = Bench(Settings())
    with ExitStack() as stack:
        if args.idle:
            from .idle import dev_run, process_tree
            dev, _ = stack.enter_context(dev_run(bench.log_dir))
            time.sleep(10)  # settle: groups joined, start-up done
            worker = process_tree(dev.pid)["worker1"][0]
            before = cpu_seconds(worker)
            record(worker, args.duration, args.out, args.rate)
            cpu = 100 * (cpu_seconds(worker) - before) / args.duration
            print(report(args.out.read_text(), cpu, 0, args.duration, f"idle worker {worker} (`./dev run`)"))
        else:
            gw, _, _ = bench.start_gateway(stack, args.ppr)
            worker = children(gw.pid)[0]
            load_s = args.duration + 4
            result: dict[str, object] = {}
            wrk = threading.Thread(target=lambda: result.update(r=bench.wrk.run(gw.url + PATH, args.clients, load_s)))
            wrk.start()
            time.sleep(2)  # warm
            before = cpu_seconds(worker)
            t0 = time.monotonic()
            record(worker, args.duration, args.out, args.rate)
            window = time.monotonic() - t0
            cpu = 100 * (cpu_seconds(worker) - before) / window
            wrk.join()
            rps = result["r"].rps  # type: ignore[attr-defined]
            served = int(rps * window / bench.s.workers)
            print(report(args.out.read_text(), cpu, served, window,
                         f"worker {worker} at {args.clients} clients, {args.ppr} reply partitions per worker, "
                         f"{rps:.0f} req/s (both workers)"))
    bench.close()
    print(f"collapsed stacks: {args.out} (speedscope.app opens them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
