"""The Kafka side of a worker. Import only after gevent has patched (see gateway.runtime)."""
from __future__ import annotations

import logging
from typing import Any

from kafka.errors import (
    InvalidProducerEpochError,
    KafkaError,
    OutOfOrderSequenceNumberError,
    ProducerFencedError,
    UnknownProducerIdError,
)

log = logging.getLogger(__name__)


def stop_loop(loop: Any, consumer: Any, timeout_ms: int, what: str) -> None:
    """End a consumer's loop (a :class:`gateway.supervise.Supervised` or a greenlet: 2 s to finish its poll, then
    killed) and close the consumer."""
    if loop is not None:
        if hasattr(loop, "target"):       # Supervised
            loop.stop(timeout_s=2)
        else:
            loop.join(timeout=2)
            loop.kill(block=False)
    if consumer is not None:
        try:
            consumer.close(autocommit=False, timeout_ms=timeout_ms)
        except Exception:  # noqa: BLE001 - shutting down: say so, do not fail the stop
            log.warning("%s did not close cleanly", what, exc_info=True)


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
