"""Issue 7, section 2: after traffic and a long idle period, the SDK has executed every request exactly once.

The service is a ``gateway_sdk.Responder`` inside this process, so its executions are counted where they
happen (per request token), not inferred from replies. The traffic has what made the old SDK replay requests:
multi-record batches on the request topic (a raw producer with ``linger_ms`` packs several requests per batch;
the embedded broker then reports wrong end offsets, which the old "position past the end = recreated" guess took
for a re-created topic) and streaming replies, through the real gateway, then at least 60 s idle.

Keeping the suite short: the traffic runs in the first test of the session (``run_first``) and the check in the
last one (``run_last``), so the 60 s idle period overlaps the rest of the suite; run alone, the check waits out
the remainder itself. Nothing else uses this service's topic.
"""
from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import pytest
import requests
from kafka import KafkaConsumer, KafkaProducer

from gateway import protocol as P
from gateway_sdk import Request, Responder
from tests.support.harness import wait_until

IDLE_S = 60
TOPIC = "replay.requests"
NDJSON = {"Accept": "application/x-ndjson"}


class Replay:
    """The counting service, and what the traffic sent."""

    def __init__(self, bootstrap: str) -> None:
        self.executions: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        # fetch_max_wait_ms: it idles through most of the suite; at 10 ms an idle consumer costs ~10% of a core
        # on the embedded broker (docs/broker.md)
        self.svc = Responder("replay", topic=TOPIC, bootstrap_servers=bootstrap, session_timeout_ms=3000,
                             fetch_max_wait_ms=100, topic_check_interval_s=5)
        self.sent: list[str] = []            # every request token, whichever way it was sent
        self.traffic_ended = 0.0
        self.svc.route("POST", "/replay/one/<token>")(self.one)
        self.svc.route("GET", "/replay/stream/<token>")(self.stream)
        self.thread = threading.Thread(target=self.svc.run, kwargs={"install_signal_handlers": False}, daemon=True)

    def count(self, token: str) -> None:
        with self.lock:
            self.executions[token] += 1

    def one(self, req: Request, token: str) -> dict:
        self.count(token)
        return {"token": token, "body": req.body.decode()}

    def stream(self, req: Request, token: str) -> Iterator[dict]:
        self.count(token)                    # once per execution, before the first item

        def items() -> Iterator[dict]:
            for i in range(int(req.arg("n", "5") or 5)):
                yield {"token": token, "i": i}
        return items()


def _through_gateway(gateway: Any, replay: Replay) -> list[str]:
    problems: list[str] = []

    def one(i: int) -> None:
        token = f"gw-{i}-{uuid.uuid4().hex[:8]}"
        replay.sent.append(token)
        r = requests.post(f"{gateway.url}/replay/one/{token}", data=b"x" * (i % 50), timeout=30,
                          headers={"Content-Type": "application/octet-stream"})
        if r.status_code != 200 or r.json()["token"] != token:
            problems.append(f"{token}: {r.status_code} {r.text[:200]}")

    def stream(i: int) -> None:
        token = f"st-{i}-{uuid.uuid4().hex[:8]}"
        replay.sent.append(token)
        with requests.get(f"{gateway.url}/replay/stream/{token}?n=20", headers=NDJSON, stream=True, timeout=30) as r:
            items = [json.loads(x) for x in r.iter_lines() if x]
        if r.status_code != 200 or items != [{"token": token, "i": k} for k in range(20)]:
            problems.append(f"{token}: {r.status_code} {items[:3]}")

    # many clients at once: the gateway's producer then also packs several requests per batch
    with ThreadPoolExecutor(24) as pool:
        list(pool.map(one, range(200)))
        list(pool.map(stream, range(20)))
    return problems


def _raw_batches(bootstrap: str, replay: Replay) -> list[str]:
    """Requests written straight to the request topic by a producer that lingers: several per record batch."""
    reply_topic = f"replay-raw-{uuid.uuid4().hex[:8]}"
    from gateway.config import parse_config
    from gateway.kafka.admin import ensure_topics
    from tests.support.harness import make_config

    ensure_topics(parse_config(make_config(bootstrap, {"x": {"topic": TOPIC}})), {reply_topic: 2})
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, batch_size=65536)
    tokens = []
    for i in range(200):
        token = f"raw-{i}-{uuid.uuid4().hex[:8]}"
        tokens.append(token)
        replay.sent.append(token)
        cid = uuid.uuid4().bytes + uuid.uuid4().bytes[:8]
        headers = P.request_headers(cid, P.ReplyTo(reply_topic, i % 2, b"k"), int(time.time() * 1000) + 120000,
                                    "POST", f"/replay/one/{token}", "", "application/json", [])
        producer.send(TOPIC, value=json.dumps({"i": i}).encode(), headers=headers)
        if i % 25 == 24:
            producer.flush()                     # ~25 records per flush: batches of several records
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(reply_topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             consumer_timeout_ms=1000)
    answered: set[str] = set()
    deadline = time.monotonic() + 60
    while len(answered) < len(tokens) and time.monotonic() < deadline:
        for rec in consumer:
            answered.add(json.loads(rec.value)["token"])
    consumer.close()
    return [f"{t}: no reply" for t in tokens if t not in answered]


@pytest.fixture(scope="session")
def replay(broker: Any, gateway: Any) -> Iterator[Replay]:
    r = Replay(broker.bootstrap)
    r.thread.start()
    try:
        assert r.svc.ready.wait(60), "replay service got no partitions"
        wait_until(lambda: requests.post(f"{gateway.url}/replay/one/warm-up", timeout=10).status_code == 200, 60,
                   0.2, "replay answered through the gateway")
        r.sent.append("warm-up")
        yield r
    finally:
        r.svc.stop()
        r.thread.join(20)


@pytest.fixture(scope="session")
def replay_traffic(replay: Replay, gateway: Any, broker: Any) -> list[str]:
    problems = _through_gateway(gateway, replay) + _raw_batches(broker.bootstrap, replay)
    # every request has run by now (each was answered); from here on the service sits idle
    replay.traffic_ended = time.monotonic()
    return problems


@pytest.mark.run_first
@pytest.mark.timeout(240)
def test_replay_traffic_is_answered_once_each(replay: Replay, replay_traffic: list[str]) -> None:
    assert replay_traffic == []
    with replay.lock:
        twice = {t: n for t, n in replay.executions.items() if n != 1}
        assert twice == {} and set(replay.executions) == set(replay.sent)


@pytest.mark.run_last
@pytest.mark.timeout(IDLE_S + 180)
def test_after_a_minute_idle_no_request_was_executed_twice(replay: Replay, replay_traffic: list[str],
                                                           gateway: Any) -> None:
    assert replay_traffic == []
    # The idle period is the condition under test (the old SDK's guess fired when idle), not a synchronisation.
    remaining = IDLE_S - (time.monotonic() - replay.traffic_ended)
    if remaining > 0:
        time.sleep(remaining)
    # ... and the service still serves after the idle period, once per request
    for i in range(5):
        token = f"after-idle-{i}-{uuid.uuid4().hex[:6]}"
        replay.sent.append(token)
        r = requests.post(f"{gateway.url}/replay/one/{token}", timeout=30)
        assert r.status_code == 200 and r.json()["token"] == token, r.text
    stats = dict(replay.svc.stats)
    with replay.lock:
        executions = dict(replay.executions)
    twice = {t: n for t, n in executions.items() if n > 1}
    assert twice == {}, f"executed more than once: {len(twice)} requests, e.g. {list(twice.items())[:5]}"
    assert sum(executions.values()) == len(replay.sent) == len(set(replay.sent)) >= 426
    assert set(executions) == set(replay.sent)
    # the re-created-topic check really ran while idle (every 5 s), and never moved a position
    assert stats.get("topic_checks", 0) >= IDLE_S // 5 - 4, stats
    assert stats.get("rewinds", 0) == 0, stats
