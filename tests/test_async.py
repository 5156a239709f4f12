"""Async request + poll (docs/variants.md, variant 1) through real gunicorn workers and a real broker."""
from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import requests
import tomllib

from tests.support.harness import GunicornGateway, to_toml, wait_until

pytestmark = pytest.mark.usefixtures("no_leaks")
ASYNC = {"Prefer": "respond-async"}


def accept(gateway, path: str, **kw) -> tuple[str, requests.Response]:
    started = time.monotonic()
    r = requests.get(gateway.url + path, headers={**ASYNC, **kw.pop("headers", {})}, timeout=10, **kw)
    assert r.status_code == 202, r.text
    assert time.monotonic() - started < 5, "202 must come at once, not after the reply"
    location = r.headers["Location"]
    assert location == f"/requests/{r.json()['id']}" and len(r.json()["id"]) == 48
    return location, r


def test_accept_then_poll_long_polls_until_the_result(gateway):
    location, _ = accept(gateway, "/ticker/slow?ms=1500")
    r = requests.get(gateway.url + location, timeout=10)
    assert r.status_code == 202 and r.headers["Location"] == location and r.json()["status"] == "pending"
    started = time.monotonic()
    r = requests.get(gateway.url + location, headers={"Prefer": "wait=1"}, timeout=10)
    assert r.status_code == 202 and 0.9 < time.monotonic() - started < 6      # long-polled, then 202 again
    r = requests.get(gateway.url + location, headers={"Prefer": "wait=10"}, timeout=15)
    assert r.status_code == 200 and r.json() == {"slept_ms": 1500}
    assert r.headers["Content-Location"] == location
    again = requests.get(gateway.url + location, timeout=10)                   # stays retrievable
    assert again.status_code == 200 and again.json() == {"slept_ms": 1500}


def test_respond_async_with_wait_answers_directly_when_fast(gateway):
    r = requests.post(gateway.url + "/echo/now", json={"x": 1}, headers={"Prefer": "respond-async, wait=5"},
                      timeout=10)
    assert r.status_code == 200 and r.json()["body"] == '{"x": 1}'


def test_poll_is_answered_by_either_worker(gateway):
    """Poll on fresh connections until the worker that did NOT take the request answers: same result."""
    location, taken = accept(gateway, "/echo/cross?n=1", headers={"X-Request-Id": "cross-1"})
    acceptor = taken.headers["X-Gateway-Worker"]
    answers: dict[str, dict] = {}
    wrong: list[tuple[int, str]] = []  # wait_until swallows exceptions: collect, assert after

    def other_worker_answered() -> bool:
        with requests.Session() as s:  # a new connection: the kernel hands it to either worker
            r = s.get(gateway.url + location, headers={"Prefer": "wait=5"}, timeout=10)
        if r.status_code != 200:
            wrong.append((r.status_code, r.text[:200]))
        else:
            answers[r.headers["X-Gateway-Worker"]] = r.json()
        return len(answers) == 2

    wait_until(other_worker_answered, 30, 0.01, "a poll answered by the other worker")
    assert wrong == []
    assert acceptor in answers
    for body in answers.values():
        assert body["path"] == "/echo/cross" and body["headers"]["x-request-id"] == "cross-1"


def test_once_one_worker_answered_every_worker_answers(gateway):
    """Workers tail the results topic independently; one may lag. After a 200 from either worker, plain polls
    on fresh connections (the kernel spreads them over both workers) must all be 200, never 202 again."""
    regressions, workers = [], set()
    for n in range(6):
        location, _ = accept(gateway, f"/echo/agree?n={n}")
        r = requests.get(gateway.url + location, headers={"Prefer": "wait=10"}, timeout=15)
        assert r.status_code == 200, r.text
        for _ in range(6):
            with requests.Session() as s:
                again = s.get(gateway.url + location, timeout=10)
            workers.add(again.headers["X-Gateway-Worker"])
            if again.status_code != 200:
                regressions.append((n, again.status_code, again.headers["X-Gateway-Worker"]))
    assert regressions == []
    assert len(workers) == 2, "the polls never reached the second worker: the test proved nothing"


def test_unknown_malformed_and_bad_input_are_clear_4xx(gateway):
    for rid in ("nope", "f" * 48, "F" * 48):
        r = requests.get(gateway.url + f"/requests/{rid}", timeout=10)
        assert r.status_code == 404 and r.headers["Content-Type"] == "application/problem+json"
        assert "unknown or its result expired" in r.json()["detail"]
    location, _ = accept(gateway, "/echo/x")
    r = requests.get(gateway.url + location, headers={"Prefer": "wait=soon"}, timeout=10)
    assert r.status_code == 400 and "wait=soon" in r.json()["detail"]
    r = requests.delete(gateway.url + location, timeout=10)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD"
    r = requests.post(gateway.url + "/echo/x", data=b"{", headers={**ASYNC, "Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 400 and r.json()["code"] == "malformed_json"


def test_no_reply_before_the_deadline_is_a_504(gateway):
    location, _ = accept(gateway, "/blackhole/x")        # nobody answers; deadline 800 ms
    r = requests.get(gateway.url + location, headers={"Prefer": "wait=10"}, timeout=15)
    assert r.status_code == 504 and r.json()["code"] == "async_deadline"


def _instance_config(session_config: Path, tmp_path: Path) -> Path:
    """Another gateway instance: its own reply topic and group, the same results topic and services."""
    cfg = tomllib.loads(session_config.read_text())
    suffix = uuid.uuid4().hex[:8]
    cfg["reply"] = {**cfg["reply"], "topic": f"replies-{suffix}", "group_id": f"gw-{suffix}", "partitions": 4}
    path = tmp_path / f"gateway-{suffix}.toml"
    path.write_text(to_toml(cfg))
    return path


def test_result_survives_the_accepting_gateway_dying(gateway, session_config, broker, log_dir, tmp_path):
    """Instance A takes the request and is SIGKILLed at once; the session gateway and a gateway started after
    the result was written both answer the poll (each reads the results topic, not A)."""
    close = {"Connection": "close"}  # an idle keep-alive connection would hold gunicorn's graceful stop
    a = GunicornGateway(_instance_config(session_config, tmp_path), broker.bootstrap, log_dir, workers=1)
    try:
        a.wait_ready(60)
        location, _ = accept(a, "/ticker/slow?ms=800", headers=close)
    finally:
        os.killpg(a.pid, signal.SIGKILL)
        a.stop()
    r = requests.get(gateway.url + location, headers={"Prefer": "wait=10"}, timeout=15)
    assert r.status_code == 200 and r.json() == {"slept_ms": 800}
    b = GunicornGateway(_instance_config(session_config, tmp_path), broker.bootstrap, log_dir, workers=1)
    try:
        b.wait_ready(60)
        r = requests.get(b.url + location, headers=close, timeout=10)
        assert r.status_code == 200 and r.json() == {"slept_ms": 800}
    finally:
        b.stop()
