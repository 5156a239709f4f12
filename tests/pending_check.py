"""Per-worker state for tests: ``/readyz`` is answered by whichever worker accepts the connection, so ask on fresh
connections until every worker has answered (told apart by ``X-Gateway-Worker``).

Used to check the pending table itself (``pending``), not the in-flight gauge: a waiter leaked by a failure
between registering and producing is in the table but was never counted in flight.
"""
from __future__ import annotations

import time
from typing import Any

import requests

from tests.support.harness import wait_until


def worker_states(url: str, workers: int, timeout_s: float = 20) -> dict[str, dict[str, Any]]:
    """``/readyz`` of each of *workers* workers, keyed by worker tag."""
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only workers {sorted(seen)} answered /readyz within {timeout_s}s")
        r = requests.get(url + "/readyz", headers={"Connection": "close"}, timeout=10)
        seen[r.headers["X-Gateway-Worker"]] = r.json()
    return seen


def wait_pending_drained(url: str, workers: int, timeout_s: float = 15) -> dict[str, dict[str, Any]]:
    """Until every worker's pending table is empty; returns the states that showed it."""
    states: dict[str, dict[str, Any]] = {}

    def drained() -> bool:
        states.clear()
        states.update(worker_states(url, workers))
        return all(s["pending"] == 0 for s in states.values())

    try:
        wait_until(drained, timeout_s, 0.2, "every worker's pending table empty")
    except TimeoutError:
        raise AssertionError(f"pending table not drained: {({k: v['pending'] for k, v in states.items()})}") \
            from None
    return states
