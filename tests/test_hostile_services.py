"""Issue 7, section 4: hostile or buggy services never break a worker.

* Replies the gateway cannot turn into a valid HTTP response (1xx, a garbage status, CR/LF or control characters
  in a header value or the content type, a header name that is not an HTTP token) are answered ``502`` at once,
  through the real gateway, for plain request-reply, streams and websockets; 204/304 carry no body.
* Records kafka-python cannot parse (a header key that is not UTF-8) on every reply partition, on an SDK
  service's request topic, alone or inside a multi-record batch: skipped, counted, and the next requests are
  answered.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import websocket
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from gateway import protocol as P
from gateway.config import load_config
from gateway_sdk import Request, Responder
from tests.support.harness import metric_value, wait_until

pytestmark = pytest.mark.usefixtures("no_leaks")
NDJSON = {"Accept": "application/x-ndjson"}


class NotUtf8(str):
    """A header key kafka-python writes as bytes that are not UTF-8 (as any other client could)."""

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"\xff\xfe-not-utf8"


BAD_HEADER = [(NotUtf8("x"), b"1")]

# what the hostile service replies, by path: (extra reply headers, body)
HOSTILE: dict[str, tuple[list[tuple[str, bytes]], bytes]] = {
    "/hostile/informational": ([("gateway-status", b"101")], b"{}"),
    "/hostile/garbage-status": ([("gateway-status", b"2OO")], b"{}"),
    "/hostile/status-with-newline": ([("gateway-status", b"200\n")], b"{}"),
    "/hostile/crlf-header": ([("http-location", b"/a\r\nSet-Cookie: stolen=1")], b"{}"),
    "/hostile/nul-header": ([("http-location", b"/a\x00")], b"{}"),
    "/hostile/crlf-content-type": ([("content-type", b"text/plain\r\nX-Evil: 1")], b"{}"),
    # a header the gateway would not forward (not in http.forward_response_headers) is dropped, whatever its name
    "/hostile/header-name": ([("http-x y", b"1"), ("http-x\r\nevil", b"1")], b"{}"),
    "/hostile/no-content": ([("gateway-status", b"204")], b"stray bytes"),
    "/hostile/not-modified": ([("gateway-status", b"304"), ("http-etag", b'"v1"')], b"stray bytes"),
    "/hostile/fine": ([("gateway-status", b"200"), ("http-location", b"/a/b")], b'{"ok": true}'),
}


def _hostile_reply(producer: KafkaProducer, rec: Any) -> None:
    h = dict(rec.headers)
    path = h["gateway-path"].decode()
    corr = [("gateway-correlation-id", h["gateway-correlation-id"])]
    dest = {"topic": h["gateway-reply-topic"].decode(), "partition": int(h["gateway-reply-partition"])}
    if path == "/hostile/stream":        # item 0 fine, item 1 with a garbage status: the stream breaks there
        json_type = ("content-type", b"application/json")
        producer.send(**dest, value=b'{"i": 0}', headers=[*corr, ("gateway-seq", b"0"), ("gateway-stream", b"more"),
                                                           json_type])
        producer.send(**dest, value=b'{"i": 1}', headers=[*corr, ("gateway-seq", b"1"), ("gateway-stream", b"more"),
                                                           json_type, ("gateway-status", b"1xx")])
        return
    if path == "/hostile/stream-first":  # the first record already breaks the protocol
        producer.send(**dest, value=b"", headers=[*corr, ("gateway-seq", b"0"), ("gateway-stream", b"more"),
                                                  ("content-type", b"a\nb")])
        return
    extra, body = HOSTILE[path]
    producer.send(**dest, value=body, headers=[*corr, *extra])


@pytest.fixture(scope="module")
def hostile_service(gateway: Any, broker: Any) -> Iterator[None]:
    stop = threading.Event()
    ready = threading.Event()

    def serve() -> None:
        consumer = KafkaConsumer("hostile.requests", bootstrap_servers=broker.bootstrap, group_id="hostile-svc",
                                 auto_offset_reset="latest", fetch_max_wait_ms=50, session_timeout_ms=3000,
                                 heartbeat_interval_ms=1000)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        try:
            while not stop.is_set():
                for records in consumer.poll(timeout_ms=100).values():
                    for rec in records:
                        _hostile_reply(producer, rec)
                if consumer.assignment():
                    ready.set()
                producer.flush()
        finally:
            producer.close()
            consumer.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(60), "hostile service got no partitions"
    wait_until(lambda: requests.get(gateway.url + "/hostile/fine", timeout=10).status_code == 200, 60, 0.2,
               "hostile service answers")
    yield
    stop.set()
    thread.join(10)


def _invalid(gateway: Any) -> float:
    return metric_value(gateway.metrics(), "gateway_replies_total", 'outcome="invalid"')


@pytest.mark.parametrize("path", [p for p in HOSTILE if p.rsplit("/", 1)[1] not in
                                  ("no-content", "not-modified", "fine", "header-name")])
def test_reply_that_breaks_http_is_502_at_once(gateway: Any, hostile_service: None, path: str) -> None:
    before = _invalid(gateway)
    started = time.monotonic()
    r = requests.get(gateway.url + path, timeout=15)
    took = time.monotonic() - started
    assert r.status_code == 502, (r.status_code, r.text)
    assert r.headers["Content-Type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "bad_reply" and body["correlation_id"] == r.headers["X-Correlation-Id"]
    assert "Set-Cookie" not in r.headers and "X-Evil" not in r.headers
    assert took < 9, f"answered after {took:.1f}s: that is the 10 s deadline's 504 path, not 'at once'"
    assert _invalid(gateway) >= before + 1


def test_204_and_304_replies_carry_no_body(gateway: Any, hostile_service: None) -> None:
    r = requests.get(gateway.url + "/hostile/no-content", timeout=15)
    assert (r.status_code, r.content) == (204, b"")
    r = requests.get(gateway.url + "/hostile/not-modified", timeout=15)
    assert (r.status_code, r.content, r.headers["ETag"]) == (304, b"", '"v1"')
    r = requests.get(gateway.url + "/hostile/fine", timeout=15)
    assert (r.status_code, r.json(), r.headers["Location"]) == (200, {"ok": True}, "/a/b")


def test_reply_header_that_is_not_forwarded_cannot_break_the_answer(gateway: Any, hostile_service: None) -> None:
    r = requests.get(gateway.url + "/hostile/header-name", timeout=15)
    assert (r.status_code, r.json()) == (200, {})
    assert not [k for k in r.headers if k.lower().startswith(("x ", "x\r", "evil"))], r.headers


def test_streams_and_websockets_get_the_502_too(gateway: Any, hostile_service: None) -> None:
    r = requests.get(gateway.url + "/hostile/stream-first", headers=NDJSON, timeout=15)
    assert r.status_code == 502 and r.json()["code"] == "bad_reply"
    with requests.get(gateway.url + "/hostile/stream", headers=NDJSON, stream=True, timeout=15) as r:
        assert r.status_code == 200
        items = [json.loads(x) for x in r.iter_lines() if x]
    assert items[0] == {"i": 0} and len(items) == 2
    assert items[1]["status"] == 502 and items[1]["code"] == "bad_reply"
    ws = websocket.create_connection(gateway.url.replace("http://", "ws://") + "/ws", timeout=15)
    try:
        ws.send(json.dumps({"id": 7, "service": "hostile", "method": "GET", "path": "/crlf-header"}))
        ws.send(json.dumps({"id": 8, "service": "hostile", "method": "GET", "path": "/fine"}))
        frames = {f["id"]: f for f in (json.loads(ws.recv()) for _ in range(2))}
    finally:
        ws.close()
    assert frames[7]["error"]["status"] == 502 and frames[7]["error"]["code"] == "bad_reply"
    assert frames[8]["status"] == 200


# -- records kafka-python cannot parse ---------------------------------------------------------------------------
def test_unparsable_record_on_every_reply_partition_is_skipped(gateway: Any, broker: Any,
                                                               session_config: Path) -> None:
    """One unparsable record on each reply partition, and on partition 0 one in the middle of a multi-record batch
    (the rest of that batch is unreadable with kafka-python and skipped with it): every later request answered."""
    reply_topic = load_config(session_config, env={}).reply.topic
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=100)
    partitions = sorted(producer.partitions_for(reply_topic))
    before = _invalid(gateway)
    for p in partitions:
        producer.send(reply_topic, value=b"{}", partition=p, headers=BAD_HEADER).get(10)
    for i in range(5):                   # one batch: fine, fine, UNPARSABLE, fine, fine
        producer.send(reply_topic, value=b"{}", partition=0,
                      headers=BAD_HEADER if i == 2 else [("gateway-correlation-id", b"00" * 24)])
    producer.flush()
    producer.close()
    # both workers, every partition they mint on: 64 requests on fresh connections
    for i in range(64):
        r = requests.post(f"{gateway.url}/echo/after-poison/{i}", json={"i": i}, timeout=30,
                          headers={"Connection": "close"})
        assert r.status_code == 200 and json.loads(r.json()["body"]) == {"i": i}, r.text
    # Without the skip, a worker whose reader met one of them spun for good and these requests timed out. Which
    # partitions each worker reads depends on the group (slow on the embedded broker): count at least one skip.
    assert _invalid(gateway) > before


@pytest.fixture(scope="module")
def unparsable_service(gateway: Any, broker: Any) -> Iterator[Responder]:
    svc = Responder("unparsable", topic="unparsable.requests", bootstrap_servers=broker.bootstrap,
                    session_timeout_ms=3000, fetch_max_wait_ms=50, reply_retry_ms=20000)
    svc.executions = {}  # type: ignore[attr-defined]

    @svc.route("POST", "/unparsable/<token>")
    def one(req: Request, token: str) -> dict:
        svc.executions[token] = svc.executions.get(token, 0) + 1  # type: ignore[attr-defined]
        return {"token": token}

    @svc.route("GET", "/unparsable/huge")
    def huge(req: Request) -> bytes:
        svc.executions["huge"] = svc.executions.get("huge", 0) + 1  # type: ignore[attr-defined]
        return b"x" * (2 * 1024 * 1024)     # over the producer's max_request_size (1 MiB by default)

    thread = threading.Thread(target=svc.run, kwargs={"install_signal_handlers": False}, daemon=True)
    thread.start()
    assert svc.ready.wait(60)
    wait_until(lambda: requests.post(gateway.url + "/unparsable/warm-up", timeout=10).status_code == 200, 60, 0.2,
               "unparsable service answers")
    yield svc
    svc.stop()
    thread.join(20)


def test_unparsable_requests_are_skipped_and_committed_by_the_sdk(gateway: Any, broker: Any,
                                                                  unparsable_service: Responder) -> None:
    svc = unparsable_service
    topic = "unparsable.requests"
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=100)
    partitions = sorted(producer.partitions_for(topic))
    before = svc.stats["invalid"]
    for p in partitions:
        producer.send(topic, value=b"{}", partition=p, headers=BAD_HEADER).get(10)
    for i in range(4):                   # one batch: fine (no reply address: dropped), UNPARSABLE, fine, fine
        producer.send(topic, value=b"{}", partition=0, headers=BAD_HEADER if i == 1 else [("x", b"1")])
    producer.flush()
    producer.close()
    tokens = [f"t{i}-{uuid.uuid4().hex[:6]}" for i in range(24)]
    for token in tokens:
        r = requests.post(f"{gateway.url}/unparsable/{token}", json={}, timeout=30)
        assert r.status_code == 200 and r.json() == {"token": token}, r.text
    assert all(svc.executions[t] == 1 for t in tokens)                  # type: ignore[attr-defined]
    wait_until(lambda: svc.stats["invalid"] - before >= len(partitions) + 3, 20, 0.2, "skips counted")
    # each single one skipped alone; in the batch, the unparsable record and the two after it (kafka-python cannot
    # read past it within the batch)
    assert svc._runner.unreadable.skipped >= len(partitions) + 3   # noqa: SLF001
    # skipped offsets are committed: a restarted service would not stop on them again
    probe = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=svc.group_id, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = probe.end_offsets(tps)
        wait_until(lambda: all((probe.committed(tp) or 0) >= ends[tp] for tp in tps), 20, 0.5,
                   "offsets committed past the unparsable records")
    finally:
        probe.close(autocommit=False)


def test_reply_too_large_to_send_is_a_502_at_once_and_ran_once(gateway: Any,
                                                              unparsable_service: Responder) -> None:
    svc = unparsable_service
    started = time.monotonic()
    r = requests.get(gateway.url + "/unparsable/huge", timeout=30)
    assert r.status_code == 502, r.text[:300]
    assert "could not be sent" in r.json()["detail"] and "MessageSizeTooLarge" in r.json()["detail"]
    assert time.monotonic() - started < 14        # the service's deadline is 15 s: not the 504 path
    assert svc.executions["huge"] == 1 and svc.stats["unsendable"] >= 1   # type: ignore[attr-defined]


def test_sdk_resends_a_reply_it_could_not_send_and_never_runs_the_handler_again(broker: Any,
                                                                                unparsable_service: Responder) -> None:
    """The reply partition does not exist (yet): sends fail, transiently. The SDK must not commit the request, must
    not run the handler again, and must deliver the reply once the partition exists (the reply topic re-created
    with more partitions, as after a broker outage)."""
    from kafka.admin import KafkaAdminClient, NewTopic

    svc = unparsable_service
    topic = "unparsable.requests"
    reply_topic = f"late-replies-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(reply_topic, 1, 1)])
    token = f"late-{uuid.uuid4().hex[:6]}"
    cid = uuid.uuid4().bytes + uuid.uuid4().bytes[:8]
    headers = P.request_headers(cid, P.ReplyTo(reply_topic, 3, b"k"), int(time.time() * 1000) + 60000, "POST",
                                f"/unparsable/{token}", "", "application/json", [])
    resent_before = svc.stats["resent"]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    meta = producer.send(topic, value=b"{}", partition=1, headers=headers).get(10)
    producer.close()
    probe = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=svc.group_id, enable_auto_commit=False)
    tp = TopicPartition(topic, 1)
    try:
        wait_until(lambda: svc.executions.get(token) == 1, 20, 0.1, "the handler ran")  # type: ignore[attr-defined]
        wait_until(lambda: svc.stats["resent"] >= resent_before + 2, 20, 0.1, "the failed reply was resent")
        assert (probe.committed(tp) or 0) <= meta.offset          # not committed: not answered yet
        admin.delete_topics([reply_topic])

        def back_with_4_partitions() -> bool:
            # the embedded broker may auto-create it (4 partitions) on a client's metadata request meanwhile
            (desc,) = admin.describe_topics([reply_topic])
            if desc.get("error_code") or not desc["partitions"]:
                try:
                    admin.create_topics([NewTopic(reply_topic, 4, 1)])
                except Exception:  # noqa: BLE001 - deletion not finished yet, or someone was first
                    pass
                return False
            return len(desc["partitions"]) >= 4
        wait_until(back_with_4_partitions, 30, 0.2, "reply topic back with 4 partitions")
        wait_until(lambda: (probe.committed(tp) or 0) > meta.offset, 40, 0.2, "committed once the reply was sent")
    finally:
        probe.close(autocommit=False)
        admin.close()
    replies = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, auto_offset_reset="earliest",
                            consumer_timeout_ms=3000)
    replies.assign([TopicPartition(reply_topic, 3)])
    got = [P.decode_reply(rec.value, rec.headers) for rec in replies]
    replies.close()
    assert got and all(g.correlation_id == cid and g.status == 200 for g in got)
    assert json.loads(got[0].body) == {"token": token}
    assert svc.executions[token] == 1                                         # type: ignore[attr-defined]
    assert svc.stats["unsent"] == 0


def test_pending_gauge_is_per_worker_and_back_to_zero(gateway: Any, hostile_service: None) -> None:
    """``gateway_pending`` (what ``no_leaks`` reads) is the pending table's own size, one sample per worker."""
    import re

    for _ in range(10):
        assert requests.get(gateway.url + "/hostile/crlf-header", headers={"Connection": "close"},
                            timeout=15).status_code == 502
    text = gateway.metrics()
    pids = set(re.findall(r'^gateway_pending\{pid="(\d+)"\} ', text, re.M))
    assert len(pids) >= 1 and metric_value(text, "gateway_pending") == 0, text[:2000]
