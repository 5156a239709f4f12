"""Hostile clients (issue 7, section 3) against a gateway of its own with small bounds: bodies and headers that
trickle in, stream and websocket clients that stop reading, clients that never answer a ping, async results over
their byte bounds, deeply nested JSON from a service. Everything through real gunicorn, a real broker and a raw
service written against the wire protocol; the pending table is read from ``/readyz``."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs

import pytest
import requests
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from pending_check import wait_pending_drained, worker_states
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

from gateway.broker import EmbeddedBroker
from gateway.config import parse_config
from gateway.protocol import (
    H_CORRELATION_ID,
    H_PATH,
    H_QUERY,
    H_REPLY_KEY,
    H_REPLY_PARTITION,
    H_REPLY_TOPIC,
    reply_headers,
)
from tests.support.harness import GunicornGateway, make_config, metric_value, wait_until, write_config

BUFFER_BYTES = 256 * 1024        # limits.write_buffer_bytes of this gateway
# a burst may pass the bound while the client's writer is not blocked: one fetch of its reply partition
# (kafka-python's max_partition_fetch_bytes, 1 MiB) plus a record
HELD_AT_MOST = BUFFER_BYTES + 1024 * 1024 + 64 * 1024
LIMITS = {"max_body_bytes": 65536, "body_timeout_ms": 1500, "write_timeout_ms": 2000, "write_buffer_records": 2000,
          "write_buffer_bytes": BUFFER_BYTES}
ASYNC = {"partitions": 2, "retention_ms": 600000, "unknown_id_wait_ms": 2000, "max_result_bytes": 16384,
         "max_store_bytes": 65536, "max_stream_records": 50}
SERVICES = {
    "edge": {"topic": "edge.requests", "methods": ["GET", "POST"], "timeout_ms": 10000,
             "stream_idle_timeout_ms": 15000, "stream_timeout_ms": 60000},
    "echo": {"topic": "echo.requests", "methods": ["GET", "POST"], "content_types": ["*/*"], "timeout_ms": 20000},
    "void": {"topic": "void.requests", "methods": ["GET"], "timeout_ms": 30000},
}
KEEPALIVE_S = 2                  # gunicorn --keep-alive: bounds the headers of every request
PING_MS = 10000                  # a client that stops reading is dropped long before it misses a pong (20 s)
SHORT_PING_MS = 1500             # the ping test's own gateway: closed at 3 s without a pong


# -- a raw service: streams as much as asked, or replies deeply nested JSON ---------------------------------------
def _serve(bootstrap: str, stop: threading.Event, ready: threading.Event) -> None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=10)
    producer = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=5,
                             batch_size=256 * 1024, max_request_size=4 * 1024 * 1024)
    tps = [TopicPartition("edge.requests", p) for p in sorted(consumer.partitions_for_topic("edge.requests"))]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    for tp in tps:
        consumer.position(tp)
    ready.set()
    try:
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=100).values():
                for rec in records:
                    h = dict(rec.headers)
                    cid = bytes.fromhex(h[H_CORRELATION_ID].decode())
                    where = dict(topic=h[H_REPLY_TOPIC].decode(), key=h[H_REPLY_KEY],
                                 partition=int(h[H_REPLY_PARTITION]))
                    path, query = h[H_PATH].decode(), parse_qs(h[H_QUERY].decode())
                    n = int(query.get("n", ["1"])[0])
                    for i, (body, kw) in enumerate(_replies(path, n, int(query.get("size", ["10"])[0]))):
                        producer.send(value=body, headers=reply_headers(cid, **kw), **where)
                        if i % 100 == 99:
                            producer.flush()
                    producer.flush()
    finally:
        producer.close()
        consumer.close()


def _replies(path: str, n: int, size: int) -> Iterator[tuple[bytes, dict]]:
    if path == "/edge/stream":               # n items of `size` bytes (JSON strings), then the end
        item = json.dumps("x" * max(0, size - 2)).encode()
        for seq in range(n):
            yield item, {"seq": seq, "stream": "more"}
        yield b"", {"seq": n, "stream": "end"}
    elif path == "/edge/deep":               # one reply nested n deep
        yield b"[" * n + b"]" * n, {}
    elif path == "/edge/deepstream":         # an item, an item nested n deep (spread over lines), a nested error
        yield b'{"i": 0}', {"seq": 0, "stream": "more"}
        yield b"[\n" * n + b"]" * n, {"seq": 1, "stream": "more"}
        yield b'{"detail": ' + b"[" * n + b"]" * n + b"}", {"seq": 2, "stream": "error", "status": 500}


@pytest.fixture(scope="module")
def edge(broker: EmbeddedBroker, example_services: dict, log_dir: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornGateway]:
    from gateway.kafka.admin import ensure_topics, wanted_topics

    cfg = make_config(broker.bootstrap, SERVICES, limits=LIMITS, websocket={"ping_interval_ms": PING_MS},
                      **{"async": {**ASYNC, "results_topic": f"edge-results-{uuid.uuid4().hex[:8]}"}})
    ensure_topics(parse_config(cfg), wanted_topics(parse_config(cfg)))
    stop, ready = threading.Event(), threading.Event()
    service = threading.Thread(target=_serve, args=(broker.bootstrap, stop, ready), daemon=True)
    service.start()
    assert ready.wait(30), "the edge service did not start"
    path = write_config(tmp_path_factory.mktemp("edge") / "gateway.toml", cfg)
    gw = GunicornGateway(path, broker.bootstrap, log_dir, workers=1,
                         extra_env={"GUNICORN_CMD_ARGS": f"--keep-alive {KEEPALIVE_S}"})
    try:
        gw.wait_ready(60)
        wait_until(lambda: requests.get(gw.url + "/echo/up", timeout=10).status_code == 200, 60, 0.2, "echo")
        wait_until(lambda: requests.get(gw.url + "/edge/stream?n=1", headers={"Accept": "application/x-ndjson"},
                                        timeout=10).status_code == 200, 60, 0.2, "the edge service")
        yield gw
    finally:
        gw.stop()
        stop.set()
        service.join(10)


def state(gw: GunicornGateway) -> dict:
    """``/readyz`` of this gateway's one worker."""
    return next(iter(worker_states(gw.url, 1).values()))


def dropped(gw: GunicornGateway, kind: str) -> float:
    return metric_value(gw.metrics(), "gateway_slow_consumers_dropped_total", f'kind="{kind}"')


def raw_socket(gw: GunicornGateway, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:   # before connect: the window the client advertises stays this small
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect(("127.0.0.1", gw.port))
    return s


def closed_by_peer(s: socket.socket, timeout_s: float) -> bool:
    """Read (and discard) until the peer closes the connection; False if it is still open after *timeout_s*."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not s.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
    return False


# -- slow requests ------------------------------------------------------------------------------------------------
def test_a_body_that_trickles_in_gets_408_and_the_connection_is_closed(edge):
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=30)
    try:
        conn.request("POST", "/echo/first", body=b"{}", headers={"Content-Type": "application/json"})
        first = conn.getresponse()
        assert first.status == 200 and json.loads(first.read())["path"] == "/echo/first"   # a keep-alive connection
        conn.sock.sendall(b"POST /echo/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{")
        started = time.monotonic()
        r = http.client.HTTPResponse(conn.sock, method="POST")
        r.begin()
        waited = time.monotonic() - started
        problem = json.loads(r.read())
        assert r.status == 408 and r.getheader("Content-Type") == "application/problem+json", problem
        assert problem["code"] == "body_timeout" and "limits.body_timeout_ms (1500 ms)" in problem["detail"]
        assert waited >= 1.4                       # it did wait for the body
        assert closed_by_peer(conn.sock, 10), "the connection must be closed after a 408"
    finally:
        conn.close()
    wait_pending_drained(edge.url, 1)


def test_headers_that_trickle_in_on_a_new_connection_are_cut_at_the_keep_alive_timeout(edge):
    s = raw_socket(edge)
    try:
        s.sendall(b"GET /echo/x HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        ended = False
        while not ended and time.monotonic() - started < 30:      # one header byte every 0.25 s
            try:
                s.sendall(b"a")
                ended = closed_by_peer(s, 0.25)
            except (BrokenPipeError, ConnectionResetError):
                ended = True
        assert ended, "headers trickled in for 30 s and the gateway kept the connection open"
        assert time.monotonic() - started >= KEEPALIVE_S - 0.5
    finally:
        s.close()


# -- slow readers -------------------------------------------------------------------------------------------------
def _watch_until_dropped(gw: GunicornGateway, kind: str, before: float, timeout_s: float = 30) -> int:
    """Sample the worker's write buffers until the drop is counted; returns the largest number of bytes seen."""
    peak, started = 0, time.monotonic()

    def sample() -> int:
        nonlocal peak
        buffered = state(gw)["write_buffered"]["bytes"]
        peak = max(peak, buffered)
        return buffered

    # every 0.2 s: a dropped client's buffer is held until its write times out (2 s), and a busier loop here
    # would slow the service thread that streams
    wait_until(lambda: sample() >= 0 and dropped(gw, kind) > before, timeout_s, 0.2,
               f"a slow {kind} consumer dropped")
    took = time.monotonic() - started
    wait_until(lambda: sample() == 0, 15, 0.2, "the dropped client's buffer released")
    print(f"slow {kind} consumer dropped after {took:.1f}s; at most {peak} bytes buffered")
    return peak


def _released(gw: GunicornGateway) -> None:
    """Nothing left of the dropped client: no waiter, nothing in flight, no buffered bytes, no open socket."""
    wait_pending_drained(gw.url, 1)
    wait_until(lambda: metric_value(gw.metrics(), "gateway_in_flight") == 0, 15, 0.1, "in-flight back to 0")
    wait_until(lambda: state(gw)["write_buffered"] == {"records": 0, "bytes": 0} and state(gw)["websockets"] == 0,
               15, 0.1, "write buffers released")


def test_a_stream_client_that_stops_reading_is_dropped_and_its_memory_bounded(edge):
    """6.4 MB streamed to a client that read the headers and stopped: more than the kernel's socket buffers hold
    (~4 MB), so a write blocks and the stream passes its bound or its write timeout, whichever comes first."""
    before = dropped(edge, "ndjson")
    s = raw_socket(edge, rcvbuf=4096)
    try:
        s.sendall(b"GET /edge/stream?n=100&size=64000 HTTP/1.1\r\nHost: x\r\nAccept: application/x-ndjson\r\n\r\n")
        assert s.recv(12) == b"HTTP/1.1 200"
        peak = _watch_until_dropped(edge, "ndjson", before)
        assert peak <= HELD_AT_MOST, f"{peak} bytes buffered for one client (bound {BUFFER_BYTES})"
        _released(edge)
        assert closed_by_peer(s, 10), "the dropped client's connection must be ended"
    finally:
        s.close()
    # the service may still be streaming the flood nobody read: give it time
    with requests.get(edge.url + "/edge/stream?n=3", headers={"Accept": "application/x-ndjson"}, timeout=40) as r:
        assert [x for x in r.iter_lines() if x] == [json.dumps("x" * 8).encode()] * 3


def _ws_connect(gw: GunicornGateway, rcvbuf: int | None = None) -> tuple[socket.socket, WSConnection]:
    s = raw_socket(gw, rcvbuf)
    ws = WSConnection(ConnectionType.CLIENT)
    s.sendall(ws.send(Request(host="x", target="/ws")))
    while True:
        ws.receive_data(s.recv(4096))
        if any(isinstance(e, AcceptConnection) for e in ws.events()):
            return s, ws


def test_a_websocket_client_that_stops_reading_is_dropped_and_its_requests_released(edge):
    before = dropped(edge, "websocket")
    s, ws = _ws_connect(edge, rcvbuf=4096)
    try:
        for i in range(10):                   # 10 streams x 10 items x 64 KB, none of it read
            s.sendall(ws.send(TextMessage(json.dumps({"id": i, "service": "edge", "path": "/stream?n=10&size=64000"}))))
        peak = _watch_until_dropped(edge, "websocket", before)
        assert peak <= HELD_AT_MOST, f"{peak} bytes buffered for one socket (bound {BUFFER_BYTES})"
        _released(edge)
    finally:
        s.close()


@pytest.fixture(scope="module")
def pinging(broker: EmbeddedBroker, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[GunicornGateway]:
    """A gateway of its own that pings every SHORT_PING_MS (the edge gateway's 10 s keeps its slow readers from
    missing a pong, and would make the test below wait 20 s for the close)."""
    from gateway.kafka.admin import ensure_topics, wanted_topics

    cfg = make_config(broker.bootstrap, {"void": SERVICES["void"]}, websocket={"ping_interval_ms": SHORT_PING_MS})
    ensure_topics(parse_config(cfg), wanted_topics(parse_config(cfg)))
    gw = GunicornGateway(write_config(tmp_path_factory.mktemp("ping") / "gateway.toml", cfg), broker.bootstrap,
                         log_dir, workers=1)
    try:
        gw.wait_ready(60)
        yield gw
    finally:
        gw.stop()


def test_a_websocket_client_that_answers_no_ping_is_closed_and_its_requests_released(pinging):
    """ping_interval_ms 1500: pinged at 1.5 s, closed at 3 s without a pong (void answers nothing: 30 s)."""
    connected = time.monotonic()
    s, ws = _ws_connect(pinging)
    try:
        s.sendall(ws.send(TextMessage(json.dumps({"id": "held", "service": "void"}))))   # void never answers (30 s)
        wait_until(lambda: state(pinging)["pending"] == 1, 10, 0.1, "the request pending")
        wait_pending_drained(pinging.url, 1, timeout_s=28)
        released_in = time.monotonic() - connected
        # released by the ping timeout: not before a ping went unanswered, well before void's 30 s deadline
        assert SHORT_PING_MS / 1000 <= released_in < 28, released_in
        s.settimeout(5)
        events = []
        while not any(isinstance(e, CloseConnection) for e in events):
            data = s.recv(65536)
            assert data, f"connection ended without a close frame; saw {events}"
            ws.receive_data(data)
            events.extend(ws.events())
        close = next(e for e in events if isinstance(e, CloseConnection))
        assert any(isinstance(e, Ping) for e in events)
        assert (close.code, close.reason) == (1008, "Ping/Pong timeout")
        wait_until(lambda: state(pinging)["websockets"] == 0, 10, 0.1, "the socket gone")
    finally:
        s.close()


# -- nested JSON from a service -----------------------------------------------------------------------------------
def test_deeply_nested_json_neither_fails_nor_ends_a_websocket_session(edge):
    import websocket

    ws = websocket.create_connection(edge.url.replace("http://", "ws://") + "/ws", timeout=20)
    try:
        ws.send("[" * 100000)                # a request frame nested 100,000 deep: an error frame, not the end
        error = json.loads(ws.recv())["error"]
        assert error["code"] == "malformed_json" and "nested too deeply" in error["detail"]
        ws.send(json.dumps({"id": "deep", "service": "edge", "path": "/deep?n=100000"}))
        frame = json.loads(ws.recv())
        assert frame["id"] == "deep" and frame["status"] == 200
        assert frame["body"] == "[" * 100000 + "]" * 100000           # not JSON the gateway re-encodes: as text
        ws.send(json.dumps({"id": "s", "service": "edge", "path": "/deepstream?n=5000"}))
        frames = [json.loads(ws.recv()) for _ in range(3)]
        assert [f.get("stream") for f in frames] == ["more", "more", "error"]
        assert frames[1]["body"] == "[\n" * 5000 + "]" * 5000 and frames[2]["error"]["status"] == 500
        ws.send(json.dumps({"id": "after", "service": "echo", "path": "/still-here"}))
        assert json.loads(ws.recv())["body"]["path"] == "/echo/still-here"
    finally:
        ws.close()
    r = requests.get(edge.url + "/edge/deep?n=100000", timeout=20)      # plain HTTP passes the body through
    assert r.status_code == 200 and len(r.content) == 200000
    with requests.get(edge.url + "/edge/deepstream?n=5000", headers={"Accept": "application/x-ndjson"},
                      timeout=20) as r:
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert r.status_code == 200 and lines[0] == {"i": 0} and lines[1] == "[\n" * 5000 + "]" * 5000
    assert lines[2]["status"] == 500 and lines[2]["type"].startswith("urn:kafka-rest-gateway:error:")
    wait_pending_drained(edge.url, 1)


# -- async results bounded by bytes -------------------------------------------------------------------------------
def _async(gw: GunicornGateway, path: str, **kw) -> requests.Response:
    method = "POST" if "data" in kw else "GET"
    r = requests.request(method, gw.url + path, headers={"Prefer": "respond-async", **kw.pop("headers", {})},
                         timeout=10, **kw)
    assert r.status_code == 202, r.text
    return requests.get(gw.url + r.headers["Location"], headers={"Prefer": "wait=15"}, timeout=20)


def test_async_results_over_their_byte_bounds_are_502_and_the_store_evicts_by_bytes(edge):
    big = _async(edge, "/echo/big", data=b"x" * 20000, headers={"Content-Type": "text/plain"})
    assert big.status_code == 502 and big.json()["code"] == "result_too_large", big.text
    assert "async.max_result_bytes (16384)" in big.json()["detail"]
    many = _async(edge, "/edge/stream?n=60&size=10")
    assert many.status_code == 502 and "async.max_stream_records (50)" in many.json()["detail"]
    fits = _async(edge, "/edge/stream?n=40&size=10")
    assert fits.status_code == 200 and fits.text == (json.dumps("x" * 8) + "\n") * 40
    locations = []
    for i in range(8):                  # 8 results of ~12 KB; the worker keeps 64 KiB
        r = requests.post(edge.url + f"/echo/r{i}", data=b"y" * 12000, headers={"Prefer": "respond-async",
                                                                                "Content-Type": "text/plain"},
                          timeout=10)
        locations.append(r.headers["Location"])
        done = requests.get(edge.url + locations[-1], headers={"Prefer": "wait=15"}, timeout=20)
        assert done.status_code == 200 and done.json()["path"] == f"/echo/r{i}"
    assert state(edge)["async_result_bytes"] <= 65536
    assert requests.get(edge.url + locations[0], timeout=10).status_code == 404       # the oldest went
    assert requests.get(edge.url + locations[-1], timeout=10).json()["path"] == "/echo/r7"
    wait_pending_drained(edge.url, 1)
