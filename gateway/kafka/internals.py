"""The private attributes of kafka-python the gateway relies on, each reached here and nowhere else.

kafka-python offers no public way to do either; ``tests/test_library_internals.py`` fails if an upgrade removes
them, so the failure is a test, not a worker stuck in production.
"""
from __future__ import annotations

from typing import Any

# the rejoin nudge is the SDK's too: reached in one place, there
from gateway_sdk.clients import request_rejoin

__all__ = ["request_metadata_update", "request_rejoin"]


def request_metadata_update(producer: Any) -> None:
    """Refresh the producer's metadata now rather than after ``metadata_max_age_ms``: after a broker outage,
    partitions may have vanished, and some brokers acknowledge writes to partitions that no longer exist
    (docs/broker.md)."""
    producer._metadata.request_update()  # noqa: SLF001 - no public equivalent
