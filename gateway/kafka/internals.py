"""The private attributes of kafka-python the gateway relies on, each reached here and nowhere else.

kafka-python offers no public way to do either; ``tests/test_library_internals.py`` fails if an upgrade removes
them, so the failure is a test, not a worker stuck in production.
"""
from __future__ import annotations

from typing import Any


def request_rejoin(consumer: Any) -> None:
    """Ask the group coordinator to rejoin: kafka-python can stay "rebalancing" without rejoining after a
    subscription or metadata change (docs/broker.md, "Rejoin stuck"); the group-membership watchdogs nudge it."""
    consumer._coordinator.request_rejoin()  # noqa: SLF001 - no public equivalent


def request_metadata_update(producer: Any) -> None:
    """Refresh the producer's metadata now rather than after ``metadata_max_age_ms``: after a broker outage,
    partitions may have vanished, and some brokers acknowledge writes to partitions that no longer exist
    (docs/broker.md)."""
    producer._metadata.request_update()  # noqa: SLF001 - no public equivalent
