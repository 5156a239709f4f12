"""The worker's graceful stop (``gateway.serve.worker``) and the outermost safety net (``gateway.serve.safety``),
on a real gunicorn.

Most tests serve ``tests/drain_app.py`` (an echo-like WSGI app that logs each execution) with ``GatewayWorker``, so
that what is checked is the worker's HTTP behaviour on a stop, with executions counted inside the server. The last
one runs the real gateway on the real broker.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
import requests

from gateway.broker import EmbeddedBroker, free_port
from gateway.config import parse_config
from tests.support.harness import (
    GunicornGateway,
    Process,
    ProcessExited,
    base_env,
    make_config,
    metric_value,
    wait_until,
    write_config,
)
from tests.support.loadgen import FRESH, KEEPALIVE, LoadGenerator, summarize
from tests.support.procs import held_client_ports, signal_pending, worker_pids

ROOT = Path(__file__).resolve().parent.parent


class DrainServer(Process):
    """gunicorn + GatewayWorker serving tests/drain_app.py."""

    def __init__(self, log_dir: Path, workers: int = 1, graceful_s: int = 30, max_ms: int = 5) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.executions = log_dir / f"executions-{uuid.uuid4().hex[:6]}.log"
        self.workers = workers
        env = base_env("127.0.0.1:1", DRAIN_APP_LOG=str(self.executions), DRAIN_APP_MAX_MS=str(max_ms))
        super().__init__("drain-gunicorn", [
            sys.executable, "-m", "gunicorn", "-k", "gateway.serve.worker.GatewayWorker", "-w", str(workers),
            "-b", f"127.0.0.1:{self.port}", "--keep-alive", "75", "--graceful-timeout", str(graceful_s),
            "--pythonpath", str(ROOT / "tests"), "drain_app:app"], env, log_dir)
        try:
            wait_until(self._up, 30, 0.05, "drain app serving")
        except BaseException:
            self.stop()
            raise

    def _up(self) -> bool:
        if not self.alive():
            raise ProcessExited(f"gunicorn exited: {self.log()[-2000:]}")
        try:
            return (requests.get(self.url + "/slow?ms=0", timeout=5).status_code == 200
                    and len(worker_pids(self.pid)) == self.workers)
        except requests.RequestException:
            return False

    def executed(self) -> Counter:
        return Counter(self.executions.read_text().splitlines()) if self.executions.exists() else Counter()

    def reload(self) -> float:
        """SIGHUP; returns when the old workers are gone and new ones serve. Returns how long that took."""
        old, t = worker_pids(self.pid), time.monotonic()
        self.signal(signal.SIGHUP)
        wait_until(lambda: not (worker_pids(self.pid) & old) and self._up(), 40, 0.05, "old workers replaced")
        return time.monotonic() - t


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DrainServer]:
    srv = DrainServer(tmp_path)
    yield srv
    srv.stop()


def keepalive_request(conn: http.client.HTTPConnection, path: str) -> http.client.HTTPResponse:
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    return resp


@pytest.mark.timeout(150)
def test_reloads_under_keepalive_and_fresh_load_fail_nothing_and_execute_every_request_once(tmp_path: Path) -> None:
    """4 rolling reloads while 16 clients (half keep-alive) send requests with short rests between them, so requests
    keep crossing idle connections being closed. Every request answered correctly, none refused, and each executed
    exactly once: a stale-connection retry never executed twice."""
    srv = DrainServer(tmp_path, workers=2)
    # each client rests 300 ms between requests, longer than the worker takes to sweep idle connections after a
    # stop (a request that arrives first is served with Connection: close instead): whatever the machine's load,
    # some keep-alive connections are idle when a reload closes them
    lg = LoadGenerator(srv.url, clients=16, prefix="/x", styles=(KEEPALIVE, FRESH), think_s=0.3, timeout_s=15)
    try:
        with lg:
            wait_until(lambda: lg.count() >= 50, 30, 0.05, "load running")
            reloads = [srv.reload() for _ in range(4)]
            since = time.monotonic()
            wait_until(lambda: lg.count(since) >= 50, 30, 0.05, "load after the last reload")
    finally:
        srv.stop()
    s = summarize(lg.results)
    report = f"{s}; refused {lg.refused}; reloads took {[round(r, 2) for r in reloads]} s; log {srv.log_path}"
    assert (s.failed, s.mismatched, lg.refused) == (0, 0, 0), report
    assert s.styles[KEEPALIVE] >= 100 and s.styles[FRESH] >= 100, report
    # keep-alive connections rest between requests: each reload closes some under the next request
    assert s.stale_retries >= 1, report
    executed = srv.executed()
    tokens = {r.token for r in lg.results}
    assert sorted(n for t, n in executed.items() if t in tokens and n != 1) == [], report
    assert [t for t in tokens if executed[t] != 1] == [], report
    assert [t for t in executed if not t.startswith("slow") and t not in tokens] == [], report


@pytest.mark.timeout(60)
def test_a_response_written_after_the_stop_began_says_connection_close(server: DrainServer) -> None:
    """gunicorn closes only requests that START after the stop; one in flight at the stop would answer keep-alive
    and its client would send the next request into a closing connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    assert keepalive_request(conn, "/slow?ms=0").getheader("Connection") == "keep-alive"
    conn.request("GET", "/slow?ms=3000")
    wait_until(lambda: server.executed()["slow 3000"] == 1, 10, 0.02, "the slow request started")
    old = worker_pids(server.pid)
    server.signal(signal.SIGHUP)
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"slow")
    assert resp.getheader("Connection") == "close", resp.getheaders()
    wait_until(lambda: not (worker_pids(server.pid) & old), 20, 0.05, "the old worker exited")


@pytest.mark.timeout(60)
def test_a_stop_closes_idle_keepalive_connections_at_once_and_serves_requests_that_arrived(
        server: DrainServer) -> None:
    """The worker is frozen while a request arrives on one idle keep-alive connection, a second stays idle and a
    third is connected but has sent nothing yet; then it gets the stop (graceful_timeout 30 s) and is thawed."""
    (worker,) = worker_pids(server.pid)
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    arriving = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    for conn in (idle, arriving):
        assert keepalive_request(conn, "/slow?ms=0").status == 200
    fresh = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    ports = {idle.sock.getsockname()[1], arriving.sock.getsockname()[1], fresh.getsockname()[1]}
    wait_until(lambda: ports <= held_client_ports(worker, server.port), 10, 0.02, "all three accepted")
    os.kill(worker, signal.SIGSTOP)
    try:
        arriving.request("GET", "/slow?ms=200")          # lands in the socket while the worker is frozen
        server.signal(signal.SIGHUP)                      # the master starts a new worker and stops this one
        wait_until(lambda: signal_pending(worker, signal.SIGTERM), 10, 0.01, "the stop sent to the frozen worker")
    finally:
        os.kill(worker, signal.SIGCONT)
    t = time.monotonic()
    idle.sock.settimeout(10)
    assert idle.sock.recv(1) == b"", "the idle keep-alive connection was not closed"
    closed_after = time.monotonic() - t
    resp = arriving.getresponse()
    assert (resp.status, resp.read(), resp.getheader("Connection")) == (200, b"slow", "close")
    fresh.sendall(b"GET /slow?ms=0 HTTP/1.1\r\nHost: x\r\n\r\n")   # the first request of a connection is awaited
    fresh.settimeout(10)
    head = fresh.recv(4096)
    assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in head, head
    assert closed_after < 15, f"idle connection closed {closed_after:.1f} s after the stop (graceful_timeout is 30)"
    wait_until(lambda: worker not in worker_pids(server.pid), 15, 0.05, "the old worker exited")
    for c in (idle, arriving, fresh):
        c.close()


@pytest.mark.timeout(60)
def test_a_base_exception_escaping_the_app_is_problem_json_never_gunicorns_html(server: DrainServer) -> None:
    resp = requests.get(server.url + "/timeout", timeout=10)   # gevent.Timeout: a BaseException, past Flask
    assert resp.status_code == 500, resp.text
    assert resp.headers["Content-Type"] == "application/problem+json", resp.text
    assert resp.json()["code"] == "internal"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/stream-break")              # raised after the first chunk: the status is already sent
    resp2 = conn.getresponse()
    assert resp2.status == 200
    with pytest.raises(http.client.IncompleteRead):   # cut off, never passed off as a complete body
        resp2.read()
    assert requests.get(server.url + "/slow?ms=0", timeout=10).status_code == 200   # the worker serves on


@pytest.mark.timeout(120)
def test_a_gateway_request_cut_by_the_graceful_timeout_gets_503_problem_json(broker: EmbeddedBroker,
                                                                             tmp_path: Path) -> None:
    """A request still waiting for its reply when the graceful timeout runs out: gevent kills its greenlet
    (GreenletExit, a BaseException). The client gets a 503 not_ready problem, not a dropped connection."""
    from gateway.kafka.admin import ensure_topics

    topic = f"void-{uuid.uuid4().hex[:8]}"
    cfg = make_config(broker.bootstrap, {"void": {"topic": topic, "timeout_ms": 60000}})
    ensure_topics(parse_config(cfg), {topic: 1})
    gw = GunicornGateway(write_config(tmp_path / "gw.toml", cfg), broker.bootstrap, tmp_path, workers=1,
                         extra_env={"GATEWAY_GRACEFUL_TIMEOUT": "2"})
    try:
        gw.wait_ready(60)
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
        conn.request("POST", "/void/x", body=b"{}", headers={"Content-Type": "application/json"})
        wait_until(lambda: metric_value(gw.metrics(), "gateway_in_flight") == 1, 20, 0.05, "request in flight")
        t = time.monotonic()
        gw.signal(signal.SIGHUP)
        resp = conn.getresponse()
        took = time.monotonic() - t
        body = resp.read()
        assert resp.status == 503, body
        assert resp.getheader("Content-Type") == "application/problem+json", body
        assert json.loads(body)["code"] == "not_ready", body
        assert resp.getheader("Connection") == "close"
        assert took >= 2, f"answered {took:.1f} s after the stop, before the graceful timeout (2 s)"
    finally:
        gw.stop()
