"""Answer on state (docs/variants.md, variant 4): POST /orders answers once examples.validator moved the order to
VALIDATED or FAILED on orders.events; conditional GETs wait for an entity's next change.

A gateway instance of its own (2 workers), because here POST /orders answers differently than in the session
gateway; it shares the broker and the session's orders service."""
from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
import requests
import tomllib
from kafka import KafkaProducer

from tests.support.harness import GunicornGateway, ServiceProcess, metric_value, to_toml, wait_until

ANSWER_ON = {"topic": "orders.events", "states": ["VALIDATED", "FAILED"], "id_source": "reply", "id_field": "id",
             "version_field": "version", "timeout_ms": 8000}


@pytest.fixture(scope="module")
def validator(broker, example_services, log_dir) -> Iterator[dict[str, ServiceProcess]]:
    """{"proc": the running validator}: a test that stops it starts a new one (tests must not depend on order)."""
    holder = {"proc": ServiceProcess("examples.validator", broker.bootstrap, log_dir)}
    yield holder
    holder["proc"].stop()


@pytest.fixture(scope="module")
def state_gateway(session_config: Path, broker, example_services, validator, log_dir, tmp_path_factory
                  ) -> Iterator[GunicornGateway]:
    cfg = tomllib.loads(session_config.read_text())
    suffix = uuid.uuid4().hex[:8]
    cfg["reply"] = {**cfg["reply"], "topic": f"replies-{suffix}", "group_id": f"gw-{suffix}"}
    # generous timeouts: 500 orders at once on a busy 2-core machine are slow, not failed
    cfg["services"]["orders"].update(answer_on=ANSWER_ON, timeout_ms=20000)
    path = tmp_path_factory.mktemp("state") / "gateway.toml"
    path.write_text(to_toml(cfg))
    gw = GunicornGateway(path, broker.bootstrap, log_dir, workers=2)
    try:
        gw.wait_ready(60)
        order = {"customer_id": "c-warmup", "items": [{"sku": "apple", "quantity": 1}]}
        wait_until(lambda: requests.post(gw.url + "/orders", json=order, timeout=10).status_code == 201, 60, 0.2,
                   "the validator answers")
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def no_state_leaks(state_gateway) -> Iterator[None]:
    yield
    wait_until(lambda: metric_value(state_gateway.metrics(), "gateway_in_flight") == 0, 15, 0.2, "in-flight 0")


pytestmark = pytest.mark.usefixtures("no_state_leaks")


def order(customer: str, sku: str = "apple", quantity: int = 2) -> dict:
    return {"customer_id": customer, "items": [{"sku": sku, "quantity": quantity}]}


def test_post_answers_with_the_validated_or_failed_order(state_gateway):
    r = requests.post(state_gateway.url + "/orders", json=order("c-1"), timeout=10)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["state"] == "VALIDATED" and body["version"] == 2 and r.headers["ETag"] == '"2"'
    assert r.headers["Location"] == f"/orders/{body['id']}" and len(r.headers["X-Correlation-Id"]) == 48
    r = requests.post(state_gateway.url + "/orders", json=order("c-2", sku="unobtainium"), timeout=10)
    assert r.status_code == 201 and r.json()["state"] == "FAILED" and "out of stock" in r.json()["reason"]
    r = requests.post(state_gateway.url + "/orders", json={"customer_id": "c-3", "items": []}, timeout=10)
    assert r.status_code == 422                                 # the service refused: nothing to wait for
    r = requests.post(state_gateway.url + "/orders", data=b"{", headers={"Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 400 and r.json()["code"] == "malformed_json"


def test_500_orders_at_once(state_gateway):
    """Every 10th order asks for 60 items (more than the validator's 50): FAILED, the others VALIDATED."""
    def post(i: int) -> tuple[int, requests.Response]:
        with requests.Session() as s:
            return i, s.post(state_gateway.url + "/orders", json=order(f"c-{i}", quantity=60 if i % 10 == 0 else 1),
                             timeout=60)

    started = time.monotonic()
    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(post, range(500)))
    elapsed = time.monotonic() - started
    ids = set()
    for i, r in results:
        assert r.status_code == 201, (i, r.status_code, r.text[:300])
        body = r.json()
        assert body["customer_id"] == f"c-{i}"
        assert body["state"] == ("FAILED" if i % 10 == 0 else "VALIDATED"), body
        ids.add(body["id"])
    assert len(ids) == 500
    print(f"500 orders answered on state in {elapsed:.1f}s")


def test_conditional_get_waits_for_the_next_change(state_gateway, broker):
    created = requests.post(state_gateway.url + "/orders", json=order("c-watch"), timeout=10).json()
    url = state_gateway.url + f"/orders/{created['id']}"
    current = requests.get(url, timeout=10)                   # the service's own answer carries the same ETag
    assert current.status_code == 200 and current.headers["ETag"] == '"2"'
    started = time.monotonic()
    r = requests.get(url, headers={"If-None-Match": '"2"', "Prefer": "wait=1"}, timeout=10)
    assert r.status_code == 304 and r.headers["ETag"] == '"2"' and 0.9 < time.monotonic() - started < 6
    r = requests.get(url, headers={"If-None-Match": '"1"', "Prefer": "wait=5"}, timeout=10)
    assert r.status_code == 200 and r.json()["version"] == 2   # stale ETag: the current state at once

    with ThreadPoolExecutor(4) as pool:
        waits = [pool.submit(requests.get, url, headers={"If-None-Match": '"2"', "Prefer": "wait=10"}, timeout=15)
                 for _ in range(4)]
        # another service moves the order on: publish its next version to orders.events
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
        shipped = {**created, "state": "SHIPPED", "version": 3}
        producer.send("orders.events", key=created["id"].encode(), value=json.dumps(shipped).encode()).get(10)
        producer.close()
        for w in waits:
            r = w.result()
            assert r.status_code == 200 and r.headers["ETag"] == '"3"' and r.json()["state"] == "SHIPPED"
    r = requests.get(url, headers={"If-None-Match": '"3"', "Prefer": "wait=x"}, timeout=10)
    assert r.status_code == 400


def test_conditional_get_sees_every_event_already_in_the_topic(state_gateway, broker):
    """Each worker tails orders.events on its own; a lagging one must neither answer 304 for a version already in
    the topic nor serve an older version than the client holds. Fresh connections spread the GETs over both
    workers; wait=0 answers from what the worker knows at once."""
    created = requests.post(state_gateway.url + "/orders", json=order("c-agree"), timeout=10).json()
    url = state_gateway.url + f"/orders/{created['id']}"
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
    wrong, workers = [], set()

    def get(etag: str) -> requests.Response:
        with requests.Session() as s:
            r = s.get(url, headers={"If-None-Match": etag, "Prefer": "wait=0"}, timeout=10)
        workers.add(r.headers["X-Gateway-Worker"])
        return r

    try:
        for version in range(3, 9):
            doc = {**created, "state": "SHIPPED", "version": version}
            producer.send("orders.events", key=created["id"].encode(), value=json.dumps(doc).encode()).get(10)
            for _ in range(3):
                r = get(f'"{version - 1}"')          # the new version is in the topic: 200 with it
                if r.status_code != 200 or r.headers["ETag"] != f'"{version}"':
                    wrong.append(("after", version, r.status_code, r.headers.get("ETag")))
                r = get(f'"{version}"')              # the client has the newest: 304, never an older 200
                if r.status_code != 304:
                    wrong.append(("holding", version, r.status_code, r.headers.get("ETag")))
    finally:
        producer.close()
    assert wrong == []
    assert len(workers) == 2, "the GETs never reached the second worker: the test proved nothing"


def test_no_state_in_time_is_a_504(state_gateway, validator, broker, log_dir):
    """With the validator stopped, the order stays CREATED; afterwards a new validator serves the other tests."""
    validator["proc"].stop()
    try:
        r = requests.post(state_gateway.url + "/orders", json=order("c-late"), timeout=30)
        assert r.status_code == 504 and r.json()["code"] == "state_timeout"
        assert r.json()["last_state"] == "CREATED" and r.json()["entity_id"].startswith("o-")
    finally:
        validator["proc"] = ServiceProcess("examples.validator", broker.bootstrap, log_dir)
        wait_until(lambda: requests.post(state_gateway.url + "/orders", json=order("c-back"), timeout=30).json()
                   .get("state") == "VALIDATED", 90, 0.2, "the new validator answers")
