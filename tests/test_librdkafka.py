"""The librdkafka clients (``kafka.client = "librdkafka"``) against the embedded broker: they must mean what
kafka-python's calls mean where the gateway uses them (the whole suite also runs on them:
``GATEWAY_TEST_KAFKA_CLIENT=librdkafka ./dev test``). Here what the suite cannot see from outside: where keyed
records land, that positions survive re-assignment, that a paused reader fetches nothing and loses nothing."""
from __future__ import annotations

import time
import uuid

import gevent
import pytest
from kafka import TopicPartition

from gateway.config import parse_config
from gateway.core.routing import partition_for_key
from gateway.kafka import is_fatal_producer_error
from gateway.kafka.admin import ensure_topics
from gateway.kafka.librdkafka import IDLE_PAUSE_S, ProduceError, RdProducer, RdReplyConsumer
from tests.support.harness import make_config

pytestmark = pytest.mark.timeout(90)
PARTITIONS = 4


@pytest.fixture
def setup(broker):  # noqa: ANN001, ANN201
    topic = f"rd-{uuid.uuid4().hex[:8]}"
    raw = make_config(broker.bootstrap, {"echo": {"topic": "echo.requests"}},
                      reply={"topic": topic, "partitions": PARTITIONS},
                      kafka={"client": "librdkafka", "enable_idempotence": False, "acks": 1})
    config = parse_config(raw)
    ensure_topics(config, {topic: PARTITIONS})
    producer = RdProducer(config)
    consumer = RdReplyConsumer(config)
    yield config, topic, producer, consumer
    consumer.close()
    producer.close(timeout=2)


def _read(consumer: RdReplyConsumer, want: int, timeout_s: float = 20) -> list:
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=100).values():
            got.extend(records)
    return got


def test_keyed_records_land_where_kafka_python_puts_them_and_are_read_from_the_end(setup):  # noqa: ANN001
    config, topic, producer, consumer = setup
    for i in range(8):    # one at a time: single-record batches (the embedded broker's end offsets are wrong after
        producer.send(topic, value=b"old", key=b"k%d" % i).get(10)   # a multi-record one: docs/broker.md)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    ends = {tp.partition: consumer.position(tp) for tp in tps}
    assert sum(ends.values()) == 8                       # positioned after every earlier record
    consumer.set_fetching(True)

    keys = [uuid.uuid4().hex.encode() for _ in range(40)]
    deliveries = [producer.send(topic, value=k, key=k, headers=[("h", b"v")]) for k in keys]
    metas = [d.get(10) for d in deliveries]
    for key, meta in zip(keys, metas, strict=True):
        assert meta.partition == partition_for_key(key, PARTITIONS)    # Java's murmur2, as kafka-python
    got = _read(consumer, len(keys))
    assert sorted(r.value for r in got) == sorted(keys)  # each once, none of the earlier ones
    assert all(r.headers == [("h", b"v")] and r.key == r.value for r in got)
    for tp in tps:
        assert consumer.position(tp) == ends[tp.partition] + sum(m.partition == tp.partition for m in metas)


def test_positions_survive_reassignment_and_a_paused_reader_loses_nothing(setup):  # noqa: ANN001
    config, topic, producer, consumer = setup
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer.assign([p0])
    consumer.seek_to_end(p0)
    consumer.set_fetching(True)
    producer.send(topic, value=b"a", partition=0).get(10)
    assert [r.value for r in _read(consumer, 1)] == [b"a"]

    consumer.assign([p0, p1])                             # p0 keeps its position: "a" is not read again
    consumer.seek_to_end(p1)
    producer.send(topic, value=b"b", partition=0).get(10)
    producer.send(topic, value=b"c", partition=1).get(10)
    assert sorted(r.value for r in _read(consumer, 2)) == [b"b", b"c"]

    consumer.set_fetching(False)                         # idle: paused after IDLE_PAUSE_S
    gevent.sleep(IDLE_PAUSE_S + 0.5)
    assert consumer._paused                              # noqa: SLF001 - the state under test
    producer.send(topic, value=b"d", partition=0).get(10)
    producer.send(topic, value=b"e", partition=1).get(10)
    assert consumer.poll(timeout_ms=1000) == {}          # paused: not fetched
    consumer.set_fetching(True)
    assert sorted(r.value for r in _read(consumer, 2)) == [b"d", b"e"]   # and nothing lost

    consumer.assign([p1])                                # released: nothing of p0 comes any more
    producer.send(topic, value=b"f", partition=0).get(10)
    producer.send(topic, value=b"g", partition=1).get(10)
    assert [r.value for r in _read(consumer, 1)] == [b"g"]
    assert consumer.poll(timeout_ms=500) == {}


def test_a_reader_pauses_only_after_a_whole_idle_period_every_time(setup):  # noqa: ANN001
    """Every request ends an idle gap; pausing on a short one would restart the fetch (librdkafka fetches the
    in-flight records again for the new fetch version: twice the broker's work, and late replies). gevent's one-shot
    timer, once fired, fires at once on its next start(): so it must pause once per idle period, also after the
    first pause."""
    config, topic, producer, consumer = setup
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_end(tp)
    for round_ in (1, 2):
        for i in range(15):                     # busy, then idle for much less than IDLE_PAUSE_S: no pause
            consumer.set_fetching(True)
            producer.send(topic, value=b"%d-%d" % (round_, i), partition=0).get(10)
            assert [r.value for r in _read(consumer, 1)] == [b"%d-%d" % (round_, i)]
            consumer.set_fetching(False)
            gevent.sleep(IDLE_PAUSE_S / 20)
        assert consumer.pauses == round_ - 1
        deadline = time.monotonic() + IDLE_PAUSE_S + 5
        while consumer.pauses < round_ and time.monotonic() < deadline:    # a whole idle period: paused once
            gevent.sleep(0.05)
        assert consumer.pauses == round_
    assert consumer.poll(timeout_ms=300) == {}             # nothing read twice


def test_records_sent_in_one_turn_keep_their_order_and_a_refused_one_fails_alone(setup):  # noqa: ANN001
    """send() hands records to librdkafka at the end of the event loop's turn, together: their order per
    partition is the order of the sends, and a record librdkafka refuses fails through its errback only."""
    config, topic, producer, consumer = setup
    too_big = b"x" * (2 * max(1048576, config.limits.max_body_bytes + 65536))     # over message.max.bytes
    failed: list[BaseException] = []
    deliveries = []
    for i in range(60):                             # no yield: one turn
        value = too_big if i == 30 else b"%d" % i
        headers = [("h", 5)] if i == 45 else None   # not bytes: confluent-kafka raises TypeError, not its own error
        d = producer.send(topic, value=value, partition=0, headers=headers)
        if i in (30, 45):
            d.add_errback(failed.append)
        else:
            deliveries.append((i, d))
    metas = [(i, d.get(10)) for i, d in deliveries]
    assert len(failed) == 2 and all(isinstance(e, ProduceError) for e in failed)
    assert "MSG_SIZE_TOO_LARGE" in str(failed[0]) and "TypeError" in str(failed[1])
    offsets = [m.offset for _, m in metas]
    assert offsets == sorted(offsets) and len(set(offsets)) == 58          # in send order, each once
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, offsets[0])
    consumer.set_fetching(True)
    assert [r.value for r in _read(consumer, 58)] == [b"%d" % i for i, _ in deliveries]
    assert producer._outstanding == 0               # noqa: SLF001 - nothing counted twice or left behind


def test_a_closed_producer_refuses_and_fatal_errors_are_told(setup):  # noqa: ANN001
    config, topic, producer, consumer = setup
    callbacks: list = []
    producer.send(topic, value=b"x", partition=0).add_callback(callbacks.append).get(10)
    assert len(callbacks) == 1 and callbacks[0].topic == topic
    producer.close(timeout=2)
    with pytest.raises(ProduceError):
        producer.send(topic, value=b"y")
    assert is_fatal_producer_error(ProduceError("x", fatal=True))
    assert not is_fatal_producer_error(ProduceError("x", fatal=False))


def test_a_record_python_cannot_take_apart_is_skipped_counted_and_the_next_read(setup, broker):  # noqa: ANN001
    from tests.support.harness import RawHeaderKey, ScriptedService

    config, topic, producer, _ = setup
    skipped: list[tuple[int, int]] = []
    consumer = RdReplyConsumer(config, on_unreadable=lambda p, o: skipped.append((p, o)))
    requests = f"{topic}-requests"          # the service's own (it only writes into the reply topic)
    ensure_topics(config, {requests: 1})
    svc = ScriptedService(broker.bootstrap, [requests], lambda *_: None).start()
    try:
        tp = TopicPartition(topic, 2)
        consumer.assign([tp])
        consumer.seek_to_end(tp)
        start = consumer.position(tp)
        consumer.set_fetching(True)
        svc.send(topic, b"bad", [("a", b"1"), (RawHeaderKey(b"\xff\xfe-x"), b"1")], partition=2)   # not UTF-8
        svc.send(topic, b"good", [("a", b"1")], partition=2)
        got = _read(consumer, 1)
        assert [(r.value, r.offset) for r in got] == [(b"good", start + 1)]
        assert skipped == [(2, start)]
    finally:
        svc.stop()
        consumer.close()


@pytest.mark.timeout(60)
def test_a_watermark_query_waits_kafka_request_timeout_ms_at_most() -> None:
    """Placing a partition at its end or start asks the broker for its watermarks: that query gets
    ``kafka.request_timeout_ms`` (here 500 ms), as any request, not a fixed 10 s. (A broker that is connected but
    does not answer that one request is not something the embedded broker can be made to do: the timeout given to
    librdkafka is checked, with librdkafka's consumer stood in for.)"""
    raw = make_config("127.0.0.1:1", {"echo": {"topic": "echo.requests"}},
                      kafka={"client": "librdkafka", "request_timeout_ms": 500})
    consumer = RdReplyConsumer(parse_config(raw))
    asked: list[float] = []

    class Watermarks:
        @staticmethod
        def get_watermark_offsets(tp: object, timeout: float) -> tuple[int, int]:
            asked.append(timeout)
            return 3, 7

    real, consumer._consumer = consumer._consumer, Watermarks()
    try:
        tp = TopicPartition("gateway.replies", 0)
        assert consumer._watermarks((tp,), high=True) == {("gateway.replies", 0): 7}
        assert consumer._watermarks((tp,), high=False) == {("gateway.replies", 0): 3}
        assert asked == [0.5, 0.5]
    finally:
        consumer._consumer = real
        consumer.close()
