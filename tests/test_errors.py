"""Every error status the gateway promises, provoked for real through gunicorn and the broker."""
from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import time

import pytest
import requests

from gateway.broker import EmbeddedBroker
from tests.support.harness import GunicornGateway, make_config, metric_value, wait_until, write_config

pytestmark = pytest.mark.usefixtures("no_leaks")


def _problem(r: requests.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["code"] == code and body["detail"]
    return body


def test_unknown_service_is_404(gateway):
    body = _problem(requests.get(gateway.url + "/nosuch/thing", timeout=10), 404, "unknown_service")
    assert "nosuch" in body["detail"] and "orders" in body["detail"]


def test_method_not_allowed_is_405_with_allow(gateway):
    r = requests.delete(gateway.url + "/orders/1", timeout=10)
    _problem(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "GET, POST"


def test_body_over_limit_is_413(gateway):
    r = requests.post(gateway.url + "/echo/big", data=b"x" * 70000, headers={"Content-Type": "text/plain"},
                      timeout=10)
    body = _problem(r, 413, "request_entity_too_large")
    assert "65536" in body["detail"]


def test_unsupported_content_type_is_415(gateway):
    r = requests.post(gateway.url + "/orders", data="<order/>", headers={"Content-Type": "application/xml"},
                      timeout=10)
    body = _problem(r, 415, "unsupported_media_type")
    assert "application/json" in body["detail"]
    r = requests.post(gateway.url + "/orders", data=b"{}", headers={"Content-Type": ""}, timeout=10)
    _problem(r, 415, "unsupported_media_type")


def test_malformed_json_is_400(gateway):
    r = requests.post(gateway.url + "/orders", data='{"customer_id": ', headers={"Content-Type": "application/json"},
                      timeout=10)
    body = _problem(r, 400, "malformed_json")
    assert "line 1" in body["detail"]


def test_no_reply_before_deadline_is_504_with_correlation_id(gateway):
    started = time.monotonic()
    r = requests.get(gateway.url + "/blackhole/x", timeout=10)
    elapsed = time.monotonic() - started
    body = _problem(r, 504, "reply_timeout")
    assert len(body["correlation_id"]) == 48 and r.headers["X-Correlation-Id"] == body["correlation_id"]
    assert 0.7 < elapsed < 5  # the service's timeout_ms is 800


def test_too_many_in_flight_is_503_with_retry_after(broker: EmbeddedBroker, tmp_path, log_dir):
    """5 requests fill the worker (max_in_flight 5); only once all 5 wait (the in-flight gauge says so) do 15
    more arrive, each refused. The deadline (8 s) leaves a loaded machine room; the gauge read after the 15 proves
    the 5 were still waiting meanwhile."""
    cfg = make_config(broker.bootstrap, {"blackhole": {"topic": "blackhole.requests", "timeout_ms": 8000}},
                      limits={"max_in_flight": 5})
    gw = GunicornGateway(write_config(tmp_path / "g.toml", cfg), broker.bootstrap, log_dir, workers=1)
    try:
        gw.wait_ready(60)
        with cf.ThreadPoolExecutor(20) as pool:
            held = [pool.submit(requests.get, gw.url + "/blackhole/x", timeout=20) for _ in range(5)]
            wait_until(lambda: metric_value(gw.metrics(), "gateway_in_flight") == 5, 6, 0.05, "5 requests waiting")
            rejected = list(pool.map(lambda _: requests.get(gw.url + "/blackhole/x", timeout=10), range(15)))
            still_waiting = metric_value(gw.metrics(), "gateway_in_flight")
            timed_out = [f.result() for f in held]
        assert still_waiting == 5, "the 5 stopped waiting before the 15 were sent: the check proved nothing"
        assert [r.status_code for r in rejected] == [503] * 15
        assert all(r.headers["Retry-After"] == "1" and r.json()["code"] == "too_many_in_flight" for r in rejected)
        assert [(r.status_code, r.json()["code"]) for r in timed_out] == [(504, "reply_timeout")] * 5
    finally:
        gw.stop()


def test_broker_unreachable_is_fast_503_and_not_ready(tmp_path, log_dir):
    b = EmbeddedBroker(log_path=log_dir / "broker-503.log").start()
    cfg = make_config(b.bootstrap, {"echo": {"topic": "echo.requests", "timeout_ms": 5000}})
    gw = GunicornGateway(write_config(tmp_path / "g.toml", cfg), b.bootstrap, log_dir, workers=1)
    try:
        gw.wait_ready(60)
        b.stop()
        wait_until(lambda: requests.get(gw.url + "/readyz", timeout=5).status_code == 503, 15, 0.2,
                   "readyz reports not ready")
        assert requests.get(gw.url + "/readyz", timeout=5).json()["broker_up"] is False
        started = time.monotonic()
        r = requests.post(gw.url + "/echo/x", json={"a": 1}, timeout=10)
        assert time.monotonic() - started < 1.5  # at once: not a blocked send (max_block_ms 2 s), nor the 5 s deadline
        _problem(r, 503, "broker_unavailable")
        assert r.headers["Retry-After"] == "1"
    finally:
        gw.stop()
        b.stop()


def test_json_nested_too_deeply_is_400_not_500(gateway):
    for body in ("[" * 65000, "[" * 300 + "]" * 300, '{"a": ' * 1000 + "1" + "}" * 1000):
        r = requests.post(gateway.url + "/echo/deep", data=body, headers={"Content-Type": "application/json"},
                          timeout=10)
        detail = _problem(r, 400, "malformed_json")["detail"]
        assert "nested too deeply (more than 256 levels" in detail
    ok = requests.post(gateway.url + "/echo/deep", data="[" * 256 + "]" * 256,
                       headers={"Content-Type": "application/json"}, timeout=10)
    assert ok.status_code == 200 and ok.json()["body"] == "[" * 256 + "]" * 256


def test_paths_that_are_not_utf8_are_400_not_mangled(gateway):
    """werkzeug would read %FF as U+FFFD and the service would get a path the client never sent. (Raw bytes
    above 0x7F in the request line never reach the gateway: gunicorn answers them 400 itself.)"""
    for target in ("/echo/%FF", "/echo/a%C3"):
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        try:
            conn.request("GET", target)
            r = conn.getresponse()
            body = r.read()
        finally:
            conn.close()
        assert r.status == 400 and r.getheader("Content-Type") == "application/problem+json", (target, body)
        assert "the path is not UTF-8: byte 0x" in json.loads(body)["detail"], body
    r = requests.get(gateway.url + "/echo/%C3%A9t%C3%A9?q=%C3%A9", timeout=10)     # UTF-8, percent-encoded
    assert r.status_code == 200 and r.json()["path"] == "/echo/été" and r.json()["query"] == {"q": ["é"]}
