"""The per-worker side of the variants beyond request-reply (docs/variants.md): async results and entity states.

``app.extensions["variants"]``. Like :class:`gateway.core.runtime.Gateway`, nothing touches Kafka before
:meth:`Variants.start`, which ``conf/gunicorn.conf.py`` calls in each worker after gevent patched, next to the
gateway's start; ``post_worker_init`` returns (and the worker serves) only after :meth:`Variants.wait_ready`: its
tails are positioned (the events tails at their end, the results tail caught up with the retention window) or
``reply.startup_wait_ms`` passed.

Streaming and websockets need no state of their own here: they ride on the core's request lifecycle
(:mod:`gateway.core.calls`) with a :class:`gateway.core.pending.Callback` waiter.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .async_results import AsyncRequests
from .states import StateWatcher

if TYPE_CHECKING:
    from ..core.runtime import Gateway

log = logging.getLogger(__name__)


class Variants:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.async_requests = AsyncRequests(gw)
        self.states = StateWatcher(gw)
        self.started = False
        self.sockets = 0           # open websockets in this worker
        self._deadline = 0.0

    def start(self, wait_ready: bool = True) -> bool:
        if self.started:
            return self.ready
        self.started = True
        self.gw.recovery_hooks.append(self.on_broker_recovered)
        from ..kafka.admin import ensure_topics, variant_topics

        config = self.gw.config
        results = config.async_requests.results_topic
        try:
            actual = ensure_topics(config, variant_topics(config))
        except Exception as exc:  # noqa: BLE001 - broker down at start: the tails wait for the topics
            log.error("could not ensure the results/events topics: %s", exc)
            actual = {}
        if actual.get(results, config.async_requests.partitions) != config.async_requests.partitions:
            log.warning("results topic %s has %d partitions, config says %d; using %d", results, actual[results],
                        config.async_requests.partitions, actual[results])
        self._deadline = time.monotonic() + config.reply.startup_wait_ms / 1000
        self.async_requests.start(actual.get(results))
        self.states.start()
        return self.wait_ready() if wait_ready else self.ready

    def wait_ready(self) -> bool:
        """Block (gevent-friendly) until every tail is positioned and caught up, or ``reply.startup_wait_ms`` after
        :meth:`start` passed (the same budget as the reply side's, running at the same time)."""
        for tail in [self.async_requests.tail, *self.states.tails.values()]:
            tail.wait_ready(max(0.0, self._deadline - time.monotonic()))
        if not self.ready:
            log.error("async results / events tails not positioned within reply.startup_wait_ms (%d ms)",
                      self.gw.config.reply.startup_wait_ms)
        return self.ready

    @property
    def ready(self) -> bool:
        return self.started and self.async_requests.ready and self.states.ready

    def readiness(self) -> dict[str, Any]:
        from .streams import Totals

        store = self.async_requests.store
        return {"variants_ready": self.ready, "async_results": len(store), "async_result_bytes": store.bytes,
                "entities": {t: len(tab) for t, tab in self.states.tables.items()}, "websockets": self.sockets,
                "write_buffered": {"records": Totals.records, "bytes": Totals.bytes}}

    def on_broker_recovered(self) -> None:
        """Called by the gateway's broker-recovery path: re-create the results/events topics if they vanished
        and position every tail again."""
        if not self.started:
            return
        from ..kafka.admin import ensure_topics, variant_topics

        try:
            ensure_topics(self.gw.config, variant_topics(self.gw.config))
        except Exception as exc:  # noqa: BLE001 - the next recovery attempt tries again
            log.error("could not re-create the results/events topics: %s", exc)
        for tail in [self.async_requests.tail, *self.states.tails.values()]:
            if tail is not None:
                tail.reposition()

    def stop(self) -> None:
        if not self.started:
            return
        self.async_requests.stop()
        self.states.stop()
