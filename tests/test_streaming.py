"""Streaming replies (docs/variants.md, variant 2) through real gunicorn workers and a real broker."""
from __future__ import annotations

import json
import random
import re
import socket
import threading
import time

import pytest
import requests
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from gateway.protocol import H_CORRELATION_ID, H_REPLY_KEY, H_REPLY_PARTITION, H_REPLY_TOPIC, reply_headers

pytestmark = pytest.mark.usefixtures("no_leaks")
NDJSON = {"Accept": "application/x-ndjson"}


def lines(r: requests.Response) -> list:
    return [json.loads(x) for x in r.iter_lines() if x]


def test_10000_records_arrive_complete_and_in_order(gateway):
    started = time.monotonic()
    with requests.get(gateway.url + "/ticker/count?n=10000", headers=NDJSON, stream=True, timeout=60) as r:
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-ndjson"
        assert r.headers.get("Transfer-Encoding") == "chunked"
        items = lines(r)
    assert items == [{"i": i} for i in range(10000)], f"{len(items)} items"
    print(f"10,000 records streamed in {time.monotonic() - started:.1f}s")


def test_server_sent_events_end_with_an_end_event(gateway):
    with requests.get(gateway.url + "/ticker/count?n=3", headers={"Accept": "text/event-stream"}, stream=True,
                      timeout=10) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        text = r.text
    events = [e for e in text.split("\n\n") if e]
    assert events[:3] == [f'id: {i}\ndata: {{"i": {i}}}' for i in range(3)]
    assert events[3] == 'event: end\ndata: {"items": 3}'


def test_idle_gap_ends_the_stream_with_an_error_line(gateway):
    """ticker's stream_idle_timeout_ms is 1000; the stall pauses 2000 ms after two items."""
    started = time.monotonic()
    with requests.get(gateway.url + "/ticker/stall?n=2&gap_ms=2000", headers=NDJSON, stream=True, timeout=10) as r:
        items = lines(r)
    assert items[:2] == [{"i": 0}, {"i": 1}] and len(items) == 3
    assert items[2]["code"] == "stream_idle" and items[2]["status"] == 504 and "correlation_id" in items[2]
    assert time.monotonic() - started < 8


def test_service_error_mid_stream_is_the_last_line(gateway):
    with requests.get(gateway.url + "/ticker/fail?n=3", headers=NDJSON, stream=True, timeout=10) as r:
        items = lines(r)
    assert items[:3] == [{"i": i} for i in range(3)]
    assert items[3]["status"] == 500 and items[3]["type"].startswith("urn:kafka-rest-gateway:error:")


def test_plain_replies_stay_plain_and_streams_need_accept(gateway):
    r = requests.get(gateway.url + "/echo/plain", headers=NDJSON, timeout=10)
    assert r.status_code == 200 and r.json()["path"] == "/echo/plain"
    r = requests.get(gateway.url + "/ticker/count?n=abc", headers=NDJSON, timeout=10)
    assert r.status_code == 400 and "n=abc" in r.json()["detail"]
    r = requests.get(gateway.url + "/ticker/count?n=2", timeout=10)
    assert r.status_code == 406 and "Accept: application/x-ndjson" in r.json()["detail"]
    r = requests.get(gateway.url + "/blackhole/x", headers=NDJSON, timeout=10)
    assert r.status_code == 504 and r.json()["code"] == "reply_timeout"


@pytest.fixture
def shuffler(broker):
    """A service written against the raw wire protocol that answers every request on shuffle.requests with
    seq 0..4 out of order, some twice, plus a stray record after the end."""
    stop = threading.Event()
    ready = threading.Event()

    def serve() -> None:
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, fetch_max_wait_ms=10)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False, linger_ms=0)
        tps = [TopicPartition("shuffle.requests", p) for p in sorted(consumer.partitions_for_topic(
            "shuffle.requests"))]
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        for tp in tps:
            consumer.position(tp)
        ready.set()
        rng = random.Random(3)
        try:
            while not stop.is_set():
                for records in consumer.poll(timeout_ms=100).values():
                    for rec in records:
                        h = dict(rec.headers)
                        cid = bytes.fromhex(h[H_CORRELATION_ID].decode())
                        order = [0, 1, 2, 3, 4]
                        rng.shuffle(order)
                        for seq in [*order, order[0], 2, 5]:
                            kind = "end" if seq == 4 else "more"
                            producer.send(h[H_REPLY_TOPIC].decode(), key=h[H_REPLY_KEY],
                                          partition=int(h[H_REPLY_PARTITION]), value=json.dumps({"seq": seq}).encode(),
                                          headers=reply_headers(cid, seq=seq, stream=kind))
                        producer.flush()
        finally:
            producer.close()
            consumer.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(20)
    yield
    stop.set()
    t.join(10)


def test_out_of_order_and_duplicate_records_are_reordered_and_dropped(gateway, shuffler):
    for _ in range(3):
        with requests.get(gateway.url + "/shuffle/x", headers=NDJSON, stream=True, timeout=10) as r:
            assert lines(r) == [{"seq": i} for i in range(4)]


@pytest.fixture
def drip(broker):
    """A raw-protocol service on drip.requests and dripshort.requests that streams ``n`` items ``gap_ms`` apart
    (from the query), each request in a thread of its own, until told to stop."""
    from urllib.parse import parse_qs

    from tests.support.harness import ScriptedService

    stop = threading.Event()
    sent: dict[str, int] = {}

    def answer(svc, rec, h):  # noqa: ANN001
        q = parse_qs(h["gateway-query"].decode())
        n, gap = int(q["n"][0]), int(q["gap_ms"][0]) / 1000
        cid = bytes.fromhex(h["gateway-correlation-id"].decode())
        topic, partition = h["gateway-reply-topic"].decode(), int(h["gateway-reply-partition"])

        def stream() -> None:
            for i in range(n):
                if stop.wait(gap if i else 0):
                    return
                svc.send(topic, json.dumps({"i": i}).encode(), reply_headers(cid, seq=i, stream="more"),
                         partition=partition, flush=True)
                sent[cid.hex()] = i + 1
            svc.send(topic, b"", reply_headers(cid, seq=n, stream="end"), partition=partition, flush=True)

        threading.Thread(target=stream, daemon=True).start()

    svc = ScriptedService(broker.bootstrap, ["drip.requests", "dripshort.requests"], answer).start()
    yield sent
    stop.set()
    svc.stop()
    assert svc.errors == []


def test_stream_timeout_ends_a_stream_that_keeps_going(gateway, drip):
    """dripshort: stream_timeout_ms 2000, idle timeout 5000; the service would stream for 60 s, an item every
    100 ms (never idle): the whole-stream deadline ends it with a stream_idle problem line naming the setting."""
    started = time.monotonic()
    with requests.get(gateway.url + "/dripshort/x?n=600&gap_ms=100", headers=NDJSON, stream=True, timeout=60) as r:
        assert r.status_code == 200
        items = lines(r)
    elapsed = time.monotonic() - started
    *got, last = items
    assert got == [{"i": i} for i in range(len(got))] and len(got) >= 1
    assert last["code"] == "stream_idle" and "stream_timeout_ms" in last["detail"], last
    assert elapsed < 30, f"the stream ran {elapsed:.1f}s: its 2 s deadline did not end it"


def test_client_disconnect_mid_stream_releases_the_waiter(gateway, drip):
    """drip: stream_timeout_ms 120000, idle timeout 5000, an item every 100 ms for 120 s: only the client going
    away can release the waiter early. The records that keep coming afterwards are counted late."""
    from tests.support.harness import metric_value, wait_until

    late_before = metric_value(gateway.metrics(), "gateway_replies_total", 'outcome="late"')
    host, port = gateway.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    try:
        sock.sendall(b"GET /drip/x?n=1200&gap_ms=100 HTTP/1.1\r\nHost: gw\r\nAccept: application/x-ndjson\r\n\r\n")
        received = b""
        while b'{"i": 0}' not in received:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
        assert metric_value(gateway.metrics(), "gateway_in_flight", 'service="drip"') == 1
    finally:
        sock.close()                     # hang up mid-stream
    assert received.startswith(b"HTTP/1.1 200")
    cid = re.search(rb"X-Correlation-Id: ([0-9a-f]{48})", received).group(1).decode()
    wait_until(lambda: metric_value(gateway.metrics(), "gateway_in_flight", 'service="drip"') == 0, 20, 0.1,
               "the disconnected stream's waiter released")
    # a reader with nothing pending fetches nothing (gateway.kafka.replies): the records that came meanwhile are
    # read, and counted late, once a request waits in that worker again (fresh connections reach either worker)
    def counted_late() -> bool:
        requests.get(gateway.url + "/echo/wake", headers={"Connection": "close"}, timeout=10)
        return metric_value(gateway.metrics(), "gateway_replies_total", 'outcome="late"') > late_before

    wait_until(counted_late, 20, 0.1, "records after the disconnect counted late")
    assert drip[cid] < 1200, "the stream had already ended: the test proved nothing"
