"""Request-reply through a real gunicorn (2 gevent workers) and a real broker, for every example service."""
from __future__ import annotations

import time

import requests

pytestmark = __import__("pytest").mark.usefixtures("no_leaks")


def test_orders_create_then_get(gateway):
    order = {"customer_id": "c-42", "items": [{"sku": "apple", "quantity": 3}]}
    r = requests.post(gateway.url + "/orders", json=order, timeout=10)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["state"] == "CREATED" and body["customer_id"] == "c-42" and body["items"] == order["items"]
    assert r.headers["Location"] == f"/orders/{body['id']}"
    assert len(r.headers["X-Correlation-Id"]) == 48
    got = requests.get(gateway.url + f"/orders/{body['id']}", timeout=10)
    assert got.status_code == 200 and got.json()["id"] == body["id"]


def test_orders_unknown_is_404_and_invalid_is_422(gateway):
    r = requests.get(gateway.url + "/orders/o-doesnotexist", timeout=10)
    assert r.status_code == 404 and "o-doesnotexist" in r.json()["detail"]
    r = requests.post(gateway.url + "/orders", json={"customer_id": "c", "items": []}, timeout=10)
    assert r.status_code == 422 and "items" in r.json()["errors"]


def test_customers_create_get_update(gateway):
    r = requests.post(gateway.url + "/customers", json={"name": "Ada", "email": "ada@example.com"}, timeout=10)
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    r = requests.put(gateway.url + f"/customers/{cid}", json={"name": "Ada L.", "email": "ada@example.com"},
                     timeout=10)
    assert r.status_code == 200 and r.json()["name"] == "Ada L."
    assert requests.get(gateway.url + f"/customers/{cid}", timeout=10).json()["name"] == "Ada L."


def test_basket_add_view_clear(gateway):
    url = gateway.url + "/basket/c-7"
    assert requests.post(url + "/items", json={"sku": "pear", "quantity": 2}, timeout=10).status_code == 201
    r = requests.post(url + "/items", json={"sku": "pear"}, timeout=10)
    assert r.json()["total_quantity"] == 3
    assert requests.delete(url, timeout=10).status_code == 204
    assert requests.get(url, timeout=10).json()["items"] == []


def test_echo_returns_what_it_received(gateway):
    r = requests.put(gateway.url + "/echo/a/b?x=1&x=2&y=z", data=b"\x00\xffbin",
                     headers={"Content-Type": "application/octet-stream", "X-Request-Id": "rid-1",
                              "Authorization": "Bearer secret"}, timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["method"] == "PUT" and body["path"] == "/echo/a/b"
    assert body["query"] == {"x": ["1", "2"], "y": ["z"]}
    assert body["body_encoding"] == "base64" and body["body"] == "AP9iaW4="
    assert body["headers"]["x-request-id"] == "rid-1"
    assert "authorization" not in body["headers"]  # not forwarded unless allow-listed
    assert body["content_type"] == "application/octet-stream"


def test_allow_listed_and_trace_headers_reach_the_service_and_nothing_else(gateway, broker):
    """http.forward_request_headers and the trace context are on the request record (read from Kafka, as the
    service sees it); Authorization, Cookie and unlisted headers are not."""
    import uuid

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, fetch_max_wait_ms=10)
    try:
        tps = [TopicPartition("echo.requests", p) for p in sorted(consumer.partitions_for_topic("echo.requests"))]
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        for tp in tps:
            consumer.position(tp)
        token = uuid.uuid4().hex
        allowed = {"accept": "application/json", "accept-language": "de-CH", "user-agent": "fuzz/1.0",
                   "x-request-id": "rid-" + token, "idempotency-key": "ik-" + token, "if-match": '"3"',
                   "if-none-match": '"4"'}
        trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                 "tracestate": "congo=t61rcWkgMzE"}
        others = {"Authorization": "Bearer secret", "Cookie": "session=secret", "X-Internal": "secret"}
        r = requests.post(gateway.url + f"/echo/h/{token}", data=b"x", timeout=10,
                          headers={**allowed, **trace, **others, "Content-Type": "text/plain"})
        assert r.status_code == 200, r.text
        assert r.json()["headers"] == allowed        # what the SDK hands the handler: the http-* headers
        found = []
        deadline = time.monotonic() + 15
        while not found and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                found += [rec for rec in records if token.encode() in dict(rec.headers).get("gateway-path", b"")]
    finally:
        consumer.close()
    assert len(found) == 1
    headers = dict(found[0].headers)
    for name, value in allowed.items():
        assert headers["http-" + name] == value.encode()
    for name, value in trace.items():
        assert headers[name] == value.encode()
    forwarded = {k for k in headers if k.startswith("http-")} | {k for k in headers if k in trace}
    assert forwarded == {"http-" + n for n in allowed} | set(trace)
    assert not any(b"secret" in v for v in headers.values() if v)
