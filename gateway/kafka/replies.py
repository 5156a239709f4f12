"""The reply path: group membership decides ownership, the reader here reads replies.

Two consumers per worker, on purpose:

* ``GroupMembership`` (:mod:`gateway.kafka.membership`) is a member of the gateway's consumer group on the
  reply topic. It never fetches (every assigned partition is paused); it only learns which partitions this
  worker OWNS: those it may mint new reply keys for.
* ``ReplyReader`` has no group; it is assigned by hand to ``owned ∪ {partitions with requests still pending}``.

So when a rebalance moves partition 7 from worker A to worker B, A keeps reading 7 until the last request it
minted there is answered or expired, while B starts reading 7 from its end. Both see the replies that land on 7
during the handover; each keeps its own (the correlation id carries the worker's tag) and counts the other's as
``foreign``. No request in flight loses its reply, and no reply is delivered to a worker that did not send it.
"""
from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event
from kafka import KafkaConsumer, TopicPartition

from .. import metrics
from ..core.pending import Outcome
from ..errors import BadGateway
from ..protocol import ProtocolError, decode_reply
from ..supervise import Supervised
from . import stop_loop
from .unreadable import SkipUnreadable, Unidentified

if TYPE_CHECKING:
    from ..config import Config
    from ..core.pending import PendingTable
    from ..core.routing import ReplyRouter

log = logging.getLogger(__name__)


class ReplyReader:
    """Reads reply partitions by hand-assignment and resolves the pending table."""

    def __init__(self, config: Config, pending: PendingTable, router: ReplyRouter,
                 topic_id: str | None = None) -> None:
        self.config = config
        self.topic = config.reply.topic
        self.pending = pending
        self.router = router
        self.topic_id = topic_id                 # the reply topic's incarnation the positions belong to
        self._consumer: KafkaConsumer | None = None
        self._loop: Supervised | None = None
        self._stopping = False
        self._target: set[int] | None = None   # the latest group assignment, applied by the reader greenlet
        self._owned: set[int] = set()            # the group assignment in force
        self.borrowed: set[int] = set()          # see start()
        self._borrow_until = 0.0
        self.reading: set[int] = set()
        self._reported_reading = -1
        # where reading stopped on partitions released since: a partition read again starts no earlier (the
        # embedded broker's end offset can lie before its last batch; re-reading it made answered replies count as
        # duplicates). Forgotten when the topic is a new log.
        self._released_at: dict[int, int] = {}
        self.positioned = Event()                # set once a partition keys are minted for is positioned
        self._rewind = False
        # positions when the broker was last seen going away (taken by the reader greenlet): what the reader reads
        # from them on, until a rewind, is the log the broker came back with. A rewind (re-created topic) skips
        # [snapshot, position at the rewind) of each partition: those replies were read already, once.
        self._outage_at: dict[int, int] | None = None
        self._snapshot_wanted = False
        self._skip: dict[int, tuple[int, int]] = {}
        self.rechecked = Event()                 # set when the last incarnation check was applied
        self.rechecked.set()
        self._resize_to: int | None = None
        self._unreadable = SkipUnreadable(config.kafka_client_kwargs(), self._skipped, f"reply reader ({self.topic})")
        # Idle: while no request waits for a reply, the reader fetches nothing (an idle fetch loop costs the worker
        # and the broker CPU for nothing). A request registers its waiter before its record is produced, so its
        # reply cannot exist yet when the reader wakes (pending.on_busy) and fetches on from the kept positions;
        # whatever landed meanwhile is read then, and counted late or foreign as before.
        self._wake = Event()
        self.fetching = False
        pending.on_busy = self._wake.set

    def request_resize(self, num_partitions: int) -> None:
        """The reply topic now has *num_partitions* partitions (applied by the reader greenlet)."""
        self._resize_to = num_partitions
        self._wake.set()

    def check_incarnation(self, topic_id: str | None) -> bool:
        """After a broker outage: *topic_id* is the reply topic's id now. A different id is a new log (see
        ``gateway.kafka.admin``): every position belongs to the old one, so the reader reads each partition from
        its beginning (every record there was written after the re-creation: any may be a reply we await). The
        same id: the positions hold. None (a broker without topic ids): nothing is guessed; Kafka's
        OffsetOutOfRange -> ``auto_offset_reset="earliest"`` moves positions that fell off the log.
        ``rechecked`` is set once applied. Returns whether a rewind was asked for."""
        if topic_id is None or topic_id == self.topic_id:
            return False
        log.warning("reply topic %s was re-created (topic id %s -> %s): reading its partitions from the start",
                    self.topic, self.topic_id, topic_id)
        self.topic_id = topic_id
        self.rechecked.clear()
        self._rewind = True
        self._wake.set()
        return True

    def mark_outage(self) -> None:
        """The broker became unreachable: remember where reading stood (see ``_rewind_all``)."""
        self._snapshot_wanted = True
        self._wake.set()

    def forget_outage(self) -> None:
        """The recovery is over (any rewind it asked for is applied): the snapshot says nothing any more."""
        self._outage_at = None
        self._snapshot_wanted = False

    def _snapshot(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        self._snapshot_wanted = False
        positions = {p: consumer.position(TopicPartition(self.topic, p)) for p in self.reading}
        self._outage_at = {p: off for p, off in positions.items() if off is not None}

    def _rewind_all(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        tps = [TopicPartition(self.topic, p) for p in sorted(self.reading)]
        # what was read since the outage was read on the new log already: skipped when read again (no reply is
        # counted twice; librdkafka reads on from the old positions as soon as the broker is back)
        self._skip = {}
        for tp in tps:
            since, now = (self._outage_at or {}).get(tp.partition), consumer.position(tp)
            if since is not None and now is not None and now > since:
                self._skip[tp.partition] = (since, now)
        self._outage_at = None
        if tps:
            consumer.seek_to_beginning(*tps)     # resolved lazily: any reply written from now on is after it
        self._released_at.clear()
        self._rewind = False
        self.rechecked.set()

    def _skipped(self, tp: TopicPartition, first: int, resume: int) -> None:
        metrics.reply_outcome(Outcome.INVALID.value).inc(resume - first)

    def start(self, borrow_ms: int = 0) -> None:
        """With *borrow_ms*, read one random partition right away and mint keys for it until the group assigns
        this worker its own (at most *borrow_ms*). Any worker may read any reply partition (each keeps only its
        own replies), so a new worker serves within a second instead of waiting for the group, whose first
        assignment takes seconds; after a gunicorn HUP, when the old workers have already gone, that wait would
        be an outage."""
        if borrow_ms > 0:
            self.borrowed = {random.randrange(self.router.num_partitions)}
            self._borrow_until = time.monotonic() + borrow_ms / 1000
            self._target = set()  # apply (and position) the borrowed partition at once
        self._consumer = self._new_consumer()
        self._loop = Supervised("reply-reader", self._run).start()

    def _new_consumer(self) -> KafkaConsumer:
        if self.config.kafka.client == "librdkafka":
            from .librdkafka import RdReplyConsumer
            return RdReplyConsumer(self.config,   # type: ignore[return-value] - KafkaConsumer's subset used here
                                   on_unreadable=lambda _p, _o: metrics.reply_outcome(Outcome.INVALID.value).inc())
        return KafkaConsumer(
            **self.config.kafka_client_kwargs(), group_id=None, enable_auto_commit=False,
            # New partitions are positioned explicitly (seek_to_end); "earliest" only applies when a position
            # falls off the log (topic recreated): then every record in it is new, and may be a reply we await.
            fetch_max_wait_ms=self.config.kafka.fetch_max_wait_ms, fetch_min_bytes=1, auto_offset_reset="earliest",
            max_poll_records=2000, allow_auto_create_topics=False, metrics_enabled=False)

    def _replace_consumer(self) -> None:
        """The only way out of a consumer kafka-python left spinning on a batch (gateway.kafka.unreadable): a new
        one, assigned the same partitions at the same positions."""
        old = self._consumer
        assert old is not None
        positions = {tp: old.position(tp) for tp in old.assignment()}
        self._consumer = self._new_consumer()
        self._consumer.assign(list(positions))
        for tp, offset in positions.items():
            if offset is not None:
                self._consumer.seek(tp, offset)
        self._unreadable.reset()
        try:
            old.close(autocommit=False, timeout_ms=500)
        except Exception:  # noqa: BLE001
            log.debug("closing the replaced reply consumer failed", exc_info=True)

    def set_target(self, owned: set[int]) -> None:
        """New group assignment; the reader greenlet positions new partitions before keys are minted for them."""
        self._target = set(owned)
        self._wake.set()

    def _apply(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        changed = False
        if self._resize_to is not None:
            n, self._resize_to, changed = self._resize_to, None, True
            self.router.resize(n)
            self._owned = {p for p in self._owned if p < n}
            self.borrowed = {p for p in self.borrowed if p < n}
            if not self._owned and not self.borrowed:
                self.borrowed = {random.randrange(n)}
            self.reading = {p for p in self.reading if p < n}
            self._released_at.clear()
            consumer.assign([TopicPartition(self.topic, p) for p in sorted(self.reading)])
        if self._target is not None:
            self._owned, self._target, changed = self._target, None, True
        if self._owned and self.borrowed:
            self.borrowed, changed = set(), True
        elif self.borrowed and self._borrow_until and time.monotonic() > self._borrow_until:
            self._borrow_until = 0.0  # say it once; keep serving on the borrowed partition (nothing is lost)
            log.error("no reply partition assigned within reply.startup_wait_ms: this worker reports not-ready "
                      "and keeps minting on borrowed partition %s. Does the reply topic have a partition for "
                      "every gateway worker of every instance?", sorted(self.borrowed))
        mint = self._mint_set(self._owned or self.borrowed)
        # 1. grow: read and position the new partitions. position() does IO, so other greenlets run meanwhile
        #    and keep minting on the current set; nothing is released in this step, so all of it stays read.
        added = mint - self.reading
        if added:
            grow = self.reading | added
            consumer.assign([TopicPartition(self.topic, p) for p in sorted(grow)])
            tps = [TopicPartition(self.topic, p) for p in sorted(added)]
            consumer.seek_to_end(*tps)
            for tp in tps:
                end = consumer.position(tp)  # resolve the offset now, before a key for it is handed out
                was = self._released_at.pop(tp.partition, None)
                if was is not None and end is not None and was > end:
                    consumer.seek(tp, was)
            self.reading = grow
        # 2. switch minting to the new set: every partition in it is positioned
        if changed:
            self.router.set_owned(mint)
            metrics.OWNED_PARTITIONS.set(len(self._owned))
            if mint:
                self.positioned.set()
            else:
                self.positioned.clear()
        # 3. release what is no longer minted on and has nothing pending. No IO (no greenlet switch) from the
        #    pending check to the assign: a request registers its waiter in the same step as it picks the partition.
        #    Positions of the candidates first (only this greenlet moves them).
        positions = {p: consumer.position(TopicPartition(self.topic, p))
                     for p in self.reading - set(self.router.owned)}
        keep = set(self.router.owned) | (self.reading & self.pending.partitions_in_use())
        if keep != self.reading:
            dropped = self.reading - keep
            consumer.assign([TopicPartition(self.topic, p) for p in sorted(keep)])
            self._released_at.update({p: positions[p] for p in dropped if positions.get(p) is not None})
            log.info("reply partitions %s drained and released", sorted(dropped))
            self.reading = keep
        if len(self.reading) != self._reported_reading:      # a gauge write only when it changes
            self._reported_reading = len(self.reading)
            metrics.READING_PARTITIONS.set(self._reported_reading)

    def _mint_set(self, candidates: set[int]) -> set[int]:
        """The partitions to mint keys on, of those this worker may mint on: all of them, or with
        ``reply.mint_partitions`` = k only k (those minted on already first, so the choice is stable). Fewer
        partitions read means less work per fetch (kafka-python decodes every partition of a fetch response; the
        embedded broker scans every partition it is asked for); the others stay owned and unread."""
        k = self.config.reply.mint_partitions
        if not k or len(candidates) <= k:
            return set(candidates)
        current = [p for p in self.router.owned if p in candidates][:k]
        return set(current + sorted(candidates - set(current))[:k - len(current)])

    @property
    def owned(self) -> set[int]:
        return set(self._owned)

    @property
    def borrowing_expired(self) -> bool:
        return bool(self.borrowed) and not self._borrow_until

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._apply()
                if self._snapshot_wanted:
                    self._snapshot()
                if self._rewind:
                    self._rewind_all()
                if not self.reading:
                    gevent.sleep(0.05)
                    continue
                if not self.pending:
                    self._idle()
                    continue
                if not self.fetching:
                    self._set_fetching(True)
                batches = self._unreadable.poll(self._consumer, self.config.reply.poll_interval_ms)
                if batches and self._pipeline_fetch(batches):
                    for tp, records in self._unreadable.poll(self._consumer, 0).items():
                        batches.setdefault(tp, []).extend(records)
            except Unidentified as exc:
                log.error("%s; replacing the reply consumer", exc)
                self._replace_consumer()
                continue
            except Exception as exc:  # noqa: BLE001 - the client reconnects by itself; never let the reader die
                log.warning("reply reader: %s: %s; retrying", type(exc).__name__, exc)
                log.debug("reply reader error", exc_info=True)
                gevent.sleep(0.5)
                continue
            for records in batches.values():
                for record in records:
                    if self._skip and self._read_already(record.partition, record.offset):
                        continue
                    try:
                        self._dispatch(record)
                    except Exception:  # noqa: BLE001 - one record must not cost the rest of the batch
                        log.exception("reply at %s/%d@%d not handled", record.topic, record.partition,
                                      record.offset)
                        metrics.reply_outcome(Outcome.INVALID.value).inc()

    def _pipeline_fetch(self, batches: dict[TopicPartition, list]) -> bool:  # type: ignore[type-arg]
        """Put the next fetch on the wire before handing *batches* out? kafka-python builds and writes a fetch only
        inside ``poll()``, in a few passes through its selector, and under gevent each pass first lets every
        runnable greenlet run: once a batch's waiters are woken, the next fetch goes out after their responses are
        written, at 1 client after the next request has arrived (``python -m bench.timeline``: written 1.2 ms after
        the arrival). A ``poll(0)`` before the dispatch writes it while nothing else is runnable, so it is already
        waiting at the broker when the next reply lands (p50 at 1 client 8.6-8.9 -> 7.8-7.9 ms). Only for a lone
        waiter (one request at a time: the reader would stop after it): with more, the extra poll makes the
        fetches return earlier with fewer replies each, and the worker's CPU per request grew (0.46 -> 0.50 ms at
        64 clients, 2,239 -> 2,099 req/s; at 8 clients no gain). librdkafka fetches ahead in its own threads."""
        if hasattr(self._consumer, "set_fetching"):
            return False
        return len(self.pending) <= 1 and any(batches.values())

    def _read_already(self, partition: int, offset: int) -> bool:
        span = self._skip.get(partition)
        if span is None:
            return False
        if offset >= span[1]:
            del self._skip[partition]
            return False
        return offset >= span[0]

    def _set_fetching(self, fetching: bool) -> None:
        self.fetching = fetching
        # kafka-python fetches only inside poll(); librdkafka fetches in the background unless paused
        set_fetching = getattr(self._consumer, "set_fetching", None)
        if set_fetching is not None:
            set_fetching(fetching)
        metrics.READERS_FETCHING.inc() if fetching else metrics.READERS_FETCHING.dec()
        if not fetching:
            metrics.READER_IDLE.inc()

    def _idle(self) -> None:
        """Nothing to read for: wait, fetching nothing, until a request registers a waiter (or the assignment,
        the topic or the stop flag changes; at the latest a second, to apply what only time changes)."""
        if self.fetching:
            self._set_fetching(False)
        self._wake.clear()
        # no greenlet switch between this check and the wait: whatever changed after _apply() is seen here, and
        # whatever changes from now on sets the event
        if self.pending or self._target is not None or self._resize_to is not None or self._rewind \
                or self._snapshot_wanted or self._stopping:
            return
        self._wake.wait(1.0)

    def _dispatch(self, record) -> None:  # noqa: ANN001 - kafka-python ConsumerRecord
        """One reply record to its waiter. Nothing a record holds may end the loop: a record that breaks the wire
        protocol but names its request answers that request with a 502 at once; one that names none is counted."""
        try:
            reply = decode_reply(record.value, record.headers or [], record.partition, record.offset,
                                 forward=self.config.http.forward_response_headers)
        except ProtocolError as exc:
            log.warning("unusable reply at %s/%d@%d: %s", record.topic, record.partition, record.offset, exc)
            outcome = Outcome.INVALID
            if exc.correlation_id:   # another worker's request stays with that worker (it reads this record too)
                outcome = self.pending.fail(exc.correlation_id, BadGateway(
                    f"the service's reply breaks the gateway's wire protocol: {exc}"))
            metrics.reply_outcome("foreign" if outcome is Outcome.FOREIGN else Outcome.INVALID.value).inc()
            return
        outcome = self.pending.resolve(reply)
        metrics.reply_outcome(outcome.value).inc()
        if outcome is Outcome.LATE or outcome is Outcome.DUPLICATE:
            log.info("%s reply for %s dropped", outcome.value, reply.correlation_id.hex())

    def stop(self, timeout_ms: int = 2000) -> None:
        self._stopping = True
        self._wake.set()
        stop_loop(self._loop, self._consumer, timeout_ms, "reply reader")
        self._unreadable.close()
