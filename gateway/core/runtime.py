"""The per-worker runtime: producer, reply reader, group membership, pending table, router.

Nothing here touches Kafka until :meth:`Gateway.start`, which gunicorn's ``post_worker_init`` hook calls in each
worker after gevent has patched the standard library (kafka-python must be imported after the patch, or its
selector blocks the whole worker). Before start, the app answers ops endpoints and 503 for service routes.
"""
from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Callable

from .. import metrics, supervise
from ..errors import BrokerUnavailable, NotReady
from ..protocol import new_worker_tag
from . import calls
from .pending import PendingTable, Waiter
from .routing import ReplyRouter

if TYPE_CHECKING:
    from ..config import Config, ServiceConfig
    from ..protocol import Reply
    from .calls import Call, ServiceRequest

log = logging.getLogger(__name__)


class _NotStarted:
    """Stand-in for the Kafka side before the worker started it: every use says so, clearly."""

    reading: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        raise NotReady("the worker's Kafka clients are not started yet")


class Gateway:
    """Flask extension object: ``app.extensions["gateway"]``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.worker_tag = new_worker_tag()
        self.pending = PendingTable(self.worker_tag, config.limits.max_in_flight)
        self.router = ReplyRouter(config.reply.partitions)
        self.producer: Any = _NotStarted()
        self.reader: Any = _NotStarted()
        self.membership: Any = _NotStarted()
        self.started = False
        self.stopping = False
        self._broker_down_since: float | None = None
        self._probe: Any = None
        self._topics_unchecked = False     # a recovery could not learn the topic ids yet: retried by the probe
        self._topic_ids: dict[str, str | None] = {}
        self._next_topic_check = 0.0
        self._producer_replaced_at = 0.0
        # requests whose record the broker has not acknowledged yet: failed at once (503) if the broker goes away
        self.unacked: dict[bytes, Waiter] = {}
        # called after a broker outage, once topics are re-created (the variants' tails re-position there)
        self.recovery_hooks: list[Callable[[], None]] = []

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self, wait_ready: bool = True) -> bool:
        """Start the Kafka side; with *wait_ready*, block (gevent-friendly) until this worker owns a positioned
        reply partition or ``reply.startup_wait_ms`` passes. Returns readiness."""
        if self.started:
            return self.ready
        self.started = True
        from ..kafka.admin import ensure_topics
        from ..kafka.membership import GroupMembership
        from ..kafka.replies import ReplyReader

        reply_topic = self.config.reply.topic
        t0 = time.monotonic()
        ids: dict[str, str | None] = {}
        try:
            actual = ensure_topics(self.config, {reply_topic: self.config.reply.partitions}, ids=ids)[reply_topic]
            self._topic_ids.update(ids)
        except Exception as exc:  # noqa: BLE001 - the broker may be down at start; recovery recreates it
            log.error("could not ensure reply topic %s: %s", reply_topic, exc)
            actual = self.config.reply.partitions
        if actual != self.config.reply.partitions:
            log.warning("reply topic %s has %d partitions, config says %d; minting keys for %d",
                        reply_topic, actual, self.config.reply.partitions, actual)
        self.router = ReplyRouter(actual)
        t_topics = time.monotonic() - t0

        from ..kafka.internals import write_first
        write_first()   # kafka-python's requests leave at once, not a turn of the hub later (see there)

        self.producer = self._new_producer()
        t_producer = time.monotonic() - t0
        # the id read before the reader positions: its positions belong to this incarnation (or a later one,
        # which the next check after an outage then rewinds once more: never a stale position kept)
        self.reader = ReplyReader(self.config, self.pending, self.router, topic_id=ids.get(reply_topic))
        self.reader.start(borrow_ms=self.config.reply.startup_wait_ms)
        self.membership = GroupMembership(self.config, self.reader.set_target)
        self.membership.start()
        self._next_topic_check = time.monotonic() + self.config.kafka.topic_check_interval_ms / 1000
        self._probe = supervise.Supervised("broker-probe", self._probe_broker).start()
        if wait_ready:  # until a partition is positioned (a borrowed one: well under a second)
            self.reader.positioned.wait(self.config.reply.startup_wait_ms / 1000)
        ready = self.ready
        log.info("kafka side started in %.2fs (reply topic checked %.2fs, producer %.2fs)", time.monotonic() - t0,
                 t_topics, t_producer)
        metrics.WORKERS_READY.set(1 if ready else 0)
        if ready:
            log.info("worker ready: minting on reply partitions %s of %s%s", list(self.router.owned), reply_topic,
                     " (borrowed until the group assigns this worker its own)" if self.reader.borrowed else "")
        else:
            log.error("worker NOT ready after %d ms: no reply partition of %s (partitions=%d) is positioned. Is "
                      "the broker up?", self.config.reply.startup_wait_ms, reply_topic, self.router.num_partitions)
        return ready

    def stop(self) -> None:
        """Graceful: called after gunicorn drained the HTTP requests; leave the group, close clients."""
        self.stopping = True
        metrics.WORKERS_READY.set(0)
        if not self.started:
            return
        if self._probe is not None:
            self._probe.stop(timeout_s=0)
        quick = not self.broker_up  # nothing to say goodbye to: do not wait for a broker that is gone
        self.membership.stop(timeout_ms=300 if quick else 3000)
        self.reader.stop(timeout_ms=300 if quick else 2000)
        try:
            self.producer.close(timeout=0.3 if quick else 3)
        except Exception:  # noqa: BLE001
            log.warning("producer did not close cleanly", exc_info=True)
        self.pending.fail_all(NotReady("the worker is shutting down"))

    # -- health ----------------------------------------------------------------------------------------------
    @property
    def broker_up(self) -> bool:
        return self._broker_down_since is None

    @property
    def ready(self) -> bool:
        """Serving, broker reachable, every long-lived loop running (``gateway.supervise``), and minting on an
        assigned partition (or on a borrowed one while the group has had less than reply.startup_wait_ms to
        assign one)."""
        return (self.started and not self.stopping and self.broker_up and bool(self.router.owned)
                and not self.reader.borrowing_expired and supervise.all_healthy())

    def readiness(self) -> dict[str, Any]:
        return {"ready": self.ready, "started": self.started, "stopping": self.stopping, "loops": supervise.health(),
                "broker_up": self.broker_up, "owned_partitions": sorted(self.reader.owned) if self.started else [],
                "minting_partitions": list(self.router.owned),
                "borrowed_partitions": sorted(self.reader.borrowed) if self.started else [],
                "read_partitions": sorted(self.reader.reading) if self.started else [],
                "pending": len(self.pending)}

    def _mark_broker(self, up: bool) -> None:
        if up and self._broker_down_since is not None:
            log.warning("broker reachable again after %.1fs; recovering", time.monotonic() - self._broker_down_since)
            self._recover()
            self._broker_down_since = None
        elif not up and self._broker_down_since is None:
            log.error("broker unreachable: failing requests fast with 503 until it is back")
            self._broker_down_since = time.monotonic()
            self.reader.mark_outage()
            unacked, self.unacked = self.unacked, {}
            for waiter in unacked.values():
                waiter.fail(BrokerUnavailable("the Kafka broker became unreachable before it took the request"))
        metrics.WORKERS_READY.set(1 if self.ready else 0)

    def _recover(self) -> None:
        """The broker is back: it may have come back empty (topics and group gone). Re-create the topics with
        their configured partitions, refresh metadata, and rewind the reader if the reply topic is a new log
        (its topic id changed). The group membership rejoins by itself (with a watchdog for stuck rejoins)."""
        import gevent

        if self.config.kafka.enable_idempotence:
            # a broker that lost its state does not know our producer id any more; the embedded broker never lets
            # such a producer recover (docs/broker.md). Requests still unacknowledged were already failed (503).
            self._replace_producer("the broker was unreachable")
        self._topics_unchecked = True
        for _ in range(10):
            if self._check_topics() is not None:
                break
            gevent.sleep(0.5)
        self._after_outage()

    def _after_outage(self) -> None:
        from ..kafka.internals import request_metadata_update

        try:
            refresh = getattr(self.producer, "refresh_metadata", None)   # librdkafka's producer has it
            if refresh is not None:
                refresh()
            else:
                request_metadata_update(self.producer)      # do not write into partitions that vanished
        except Exception:  # noqa: BLE001
            log.debug("metadata refresh request failed", exc_info=True)
        # stay not-ready (fast 503s) until the reader knows where to read: a request accepted earlier would have
        # its reply written below the reader's stale position and wait, unread, until the rewind
        wait_s = self.config.kafka.request_timeout_ms / 1000
        if not self.reader.rechecked.wait(wait_s):
            log.warning("reply reader did not apply the topic check within %.0fs; serving anyway", wait_s)
        self.reader.forget_outage()
        for hook in self.recovery_hooks:
            try:
                hook()
            except Exception:  # noqa: BLE001
                log.exception("recovery hook %r failed", hook)

    def _check_topics(self) -> bool | None:
        """Re-create missing topics and compare every topic's id with the last one seen (the reply topic's with
        the one the reader positioned in). Returns whether some topic is a new log, or None if the broker could
        not answer (the probe tries again every second)."""
        from ..kafka.admin import ensure_topics, wanted_topics

        ids: dict[str, str | None] = {}
        try:
            actual = ensure_topics(self.config, wanted_topics(self.config), ids=ids)
        except Exception as exc:  # noqa: BLE001 - the broker may still be starting
            log.warning("re-creating topics / reading topic ids failed (%s); retrying", exc)
            return None
        self._topics_unchecked = False
        reply_topic = self.config.reply.topic
        n = actual.get(reply_topic)
        if n and n != self.router.num_partitions:
            # someone's produce re-created it first with the broker's default count: adapt, or replies would go to
            # partitions that do not exist
            log.error("reply topic %s came back with %d partitions instead of %d: minting keys for %d from now on; "
                      "re-create it with reply.partitions when convenient", reply_topic, n,
                      self.router.num_partitions, n)
            self.reader.request_resize(n)
        recreated = {t for t, tid in ids.items() if tid is not None and self._topic_ids.get(t) not in (None, tid)}
        self._topic_ids.update({t: tid for t, tid in ids.items() if tid is not None})
        return self.reader.check_incarnation(ids.get(reply_topic)) or bool(recreated)

    def _check_topics_now(self) -> None:
        """The probe's periodic check (``kafka.topic_check_interval_ms``): a broker that restarted between two
        probes (or topics deleted and re-created by hand) is only seen here. Re-created topics get what a
        recovery does."""
        changed = self._check_topics()
        if changed:
            log.error("topics were re-created without an outage this worker saw (a broker restarted between two "
                      "probes?); recovering")
            if self.config.kafka.enable_idempotence:
                self._replace_producer("topics were re-created")
            self._after_outage()

    def _new_producer(self) -> Any:
        k = self.config.kafka
        if k.client == "librdkafka":
            from ..kafka.librdkafka import RdProducer
            return RdProducer(self.config)

        from kafka import KafkaProducer

        from ..kafka import producer_settings

        return KafkaProducer(
            **self.config.kafka_client_kwargs(), **producer_settings(k.acks, k.enable_idempotence),
            linger_ms=k.linger_ms, max_block_ms=k.max_block_ms, compression_type=k.compression_type,
            allow_auto_create_topics=False, delivery_timeout_ms=max(k.request_timeout_ms * 2, 10000),
            max_request_size=max(1048576, self.config.limits.max_body_bytes + 65536))

    def _replace_producer(self, why: str) -> None:
        """A new producer for the requests from now on; the old one is closed in the background (what it still
        holds fails, and its waiters with it: 503)."""
        import gevent

        old, self.producer = self.producer, self._new_producer()
        self._producer_replaced_at = time.monotonic()
        log.warning("producer re-created (%s)", why)

        def close() -> None:
            try:
                old.close(timeout=0.5)
            except Exception:  # noqa: BLE001
                log.debug("closing the replaced producer failed", exc_info=True)
        gevent.spawn(close)

    def on_producer_error(self, producer: Any, exc: BaseException) -> None:
        from ..kafka import is_fatal_producer_error

        # only the producer in use: records of one already replaced fail as it closes, that says nothing new
        if (producer is self.producer and is_fatal_producer_error(exc) and self.config.kafka.enable_idempotence
                and time.monotonic() - self._producer_replaced_at > 1.0):
            self._replace_producer(f"{type(exc).__name__}: {exc}")

    def _probe_broker(self) -> None:
        """Every second, can we open a TCP connection to any bootstrap server? Fast-fail needs a signal that does
        not wait for a produce to time out."""
        import gevent
        servers = [s.rsplit(":", 1) for s in self.config.kafka.bootstrap_servers]
        while not self.stopping:
            up = False
            for host, port in servers:
                try:
                    socket.create_connection((host, int(port)), timeout=1).close()
                    up = True
                    break
                except OSError:
                    continue
            self._mark_broker(up)
            if up and self._broker_down_since is None and (self._topics_unchecked
                                                           or time.monotonic() >= self._next_topic_check):
                self._next_topic_check = time.monotonic() + self.config.kafka.topic_check_interval_ms / 1000
                self._check_topics_now()
            gevent.sleep(1)

    # -- request path ----------------------------------------------------------------------------------------
    def check_ready(self) -> None:
        if not self.started or self.stopping:
            raise NotReady("this worker is starting or stopping; retry")
        if not self.broker_up:
            raise BrokerUnavailable("the Kafka broker is unreachable; retry shortly")

    def open_call(self, svc: ServiceConfig, waiter_factory: Callable[[bytes, int, float], Waiter],
                  request: ServiceRequest, timeout_ms: int | None = None) -> Call:
        """See :func:`gateway.core.calls.open_call`: the caller closes the call."""
        return calls.open_call(self, svc, waiter_factory, request, timeout_ms)

    def call(self, svc: ServiceConfig, request: ServiceRequest) -> Reply:
        """One request, one reply: raises ReplyTimeout (504) or BrokerUnavailable (503)."""
        return calls.call(self, svc, request)
