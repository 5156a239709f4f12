"""Shared fixtures: a real embedded broker, the example services and a real gunicorn gateway.

Nothing that crosses Kafka is mocked. Session-scoped processes are started once and reused; tests that break
things (faults, restarts) start their own.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from gateway.broker import EmbeddedBroker
from gateway.config import parse_config
from tests.support.harness import GunicornGateway, ServiceProcess, make_config, metric_value, wait_until, write_config

# services started by the tests (in-process or not) use the embedded broker's fetch wait; the SDK's default (500)
# is Apache Kafka's, which answers a fetch as soon as data arrives (the embedded broker only at half the wait)
os.environ.setdefault("KAFKA_FETCH_MAX_WAIT_MS", "10")

EXAMPLES = ("orders", "customers", "basket", "echo", "ticker")
SESSION_SERVICES = {
    "orders": {"topic": "orders.requests", "methods": ["GET", "POST"], "timeout_ms": 5000,
               "key": {"source": "path", "segment": 1}},
    "customers": {"topic": "customers.requests", "methods": ["GET", "POST", "PUT"], "timeout_ms": 5000},
    "basket": {"topic": "basket.requests", "methods": ["GET", "POST", "DELETE"], "timeout_ms": 5000,
               "key": {"source": "path", "segment": 1}},
    "echo": {"topic": "echo.requests", "methods": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
             "content_types": ["*/*"], "timeout_ms": 20000},
    "jsononly": {"topic": "echo.requests.json", "methods": ["POST"], "content_types": ["application/json"],
                 "key": {"source": "json", "field": "customer_id"}},
    "blackhole": {"topic": "blackhole.requests", "methods": ["GET", "POST"], "timeout_ms": 800},
    "spring": {"topic": "spring.requests", "methods": ["POST"], "timeout_ms": 15000},
    "bykey": {"topic": "bykey.requests", "methods": ["POST"], "timeout_ms": 15000},
    # docs/variants.md
    "ticker": {"topic": "ticker.requests", "methods": ["GET"], "timeout_ms": 5000, "stream_idle_timeout_ms": 1000,
               "stream_timeout_ms": 60000},
    "shuffle": {"topic": "shuffle.requests", "methods": ["GET"], "timeout_ms": 5000},
    "void": {"topic": "void.requests", "methods": ["GET", "POST"], "timeout_ms": 30000},
    "wsecho": {"topic": "wsecho.requests", "methods": ["POST"], "timeout_ms": 30000},
    # tests/test_replay.py (an SDK service inside the test process that counts its executions)
    "replay": {"topic": "replay.requests", "methods": ["GET", "POST"], "content_types": ["*/*"], "timeout_ms": 20000},
    # tests/test_hostile_services.py (raw services that misbehave on purpose)
    "hostile": {"topic": "hostile.requests", "methods": ["GET", "POST"], "timeout_ms": 10000},
    "unparsable": {"topic": "unparsable.requests", "methods": ["GET", "POST"], "timeout_ms": 15000},
    # raw-protocol services the tests play themselves (tests.support.harness.ScriptedService)
    "fuzzraw": {"topic": "fuzzraw.requests", "methods": ["GET", "POST"], "content_types": ["*/*"],
                "timeout_ms": 5000, "stream_idle_timeout_ms": 1000, "stream_timeout_ms": 20000},
    "replyheaders": {"topic": "replyheaders.requests", "methods": ["GET"], "timeout_ms": 10000},
    "drip": {"topic": "drip.requests", "methods": ["GET"], "timeout_ms": 10000, "stream_idle_timeout_ms": 5000,
             "stream_timeout_ms": 120000},
    "dripshort": {"topic": "dripshort.requests", "methods": ["GET"], "timeout_ms": 10000,
                  "stream_idle_timeout_ms": 5000, "stream_timeout_ms": 2000},
}
VARIANT_SECTIONS = {
    "async": {"partitions": 4, "retention_ms": 600000, "unknown_id_wait_ms": 2000},
    "websocket": {"max_frame_bytes": 8192, "max_in_flight": 50},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``run_first`` tests start the session, ``run_last`` tests end it (stable otherwise): a check that needs a
    long idle period (tests/test_replay.py: 60 s) lets the rest of the suite run through that period."""
    def rank(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("run_first") else 2 if item.get_closest_marker("run_last") else 1
    items.sort(key=rank)


_WHEEL_ROOT: list[Path] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    """tests/test_wheel.py builds two wheels and two venvs (a minute or more, in pip subprocesses): give it a head
    start in a background thread while the rest of the suite runs."""
    wheel_items = [item for item in session.items if item.nodeid.startswith("tests/test_wheel.py")]
    if wheel_items:
        root = Path(tempfile.mkdtemp(prefix="gateway-wheel-"))
        _WHEEL_ROOT.append(root)
        wheel_items[0].module.start_preparing(root)  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session) -> None:
    for root in _WHEEL_ROOT:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def broker(log_dir: Path) -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(log_path=log_dir / "broker.log").start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def session_config(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gateway.kafka.admin import ensure_topics, wanted_topics

    sections = {**VARIANT_SECTIONS, "async": {**VARIANT_SECTIONS["async"],
                                              "results_topic": f"results-{uuid.uuid4().hex[:8]}"}}
    cfg = make_config(broker.bootstrap, SESSION_SERVICES, limits={"max_body_bytes": 65536}, **sections)
    path = write_config(tmp_path_factory.mktemp("conf") / "gateway.toml", cfg)
    parsed = parse_config(cfg)
    ensure_topics(parsed, {**wanted_topics(parsed), "orders.events": 4})
    return path


@pytest.fixture(scope="session")
def example_services(broker: EmbeddedBroker, session_config: Path, log_dir: Path) -> Iterator[dict]:
    # these stay up for the whole session, mostly idle: a longer fetch wait keeps their idle CPU low (each idle
    # consumer at 10 ms costs ~10% of a core on the embedded broker), leaving the 2 cores to the tests. Measured
    # idle, all of them at 50 ms but wsecho at 10 ms: broker 13%, wsecho 10%, each other service 3.5%, gateway 5.5%
    idle = {"KAFKA_FETCH_MAX_WAIT_MS": "50"}
    procs = {name: ServiceProcess(f"examples.{name}", broker.bootstrap, log_dir, **idle) for name in EXAMPLES}
    procs["jsononly"] = ServiceProcess("examples.echo", broker.bootstrap, log_dir, ECHO_TOPIC="echo.requests.json",
                                        SERVICE_GROUP_ID="jsononly-service", **idle)
    procs["wsecho"] = ServiceProcess("examples.echo", broker.bootstrap, log_dir, ECHO_TOPIC="wsecho.requests",
                                      SERVICE_GROUP_ID="wsecho-service", **idle)
    yield procs
    for p in procs.values():
        p.stop()


@pytest.fixture(scope="session")
def gateway(session_config: Path, broker: EmbeddedBroker, example_services: dict, log_dir: Path
            ) -> Iterator[GunicornGateway]:
    import requests

    # the access log on, as an operator turns it on (tests/test_request_reply.py reads it)
    gw = GunicornGateway(session_config, broker.bootstrap, log_dir, workers=2,
                         extra_env={"GATEWAY_ACCESS_LOG": str(log_dir / "access.log")})
    try:
        gw.wait_ready(60)
        # the example services join their groups in the background; wait until each answers
        for path in ("/echo/ping", "/orders/none", "/customers/none", "/basket/none"):
            wait_until(lambda p=path: requests.get(gw.url + p, timeout=10).status_code in (200, 404), 60, 0.2,
                       f"{path} answered")
        wait_until(lambda: requests.post(gw.url + "/jsononly", json={}, timeout=10).status_code == 200, 60, 0.2,
                   "jsononly answered")
        wait_until(lambda: requests.get(gw.url + "/ticker/slow?ms=0", timeout=10).status_code == 200, 60, 0.2,
                   "ticker answered")
        wait_until(lambda: requests.post(gw.url + "/wsecho", json={}, timeout=10).status_code == 200, 60, 0.2,
                   "wsecho answered")
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def no_leaks(gateway: GunicornGateway) -> Iterator[None]:
    """After the test, every worker's pending table drains to zero (nothing left waiting forever). The table's own
    size (``gateway_pending``), not ``gateway_in_flight``: a waiter registered and never removed leaves the first
    at 1 while the second, counted by the caller, may already be back to 0."""
    yield
    wait_until(lambda: metric_value(gateway.metrics(), "gateway_pending") == 0, 15, 0.2, "pending tables empty")


def run_in_thread(fn, *args) -> threading.Thread:  # noqa: ANN001
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t
