"""The Kafka side of a worker. Import only after gevent has patched (see gateway.core.runtime)."""
from __future__ import annotations

import logging
from typing import Any

# the producer helpers live in the SDK (one source for the gateway's producers and the services')
from gateway_sdk.clients import CLIENT_SETTINGS, FATAL_PRODUCER_ERRORS, producer_settings
from gateway_sdk.clients import is_fatal_producer_error as _kafka_python_fatal

__all__ = ["CLIENT_SETTINGS", "FATAL_PRODUCER_ERRORS", "is_fatal_producer_error", "producer_settings", "stop_loop"]

log = logging.getLogger(__name__)


def is_fatal_producer_error(exc: BaseException) -> bool:
    """A producer that no send will succeed with again (see ``gateway_sdk.clients.is_fatal_producer_error``);
    librdkafka says so itself (``gateway.kafka.librdkafka.ProduceError.fatal``)."""
    return getattr(exc, "fatal", False) is True or _kafka_python_fatal(exc)


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
