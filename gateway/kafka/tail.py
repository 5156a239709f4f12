"""A group-less reader of a whole topic: every worker tails the async results topic and the events topics.

Unlike the reply reader (which reads only the partitions a worker owns), a tail is assigned every partition of
its topic by hand and hands each record to a function, in the tail's greenlet. The function must not block.
It starts at the topic's end, at its beginning, or at the first offsets at or after a timestamp
(``offsets_for_times``, used to read just the retention window), and reports two moments:

``positioned``  every partition has a resolved position (records from now on will be seen)
``caught_up``   the positions reached the end offsets measured when positioning (the history is read)

Workers read a topic independently, so one can be behind another. :meth:`TopicTail.read_barrier` closes that
gap for one partition: it returns once this tail has handed over every record that partition held when the
barrier was asked for (read-your-writes across workers: once any worker has answered from a record, a later
question to any other worker sees it too).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

import gevent
from gevent.event import Event
from kafka import KafkaConsumer, TopicPartition

from .. import metrics
from ..supervise import Supervised
from . import stop_loop
from .admin import describe_ids
from .unreadable import SkipUnreadable, Unidentified

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)


class TopicTail:
    """Reads every partition of *topic* without a consumer group."""

    def __init__(self, config: Config, topic: str, on_record: Callable[[Any], None], *,
                 start: str = "end", since_ms: Callable[[], int] | None = None,
                 fetch_max_wait_ms: int | None = None) -> None:
        if start not in ("end", "beginning"):
            raise ValueError(f"start must be 'end' or 'beginning', not {start!r}")
        self.config = config
        self.topic = topic
        self.on_record = on_record
        self.start_at = start
        self.since_ms = since_ms            # when set: start at the first record at or after since_ms()
        # a tail is not on the request-reply latency path: a longer fetch wait saves idle CPU (each idle fetch
        # round trip costs the worker; at 10 ms one tail took ~15% of a core here, at 250 ms ~2%)
        self.fetch_max_wait_ms = fetch_max_wait_ms or config.kafka.fetch_max_wait_ms
        self.positioned = Event()
        self.caught_up = Event()
        self.records = 0
        self._targets: dict[TopicPartition, int] = {}
        self._barrier_asks: list[tuple[int | None, Event]] = []   # partition (None: all), set when read to its end
        self._barriers: list[tuple[dict[TopicPartition, int], Event]] = []   # ... with the end offsets measured
        self._consumer: KafkaConsumer | None = None
        self._loop: Supervised | None = None
        self._stopping = False
        self.topic_id: str | None = None     # the incarnation the positions belong to (gateway.kafka.admin)
        self._check_incarnation = False
        self._unreadable = SkipUnreadable(config.kafka_client_kwargs(), self._skipped, f"tail of {topic}")

    def start(self) -> None:
        self._consumer = self._new_consumer()
        self._loop = Supervised(f"tail {self.topic}", self._run).start()

    def _new_consumer(self) -> KafkaConsumer:
        # a position that falls off the log (Kafka's OffsetOutOfRange) goes where this tail starts
        return KafkaConsumer(
            **self.config.kafka_client_kwargs(), group_id=None, enable_auto_commit=False,
            fetch_max_wait_ms=self.fetch_max_wait_ms, fetch_min_bytes=1,
            auto_offset_reset="earliest" if self.start_at == "beginning" else "latest", max_poll_records=2000,
            allow_auto_create_topics=False, metrics_enabled=False)

    @property
    def skipped(self) -> int:
        """Records skipped because kafka-python cannot parse them (gateway.kafka.unreadable)."""
        return self._unreadable.skipped

    def _skipped(self, tp: TopicPartition, first: int, resume: int) -> None:
        metrics.REPLIES.labels("invalid").inc(resume - first)

    def _replace_consumer(self) -> None:
        """A new consumer at the same positions: the way out of a batch kafka-python spins on."""
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
            log.debug("closing the replaced tail consumer failed", exc_info=True)

    def _describe_id(self) -> str | None:
        return describe_ids(self.config.kafka_client_kwargs(), [self.topic],
                            timeout_ms=self.config.kafka.request_timeout_ms).get(self.topic)

    @property
    def ready(self) -> bool:
        return self.positioned.is_set() and self.caught_up.is_set()

    def _position(self) -> bool:
        consumer = self._consumer
        assert consumer is not None
        parts = consumer.partitions_for_topic(self.topic)
        if not parts:
            return False
        try:
            # before the positions are taken: they belong to this incarnation or a later one (a later one is
            # caught by the next check, which then repositions once more: never a position silently kept)
            self.topic_id = self._describe_id()
        except Exception as exc:  # noqa: BLE001 - unknown: the next check after an outage repositions
            log.warning("topic id of %s not known (%s)", self.topic, exc)
            self.topic_id = None
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if self.since_ms is not None:
            try:
                found = consumer.offsets_for_times({tp: self.since_ms() for tp in tps})
            except Exception as exc:  # noqa: BLE001 - a broker without ListOffsets by time: read it all
                log.warning("offsets_for_times on %s failed (%s); reading from the beginning", self.topic, exc)
                found = {tp: None for tp in tps}
                consumer.seek_to_beginning(*tps)
            else:
                for tp in tps:
                    hit = found.get(tp)
                    if hit is None:
                        consumer.seek_to_end(tp)     # nothing that recent: only new records matter
                    else:
                        consumer.seek(tp, hit.offset)
        elif self.start_at == "end":
            consumer.seek_to_end(*tps)
        else:
            consumer.seek_to_beginning(*tps)
        for tp in tps:
            consumer.position(tp)                    # resolve now: "positioned" must mean it
        self._targets = consumer.end_offsets(tps) if self.start_at == "beginning" or self.since_ms else {}
        self.positioned.set()
        log.info("tailing %s (%d partitions) from %s", self.topic, len(tps),
                 "a timestamp" if self.since_ms else self.start_at)
        return True

    def _check_caught_up(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        if all(consumer.position(tp) >= end for tp, end in self._targets.items()):
            self.caught_up.set()

    def read_barrier(self, partition: int | None, timeout_s: float) -> bool:
        """Block until every record on *partition* (``None``: on every partition) at the time of the call has
        been handed to ``on_record``.

        The tail's own greenlet measures the end offsets (a consumer is not shared between greenlets), so this
        costs one ListOffsets round trip plus, when behind, the fetch that catches up. False on timeout.
        """
        if not self.ready:
            return False
        done = Event()
        self._barrier_asks.append((partition, done))
        return done.wait(timeout_s)

    def _measure_barriers(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        asks = list(self._barrier_asks)
        # the broker answers a connection's requests in order: this ListOffsets may queue behind a fetch that is
        # long-polling for up to fetch_max_wait_ms. On failure the asks stay queued and are measured again.
        ends = consumer.end_offsets(list(consumer.assignment()), timeout_ms=self.fetch_max_wait_ms + 2000)
        del self._barrier_asks[:len(asks)]      # asks made meanwhile stay for the next round
        for partition, done in asks:
            wanted = {tp: end for tp, end in ends.items() if partition is None or tp.partition == partition}
            self._barriers.append((wanted, done))    # no such partition: met at once (the caller re-checks)

    def _check_barriers(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        waiting = []
        for ends, done in self._barriers:
            if all(consumer.position(tp) >= end for tp, end in ends.items()):
                done.set()
            else:
                waiting.append((ends, done))
        self._barriers = waiting

    def _run(self) -> None:
        while not self._stopping:
            consumer = self._consumer
            assert consumer is not None
            try:
                if self._check_incarnation and self.positioned.is_set():
                    self._recheck()
                if not self.positioned.is_set() and not self._position():
                    gevent.sleep(0.2)      # the topic has no metadata yet
                    continue
                if self._barrier_asks:
                    self._measure_barriers()
                    self._check_barriers()     # already there: answer without waiting for a fetch
                batches = self._unreadable.poll(consumer, 20 if self._barriers else 100)
                if not self.caught_up.is_set():
                    self._check_caught_up()
            except Unidentified as exc:
                log.error("%s; replacing the tail's consumer", exc)
                self._replace_consumer()
                continue
            except Exception:  # noqa: BLE001 - the client reconnects by itself; never let a tail die
                log.exception("tail of %s failed; retrying", self.topic)
                gevent.sleep(0.5)
                continue
            for records in batches.values():
                for record in records:
                    self.records += 1
                    try:
                        self.on_record(record)
                    except Exception:  # noqa: BLE001 - one bad record must not stop the tail
                        log.exception("record %s/%d@%d not handled", record.topic, record.partition, record.offset)
            if self._barriers:
                try:
                    self._check_barriers()
                except Exception:  # noqa: BLE001 - a partition gone with the broker: its waiters time out
                    log.warning("read barrier check on %s failed", self.topic, exc_info=True)

    def reposition(self) -> None:
        """After a broker outage: if the topic was re-created (its id changed, see ``gateway.kafka.admin``), start
        over from the configured start position; positions in the old log would read nothing, or skip records.
        The same id keeps the positions (nothing read twice, nothing skipped). Checked by the tail's greenlet,
        retried until the broker answers."""
        self._check_incarnation = True

    def _recheck(self) -> None:
        now = self._describe_id()          # raises while the broker cannot answer: retried by the loop
        self._check_incarnation = False
        if now is None or now == self.topic_id:
            return                         # same log; or no ids (Kafka's OffsetOutOfRange is the way then)
        log.warning("%s was re-created (topic id %s -> %s): tailing it again from %s", self.topic, self.topic_id,
                    now, "a timestamp" if self.since_ms else self.start_at)
        self.caught_up.clear()
        self.positioned.clear()   # positioned again before the next poll (and the new id recorded)
        self._barriers = []       # offsets of the lost log: their waiters time out and re-check

    def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        self.positioned.wait(timeout_s)
        self.caught_up.wait(max(0.0, deadline - time.monotonic()))
        return self.ready

    def stop(self) -> None:
        self._stopping = True
        stop_loop(self._loop, self._consumer, 2000, f"tail consumer of {self.topic}")
        self._unreadable.close()
