"""Pure logic of the Kafka side (no broker): the unparsable-batch search, client settings, durability defaults,
the pending table under failing callbacks, readiness while a supervised loop is down."""
from __future__ import annotations

import types

import gevent
import pytest
from prometheus_client import REGISTRY

from gateway.config import parse_config
from gateway.core.pending import Callback, OneShot, Outcome, PendingTable
from gateway.errors import BadGateway, ConfigError
from gateway.kafka import is_fatal_producer_error, producer_settings
from gateway.kafka.admin import ZERO_ID, durability, topic_id
from gateway.kafka.unreadable import batch_end
from gateway.protocol import decode_reply
from gateway_sdk.runner import split_settings

SERVICES = {"services": {"echo": {"topic": "echo.requests"}}}


@pytest.mark.parametrize("stuck,batch_last,next_bad", [
    (4, 4, None),          # a single-record batch
    (4, 9, None),          # the bad record first in a batch of 6
    (7, 9, None),          # stuck in the middle (the bad record was below the position)
    (0, 1000, None),       # a large batch
    (10, 12, 20),          # another unparsable batch further on: not reached by the search
])
def test_batch_end_finds_the_first_offset_after_the_unreadable_batch(stuck, batch_last, next_bad):
    def raises_at(x: int) -> bool:
        return x <= batch_last or (next_bad is not None and next_bad <= x < next_bad + 3)
    probes: list[int] = []

    def counted(x: int) -> bool:
        probes.append(x)
        return raises_at(x)
    assert batch_end(counted, stuck) == batch_last + 1
    assert len(probes) <= 2 * (batch_last - stuck + 2).bit_length() + 2   # logarithmic, not a scan


def test_one_set_of_client_settings_reaches_consumer_producer_and_admin():
    ssl = {"security_protocol": "SASL_SSL", "ssl_cafile": "/ca.pem", "sasl_mechanism": "PLAIN",
           "sasl_plain_username": "u", "sasl_plain_password": "p", "request_timeout_ms": 7000}
    consumer, producer, admin = split_settings({**ssl, "max_poll_records": 10, "max_request_size": 5_000_000})
    for kwargs in (consumer, producer, admin):
        assert {k: kwargs[k] for k in ssl} == ssl
    assert consumer["max_poll_records"] == 10 and "max_poll_records" not in producer
    assert producer["max_request_size"] == 5_000_000 and "max_request_size" not in consumer
    with pytest.raises(TypeError, match="ssl_cafle"):
        split_settings({"ssl_cafle": "/typo.pem"})


def test_durability_defaults_and_config_checks():
    cfg = parse_config(SERVICES)
    assert (cfg.kafka.acks, cfg.kafka.enable_idempotence) == ("all", True)
    assert [durability(cfg, n) for n in (1, 2, 3, 5)] == [(1, 1), (2, 1), (3, 2), (3, 2)]
    pinned = parse_config({**SERVICES, "kafka": {"replication_factor": 5, "min_insync_replicas": 3}})
    assert durability(pinned, 1) == (5, 3)          # configured values win (the broker refuses if it cannot)
    with pytest.raises(ConfigError, match="enable_idempotence needs acks"):
        parse_config({**SERVICES, "kafka": {"acks": 1}})
    assert parse_config({**SERVICES, "kafka": {"acks": 1, "enable_idempotence": False}}).kafka.acks == 1
    with pytest.raises(ConfigError, match="cannot exceed replication_factor"):
        parse_config({**SERVICES, "kafka": {"replication_factor": 1, "min_insync_replicas": 2}})


def test_producer_settings_and_fatal_errors():
    from kafka.errors import KafkaError, KafkaTimeoutError, UnknownProducerIdError

    # kafka-python's own client metrics off in every producer (nobody reads them; they cost CPU on every send)
    assert producer_settings("all", True) == {"acks": "all", "metrics_enabled": False}
    assert producer_settings(1, False) == {"acks": 1, "enable_idempotence": False, "retries": 0,
                                           "metrics_enabled": False}
    assert is_fatal_producer_error(UnknownProducerIdError())
    assert is_fatal_producer_error(KafkaError("Unexpected error in InitProducerIdResponse"))
    assert not is_fatal_producer_error(KafkaTimeoutError())


def test_topic_ids_without_kip516_are_unknown():
    assert topic_id({"topic_id": "01a2-x"}) == "01a2-x"
    assert topic_id({"topic_id": ZERO_ID}) is None and topic_id({}) is None


def _pending_gauge() -> float:
    return REGISTRY.get_sample_value("gateway_pending") or 0.0


def test_a_failing_reply_callback_fails_its_request_only_and_the_gauge_follows():
    table = PendingTable(b"T" * 8, 10)
    errors: list[BaseException] = []

    def explode(reply):  # noqa: ANN001, ANN202
        raise RecursionError("too deep")
    bad = Callback(b"T" * 8 + b"1" * 16, 0, 0.0, explode, errors.append)
    good = OneShot(b"T" * 8 + b"2" * 16, 1, 0.0)
    table.register(bad)
    table.register(good)
    assert _pending_gauge() == 2
    reply = decode_reply(b"{}", [("gateway-correlation-id", bad.correlation_id.hex().encode())])
    assert table.resolve(reply) is Outcome.INVALID
    assert len(errors) == 1 and isinstance(errors[0], BadGateway) and errors[0].status == 502
    assert bad.correlation_id not in table and table.resolve(reply) is Outcome.DUPLICATE
    # a protocol violation naming a request fails it at once; a later reply for it is a duplicate
    assert table.fail(good.correlation_id, BadGateway("bad")) is Outcome.INVALID
    assert good.event.is_set() and isinstance(good.error, BadGateway) and _pending_gauge() == 0
    assert table.fail(b"U" * 24, BadGateway("x")) is Outcome.FOREIGN


def test_readiness_is_false_while_a_supervised_loop_is_down():
    from gateway import supervise
    from gateway.core.runtime import Gateway

    gw = Gateway(parse_config(SERVICES))
    gw.started = True
    gw.router.set_owned({0})
    gw.reader = types.SimpleNamespace(borrowing_expired=False, owned={0}, borrowed=set(), reading={0})
    assert gw.ready
    crashed = gevent.event.Event()

    def loop() -> None:
        crashed.set()
        raise RuntimeError("boom")
    s = supervise.Supervised("unit-reader", loop, backoff_s=5).start()
    try:
        assert crashed.wait(5)
        gevent.sleep(0.01)
        assert not gw.ready
        assert gw.readiness()["loops"]["unit-reader"].startswith("down")
    finally:
        s.stop()
    assert gw.ready
