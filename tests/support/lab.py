"""The lab: one broker, the echo service, a work dir; gateways started on demand, and the waits that tell when
their workers serve and when the reply group converged (from the gateways' metric files, per worker pid)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from gateway.broker import EmbeddedBroker

from .harness import GunicornGateway, ProcessExited, ServiceProcess, make_config, wait_until, write_config
from .metrics import read_metrics_dir, worker_gauges
from .procs import worker_pids

if TYPE_CHECKING:
    from .scenario import Scenario

# a deadline far above any latency a loaded 2-core machine shows (p50 2-3 s at load 30): a 504 here means lost
ECHO = {"topic": "echo.requests", "content_types": ["*/*"], "timeout_ms": 15000}
REPLY_PARTITIONS = 16
SETTLE_S = 60.0     # how long the group may take to converge once the workers serve (asserted; seconds on a quiet
                    # machine, 15-50 s when other suites load the 2 cores to a load average of 30-50)
READY_S = 90.0      # how long new workers may take to be ready (generous: a loaded 2-core machine boots slowly)


class Lab:
    """One broker (optionally on a fixed port), the echo service, a work dir; gateways started on demand.
    Everything it started is stopped by :meth:`close` (or leaving the ``with`` block)."""

    def __init__(self, workdir: Path | None = None, broker_port: int | None = None, echo: bool = True) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="gateway-faults-"))
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker(port=broker_port, log_path=self.log_dir / "broker.log")
        self.services: dict[str, ServiceProcess] = {}
        self.gateways: list[GunicornGateway] = []
        self.configs: dict[str, dict[str, Any]] = {}
        self._want_echo = echo

    def __enter__(self) -> "Lab":
        try:
            self.broker.start()
            if self._want_echo:
                self.ensure_topics({"echo.requests": 4})
                self.start_service("echo", "examples.echo")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def ensure_topics(self, topics: dict[str, int]) -> None:
        from gateway.config import parse_config
        from gateway.kafka.admin import ensure_topics

        ensure_topics(parse_config(make_config(self.bootstrap, {"echo": ECHO})), topics)

    def start_service(self, name: str, module: str, **env: str) -> ServiceProcess:
        proc = ServiceProcess(module, self.bootstrap, self.log_dir, **env)
        self.services[name] = proc
        return proc

    def config(self, services: dict[str, dict[str, Any]] | None = None, **sections: dict[str, Any]) -> Path:
        """A config with a reply topic + group of its own (make_config), topics created, written to a file."""
        from gateway.config import parse_config
        from gateway.kafka.admin import ensure_topics, wanted_topics

        cfg = make_config(self.bootstrap, services or {"echo": ECHO}, **sections)
        cfg["reply"]["partitions"] = REPLY_PARTITIONS
        parsed = parse_config(cfg)
        ensure_topics(parsed, wanted_topics(parsed))
        path = write_config(self.workdir / f"{cfg['reply']['group_id']}.toml", cfg)
        self.configs[str(path)] = cfg
        return path

    def gateway(self, config: Path, workers: int = 2, **env: str) -> GunicornGateway:
        """``GunicornGateway`` with a metrics directory of our choosing (``gw.metrics_dir``)."""
        metrics_dir = Path(tempfile.mkdtemp(prefix="metrics-", dir=self.workdir))
        gw = GunicornGateway(config, self.bootstrap, self.log_dir, workers=workers,
                             extra_env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **env})
        gw.metrics_dir = metrics_dir  # type: ignore[attr-defined]
        gw.config_path = str(config)  # type: ignore[attr-defined]
        self.gateways.append(gw)
        return gw

    def close(self) -> None:
        errors = []
        for stop in [*(gw.stop for gw in self.gateways), *(s.stop for s in self.services.values()),
                     self.broker.stop]:
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - stop everything, report after
                errors.append(exc)
        if errors:
            raise errors[0]


def dir_metrics(gw: GunicornGateway) -> str:
    return read_metrics_dir(gw.metrics_dir)  # type: ignore[attr-defined]


def wait_serving(gw: GunicornGateway, prefix: str = "/echo", timeout_s: float = 90) -> None:
    """Ready workers AND the service answers through them (services join their groups in the background)."""
    gw.wait_ready(timeout_s)
    wait_until(lambda: requests.post(gw.url + prefix + "/warmup", json={}, timeout=10).status_code == 200,
               timeout_s, 0.2, f"{prefix} answered through {gw.url}")


def group_state(gws: list[GunicornGateway]) -> dict[str, Any]:
    """Live workers of these gateways and, per worker, its ready / owned / read gauges."""
    workers: dict[int, dict[str, float]] = {}
    for gw in gws:
        gauges = worker_gauges(gw.metrics_dir)  # type: ignore[attr-defined]
        for pid in worker_pids(gw.pid):
            workers[pid] = {k.replace("gateway_", "").replace("reply_partitions_", ""): v
                            for k, v in gauges.get(pid, {}).items() if k != "gateway_in_flight"}
    total = {k: sum(w.get(k, 0) for w in workers.values()) for k in ("workers_ready", "owned", "read")}
    return {"live": len(workers), **total, "per_worker": workers}


def _settled(state: dict[str, Any], workers: int) -> bool:
    return (state["live"] == workers and state["workers_ready"] == workers and state["owned"] == REPLY_PARTITIONS
            and state["read"] == REPLY_PARTITIONS)


def _alive(gws: list[GunicornGateway]) -> None:
    for gw in gws:
        if not gw.alive():
            raise ProcessExited(f"gunicorn {gw.pid} exited ({gw.proc.returncode}); log {gw.log_path}")


def wait_workers_ready(gws: list[GunicornGateway], workers: int, timeout_s: float = READY_S) -> float:
    """Until exactly *workers* live workers, each serving (reading a positioned reply partition it mints on:
    its own or, while the group has not assigned it any, a borrowed one). Returns the seconds it took; the
    timeout error shows the last state. Whether the group converged is ``settle``'s business."""
    started = time.monotonic()
    state: dict[str, Any] = {}
    while time.monotonic() - started < timeout_s:
        _alive(gws)
        state = group_state(gws)
        if state["live"] == workers and all(w.get("read", 0) >= 1 for w in state["per_worker"].values()):
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"{workers} ready workers not reached within {timeout_s:.0f}s; last state {state}")


def settle(sc: "Scenario", what: str, gws: list[GunicornGateway], workers: int, since: float,
           timeout_s: float = SETTLE_S) -> None:
    """Wait (at most *timeout_s*) until the group converged: *workers* ready workers own every reply partition
    exactly once and none is left draining (owned == read == partitions). Not converging is no request failure
    (a worker that did not learn its new assignment yet keeps minting on partitions it still reads), so it is
    recorded, not raised: ``facts[what]`` is the seconds since *since*, or ``None`` with the last state."""
    deadline = time.monotonic() + timeout_s
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _alive(gws)
        state = group_state(gws)
        if _settled(state, workers):
            sc.facts[what] = round(time.monotonic() - since, 2)
            return
        time.sleep(0.1)
    sc.facts[what] = None
    sc.facts[f"{what}_unsettled_state"] = state

