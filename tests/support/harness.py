"""Helpers that start the real thing for tests and benchmarks: gateway config files, gunicorn, services.

Used by ``tests/conftest.py`` and ``bench/``; nothing here is mocked.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import requests
import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from gateway.broker import free_port

ROOT = Path(__file__).resolve().parents[2]   # the source tree (tests/support/harness.py)


def to_toml(cfg: dict[str, Any]) -> str:
    """A config dict as TOML (tomli-w: sections, lists, nested tables)."""
    return tomli_w.dumps(cfg)


def make_config(bootstrap: str, services: dict[str, dict[str, Any]], **sections: dict[str, Any]) -> dict[str, Any]:
    """A config dict with test-friendly Kafka timings and a reply topic + group of its own."""
    suffix = uuid.uuid4().hex[:8]
    cfg: dict[str, Any] = {
        "kafka": {"bootstrap_servers": [bootstrap], "session_timeout_ms": 3000, "heartbeat_interval_ms": 1000,
                  "max_block_ms": 2000, "fetch_max_wait_ms": 10},   # the embedded broker's (conf/gateway.toml)
        "reply": {"topic": f"replies-{suffix}", "partitions": 16, "group_id": f"gw-{suffix}",
                  "startup_wait_ms": 20000,
                  # the embedded broker's fetches slow down with the batches in a partition: spread the replies
                  # over every owned partition (conf/gateway.toml does the same)
                  "mint_partitions": 0,
                  # the embedded broker mishandles LeaveGroup during a rebalance: the group never converged after
                  # a reload (README, "The reply group after scaling and reloads")
                  "leave_group_on_stop": False},
        # the tails' fetch waits for the embedded broker, as in conf/gateway.toml (the defaults are Kafka's)
        "async": {"fetch_max_wait_ms": 250},
        "state": {"fetch_max_wait_ms": 100},
    }
    if os.environ.get("GATEWAY_TEST_KAFKA_CLIENT"):     # the whole suite on the other client: README "Testing"
        cfg["kafka"]["client"] = os.environ["GATEWAY_TEST_KAFKA_CLIENT"]
    for name, body in sections.items():
        cfg.setdefault(name, {}).update(body)
    cfg["services"] = services
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(to_toml(cfg))
    return path


class Process:
    """A subprocess with its output in a log file; stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path = ROOT) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def base_env(bootstrap: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PROMETHEUS_"))}
    # the embedded broker's fetch wait (the SDK's default, 500, is Kafka's: see gateway_sdk.app)
    env.update({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "PYTHONUNBUFFERED": "1", "KAFKA_SESSION_TIMEOUT_MS": "3000",
                "KAFKA_FETCH_MAX_WAIT_MS": os.environ.get("KAFKA_FETCH_MAX_WAIT_MS", "10")})
    env.update(extra)
    return env


class Fatal(Exception):
    """Raised inside a :func:`wait_until` predicate when waiting longer cannot help (the process it waits on
    exited): propagated at once instead of surfacing later as a timeout."""


class ProcessExited(Fatal):
    pass


def wait_until(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.1, what: str = "condition") -> Any:
    """Poll *predicate* until it returns something truthy (returned) or *timeout_s* passes (TimeoutError). An
    exception from the predicate counts as "not yet" (a server still starting refuses connections), except
    :class:`Fatal`, which propagates at once."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Fatal:
            raise
        except Exception as exc:  # noqa: BLE001
            last_exc = exc
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not reached within {timeout_s}s" + (f" (last error: {last_exc})" if last_exc else ""))


def metric_value(text: str, name: str, labels: str | None = None) -> float:
    """Sum of the samples of *name* in Prometheus text *text* (optionally only those whose label string,
    ``k="v",...`` in exposition order, contains *labels*), read with prometheus_client's own parser."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != name:
                continue
            label_text = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
            if labels is None or labels in label_text:
                total += sample.value
    return total


class GunicornGateway(Process):
    """The gateway as users run it: gunicorn -c conf/gunicorn.conf.py gateway.wsgi:app."""

    def __init__(self, config_path: Path, bootstrap: str, log_dir: Path, workers: int = 2,
                 port: int | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.workers = workers
        env = base_env(bootstrap, GATEWAY_CONFIG=str(config_path), PORT=str(self.port),
                       WEB_CONCURRENCY=str(workers), GATEWAY_BIND=f"127.0.0.1:{self.port}", **(extra_env or {}))
        super().__init__("gunicorn", [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "conf/gunicorn.conf.py"),
                                      "gateway.wsgi:app"], env, log_dir)
        self.url = f"http://127.0.0.1:{self.port}"

    def metrics(self) -> str:
        return requests.get(self.url + "/metrics", timeout=20).text

    def wait_ready(self, timeout_s: float = 60, workers: int | None = None) -> None:
        want = self.workers if workers is None else workers

        def ready() -> bool:
            if not self.alive():
                raise ProcessExited(f"gunicorn exited ({self.proc.returncode}): {self.log()[-3000:]}")
            return metric_value(self.metrics(), "gateway_workers_ready") >= want

        wait_until(ready, timeout_s, 0.2, f"{want} ready gateway workers")


class ServiceProcess(Process):
    """An example service (python -m examples.<name>) or any module built on the SDK (gateway_sdk)."""

    def __init__(self, module: str, bootstrap: str, log_dir: Path, **env: str) -> None:
        super().__init__(module.rsplit(".", 1)[-1], [sys.executable, "-m", module], base_env(bootstrap, **env),
                         log_dir)


class RawHeaderKey(str):
    """A record header key sent as exactly these bytes. kafka-python encodes header keys as UTF-8; a service
    written in another language may put any bytes there (not valid UTF-8, for instance)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> "RawHeaderKey":
        obj = super().__new__(cls, raw.decode("latin-1"))
        obj.raw = raw
        return obj

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:  # type: ignore[override]
        return self.raw


class ScriptedService:
    """A service written against the raw wire protocol, run in a thread of the test process: it reads its request
    topics from their end (no consumer group: positioned before :meth:`start` returns) and calls
    ``answer(service, record, headers)`` for every request record; ``answer`` sends whatever reply records it
    likes with :meth:`send` (any headers, any order, several, none), possibly from threads of its own."""

    def __init__(self, bootstrap: str, topics: list[str], answer: Callable[["ScriptedService", Any, dict], None]
                 ) -> None:
        import threading

        self.bootstrap = bootstrap
        self.topics = topics
        self.answer = answer
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="scripted-service")
        self._producer: Any = None

    def start(self, timeout_s: float = 30) -> "ScriptedService":
        from kafka import KafkaProducer

        self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0, enable_idempotence=False,
                                       max_request_size=4 * 1048576)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"scripted service on {self.topics} not positioned: {self.errors}")
        return self

    def send(self, topic: str, value: bytes | None, headers: list[tuple[str, bytes]], partition: int | None = None,
             key: bytes | None = None, flush: bool = False) -> None:
        self._producer.send(topic, value=value, key=key, headers=headers, partition=partition)
        if flush:
            self._producer.flush(10)

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, fetch_max_wait_ms=10,
                                 enable_auto_commit=False)
        try:
            tps = [TopicPartition(t, p) for t in self.topics for p in sorted(consumer.partitions_for_topic(t) or ())]
            consumer.assign(tps)
            consumer.seek_to_end(*tps)
            for tp in tps:
                consumer.position(tp)
            self._ready.set()
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=50).values():
                    for rec in records:
                        try:
                            self.answer(self, rec, {k: v for k, v in rec.headers})
                        except Exception as exc:  # noqa: BLE001 - a broken script must show in the test
                            self.errors.append(f"{type(exc).__name__}: {exc}")
                self._producer.flush(10)
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._producer is not None:
            self._producer.close(5)
