"""Reply-partition ownership: the worker's member of the gateway's consumer group on the reply topic.

It never fetches (every assigned partition is paused); it only learns which partitions this worker OWNS, those it
may mint new reply keys for, and hands each assignment to the reply reader (:mod:`gateway.kafka.replies`), which
reads what it owns plus whatever still has requests pending.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable, Iterable

import gevent
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

from .. import metrics
from ..supervise import Supervised
from . import stop_loop
from .internals import request_rejoin

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)


class GroupMembership(ConsumerRebalanceListener):
    """Group member on the reply topic that reports its assignment and fetches nothing.

    What keeps the group converging (measured: README, "The reply group after scaling and reloads"):

    * It polls for ``kafka.heartbeat_interval_ms`` at a time, not 200 ms (it fetches nothing; a rebalance is
      noticed by a heartbeat anyway). kafka-python 3.0.12 runs a join on its IO thread and throws away a join that
      completed while no poll() was waiting for it: the next poll sees the finished task and sends a new JoinGroup.
      With 200 ms polls on a busy worker that hit many joins, each one costing a whole rejoin.
    * The watchdog for a member stuck without partitions waits longer than the rebalance timeout before it asks for
      a rejoin, backs off, and never re-creates the member.
    * ``reply.leave_group_on_stop = false`` on brokers that mishandle LeaveGroup: the embedded broker (Tansu 0.6.0)
      keeps naming a member that sent LeaveGroup during a rebalance (a reload: two workers leave while two join) as
      the leader of every next generation; nobody computes the assignment and the group never converges. Going
      without LeaveGroup is valid Kafka behaviour (a crash looks the same): the broker expires the member after
      ``kafka.session_timeout_ms``, and until then its partitions have no owner, which no request notices
      (readership is not ownership)."""

    def __init__(self, config: Config, on_assigned: Callable[[set[int]], None]) -> None:
        self.config = config
        self.topic = config.reply.topic
        self._on_assigned = on_assigned
        self._consumer: KafkaConsumer | None = None
        self._greenlet: Supervised | None = None
        self._stopping = False
        self.assigned: set[int] = set()
        self._since_unassigned = time.monotonic()
        # the last join completed and gave this member nothing (more workers than reply partitions): a settled
        # state, not a stuck join; nudging it would rebalance the whole group again and again
        self._joined_empty = False

    def start(self) -> None:
        self._consumer = self._new_consumer()
        self._greenlet = Supervised("reply-group", self._run).start()

    def _new_consumer(self) -> KafkaConsumer:
        k = self.config.kafka
        consumer = KafkaConsumer(
            **self.config.kafka_client_kwargs(), group_id=self.config.reply.group_id,
            enable_auto_commit=False, session_timeout_ms=k.session_timeout_ms,
            heartbeat_interval_ms=k.heartbeat_interval_ms,
            # = the rebalance timeout: how long a rebalance waits for members that vanished mid-way (a long one
            # stalls new workers' first assignment). This member polls every session_timeout_ms, well within it.
            max_poll_interval_ms=2 * k.session_timeout_ms,
            partition_assignment_strategy=[StickyPartitionAssignor],
            allow_auto_create_topics=False,  # a broker's default partition count would break key minting
            metrics_enabled=False)
        consumer.subscribe([self.topic], listener=self)
        return consumer

    # ConsumerRebalanceListener: called by kafka-python during a join
    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # Keep minting on the last assignment until the new one arrives: the reader still reads those partitions.
        self._since_unassigned = time.monotonic()
        self._joined_empty = False

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        parts = {tp.partition for tp in assigned if tp.topic == self.topic}
        if self._consumer is not None and assigned:
            self._consumer.pause(*assigned)
        metrics.REBALANCES.inc()
        log.info("reply group: %d partitions assigned %.1fs after the last revocation", len(parts),
                 time.monotonic() - self._since_unassigned)
        self.assigned = parts
        self._joined_empty = not parts
        if not parts:
            log.error("this worker owns NO reply partition of %s: it will report not-ready. Give the reply topic at "
                      "least as many partitions as there are gateway workers in all instances (reply.partitions)",
                      self.topic)
        self._on_assigned(parts)

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        self.on_partitions_revoked(lost)

    def _run(self) -> None:
        k = self.config.kafka
        # A join may take the whole rebalance timeout (2x session: the broker waits for slow members), so only
        # longer is "stuck" (kafka-python can stay "rebalancing" for good, docs/broker.md): then ask for a rejoin, and
        # again with a growing interval. No re-created member: closing one sends LeaveGroup, which during a
        # rebalance kept the embedded broker's group from ever converging (see the class docstring).
        nudge_after = first_nudge_after = 3 * k.session_timeout_ms / 1000
        self._since_unassigned = time.monotonic()  # count from the first poll, not from construction
        while not self._stopping:
            consumer = self._consumer
            assert consumer is not None
            try:
                consumer.poll(timeout_ms=k.heartbeat_interval_ms)
            except Exception as exc:  # noqa: BLE001 - keep the member alive; the client reconnects by itself
                log.warning("reply-group poll failed (%s: %s); retrying", type(exc).__name__, exc)
                gevent.sleep(0.5)
                continue
            unassigned_s = time.monotonic() - self._since_unassigned
            if consumer.assignment():
                self._since_unassigned = time.monotonic()
                nudge_after = first_nudge_after
            elif unassigned_s > nudge_after and not self._joined_empty:
                log.warning("no reply-partition assignment for %.1fs; requesting a rejoin", unassigned_s)
                request_rejoin(consumer)
                nudge_after = min(2 * nudge_after, 600.0) + unassigned_s

    def stop(self, timeout_ms: int = 3000) -> None:
        """At worker exit: leave the group (its partitions move at once), or, with reply.leave_group_on_stop
        false, just go: the broker expires the member once the process is gone (the consumer is not closed, since
        closing sends LeaveGroup)."""
        self._stopping = True
        if self._greenlet is not None:
            # parked in a poll: end it now (a join in flight goes on on kafka-python's IO thread)
            self._greenlet.stop(timeout_s=0)
        if not self.config.reply.leave_group_on_stop:
            log.info("not leaving the reply group (reply.leave_group_on_stop = false): the broker expires this "
                     "member after %d ms", self.config.kafka.session_timeout_ms)
            return
        stop_loop(self._greenlet, self._consumer, timeout_ms, "reply-group consumer")
