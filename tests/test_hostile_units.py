"""The hostile-client defences as pure logic, in this process with gevent (no broker): the JSON nesting limit, the
bounded output buffers, the async store's byte bounds, the write deadline on a real socket, the websocket
session's slow-consumer close and its supervised greenlets, and the request path leaving no waiter behind when
encoding or producing fails. ``tests/test_hostile.py`` drives the same through a real gateway."""
from __future__ import annotations

import dataclasses
import json
import time
from types import SimpleNamespace
from typing import Any

import gevent
import gevent.socket
import pytest
from gevent.event import Event
from gevent.queue import Queue
from prometheus_client import REGISTRY

from gateway import jsonutil
from gateway.config import parse_config
from gateway.core.calls import Call, ServiceRequest
from gateway.core.pending import Callback
from gateway.core.runtime import Gateway
from gateway.errors import BadRequest, BrokerUnavailable
from gateway.protocol import Reply
from gateway.variants.async_results import ResultStore
from gateway.variants.states import parse_event
from gateway.variants.streams import OutputBuffer, ReplyStream, SlowConsumer, Totals, item_json, problem_of
from gateway.web.guard import WriteDeadline, check_header, check_text, utf8_path, utf8_query

CID = bytes(range(24))
CONFIG = {"kafka": {"bootstrap_servers": ["127.0.0.1:1"]},
          "limits": {"write_buffer_records": 5, "write_buffer_bytes": 1024},
          "services": {"svc": {"topic": "svc.requests"}}}


def counter(kind: str, reason: str) -> float:
    return REGISTRY.get_sample_value("gateway_slow_consumers_dropped_total", {"kind": kind, "reason": reason}) or 0


# -- JSON ---------------------------------------------------------------------------------------------------------
def test_json_nesting_limit_is_exact_and_ignores_brackets_in_strings():
    assert jsonutil.depth('{"a": [1, {"b": "[[[{"}]}') == 3
    assert jsonutil.depth(rb'["\\", ["\"[[", []]]') == 3 and jsonutil.depth(b'"[["') == 0
    deepest = "[" * jsonutil.MAX_DEPTH + "]" * jsonutil.MAX_DEPTH
    assert jsonutil.parse(deepest) and jsonutil.parse(f'[{deepest[1:-1]}, "{"[" * 500}"]')
    for text in ("[" + deepest + "]", "[" * 100000, b"[" * 100000 + b"]" * 100000, '{"a":' * 5000 + "1" + "}" * 5000):
        with pytest.raises(jsonutil.JSONError, match="nested too deeply"):
            jsonutil.parse(text)
    with pytest.raises(jsonutil.JSONError):
        jsonutil.parse(b"\xff")


def test_nested_json_from_services_degrades_instead_of_raising():
    deep = b"[\n" * 5000 + b"]" * 5000
    assert item_json(Reply(CID, 200, deep, "application/json", seq=0, stream="more")) == json.dumps(deep.decode())
    problem = problem_of(Reply(CID, 500, b'{"detail": ' + b"[" * 5000 + b"]" * 5000 + b"}", None, stream="error"))
    assert problem["status"] == 500 and problem["detail"].startswith('{"detail": [[[')
    event = SimpleNamespace(key=b"o-1", value=b"[" * 100000, partition=0, offset=1)
    assert parse_event(event, None) is None
    assert parse_event(SimpleNamespace(key=b"o-1", value=b'{"v": "a\\r\\nb"}', partition=0, offset=1), None) \
        .etag("v") == '"e0.1"'                 # a version that cannot be an ETag header: partition.offset instead


# -- bounded buffers ----------------------------------------------------------------------------------------------
def test_output_buffer_bounds_records_and_bytes_and_keeps_totals():
    before = (Totals.records, Totals.bytes)
    buf = OutputBuffer(max_records=3, max_bytes=100)
    assert buf.put("a", 5000)                    # one record always fits, however large
    assert not buf.put("b", 1)
    assert buf.get() == "a" and buf.put("b", 60) and not buf.put("c", 41) and buf.put("c", 40)
    assert buf.put("d", 0) and not buf.put("e", 0)   # records bound
    buf.put_final("end")
    assert (Totals.records - before[0], Totals.bytes - before[1]) == (4, 100)
    buf.clear()
    assert (Totals.records, Totals.bytes) == before and buf.empty()
    blocked = False
    burst = OutputBuffer(max_records=2, max_bytes=100, writer_blocked=lambda: blocked)
    assert all(burst.put(i, 60) for i in range(5))   # a burst while the client reads: its writer drains it
    blocked = True
    assert not burst.put(5, 1)                       # over the bound while a write is stuck: refused
    burst.clear()
    blocked = False
    capped = OutputBuffer(max_records=1000, max_bytes=100, writer_blocked=lambda: blocked, burst_bytes=200)
    assert [capped.put(i, 60) for i in range(6)] == [True] * 5 + [False]   # a writer that never ran: 300 at most
    assert capped.bytes == 300
    capped.clear()


def test_a_stream_that_outgrows_its_buffer_ends_with_slow_consumer_and_releases_its_waiter():
    before = counter("ndjson", "buffer_full")
    stream = ReplyStream(OutputBuffer(max_records=3, max_bytes=10_000), "ndjson")
    done = [stream._on_reply(Reply(CID, 200, b"1", "application/json", seq=i, stream="more")) for i in range(5)]
    assert done == [False, False, False, True, True]     # the 4th overflows: the waiter is done (released)
    assert stream.dropped and counter("ndjson", "buffer_full") == before + 1
    assert [stream.next(0).seq for _ in range(3)] == [0, 1, 2]
    with pytest.raises(SlowConsumer, match="limits.write_buffer_records"):
        stream.next(0)


def test_async_store_bounds_results_streams_and_total_bytes():
    store = ResultStore(60_000, 100, max_store_bytes=3000, max_result_bytes=1000, max_stream_records=3)
    big = store.replied(Reply(b"a" * 24, 200, b"x" * 1001, "text/plain"), 1)
    assert big.reply.status == 502 and json.loads(big.reply.body)["code"] == "result_too_large"
    cid = b"s" * 24
    for seq in range(4):
        entry = store.replied(Reply(cid, 200, b"{}", "application/json", seq=seq, stream="more"), 1)
    assert entry.reply.status == 502 and "max_stream_records (3)" in json.loads(entry.reply.body)["detail"]
    assert store.replied(Reply(cid, 200, b"", None, seq=4, stream="end"), 1) is None    # the rest is ignored
    for i in range(5):
        store.replied(Reply(bytes([i]) * 24, 200, b"y" * 900, "text/plain"), 1)
    assert store.bytes <= 3000 and store.get((b"\x00" * 24).hex(), 2) is None
    assert store.get((b"\x04" * 24).hex(), 2).reply.body == b"y" * 900
    assert store.bytes == sum(e.size for e in store._entries.values())
    with pytest.raises(Exception, match="must not exceed max_store_bytes"):
        parse_config({**CONFIG, "async": {"max_result_bytes": 4096, "max_store_bytes": 2048}})


# -- slow writers -------------------------------------------------------------------------------------------------
def test_write_deadline_aborts_a_write_the_peer_never_reads():
    a, b = gevent.socket.socketpair()
    try:
        deadline = WriteDeadline(a, 300)
        started = time.monotonic()
        with pytest.raises(OSError), deadline:
            a.sendall(b"x" * (64 * 1024 * 1024))         # b never reads: blocks until the deadline aborts it
        assert deadline.expired and 0.25 < time.monotonic() - started < 5
    finally:
        a.close()
        b.close()
    a, b = gevent.socket.socketpair()
    try:
        with WriteDeadline(a, 300) as quick:
            a.sendall(b"fits")                            # disarmed in time: nothing happens
        gevent.sleep(0.4)
        assert not quick.expired and b.recv(4) == b"fits"
        a.sendall(b"still open")
    finally:
        a.close()
        b.close()


def test_request_headers_and_text_are_checked():
    check_header("x-request-id", "r-1\tå")
    check_text("path", "/été")
    for name, value, why in (("x-a", "€", r"U\+20AC"), ("x-a", "a\nb", r"U\+000A"), ("bad name", "v", "token")):
        with pytest.raises(BadRequest, match=why):
            check_header(name, value)
    with pytest.raises(BadRequest, match="lone surrogate"):
        check_text('"path"', "/\ud800")
    assert utf8_query("q=%C3%A9&r=\u00e9".encode()) == "q=%C3%A9&r=\u00e9"      # byte for byte, not Latin-1
    with pytest.raises(BadRequest, match="query string is not UTF-8: byte 0xff at position 2"):
        utf8_query(b"q=\xff")
    utf8_path({"PATH_INFO": "/\u00c3\u00a9"})                                   # é as WSGI's Latin-1 string
    with pytest.raises(BadRequest, match="path is not UTF-8: byte 0xff"):
        utf8_path({"PATH_INFO": "/\u00ff"})


# -- the request path ---------------------------------------------------------------------------------------------
def _started_gateway(producer: Any) -> Gateway:
    gw = Gateway(parse_config(CONFIG))
    gw.started, gw.producer = True, producer
    gw.router.set_owned([0])
    return gw


def test_a_request_that_cannot_be_encoded_or_produced_leaves_no_waiter():
    class Refuses:
        def send(self, *_: Any, **__: Any) -> None:
            raise gevent.Timeout(0.001)                   # a BaseException, as a killed greenlet's would be

    gw = _started_gateway(Refuses())
    svc = gw.config.services["svc"]
    request = ServiceRequest(method="GET", path="/svc", query="", content_type=None, body=b"", key=None,
                             http_headers=[])
    with pytest.raises(UnicodeEncodeError):
        gw.open_call(svc, _callback, dataclasses.replace(request, http_headers=[("x-request-id", "€")]))
    assert len(gw.pending) == 0
    with pytest.raises(gevent.Timeout):
        gw.open_call(svc, _callback, request)
    assert len(gw.pending) == 0

    class Broken:
        def send(self, *_: Any, **__: Any) -> None:
            raise RuntimeError("closed")

    gw.producer = Broken()
    with pytest.raises(BrokerUnavailable):
        gw.open_call(svc, _callback, request)
    assert len(gw.pending) == 0


def _callback(cid: bytes, partition: int, deadline: float) -> Callback:
    return Callback(cid, partition, deadline, lambda r: True, lambda e: None)


# -- the websocket session ----------------------------------------------------------------------------------------
class FakeSocket:
    def __init__(self, inbox: Queue) -> None:
        self.inbox = inbox
        self.aborted = False

    def setsockopt(self, *_: Any) -> None:
        pass

    def shutdown(self, _: int) -> None:          # what the library's reader then sees: the end of the connection
        self.aborted = True
        self.inbox.put(None)


class FakeWebsocket:
    """simple-websocket's Server as Session uses it: receive, send (blocked while *gate* is clear), close."""

    def __init__(self) -> None:
        self.inbox: Queue = Queue()
        self.sock = FakeSocket(self.inbox)
        self.sent: list[Any] = []
        self.gate = Event()
        self.gate.set()
        self.fail_with: BaseException | None = None

    def receive(self) -> Any:
        from simple_websocket import ConnectionClosed

        item = self.inbox.get()
        if item is None:
            raise ConnectionClosed()
        return item

    def send(self, text: str) -> None:
        self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append(json.loads(text))

    def close(self, reason: int | None = None, message: str | None = None) -> None:
        self.gate.wait()
        self.sent.append(("close", reason, message))


def _session_with_requests(n: int) -> tuple[Any, FakeWebsocket, list[bytes]]:
    from gateway.web.ws_session import Session, _InFlight

    gw = _started_gateway(None)
    svc = gw.config.services["svc"]
    ws = FakeWebsocket()
    session = Session(gw, ws)
    cids = []
    for i in range(n):
        cid = bytes([i]) * 24
        entry = _InFlight(i, cid, svc, time.monotonic() + 30, time.monotonic() + 30)
        session.inflight[i] = entry
        waiter = Callback(cid, 0, time.monotonic() + 30, lambda r, e=entry: session._on_reply(e, r),
                          lambda exc, e=entry: session._on_error(e, exc))
        gw.pending.register(waiter)
        entry.call = Call(gw, svc, waiter)           # what open_call returns once the record is produced
        cids.append(cid)
    return session, ws, cids


def test_a_websocket_client_that_falls_behind_gets_its_frames_then_close_1008_and_its_requests_go():
    before, buffered = counter("websocket", "buffer_full"), Totals.records
    session, ws, cids = _session_with_requests(3)
    ws.gate.clear()                                  # the client stops reading: the writer blocks
    run = gevent.spawn(session.run)
    gevent.sleep(0.01)
    for seq in range(10):                            # 5 records fit limits.write_buffer_records
        session.gw.pending.resolve(Reply(cids[0], 200, b'{"n": 1}', "application/json", seq=seq, stream="more"))
    assert session.dropped and counter("websocket", "buffer_full") == before + 1
    assert len(session.gw.pending) == 0 and session.inflight == {}     # every request released at once
    ws.gate.set()                                    # the client reads again: what was queued, then the close
    run.get(timeout=5)
    frames, close = ws.sent[:-1], ws.sent[-1]
    assert [f["seq"] for f in frames] == list(range(len(frames))) and 5 <= len(frames) <= 6
    assert close[:2] == ("close", 1008) and "slow consumer" in close[2] and ws.sock.aborted
    assert Totals.records == buffered                # the session's buffer is empty again


@pytest.mark.parametrize("which", ["writer", "sweeper"])
def test_a_crashed_writer_or_sweeper_ends_the_session_and_releases_its_requests(which, monkeypatch):
    from gateway.web.ws_session import Session

    crashes = REGISTRY.get_sample_value("gateway_greenlet_crashes_total", {"name": f"websocket-{which}"}) or 0
    session, ws, cids = _session_with_requests(2)
    if which == "writer":
        ws.fail_with = ZeroDivisionError("bug")
        ws.inbox.put(json.dumps({"id": 9, "service": "nope"}))      # an error frame for the writer to write
    else:
        monkeypatch.setattr(Session, "_sweep", lambda self: 1 / 0)
    run = gevent.spawn(session.run)
    run.get(timeout=5)                               # the session ended by itself
    assert len(session.gw.pending) == 0 and session.inflight == {} and ws.sock.aborted
    assert REGISTRY.get_sample_value("gateway_greenlet_crashes_total", {"name": f"websocket-{which}"}) == crashes + 1
