"""``/ws`` (docs/variants.md, variant 3): many requests in flight per socket, replies pushed back by id."""
from __future__ import annotations

import json
import threading
import time

import pytest
import requests
import websocket

from tests.support.harness import metric_value, wait_until

pytestmark = pytest.mark.usefixtures("no_leaks")


def connect(gateway, timeout: float = 10) -> websocket.WebSocket:
    return websocket.create_connection(gateway.url.replace("http://", "ws://") + "/ws", timeout=timeout)


def recv(ws: websocket.WebSocket, n: int) -> list[dict]:
    return [json.loads(ws.recv()) for _ in range(n)]


def test_requests_replies_and_streams_by_id(gateway):
    ws = connect(gateway)
    try:
        ws.send(json.dumps({"id": "s", "service": "ticker", "method": "GET", "path": "/count?n=3"}))
        ws.send(json.dumps({"id": 1, "service": "echo", "method": "POST", "path": "/a?x=1",
                            "headers": {"X-Request-Id": "r-1", "Authorization": "secret"}, "body": {"k": [1]}}))
        ws.send(json.dumps({"id": 2, "service": "echo", "method": "PUT", "path": "/t",
                            "headers": {"Content-Type": "text/plain"}, "body": "hello"}))
        frames = recv(ws, 6)
    finally:
        ws.close()
    by_id: dict = {}
    for f in frames:
        by_id.setdefault(f["id"], []).append(f)
    one = by_id[1][0]
    assert one["status"] == 200 and one["body"]["path"] == "/echo/a" and one["body"]["query"] == {"x": ["1"]}
    assert one["body"]["body"] == '{"k": [1]}' and one["body"]["headers"] == {"x-request-id": "r-1"}
    assert len(one["correlation_id"]) == 48
    two = by_id[2][0]["body"]
    assert two["method"] == "PUT" and two["body"] == "hello" and two["content_type"] == "text/plain"
    assert [(f["seq"], f["stream"], f.get("body")) for f in by_id["s"]] == [
        (0, "more", {"i": 0}), (1, "more", {"i": 1}), (2, "more", {"i": 2}), (3, "end", None)]


def test_bad_frames_get_error_frames_and_the_socket_stays_open(gateway):
    ws = connect(gateway)
    try:
        bad = [
            ("not json", None, "malformed_json"),
            (json.dumps([1]), None, "bad_request"),
            (json.dumps({"service": "echo"}), None, "bad_request"),
            (json.dumps({"id": 1, "service": "nope"}), 1, "unknown_service"),
            (json.dumps({"id": 2, "service": "orders", "method": "DELETE"}), 2, "method_not_allowed"),
            (json.dumps({"id": 3, "service": "echo", "method": "BREW"}), 3, "bad_request"),
            (json.dumps({"id": 4, "service": "echo", "path": "no-slash"}), 4, "bad_request"),
            (json.dumps({"id": 5, "service": "echo", "verb": "GET"}), 5, "bad_request"),
            (json.dumps({"id": 6, "service": "echo", "headers": {"a": 1}}), 6, "bad_request"),
            (json.dumps({"id": 7, "service": "jsononly", "method": "POST", "body": "x",
                         "headers": {"content-type": "text/plain"}}), 7, "unsupported_media_type"),
            (json.dumps({"id": 8, "service": "echo", "body": "x" * 9000}), None, "payload_too_large"),
        ]
        for text, frame_id, code in bad:
            ws.send(text)
            frame = json.loads(ws.recv())
            assert frame["id"] == frame_id and frame["error"]["code"] == code, (text[:60], frame)
            assert 400 <= frame["error"]["status"] < 500 and frame["error"]["detail"]
        ws.send_binary(b"\x00\x01")
        assert json.loads(ws.recv())["error"]["code"] == "bad_request"
        ws.send(json.dumps({"id": "ok", "service": "echo", "path": "/still-open"}))
        assert json.loads(ws.recv())["body"]["path"] == "/echo/still-open"
    finally:
        ws.close()
    assert requests.get(gateway.url + "/ws", timeout=5).status_code == 426
    assert requests.post(gateway.url + "/ws", timeout=5).status_code == 405


def test_in_flight_limit_duplicate_ids_and_timeouts(gateway):
    """void never answers and waits 30 s: its 50 requests (websocket.max_in_flight) stay in flight however slow
    the machine, so a 51st is refused and a reused id is a duplicate. blackhole (800 ms) shows the timeouts."""
    ws = connect(gateway)
    try:
        for i in range(50):
            ws.send(json.dumps({"id": i, "service": "void", "path": "/x"}))
        ws.send(json.dumps({"id": 0, "service": "void", "path": "/x"}))
        ws.send(json.dumps({"id": 50, "service": "void", "path": "/x"}))
        codes = [(f["id"], f["error"]["code"]) for f in recv(ws, 2)]
        assert codes == [(0, "duplicate_id"), (50, "socket_in_flight_limit")]
    finally:
        ws.close()                     # drops the 50 (no_leaks checks that in-flight is back to 0)
    ws = connect(gateway)
    try:
        for i in range(3):
            ws.send(json.dumps({"id": i, "service": "blackhole", "path": "/x"}))
        frames = recv(ws, 3)
    finally:
        ws.close()
    assert sorted((f["id"], f["error"]["code"], f["error"]["status"]) for f in frames) == [
        (i, "reply_timeout", 504) for i in range(3)]


def test_closed_socket_drops_its_pending_requests(gateway):
    """void has no consumer and a 30 s timeout: only closing the socket can empty the pending table."""
    ws = connect(gateway)
    for i in range(5):
        ws.send(json.dumps({"id": i, "service": "void"}))
    wait_until(lambda: metric_value(gateway.metrics(), "gateway_in_flight", 'service="void"') == 5, 10, 0.05,
               "5 void requests in flight")
    ws.close()
    wait_until(lambda: metric_value(gateway.metrics(), "gateway_in_flight", 'service="void"') == 0, 5, 0.05,
               "the closed socket's requests dropped")


def test_100_clients_with_many_requests_in_flight_each_get_their_own_replies(gateway):
    """wsecho: an echo service of its own with a 30 s timeout, so a busy 2-core machine slows it, never fails it."""
    clients, per_client = 100, 20
    sockets = [connect(gateway, timeout=60) for _ in range(clients)]
    errors: list[str] = []
    received = [0] * clients

    def run(c: int) -> None:
        ws = sockets[c]
        try:
            for i in range(per_client):
                ws.send(json.dumps({"id": f"{c}-{i}", "service": "wsecho", "method": "POST", "path": f"/c{c}",
                                    "body": {"client": c, "i": i}}))
            seen = set()
            for _ in range(per_client):
                f = json.loads(ws.recv())
                if "error" in f:
                    errors.append(f"client {c}: {f}")
                    continue
                body = json.loads(f["body"]["body"])
                mine = body["client"] == c and f["body"]["path"] == f"/wsecho/c{c}"
                if f["id"] != f"{body['client']}-{body['i']}" or not mine:
                    errors.append(f"client {c} got {f['id']} with {body}")
                seen.add(f["id"])
            received[c] = len(seen)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"client {c}: {exc!r}")

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    elapsed = time.monotonic() - started
    for ws in sockets:
        ws.close()
    assert not errors, errors[:5]
    assert received == [per_client] * clients
    print(f"{clients * per_client} websocket requests over {clients} sockets in {elapsed:.1f}s")


def test_frames_that_cannot_go_onto_a_record_get_400_and_leave_nothing_pending(gateway):
    """A lone surrogate in the path or a text body, a header value that is not Latin-1 text, JSON nested too
    deeply: each an error frame that says what to fix, on a socket that stays open. A thousand of them leave no
    waiter behind in either worker's pending table (they used to leak one each, until the worker answered 503)."""
    from pending_check import wait_pending_drained

    cases = [
        ({"id": "p", "service": "echo", "path": "/\ud800"}, '"path" is not valid Unicode'),
        ({"id": "q", "service": "echo", "path": "/a?x=\udfff"}, '"path" is not valid Unicode'),
        ({"id": "h", "service": "echo", "headers": {"X-Request-Id": "€"}}, "U+20AC"),
        ({"id": "n", "service": "echo", "headers": {"X-Request-Id": "a\r\nb"}}, "U+000D"),
        ({"id": "k", "service": "echo", "headers": {"bad name": "v"}}, "not an HTTP token"),
        ({"id": "b", "service": "echo", "method": "POST", "headers": {"Content-Type": "text/plain"},
          "body": "\ud800"}, '"body" is not valid Unicode'),
        ({"id": "d", "service": "echo", "method": "POST", "body": json.loads("[" * 300 + "]" * 300)},
         "nested too deeply"),
    ]
    ws = connect(gateway)
    try:
        for frame, detail in cases:
            ws.send(json.dumps(frame))
            reply = json.loads(ws.recv())
            expected_id = None if frame["id"] == "d" else frame["id"]     # a frame that is not JSON has no id
            assert reply["id"] == expected_id and reply["error"]["status"] == 400, (frame, reply)
            assert detail in reply["error"]["detail"], reply
        ws.send("[" * 8000)                   # websocket.max_frame_bytes is 8192 here (test_hostile: 100,000)
        reply = json.loads(ws.recv())
        assert reply["error"]["code"] == "malformed_json" and "nested too deeply" in reply["error"]["detail"]
        for i in range(1000):
            ws.send(json.dumps({"id": i, "service": "echo", "path": "/\ud800" if i % 2 else "/x",
                                "headers": {} if i % 2 else {"X-Request-Id": "€"}}))
        assert all(json.loads(ws.recv())["error"]["status"] == 400 for _ in range(1000))
        ws.send(json.dumps({"id": "ok", "service": "echo", "path": "/still-open"}))
        assert json.loads(ws.recv())["body"]["path"] == "/echo/still-open"
    finally:
        ws.close()
    wait_pending_drained(gateway.url, 2)
