"""The Kafka side of a worker. Import only after gevent has patched (see gateway.runtime)."""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def stop_loop(greenlet: Any, consumer: Any, timeout_ms: int, what: str) -> None:
    """End a consumer's loop greenlet (2 s to finish its poll, then killed) and close the consumer."""
    if greenlet is not None:
        greenlet.join(timeout=2)
        greenlet.kill(block=False)
    if consumer is not None:
        try:
            consumer.close(autocommit=False, timeout_ms=timeout_ms)
        except Exception:  # noqa: BLE001 - shutting down: say so, do not fail the stop
            log.warning("%s did not close cleanly", what, exc_info=True)
