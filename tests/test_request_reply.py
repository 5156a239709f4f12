"""Concurrency, cross-talk and the two ways a service may address its reply (Spring-style by partition, by key)."""
from __future__ import annotations

import json
import struct
import threading
import uuid
from typing import Iterator

import pytest
import requests
from kafka import KafkaConsumer, KafkaProducer

from tests.support.harness import metric_value, wait_until

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_1000_concurrent_requests_each_get_their_own_reply(gateway):
    import http.client
    from urllib.parse import urlparse

    def settled(m: str) -> bool:   # both workers own their partitions and read no other (nothing borrowed)
        return metric_value(m, "gateway_workers_ready") == 2 and \
            metric_value(m, "gateway_reply_partitions_owned") == metric_value(m, "gateway_reply_partitions_read")

    # a worker serves on a borrowed partition until the group assigns it its own; another worker reading that
    # partition meanwhile sees its replies (foreign, by design): this test's claim needs the settled group
    wait_until(lambda: settled(gateway.metrics()), 30, 0.1, "the reply group settled")
    before = gateway.metrics()
    host = urlparse(gateway.url)
    n = 1000
    start = threading.Barrier(n)
    results: list[tuple[int, str, bytes] | None] = [None] * n

    def one(i: int) -> None:
        token = f"{i}-{uuid.uuid4().hex}"
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
        try:
            start.wait(30)
            conn.request("POST", f"/echo/c/{i}", body=json.dumps({"token": token}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            results[i] = (resp.status, token, resp.read())
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    mismatched = failed = 0
    for i, res in enumerate(results):
        if res is None or res[0] != 200:
            failed += 1
            continue
        status, token, raw = res
        body = json.loads(raw)
        if json.loads(body["body"]) != {"token": token} or body["path"] != f"/echo/c/{i}":
            mismatched += 1
    assert (failed, mismatched) == (0, 0)
    after = gateway.metrics()
    delivered = metric_value(after, "gateway_replies_total", 'outcome="delivered"') - \
        metric_value(before, "gateway_replies_total", 'outcome="delivered"')
    foreign = metric_value(after, "gateway_replies_total", 'outcome="foreign"') - \
        metric_value(before, "gateway_replies_total", 'outcome="foreign"')
    # every reply reached the worker that sent the request, and no other worker saw it
    assert delivered >= n and foreign == 0


def _serve(topic: str, bootstrap: str, reply, stop: threading.Event) -> None:  # noqa: ANN001
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"{topic}-svc", auto_offset_reset="earliest",
                             fetch_max_wait_ms=10, session_timeout_ms=3000, heartbeat_interval_ms=1000)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, enable_idempotence=False)
    try:
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=100).values():
                for rec in records:
                    reply(producer, rec, dict(rec.headers))
            producer.flush()
    finally:
        producer.close()
        consumer.close()


@pytest.fixture
def foreign_services(gateway, broker) -> Iterator[None]:
    """Two services NOT built on our SDK, each addressing its reply differently."""

    def spring(producer, rec, h):  # noqa: ANN001 - what an unmodified @KafkaListener + @SendTo does
        (partition,) = struct.unpack(">i", h["kafka_replyPartition"])
        producer.send(h["kafka_replyTopic"].decode(), value=json.dumps({"spring": json.loads(rec.value)}).encode(),
                      partition=partition, headers=[("kafka_correlationId", h["kafka_correlationId"])])

    def by_key(producer, rec, h):  # noqa: ANN001 - replies by key alone: the default partitioner places it
        producer.send(h["gateway-reply-topic"].decode(), value=json.dumps({"bykey": json.loads(rec.value)}).encode(),
                      key=h["gateway-reply-key"],
                      headers=[("gateway-correlation-id", h["gateway-correlation-id"]), ("gateway-status", b"202")])

    stop = threading.Event()
    threads = [threading.Thread(target=_serve, args=(t, broker.bootstrap, fn, stop), daemon=True)
               for t, fn in (("spring.requests", spring), ("bykey.requests", by_key))]
    for t in threads:
        t.start()
    yield
    stop.set()
    for t in threads:
        t.join(10)


def test_an_idle_reader_fetches_nothing_and_the_next_requests_wake_it(gateway):
    """While no request waits for a reply, no worker's reply reader fetches (an idle fetch loop costs the worker
    and the broker CPU). A request registers its waiter before its record is produced, and that wakes the reader:
    requests right after an idle period, alone or together, each get their own reply, none is lost, and the readers
    stop fetching again once they are answered."""
    import http.client
    from urllib.parse import urlparse

    host = urlparse(gateway.url)

    def idle() -> bool:
        return metric_value(gateway.metrics(), "gateway_reply_readers_fetching") == 0

    def ask(i: int, results: list) -> None:
        token = f"{i}-{uuid.uuid4().hex}"
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)   # fresh: any worker
        try:
            conn.request("POST", f"/echo/idle/{i}", body=json.dumps({"token": token}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
            results[i] = resp.status == 200 and json.loads(json.loads(body)["body"]) == {"token": token}
        finally:
            conn.close()

    before = gateway.metrics()
    sent = 0
    for burst in (1, 1, 2, 16, 1):
        wait_until(idle, 30, 0.05, "every reply reader stopped fetching")
        results: list[bool | None] = [None] * burst
        threads = [threading.Thread(target=ask, args=(i, results)) for i in range(burst)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        assert results == [True] * burst
        sent += burst
    wait_until(idle, 30, 0.05, "every reply reader stopped fetching again")
    after = gateway.metrics()
    delivered = metric_value(after, "gateway_replies_total", 'outcome="delivered"') - \
        metric_value(before, "gateway_replies_total", 'outcome="delivered"')
    assert delivered == sent
    # each burst ended with the readers that served it going idle again
    assert metric_value(after, "gateway_reply_reader_idle_total") - \
        metric_value(before, "gateway_reply_reader_idle_total") >= 5


def test_spring_style_reply_by_partition_with_only_kafka_headers(gateway, foreign_services):
    for i in range(20):
        r = requests.post(gateway.url + "/spring/x", json={"n": i}, timeout=15)
        assert r.status_code == 200, r.text
        assert r.json() == {"spring": {"n": i}}
        assert r.headers["Content-Type"] == "application/json"


def test_reply_by_key_alone_reaches_the_waiting_worker(gateway, foreign_services):
    for i in range(20):
        r = requests.post(gateway.url + "/bykey/x", json={"n": i}, timeout=15)
        assert r.status_code == 202, r.text
        assert r.json() == {"bykey": {"n": i}}


def test_json_field_becomes_the_record_key(gateway, broker):
    consumer = KafkaConsumer("echo.requests.json", bootstrap_servers=broker.bootstrap, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    token = uuid.uuid4().hex
    r = requests.post(gateway.url + "/jsononly", json={"customer_id": "cust-" + token}, timeout=10)
    assert r.status_code == 200
    keys = [rec.key for rec in consumer if token.encode() in rec.value]
    consumer.close()
    assert keys == [("cust-" + token).encode()]


def test_metrics_sum_over_all_workers(gateway):
    """/metrics is answered by one worker but counts the requests every worker served: fresh connections until
    each worker has served at least 5 (X-Gateway-Worker), then the sum must be every request sent."""
    import http.client
    from urllib.parse import urlparse

    host = urlparse(gateway.url)
    label = 'service="customers",status="404"'
    before = metric_value(gateway.metrics(), "gateway_requests_total", label)
    served: dict[str, int] = {}
    sent = 0
    while (len(served) < 2 or min(served.values()) < 5) and sent < 400:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=15)  # the kernel picks the worker
        conn.request("GET", f"/customers/nobody-{sent}", headers={"Connection": "close"})
        resp = conn.getresponse()
        assert resp.status == 404
        worker = resp.getheader("X-Gateway-Worker")
        served[worker] = served.get(worker, 0) + 1
        conn.close()
        sent += 1
    assert len(served) == 2 and min(served.values()) >= 5, f"one worker served everything: {served}"
    assert metric_value(gateway.metrics(), "gateway_requests_total", label) - before == sent


def test_only_allow_listed_reply_headers_reach_the_client(gateway, broker):
    """A reply's http-<name> headers are passed on only when http.forward_response_headers lists the name; the
    gateway's own headers (X-Correlation-Id, Server) cannot be overwritten by a service."""
    from tests.support.harness import ScriptedService

    listed = {"location": "/things/1", "etag": '"7"', "cache-control": "no-store", "retry-after": "3",
              "last-modified": "Tue, 01 Dec 2026 10:00:00 GMT", "x-request-id": "r-9", "content-language": "de"}
    unlisted = {"set-cookie": "s=1", "x-internal": "secret", "server": "evil", "x-correlation-id": "forged",
                "authorization": "Bearer x", "access-control-allow-origin": "*"}

    def answer(svc, rec, h):  # noqa: ANN001
        headers = [("gateway-correlation-id", h["gateway-correlation-id"]), ("gateway-status", b"201")]
        headers += [(f"http-{k}", v.encode()) for k, v in {**listed, **unlisted}.items()]
        svc.send(h["gateway-reply-topic"].decode(), b'{"ok": true}', headers,
                 partition=int(h["gateway-reply-partition"]))

    svc = ScriptedService(broker.bootstrap, ["replyheaders.requests"], answer).start()
    try:
        r = requests.get(gateway.url + "/replyheaders/x", timeout=15)
    finally:
        svc.stop()
    assert svc.errors == []
    assert r.status_code == 201 and r.json() == {"ok": True}
    assert {k: r.headers.get(k) for k in listed} == listed
    assert [k for k in unlisted if k in r.headers and k not in ("server", "x-correlation-id")] == []
    assert r.headers["Server"] != "evil" and len(r.headers["X-Correlation-Id"]) == 48


def test_the_access_log_line_has_path_status_and_correlation_id_and_no_query_credentials_or_referer(gateway,
                                                                                                    log_dir):
    """Query strings carry API keys and signed-URL tokens; gunicorn's default access line would log them, the
    Basic-auth user and the Referer. The gateway's line: client, time, method, path, protocol, status, bytes,
    milliseconds and the correlation id."""
    import base64

    path = f"/echo/access/{uuid.uuid4().hex}"
    basic = base64.b64encode(b"alice:pw-SECRET-1").decode()
    r = requests.get(gateway.url + path, params={"api_key": "q-SECRET-2", "x": "1"},
                     headers={"Authorization": f"Basic {basic}", "Referer": "https://app/?token=r-SECRET-3",
                              "Cookie": "session=c-SECRET-4"}, timeout=15)
    assert r.status_code == 200 and r.json()["query"]["api_key"] == ["q-SECRET-2"]   # the service got them all
    access = log_dir / "access.log"
    wait_until(lambda: access.exists() and path in access.read_text(), 10, 0.05, "the request's access log line")
    text = access.read_text()
    line = next(ln for ln in text.splitlines() if path in ln)
    assert f'"GET {path} HTTP/1.1" 200 ' in line, line
    assert line.endswith(f"ms cid={r.headers['X-Correlation-Id']}"), line
    assert "SECRET" not in text and "alice" not in text and "api_key" not in text, line
