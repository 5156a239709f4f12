"""Pure logic: the envelope codec, the pending table, the responder's handling (no Kafka needed here)."""
from __future__ import annotations

import json
import struct
import time

import pytest

from gateway import protocol as P
from gateway.core.pending import OneShot, Outcome, PendingTable
from gateway.errors import TooManyInFlight
from gateway_sdk import HTTPError, Responder


def test_correlation_ids_are_random_and_tagged():
    tag = P.new_worker_tag()
    ids = {P.new_correlation_id(tag) for _ in range(10000)}
    assert len(ids) == 10000
    assert all(len(i) == 24 and i.startswith(tag) for i in ids)


def test_request_headers_carry_gateway_and_spring_forms():
    cid = P.new_correlation_id(b"t" * 8)
    h = dict(P.request_headers(cid, P.ReplyTo("rep", 7, b"k7"), 123, "POST", "/orders", "a=1", "application/json",
                               [("traceparent", "00-ab-cd-01"), ("x-request-id", "r")]))
    assert h["gateway-correlation-id"] == cid.hex().encode() and h["kafka_correlationId"] == cid
    assert h["kafka_replyPartition"] == struct.pack(">i", 7) and h["gateway-reply-partition"] == b"7"
    assert h["kafka_replyTopic"] == b"rep" and h["gateway-reply-key"] == b"k7"
    assert h["gateway-deadline-ms"] == b"123" and h["traceparent"] == b"00-ab-cd-01"
    assert h["http-x-request-id"] == b"r"


def test_decode_reply_spring_only_defaults_to_200():
    r = P.decode_reply(b"{}", [("kafka_correlationId", b"abc"), ("__TypeId__", b"x")])
    assert (r.correlation_id, r.status, r.content_type) == (b"abc", 200, None)


@pytest.mark.parametrize("headers,msg,cid", [
    ([], "no correlation id", None),
    ([("gateway-correlation-id", b"zz")], "not hex", None),
    ([("gateway-correlation-id", b"zz"), ("kafka_correlationId", b"raw")], "not hex", b"raw"),
    ([("gateway-correlation-id", b"ab"), ("gateway-status", b"abc")], "not a three-digit", b"\xab"),
    ([("gateway-correlation-id", b"ab"), ("gateway-status", b" 2_00")], "not a three-digit", b"\xab"),
    ([("gateway-correlation-id", b"ab"), ("gateway-status", b"200\n")], "not a three-digit", b"\xab"),
    ([("gateway-correlation-id", b"ab"), ("gateway-status", b"999")], "not a final HTTP status", b"\xab"),
    ([("gateway-correlation-id", b"ab"), ("gateway-status", b"101")], "not a final HTTP status", b"\xab"),
    ([("gateway-correlation-id", b"ab"), ("content-type", b"text/plain\r\nX-Evil: 1")], "control", b"\xab"),
    ([("gateway-correlation-id", b"ab"), ("http-location", b"/a\nb")], "control", b"\xab"),
    ([("gateway-correlation-id", b"ab"), ("http-location", b"/a\x00")], "control", b"\xab"),
    ([("gateway-correlation-id", b"ab"), ("http-x y", b"1")], "not an HTTP field name", b"\xab"),
    ([("gateway-correlation-id", b"ab"), ("http-caf\u00e9", b"1")], "not an HTTP field name", b"\xab"),
    ([("gateway-correlation-id", b"ab"), ("gateway-seq", b"-1")], "not a number", b"\xab"),
])
def test_decode_reply_rejects_broken_records(headers, msg, cid):
    """A reply the gateway cannot turn into a valid HTTP response is refused, naming the request it answers (when
    it can be read) so that request is failed with a 502 at once."""
    with pytest.raises(P.ProtocolError, match=msg) as info:
        P.decode_reply(b"", headers)
    assert info.value.correlation_id == cid


def test_decode_reply_keeps_tabs_and_drops_bodies_of_204_and_304():
    r = P.decode_reply(b"stray", [("gateway-correlation-id", b"ab"), ("gateway-status", b"204"),
                                  ("http-x-note", b"a\tb")])
    assert (r.status, r.body, r.headers) == (204, b"", [("x-note", "a\tb")])
    assert P.decode_reply(b"stray", [("gateway-correlation-id", b"ab"), ("gateway-status", b"304")]).body == b""
    assert P.decode_reply(b"kept", [("gateway-correlation-id", b"ab"), ("gateway-status", b"404")]).body == b"kept"


def _reply(cid: bytes) -> P.Reply:
    return P.decode_reply(b"x", [("gateway-correlation-id", cid.hex().encode())])


def test_pending_table_outcomes():
    tag = b"T" * 8
    table = PendingTable(tag, capacity=2)
    w = OneShot(P.new_correlation_id(tag), 3, time.monotonic() + 5)
    table.register(w)
    assert table.pending_on(3) == 1 and table.partitions_in_use() == {3}
    assert table.resolve(_reply(w.correlation_id)) is Outcome.DELIVERED
    assert w.event.is_set() and w.reply.body == b"x"
    assert len(table) == 0 and table.pending_on(3) == 0
    assert table.resolve(_reply(w.correlation_id)) is Outcome.DUPLICATE
    assert table.resolve(_reply(P.new_correlation_id(tag))) is Outcome.LATE
    assert table.resolve(_reply(P.new_correlation_id(b"other-wk"))) is Outcome.FOREIGN
    timed_out = OneShot(P.new_correlation_id(tag), 3, 0)
    table.register(timed_out)
    table.remove(timed_out.correlation_id)  # the request greenlet gave up
    assert table.resolve(_reply(timed_out.correlation_id)) is Outcome.LATE


def test_pending_table_is_bounded():
    table = PendingTable(b"T" * 8, capacity=2)
    for p in range(2):
        table.register(OneShot(P.new_correlation_id(b"T" * 8), p, 0))
    with pytest.raises(TooManyInFlight):
        table.register(OneShot(P.new_correlation_id(b"T" * 8), 0, 0))


def test_pending_fail_all_wakes_waiters():
    table = PendingTable(b"T" * 8, capacity=5)
    w = OneShot(P.new_correlation_id(b"T" * 8), 0, 0)
    table.register(w)
    table.fail_all(RuntimeError("bye"))
    assert w.event.is_set() and isinstance(w.error, RuntimeError) and len(table) == 0


# -- responder ------------------------------------------------------------------------------------------------
svc = Responder("t", topic="t.requests")


@svc.route("GET", "/items/<item_id>")
def get_item(req, item_id):  # noqa: ANN001, ANN201
    if item_id == "boom":
        raise RuntimeError("kaput")
    if item_id == "missing":
        raise HTTPError(404, "no such item", item=item_id)
    return 200, {"ETag": '"v1"'}, {"id": item_id, "q": req.arg("q")}


@svc.route("GET", "/unencodable")
def unencodable(req):  # noqa: ANN001, ANN201
    return {"when": object()}


@svc.route("GET", "/stream")
def stream(req):  # noqa: ANN001, ANN201
    for i in range(3):
        yield {"i": i}


def _request(path: str, method: str = "GET", deadline_ms: int | None = None) -> list:
    cid = P.new_correlation_id(b"T" * 8)
    deadline_ms = deadline_ms or int(time.time() * 1000) + 5000
    headers = P.request_headers(cid, P.ReplyTo("r", 2, b"k"), deadline_ms, method, path.split("?")[0],
                                path.partition("?")[2], None, [])
    dest, replies = svc.handle(b"", headers)
    if dest is None:
        return []
    assert dest == {"topic": "r", "partition": 2, "key": b"k", "correlation_id": cid, "deadline_ms": deadline_ms}
    return [P.decode_reply(v, h) for h, v in replies]


def test_responder_answers_with_status_headers_and_json():
    (r,) = _request("/items/7?q=x")
    assert r.status == 200 and json.loads(r.body) == {"id": "7", "q": "x"} and ("etag", '"v1"') in r.headers


def test_responder_handler_exception_becomes_500_reply():
    before = svc.stats["errors"]
    (r,) = _request("/items/boom")
    assert r.status == 500 and r.content_type == "application/problem+json"
    assert "RuntimeError" in json.loads(r.body)["detail"] and svc.stats["errors"] == before + 1


def test_responder_http_error_404_and_unrouted_405():
    (r,) = _request("/items/missing")
    assert r.status == 404 and json.loads(r.body)["item"] == "missing"
    (r,) = _request("/items/1", method="DELETE")
    assert r.status == 405
    (r,) = _request("/nowhere")
    assert r.status == 404


def test_responder_answers_500_when_the_result_cannot_be_encoded():
    (r,) = _request("/unencodable")
    assert r.status == 500 and "TypeError" in json.loads(r.body)["detail"]


def test_responder_drops_and_counts_expired_requests():
    before = svc.stats["expired"]
    assert _request("/items/1", deadline_ms=int(time.time() * 1000) - 1) == []
    assert svc.stats["expired"] == before + 1


def test_responder_streams_with_sequence_and_end_marker():
    records = _request("/stream")
    assert [r.seq for r in records] == [0, 1, 2, 3]
    assert [r.stream for r in records] == ["more", "more", "more", "end"]
    assert [json.loads(r.body) for r in records[:3]] == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_record_key_from_path_header_or_json_field():
    from types import SimpleNamespace

    from gateway.config import KeySpec
    from gateway.web.requests import forwarded_headers, path_segment, record_key

    headers = {"x-tenant": "t-1", "traceparent": "00-abc-def-01", "authorization": "secret"}

    def lookup(name: str) -> str | None:
        return headers.get(name.lower())

    def svc(key):  # noqa: ANN001, ANN202
        spec = None if key is None else KeySpec(**{"segment": None, "field": None, "header": None, **key})
        return SimpleNamespace(key=spec)

    assert path_segment("/orders/o-1/", 1) == "o-1" and path_segment("/orders", 1) is None
    assert record_key(svc(None), "/orders/o-1", lookup, {}) is None
    assert record_key(svc({"source": "path", "segment": 1}), "/orders/o-1", lookup, None) == b"o-1"
    assert record_key(svc({"source": "path", "segment": 2}), "/orders/o-1", lookup, None) is None
    assert record_key(svc({"source": "header", "header": "X-Tenant"}), "/o", lookup, None) == b"t-1"
    assert record_key(svc({"source": "json", "field": "customer_id"}), "/o", lookup, {"customer_id": "c-9"}) == b"c-9"
    assert record_key(svc({"source": "json", "field": "n"}), "/o", lookup, {"n": 7}) == b"7"
    assert record_key(svc({"source": "json", "field": "n"}), "/o", lookup, [1]) is None
    http = SimpleNamespace(forward_request_headers=("x-tenant", "x-request-id"))
    gw = SimpleNamespace(config=SimpleNamespace(http=http))
    assert forwarded_headers(gw, lookup) == [("x-tenant", "t-1"), ("traceparent", "00-abc-def-01")]  # no secrets


# -- supervised loops ------------------------------------------------------------------------------------------
def test_supervised_loop_is_restarted_counted_and_reported_down_meanwhile() -> None:
    import gevent

    from gateway import supervise

    runs: list[int] = []
    release = gevent.event.Event()

    def loop() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RecursionError("a reply too deep to decode")
        release.wait()

    s = supervise.Supervised("unit-loop", loop, backoff_s=0.2).start()
    gevent.sleep(0.05)
    assert not s.healthy and s.crashes == 1 and "RecursionError" in (s.last_error or "")
    assert supervise.health()["unit-loop"].startswith("down")
    assert not supervise.all_healthy()
    gevent.sleep(0.3)
    assert len(runs) == 2 and s.healthy and supervise.health()["unit-loop"] == "ok"
    release.set()
    s.stop()
    assert "unit-loop" not in supervise.health()


def test_supervised_loop_without_restart_calls_on_crash_once() -> None:
    import gevent

    from gateway import supervise

    crashed: list[BaseException] = []

    def loop() -> None:
        raise gevent.Timeout(0.001)   # BaseException: still caught, counted, reported

    s = supervise.Supervised("unit-once", loop, restart=False, on_crash=crashed.append, worker_wide=False).start()
    gevent.sleep(0.05)
    assert len(crashed) == 1 and s.crashes == 1 and not s.healthy
    assert "unit-once" not in supervise.health()


def test_websocket_frame_reads_a_reply_without_content_type_as_the_service_default() -> None:
    """The frame says content_type=<the service's reply_content_type>; its body must be read the same way (it was
    base64 under "application/json")."""
    from gateway.protocol import Reply
    from gateway.web.ws_frames import frame_body as _frame_body

    reply = Reply(b"c" * 24, 200, b'{"a": [1, 2]}', None)
    assert _frame_body(reply, "application/json") == {"body": {"a": [1, 2]}}
    assert _frame_body(reply, "text/plain") == {"body": '{"a": [1, 2]}'}
    assert _frame_body(reply, None)["body_encoding"] == "base64"


def test_reply_headers_outside_the_forward_list_are_dropped_unchecked_inside_it_validated() -> None:
    import pytest

    from gateway.protocol import ProtocolError, decode_reply

    corr = b"\x01" * 24
    headers = [("gateway-correlation-id", corr.hex().encode()), ("http-set-cookie", b"\x00"),
               ("http-Location", b"/a"), ("http-x-unused name", b"x")]
    reply = decode_reply(b"", headers, forward=("location",))
    assert reply.headers == [("location", "/a")]
    with pytest.raises(ProtocolError) as err:
        decode_reply(b"", headers, forward=("location", "set-cookie"))
    assert err.value.correlation_id == corr


def test_settled_config_reads_every_gunicorn_setting_as_gunicorn_does():
    """The worker reads gunicorn's settings through SettledConfig (cached): every setting and property must read
    the same as through gunicorn's Config, unknown names must fail as there, and set() must not leave a stale value."""
    from gunicorn.config import Config

    from gateway.serve.worker import SettledConfig

    cfg = Config()
    cfg.set("keepalive", 7)
    settled = SettledConfig(cfg)
    names = [*cfg.settings, "is_ssl", "address", "uid", "gid", "proc_name", "logger_class", "ssl_options", "env",
             "sendfile", "reuse_port", "worker_class_str", "worker_class"]
    for name in names:
        assert getattr(settled, name) == getattr(cfg, name), name
        assert getattr(settled, name) == getattr(cfg, name), name      # the cached read too
    assert settled.keepalive == 7
    settled.set("keepalive", 9)
    assert settled.keepalive == 9 == cfg.keepalive
    with pytest.raises(AttributeError, match="No configuration setting for: no_such_setting"):
        _ = settled.no_such_setting


@pytest.mark.timeout(30)
def test_deadlines_expire_exactly_the_unanswered_waiters_and_stay_bounded():
    """One timer for every one-shot deadline (gateway.core.pending.Deadlines): a waiter still in the table is woken
    with neither reply nor error at its deadline (never before it, at most a resolution late, in deadline order
    whatever the order of adding); an answered or removed one is left alone; stale entries do not pile up."""
    import gevent

    from gateway.core.pending import Deadlines

    tag = b"T" * 8
    table = PendingTable(tag, capacity=10_000)
    start = time.monotonic()
    waiters = [OneShot(P.new_correlation_id(tag), 0, start + 0.05 + 0.01 * (i % 7)) for i in range(60)]
    for w in reversed(waiters):
        table.register(w)
        table.deadlines.add(w)
    answered, removed = waiters[::3], waiters[1::3]
    for w in answered:
        table.resolve(_reply(w.correlation_id))
    for w in removed:
        table.remove(w.correlation_id)
    woken_at: dict[bytes, float] = {}

    def wait(w: OneShot) -> None:
        w.event.wait()
        woken_at[w.correlation_id] = time.monotonic()

    rest = [w for w in waiters if w not in answered and w not in removed]
    gevent.joinall([gevent.spawn(wait, w) for w in rest], timeout=5, raise_error=True)
    assert len(woken_at) == len(rest)
    for w in rest:
        assert w.expired and w.reply is None and w.error is None
        assert w.deadline <= woken_at[w.correlation_id] < w.deadline + Deadlines.RESOLUTION_S + 0.2
    assert all(not w.expired for w in answered) and all(w.reply is not None for w in answered)
    assert all(not w.event.is_set() for w in removed)      # nobody waits on them: nothing to wake
    assert len(table.deadlines) == 0                        # every entry dropped once its time came
    for w in rest:
        table.remove(w.correlation_id)                      # as the request's Call.close does

    # answered entries far in the future do not accumulate: the heap is rebuilt from the live ones
    for _ in range(5_000):
        w = OneShot(P.new_correlation_id(tag), 0, time.monotonic() + 3600)
        table.register(w)
        table.deadlines.add(w)
        table.resolve(_reply(w.correlation_id))
    assert len(table) == 0 and len(table.deadlines) <= 1024 + 1


class _ScriptedConsumer:
    """The part of kafka-python's KafkaConsumer the reply reader uses; poll() answers from a script and notes,
    per call, its timeout and whether the waiters were already woken."""

    def __init__(self, batches: list[dict], waiters: list[OneShot]) -> None:
        self.batches, self.waiters, self.calls = batches, waiters, []

    def assign(self, tps: list) -> None:
        pass

    def seek_to_end(self, *tps: object) -> None:
        pass

    def position(self, tp: object) -> int:
        return 0

    def poll(self, timeout_ms: int, **_: object) -> dict:
        import gevent
        self.calls.append((timeout_ms, [w.event.is_set() for w in self.waiters]))
        if self.batches:
            return self.batches.pop(0)
        gevent.sleep(0.005)
        return {}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("waiting", [1, 2])
def test_reply_reader_puts_the_next_fetch_out_before_answering_a_lone_waiter_only(waiting: int) -> None:
    """kafka-python writes a fetch only inside poll(): for a lone waiter the reader polls once more (timeout 0)
    before waking it, so the next fetch is at the broker before the next request arrives; with more waiting it
    does not (an extra poll per batch costs CPU under load)."""
    from types import SimpleNamespace

    import gevent
    from kafka import TopicPartition

    from gateway.config import parse_config
    from gateway.core.routing import ReplyRouter
    from gateway.kafka.replies import ReplyReader
    from tests.support.harness import make_config

    config = parse_config(make_config("127.0.0.1:1", {"orders": {"topic": "orders.requests"}},
                                      kafka={"client": "kafka-python"}, reply={"partitions": 1}))
    tag = b"T" * 8
    pending = PendingTable(tag, capacity=10)
    reader = ReplyReader(config, pending, ReplyRouter(1))
    waiters = [OneShot(P.new_correlation_id(tag), 0, time.monotonic() + 5) for _ in range(waiting)]
    record = SimpleNamespace(topic=config.reply.topic, partition=0, offset=0, value=b"ok",
                             headers=[("gateway-correlation-id", waiters[0].correlation_id.hex().encode())])
    consumer = _ScriptedConsumer([{TopicPartition(config.reply.topic, 0): [record]}], waiters)
    reader._consumer = consumer   # noqa: SLF001 - the loop under test, with a scripted consumer
    reader.set_target({0})
    for w in waiters:
        pending.register(w)
    loop = gevent.spawn(reader._run)  # noqa: SLF001
    try:
        deadline, want = time.monotonic() + 10, 2 if waiting == 1 else 3   # a lone waiter answered: it idles
        while not (waiters[0].event.is_set() and len(consumer.calls) >= want) and time.monotonic() < deadline:
            gevent.sleep(0.01)
    finally:
        reader._stopping = True  # noqa: SLF001
        loop.kill()
    assert waiters[0].reply is not None and waiters[0].reply.body == b"ok"
    interval = config.reply.poll_interval_ms
    first, second = consumer.calls[0], consumer.calls[1]
    assert first == (interval, [False] * waiting)
    if waiting == 1:
        assert second == (0, [False]), consumer.calls        # polled again before the waiter was woken
    else:
        assert second == (interval, [True, False]), consumer.calls   # woken first, then the usual poll
    assert all(timeout == interval for timeout, _ in consumer.calls[2:]), consumer.calls


def test_the_services_fetch_wait_is_short_while_requests_come_and_long_when_idle():
    from types import SimpleNamespace

    from gateway_sdk.runner import FetchWait

    consumer = SimpleNamespace(_fetcher=SimpleNamespace(config={"fetch_max_wait_ms": 200}))
    wait = FetchWait(idle_ms=200, busy_ms=10, hold_s=5.0)
    seen = []

    def poll(got: bool, now: float) -> None:
        wait.after_poll(consumer, got, now)
        seen.append(consumer._fetcher.config["fetch_max_wait_ms"])

    poll(False, 100.0)          # idle: stays long
    poll(True, 101.0)           # a request: short from the next fetch on
    poll(False, 103.0)          # within the hold
    poll(True, 105.5)           # another request extends it
    poll(False, 110.4)          # 4.9 s after it: still short
    poll(False, 110.6)          # 5.1 s: long again
    assert seen == [200, 10, 10, 10, 10, 200]
    wait.reset()                # a new consumer is built with the idle wait
    assert wait.current == 200
    same = FetchWait(idle_ms=500, busy_ms=500)
    consumer._fetcher.config["fetch_max_wait_ms"] = 500
    same.after_poll(consumer, True, 1.0)
    assert consumer._fetcher.config["fetch_max_wait_ms"] == 500 and same.current == 500


def test_a_services_busy_fetch_wait_defaults_to_its_own_fetch_wait(monkeypatch):
    from gateway_sdk.runner import Runner

    monkeypatch.delenv("KAFKA_FETCH_MAX_WAIT_BUSY_MS", raising=False)
    monkeypatch.setenv("KAFKA_FETCH_MAX_WAIT_MS", "300")
    wait = Runner(Responder("a", "a.requests")).fetch_wait
    assert (wait.idle_ms, wait.busy_ms) == (300, 300)
    wait = Runner(Responder("b", "b.requests", fetch_max_wait_ms=100)).fetch_wait   # a setting of its own
    assert (wait.idle_ms, wait.busy_ms) == (100, 100)
    monkeypatch.setenv("KAFKA_FETCH_MAX_WAIT_BUSY_MS", "10")
    wait = Runner(Responder("c", "c.requests")).fetch_wait
    assert (wait.idle_ms, wait.busy_ms) == (300, 10)
    wait = Runner(Responder("d", "d.requests", fetch_max_wait_busy_ms=20)).fetch_wait
    assert (wait.idle_ms, wait.busy_ms) == (300, 20)
