"""One benchmark run: broker, echo service(s), then the floor, the gateway and the ceiling, one after the other.

Every process started here is stopped in ``close()`` (callers use try/finally), in reverse order of start.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests

from gateway.broker import EmbeddedBroker, free_port
from gateway.config import Config, parse_config
from gateway.testing import (
    ROOT,
    GunicornGateway,
    Process,
    ServiceProcess,
    base_env,
    make_config,
    wait_until,
    write_config,
)

from .hops import HopReader
from .procstat import CpuMeter, children, comm
from .stats import CellResult
from .wrk import Wrk

ECHO = {"topic": "echo.requests", "methods": ["GET", "POST"], "content_types": ["*/*"], "timeout_ms": 5000,
        "partitions": 4}
FLOOR_REPLY_TOPIC = "bench.floor.replies"
PATH = "/echo/bench"


@dataclass
class Settings:
    duration_s: float = 10.0
    warmup_s: float = 3.0
    clients: tuple[int, ...] = (1, 64)
    echo_processes: int = 1
    workers: int = 2
    reply_partitions: int = 16      # the test harness's value (make_config): 8 per worker with 2 workers
    wrk_threads: int = 1
    other_limit_pct: float = 25.0   # CPU % of one core that processes not ours may use during a cell
    quiet_wait_s: float = 30.0      # per cell, wait at most this long for the machine to be that quiet
    retries: int = 1                # re-measure a cell that other work disturbed, at most this often


class Bench:
    def __init__(self, settings: Settings, progress: Callable[[str], None] = print) -> None:
        self.s = settings
        self.say = progress
        self.log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
        self._stack = ExitStack()
        self.broker = EmbeddedBroker(log_path=self.log_dir / "broker.log")
        self.echos: list[ServiceProcess] = []
        self.config_path = self.log_dir / "gateway.toml"
        self.config: Config | None = None
        self.wrk = Wrk(settings.wrk_threads)
        self._stack.callback(self.wrk.cleanup)

    # -- set-up / tear-down ----------------------------------------------------------------------------------
    def start(self) -> None:
        from gateway.kafka.admin import ensure_topics, wanted_topics

        self.broker.start()
        self._stack.callback(self.broker.stop)
        raw = make_config(self.broker.bootstrap, {"echo": ECHO}, reply={"partitions": self.s.reply_partitions})
        write_config(self.config_path, raw)
        self.config = cfg = parse_config(raw)
        ensure_topics(cfg, {**wanted_topics(cfg), FLOOR_REPLY_TOPIC: cfg.reply["partitions"]})
        for _ in range(self.s.echo_processes):
            echo = ServiceProcess("examples.echo", self.broker.bootstrap, self.log_dir, LOG_LEVEL="WARNING")
            self._stack.callback(echo.stop)
            self.echos.append(echo)
        self.say(f"broker {self.broker.bootstrap}, {len(self.echos)} echo process(es), logs in {self.log_dir}")

    def close(self) -> None:
        self._stack.close()

    # -- CPU attribution -------------------------------------------------------------------------------------
    def _broker_pids(self) -> list[int]:
        return [p for p in children(os.getpid()) if comm(p).startswith("tansu")]

    def _groups(self, client: dict[str, list[int]], server: Process | None = None) -> dict[str, list[int]]:
        groups = {"broker": self._broker_pids()}
        for i, echo in enumerate(self.echos, 1):
            groups[f"echo{i}" if len(self.echos) > 1 else "echo"] = [echo.pid]
        if server is not None:
            groups["gunicorn master"] = [server.pid]
            for i, worker in enumerate(children(server.pid), 1):
                groups[f"worker{i}"] = [worker]
        groups.update(client)
        return groups

    def _quiet(self, groups: dict[str, list[int]]) -> None:
        """Wait until work not ours uses at most ``other_limit_pct`` of one core (or ``quiet_wait_s`` passed)."""
        deadline = time.monotonic() + self.s.quiet_wait_s
        announced = False
        while time.monotonic() < deadline:
            with CpuMeter(groups) as meter:
                time.sleep(1.0)
            if meter.result["other"] <= self.s.other_limit_pct:
                return
            if not announced:
                self.say(f"  machine busy with other work ({meter.result['other']:.0f}% of a core); waiting...")
                announced = True

    def _measure(self, label: str, groups: dict[str, list[int]], cell: Callable[[CpuMeter], CellResult]
                 ) -> CellResult:
        """Run *cell* on a quiet machine; re-run it when other work disturbed it, keep the least disturbed."""
        best: CellResult | None = None
        for attempt in range(1 + self.s.retries):
            self._quiet(groups)
            result = cell(CpuMeter(groups))
            self.say(f"{label} {_brief(result)}")
            if best is None or result.cpu["other"] < best.cpu["other"]:
                best = result
            if result.cpu["other"] <= self.s.other_limit_pct:
                break
            if attempt < self.s.retries:
                self.say("  disturbed by other work on the machine; measuring again")
        assert best is not None
        return best

    # -- the three paths -------------------------------------------------------------------------------------
    def floor(self) -> dict[int, CellResult]:
        from .floor import FloorClient

        assert self.config is not None
        svc = self.config.services["echo"]
        client = FloorClient(self.config, svc, FLOOR_REPLY_TOPIC, self.config.reply["partitions"], path=PATH)
        hops = HopReader(self.config, svc.topic, FLOOR_REPLY_TOPIC)

        def cell(meter: CpuMeter, n: int) -> CellResult:
            mark = hops.mark()
            result = client.run(n, self.s.warmup_s, self.s.duration_s, meter)
            result.service_leg_p50_ms = hops.read(mark).service_leg_p50_ms
            return result

        try:
            client.wait_answering(60)
            groups = self._groups({"floor client": [os.getpid()]})
            return {n: self._measure(f"floor   c={n:<3}", groups, lambda meter, n=n: cell(meter, n))
                    for n in self.s.clients}
        finally:
            client.close()
            hops.close()

    def gateway(self) -> dict[int, CellResult]:
        gw = GunicornGateway(self.config_path, self.broker.bootstrap, self.log_dir, workers=self.s.workers)
        try:
            gw.wait_ready(60)
            wait_until(lambda: requests.get(gw.url + PATH, timeout=10).status_code == 200, 60, 0.2, "echo via gw")
            assert self.config is not None
            hops = HopReader(self.config, self.config.services["echo"].topic, self.config.reply["topic"])
            try:
                return self._drive("gateway", gw, gw.url + PATH, hops)
            finally:
                hops.close()
        finally:
            gw.stop()

    def ceiling(self) -> dict[int, CellResult]:
        port = free_port()
        env = base_env(self.broker.bootstrap, PORT=str(port), WEB_CONCURRENCY=str(self.s.workers),
                       GATEWAY_BIND=f"127.0.0.1:{port}")
        server = Process("ceiling", [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "conf/gunicorn.conf.py"),
                                     "bench.ceiling:app"], env, self.log_dir)
        url = f"http://127.0.0.1:{port}{PATH}"
        try:
            wait_until(lambda: requests.get(url, timeout=2).status_code == 200, 30, 0.2, "ceiling app up")
            wait_until(lambda: len(children(server.pid)) >= self.s.workers, 30, 0.2, "ceiling workers up")
            return self._drive("ceiling", server, url)
        finally:
            server.stop()

    def _alive(self, server: Process) -> None:
        """Fail loudly when a process of this run died: on a shared machine, others' clean-ups have killed ours."""
        for proc in (server, *self.echos):
            if not proc.alive():
                raise RuntimeError(f"{proc.name} (pid {proc.pid}) exited during the run with {proc.proc.returncode}; "
                                   f"its log: {proc.log_path}")

    def _wrk(self, server: Process, url: str, n: int, duration_s: float) -> CellResult:
        try:
            result = self.wrk.run(url, n, duration_s)
        except RuntimeError:
            self._alive(server)
            raise
        self._alive(server)
        return result

    def _drive(self, name: str, server: Process, url: str, hops: HopReader | None = None) -> dict[int, CellResult]:
        groups = self._groups({}, server)

        def cell(meter: CpuMeter, n: int) -> CellResult:
            self._wrk(server, url, n, self.s.warmup_s)
            mark = hops.mark() if hops else {}
            with meter:
                result = self._wrk(server, url, n, self.s.duration_s)
            if hops:
                result.service_leg_p50_ms = hops.read(mark).service_leg_p50_ms
            cpu = dict(meter.result)
            cpu["other"] = max(0.0, cpu["other"] - result.cpu["wrk"])  # wrk is ours, measured by rusage
            result.cpu = {**cpu, **result.cpu}
            return result

        return {n: self._measure(f"{name:<7} c={n:<3}", groups, lambda meter, n=n: cell(meter, n))
                for n in self.s.clients}


def _brief(r: CellResult) -> str:
    cpu = " ".join(f"{k}={v:.0f}%" for k, v in r.cpu.items())
    leg = f"  service leg p50 {r.service_leg_p50_ms:.0f} ms" if r.service_leg_p50_ms is not None else ""
    return (f"p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  {r.rps:7.0f} req/s  errors {r.errors}{leg}  "
            f"cpu: {cpu}")

