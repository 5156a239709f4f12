"""The responder SDK over a real broker: handler exceptions answer 500, expired requests are dropped and counted."""
from __future__ import annotations

import threading

import requests

from gateway.config import parse_config
from gateway.kafka.admin import ensure_topics
from gateway_sdk import Responder
from tests.support.harness import GunicornGateway, make_config, wait_until, write_config


def test_handler_exception_and_deadline_drop(broker, tmp_path, log_dir):
    svc = Responder("fragile", topic="fragile.requests", bootstrap_servers=broker.bootstrap,
                    session_timeout_ms=3000)
    release = threading.Event()
    entered = threading.Event()

    @svc.route("GET", "/fragile/boom")
    def boom(req):  # noqa: ANN001, ANN202
        raise ValueError("bug in handler")

    @svc.route("GET", "/fragile/slow")
    def slow(req):  # noqa: ANN001, ANN202
        entered.set()
        release.wait(5)  # holds the service while the next request's deadline passes
        return {"slow": True}

    @svc.route("GET", "/fragile/fast")
    def fast(req):  # noqa: ANN001, ANN202
        return {"fast": True}

    cfg = make_config(broker.bootstrap, {"fragile": {"topic": "fragile.requests", "timeout_ms": 3000}})
    ensure_topics(parse_config(cfg), {"fragile.requests": 1})
    gw = GunicornGateway(write_config(tmp_path / "g.toml", cfg), broker.bootstrap, log_dir, workers=2)
    runner = threading.Thread(target=svc.run, kwargs={"install_signal_handlers": False}, daemon=True)
    runner.start()
    try:
        gw.wait_ready(60)
        assert svc.ready.wait(30)
        r = requests.get(gw.url + "/fragile/boom", timeout=10)
        assert r.status_code == 500 and "ValueError" in r.json()["detail"]
        assert svc.stats["errors"] == 1

        slow = threading.Thread(target=lambda: requests.get(gw.url + "/fragile/slow", timeout=10))
        slow.start()
        assert entered.wait(10)
        r = requests.get(gw.url + "/fragile/fast", timeout=10)  # queued behind the slow one; expires there
        assert r.status_code == 504
        release.set()
        slow.join(10)
        wait_until(lambda: svc.stats["expired"] >= 1, 10, 0.05, "expired request dropped by the SDK")
        assert svc.stats["handled"] == 1  # the expired one was never handed to a handler
    finally:
        release.set()
        svc.stop()
        runner.join(15)
        gw.stop()
