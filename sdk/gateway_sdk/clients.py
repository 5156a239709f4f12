"""Kafka client helpers the SDK and the gateway share: producer delivery settings, the producer errors that need a
new producer, and topic ids (which tell a re-created topic from the one a reader positioned in; the gateway's
``gateway.kafka.admin`` explains why)."""
from __future__ import annotations

from typing import Any

from kafka.errors import (
    InvalidProducerEpochError,
    KafkaError,
    OutOfOrderSequenceNumberError,
    ProducerFencedError,
    UnknownProducerIdError,
)

__all__ = ["CLIENT_SETTINGS", "FATAL_PRODUCER_ERRORS", "ZERO_ID", "is_fatal_producer_error", "producer_settings",
           "request_rejoin", "set_fetch_wait", "topic_id"]

ZERO_ID = "00000000-0000-0000-0000-000000000000"   # what brokers without KIP-516 answer, if anything


def producer_settings(acks: Any, enable_idempotence: bool) -> dict[str, Any]:
    """Delivery settings of every producer of ours (the gateway's and the SDK's).

    Idempotent: kafka-python's defaults (idempotence on, retries until ``delivery_timeout_ms``), which it turns
    off by itself, with a warning, on brokers older than 0.11 ("where the broker supports it"). Not idempotent:
    no retries either, since a retried send whose first attempt was written but not acknowledged writes the
    record twice (a request executed twice, a reply counted as duplicate); a failed send is an error instead."""
    if enable_idempotence:
        return {"acks": acks, **CLIENT_SETTINGS}
    return {"acks": acks, "enable_idempotence": False, "retries": 0, **CLIENT_SETTINGS}


# Every producer and consumer of ours: kafka-python's own client metrics (sensors updated on every send, fetch and
# network round trip) are read by nobody here (the gateway exports its own); off, they cost nothing.
CLIENT_SETTINGS = {"metrics_enabled": False}


FATAL_PRODUCER_ERRORS = (UnknownProducerIdError, OutOfOrderSequenceNumberError, InvalidProducerEpochError,
                         ProducerFencedError)


def is_fatal_producer_error(exc: BaseException) -> bool:
    """An idempotent producer that no send will succeed with again: its producer id is gone (a broker that lost
    its state; the embedded broker after any restart), after which kafka-python fails every send with a bare
    ``KafkaError("Unexpected error in InitProducerIdResponse ...")``. The cure is a new producer."""
    return isinstance(exc, FATAL_PRODUCER_ERRORS) or type(exc) is KafkaError


def topic_id(desc: dict[str, Any]) -> str | None:
    """A described topic's id, or None if the broker has none (pre-KIP-516)."""
    tid = desc.get("topic_id")
    return None if tid is None or str(tid) == ZERO_ID else str(tid)


def request_rejoin(consumer: Any) -> None:
    """Ask the group coordinator for a rejoin. kafka-python has no public way to, and can stay "rebalancing"
    without rejoining after a subscription or metadata change (the gateway's docs/broker.md, "Rejoin stuck"): the
    group watchdogs (the SDK's runner, the gateway's reply-group member) nudge it. A reach into a private attribute
    of kafka-python (like :func:`set_fetch_wait`); the gateway's tests/test_library_internals.py fails if an upgrade
    removes it."""
    consumer._coordinator.request_rejoin()  # noqa: SLF001 - no public equivalent


def set_fetch_wait(consumer: Any, ms: int) -> None:
    """The ``fetch_max_wait_ms`` of the consumer's next fetch requests. kafka-python reads it from its fetcher's
    settings each time it builds one and has no public setter; the gateway's tests/test_library_internals.py fails
    if an upgrade moves it."""
    consumer._fetcher.config["fetch_max_wait_ms"] = ms  # noqa: SLF001 - no public equivalent
