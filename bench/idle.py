"""Idle cost: what ``./dev run`` (``gateway dev``: embedded broker, the Procfile's services, 2 gateway workers)
costs while nobody sends a request, per process, read from /proc.

Started exactly as a user starts it (``python -m gateway.cli dev``, the shipped conf/gateway.toml and Procfile,
default settings: no KAFKA_* / GATEWAY_* variables passed on), on free ports so that it does not collide with
another run on the machine. Measured after every worker is ready, the echo example answers, and a settling time
has passed (consumer groups joined; start-up work done). Then an idle worker with the default settings, which is
what issue 9's per-worker target is about (``bench/idledefaults.py``; ``./dev run``'s config shortens the fetch waits
for the embedded broker).
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import requests

from gateway.broker import free_port
from tests.support.harness import Process, metric_value, wait_until

from .idledefaults import measure_defaults
from .procstat import CpuMeter, children, comm


@dataclass
class IdleResult:
    duration_s: float
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core per process (name -> %)
    other_pct: float = 0.0                                # work on the machine that is not this run's
    machine_pct: float = 0.0
    # an idle worker with the default settings (not ./dev run's): worker name -> % of one core, and "other"
    defaults: dict[str, float] = field(default_factory=dict)

    @property
    def total_pct(self) -> float:
        return sum(self.cpu.values())

    def workers(self) -> list[tuple[str, float]]:
        """``./dev run``'s workers (its conf/gateway.toml)."""
        return [(n, v) for n, v in self.cpu.items() if n.startswith("worker")]

    def default_workers(self) -> list[tuple[str, float]]:
        """The workers of a gateway with the default settings."""
        return [(n, v) for n, v in self.defaults.items() if n.startswith("worker")]

    def markdown(self) -> str:
        rows = [f"Idle `./dev run` (measured {self.duration_s:g} s, its conf/gateway.toml; % of one core):", "",
                "| process | CPU % |", "|---|---:|"]
        rows += [f"| {n} | {v:.1f} |" for n, v in sorted(self.cpu.items(), key=lambda kv: -kv[1])]
        rows.append(f"| **all of `./dev run`** | **{self.total_pct:.1f}** |")
        rows.append(f"| (machine / other work, not ours) | {self.machine_pct:.0f} / {self.other_pct:.0f} |")
        if self.defaults:
            rows += ["", f"Idle gateway workers with the default settings (`bench/idledefaults.py`, measured "
                         f"{self.duration_s:g} s; other work on the machine {self.defaults.get('other', 0):.0f}%):", "",
                     "| process | CPU % |", "|---|---:|"]
            rows += [f"| {n} | {v:.1f} |" for n, v in self.default_workers()]
        return "\n".join(rows)


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _name(pid: int, parent_name: str) -> str:
    argv, name = _cmdline(pid), comm(pid)
    if name in ("sh", "dash", "bash"):
        return "sh"  # the Procfile line's shell, waiting for its command
    if name.startswith("tansu"):
        return "broker"
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""   # python -m <module> ...
    if module.startswith("examples."):
        return module.split(".", 1)[1]
    # `gateway serve` (the Procfile's web line) execs `python -m gunicorn`
    if "gunicorn" in name or module == "gunicorn" or any(a.endswith("/gunicorn") or a == "gunicorn" for a in argv[:2]):
        return "worker" if parent_name == "gunicorn master" else "gunicorn master"
    return name or str(pid)


def process_tree(root: int) -> dict[str, list[int]]:
    """Every process under *root*, named: broker, each example service, gunicorn master, worker1, worker2, ..."""
    groups: dict[str, list[int]] = {"gateway dev (supervisor)": [root]}

    def visit(pid: int, name: str) -> None:
        for child in children(pid):
            child_name = _name(child, name)
            key, i = child_name, 1
            while key in groups or key == "worker":  # workers are always numbered
                key, i = f"{child_name}{i}", i + 1
            groups[key] = [child]
            visit(child, child_name)

    visit(root, "gateway dev (supervisor)")
    return groups


@contextmanager
def dev_run(log_dir: Path) -> Iterator[tuple[Process, str]]:
    """``./dev run`` as a user starts it, on free ports; yields it (and its URL) once it serves."""
    port, broker_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PROMETHEUS_", "KAFKA_"))}
    env["PYTHONUNBUFFERED"] = "1"
    dev = Process("dev-run", [sys.executable, "-m", "gateway.cli", "dev", "--port", str(port), "--broker-port",
                              str(broker_port)], env, log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            if not dev.alive():
                raise RuntimeError(f"./dev run exited: {dev.log()[-3000:]}")
            return (metric_value(requests.get(url + "/metrics", timeout=5).text, "gateway_workers_ready") >= 2
                    and requests.get(url + "/echo/idle-check", timeout=10).status_code == 200)

        wait_until(ready, 90, 0.5, "./dev run serving (2 workers ready, echo answering)")
        yield dev, url
    finally:
        dev.stop()


def measure(duration_s: float, settle_s: float, quiet: Callable[[dict[str, list[int]]], None], log_dir: Path,
            say: Callable[[str], None] = print) -> IdleResult:
    with dev_run(log_dir) as (dev, _):
        say(f"idle    ./dev run serving; settling {settle_s:g} s, then measuring {duration_s:g} s")
        time.sleep(settle_s)
        groups = process_tree(dev.pid)
        quiet(groups)
        with CpuMeter(groups) as meter:
            time.sleep(duration_s)
        if not dev.alive():
            raise RuntimeError(f"./dev run exited during the idle measurement; its log: {dev.log_path}")
    cpu = {n: v for n, v in meter.result.items() if n not in ("machine", "other")}
    say(f"idle    a gateway with the default settings; settling {settle_s:g} s, then measuring {duration_s:g} s")
    defaults = measure_defaults(duration_s, settle_s, log_dir, quiet)
    return IdleResult(duration_s, cpu, meter.result["other"], meter.result["machine"], defaults)
