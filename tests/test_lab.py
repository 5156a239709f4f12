"""The fault suite's own instruments: the load generator's client styles and counts, and ``wait_until``.

The load generator decides what counts as a failure, so it is tested like the gateway: against scripted servers
that close connections at the moments that matter. No Kafka here, except the check of the one private kafka-python
attribute the gateway reaches into.
"""
from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from typing import Callable

import pytest

from gateway.broker import free_port
from tests.support.harness import ProcessExited, wait_until
from tests.support.loadgen import FRESH, KEEPALIVE, OK, LoadGenerator

# what the scripted server does with the n-th request (0-based) on a connection: answer it, or close without a
# byte, or close after part of the status line
ANSWER, CLOSE, PARTIAL = "answer", "close", "partial"


def read_request(rfile) -> tuple[str, bytes] | None:  # noqa: ANN001
    line = rfile.readline()
    if not line:
        return None
    length = 0
    while (h := rfile.readline()) not in (b"\r\n", b""):
        name, _, value = h.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return line.split()[1].decode(), rfile.read(length)


class Scripted(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, script: Callable[[int, int], str]) -> None:
        self.script = script          # (connection number, request number on it) -> ANSWER | CLOSE | PARTIAL
        self.connections = 0
        self.seen: list[str] = []     # tokens of the requests that reached the server, in order
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(socketserver.StreamRequestHandler):
    server: Scripted

    def handle(self) -> None:
        with self.server.lock:
            conn = self.server.connections
            self.server.connections += 1
        n = 0
        while (req := read_request(self.rfile)) is not None:
            path, body = req
            with self.server.lock:
                self.server.seen.append(json.loads(body)["token"])
            action = self.server.script(conn, n)
            if action == CLOSE:
                return
            if action == PARTIAL:
                self.wfile.write(b"HTTP/1.1 2")
                return
            out = json.dumps({"path": path, "body": body.decode()}).encode()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(out)).encode() + b"\r\n\r\n" + out)
            n += 1


def run_load(script: Callable[[int, int], str], style: str, requests: int) -> tuple[LoadGenerator, Scripted]:
    srv = Scripted(script)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    lg = LoadGenerator(f"http://127.0.0.1:{srv.server_address[1]}", clients=1, prefix="/x", styles=(style,),
                       timeout_s=5)
    try:
        with lg:
            wait_until(lambda: lg.count() >= requests, 10, 0.01, f"{requests} requests")
    finally:
        srv.shutdown()
        srv.server_close()
    return lg, srv


@pytest.mark.timeout(30)
def test_a_keepalive_request_lost_on_a_reused_connection_before_any_byte_is_retried_once() -> None:
    # the 2nd request of the first connection is dropped unanswered, as a server closing an idle connection would
    lg, srv = run_load(lambda conn, n: CLOSE if (conn, n) == (0, 1) else ANSWER, KEEPALIVE, 3)
    first, second = lg.results[:2]
    assert first.outcome == OK and not first.stale_retry and not first.reused
    assert second.outcome == OK and second.stale_retry, second
    assert srv.seen[1] == srv.seen[2] == second.token    # sent twice: why the gateway must never process the 1st
    assert all(r.outcome == OK for r in lg.results) and lg.results[2].reused
    assert lg.refused == 0


@pytest.mark.timeout(30)
def test_a_keepalive_request_is_not_retried_after_a_response_byte_or_twice() -> None:
    lg, srv = run_load(lambda conn, n: PARTIAL if (conn, n) == (0, 1) else ANSWER, KEEPALIVE, 3)
    assert lg.results[1].outcome == "failed" and not lg.results[1].stale_retry, lg.results[1]
    assert srv.seen.count(lg.results[1].token) == 1
    # closed under it on the reused connection AND on the new one: one retry, then a failure
    lg, srv = run_load(lambda conn, n: CLOSE if (conn, n) in ((0, 1), (1, 0)) else ANSWER, KEEPALIVE, 3)
    assert lg.results[1].outcome == "failed" and lg.results[1].stale_retry, lg.results[1]
    assert srv.seen.count(lg.results[1].token) == 2


@pytest.mark.timeout(30)
def test_a_fresh_connection_closed_without_a_response_is_a_failure_never_retried() -> None:
    lg, srv = run_load(lambda conn, n: CLOSE if conn == 1 else ANSWER, FRESH, 3)
    assert [r.outcome for r in lg.results[:3]] == [OK, "failed", OK], lg.results[:3]
    assert not any(r.stale_retry or r.reused for r in lg.results)
    assert srv.seen.count(lg.results[1].token) == 1


@pytest.mark.timeout(30)
def test_refused_connections_are_counted_and_are_not_requests() -> None:
    port = free_port()   # nothing listens there
    lg = LoadGenerator(f"http://127.0.0.1:{port}", clients=2, styles=(FRESH, KEEPALIVE), phase="down")
    with lg:
        wait_until(lambda: lg.refused >= 10, 10, 0.01, "refusals")
    assert lg.results == []
    assert lg.refused == len(lg.refusals) >= 10 and {ph for _, ph, _ in lg.refusals} == {"down"}


@pytest.mark.timeout(30)
def test_paced_clients_never_exceed_the_target_rate() -> None:
    srv = Scripted(lambda conn, n: ANSWER)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    lg = LoadGenerator(f"http://127.0.0.1:{srv.server_address[1]}", clients=4, prefix="/x",
                       styles=(KEEPALIVE, FRESH), rate=40)
    try:
        t = time.monotonic()
        with lg:
            time.sleep(1.5)
        took = time.monotonic() - t
    finally:
        srv.shutdown()
        srv.server_close()
    assert 1 <= len(lg.results) <= 40 * took + 4, (len(lg.results), took)  # + at most one per client in flight
    assert all(r.outcome == OK for r in lg.results)


@pytest.mark.timeout(30)
def test_wait_until_propagates_a_fatal_error_at_once_and_retries_others() -> None:
    def exited() -> bool:
        raise ProcessExited("gunicorn exited (1)")

    t = time.monotonic()
    with pytest.raises(ProcessExited):
        wait_until(exited, 20, 0.01)
    assert time.monotonic() - t < 5
    calls: list[int] = []

    def flaky() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("starting")
        return True

    assert wait_until(flaky, 10, 0.01) is True and len(calls) == 3


def test_scripted_server_port_is_free_after_close() -> None:
    srv = Scripted(lambda conn, n: ANSWER)
    port = srv.server_address[1]
    srv.server_close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
