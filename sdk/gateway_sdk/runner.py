"""The responder's Kafka loop: consume requests, run handlers, send replies, commit what was answered.

(Over 300 lines on purpose: one loop's states, consume -> answer -> deliver -> commit, and the argument below that
it never runs a request twice holds only when read together.)

At-least-once, and never a request executed twice because of this loop:

* **Commit only what was answered.** Every reply (and every event a handler published) is a tracked send. A
  batch's offsets are committed once each of its sends was acknowledged by the broker, or settled otherwise (see
  below); a partition's commit stops before the first request that is not settled.
* **A reply that cannot be sent** (larger than the producer or broker allows, or otherwise refused for good) is
  replaced by a small ``502`` problem reply, so the client learns at once (not a ``504`` at the deadline) that the
  service ran but its answer was lost.
* **A reply that failed for a transient reason** (broker away, leader moving, the reply partition not there yet)
  is sent again, never by running the handler again, until the request's deadline (nobody waits after it) or,
  for requests without one, ``reply_retry_ms``. An idempotent producer whose producer id the broker forgot
  (``gateway.kafka.is_fatal_producer_error``) is replaced first.
* **A re-created request topic** is told by its topic id (``gateway.kafka.admin``), checked every
  ``topic_check_interval_s`` while everything processed is committed. Then each partition goes to the group's
  committed offset, or the log's beginning if there is none. That cannot execute anything twice: with every
  processed request committed, the committed offset is past every request this member ran, and a commit made
  for the old log cannot stand (Kafka drops a deleted topic's offsets and refuses commits from an old group
  generation; the embedded broker forgets everything on restart). If the consumer's own rejoin already read the
  new log from its start, its position IS the committed offset and nothing moves. OffsetOutOfRange ->
  ``auto_offset_reset="earliest"`` remains Kafka's own second line.
* **Records kafka-python cannot parse** are skipped and counted (``gateway.kafka.unreadable``) and their offsets
  committed, so a restart does not stop on them again.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    CommitFailedError,
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from kafka.structs import OffsetAndMetadata

from . import protocol as P
from .clients import (
    CLIENT_SETTINGS,
    is_fatal_producer_error,
    producer_settings,
    request_rejoin,
    set_fetch_wait,
    topic_id,
)
from .unreadable import SkipUnreadable, Unidentified

if TYPE_CHECKING:
    from .app import Responder

log = logging.getLogger(__name__)
TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError)
BUSY_HOLD_S = 5.0   # the busy fetch wait holds this long after the last request


class FetchWait:
    """The consumer's fetch wait: *busy_ms* from a poll that brought requests until *hold_s* after the last such
    poll, *idle_ms* otherwise. On Apache Kafka a fetch returns as soon as a request arrives and both are its 500;
    the embedded broker answers a waiting fetch only at re-checks (half the wait, then ...), so `./dev run` idles
    at 200 ms (~1% of a core per service) and serves at 10 ms (a request answered in ~10 ms, not ~100)."""

    def __init__(self, idle_ms: int, busy_ms: int, hold_s: float = BUSY_HOLD_S) -> None:
        self.idle_ms, self.busy_ms, self.hold_s = idle_ms, busy_ms, hold_s
        self.current = idle_ms          # what the consumer was built with
        self._last_busy = float("-inf")

    def reset(self) -> None:
        """A new consumer: built with the idle wait."""
        self.current = self.idle_ms

    def after_poll(self, consumer: Any, got_records: bool, now: float) -> None:
        if self.busy_ms == self.idle_ms:
            return
        if got_records:
            self._last_busy = now
        want = self.busy_ms if now - self._last_busy < self.hold_s else self.idle_ms
        if want != self.current:
            set_fetch_wait(consumer, want)
            self.current = want


def split_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One set of client settings -> (consumer, producer, admin) keyword arguments: each client gets every setting
    it knows (SSL, SASL, client id, timeouts go to all three), so no client connects with less than the others.
    A setting no client knows is a TypeError, not silently dropped."""
    known = {c: set(c.DEFAULT_CONFIG) for c in (KafkaConsumer, KafkaProducer, KafkaAdminClient)}
    unknown = [k for k in settings if not any(k in keys for keys in known.values())]
    if unknown:
        raise TypeError(f"unknown Kafka client setting(s): {', '.join(sorted(unknown))}")
    consumer, producer, admin = ({k: v for k, v in settings.items() if k in known[c]}
                                 for c in (KafkaConsumer, KafkaProducer, KafkaAdminClient))
    return consumer, producer, admin


@dataclass
class Send:
    """One record to deliver (a reply or a published event) for the request at ``tp``/``offset``."""

    tp: TopicPartition
    offset: int
    topic: str
    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int | None
    deadline: float                                 # time.time(): after it nobody waits for this record
    correlation_id: bytes | None = None             # replies only: what an error reply answers
    seq: int | None = None                          # stream items: where an error record goes in the stream
    future: Any = None
    error: BaseException | None = None              # the last failure (sync or async)
    settled: bool = False
    replaced: bool = False                          # already turned into an error reply once
    attempts: int = 0
    retry_at: float = field(default=0.0)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    def on_partitions_assigned(self, assigned: Any) -> None:
        # positions come from the group's committed offsets now: whatever this member processed but did not
        # commit is the group's to redeliver (at-least-once), not ours to commit later
        self.runner.to_commit.clear()
        self.runner.clean = True


class Runner:
    def __init__(self, svc: Responder) -> None:
        self.svc = svc
        self.stats = svc.stats
        settings = dict(svc.kafka_settings)
        self.session_ms = int(settings.pop("session_timeout_ms", svc.session_timeout_ms))
        self.fetch_max_wait_ms = int(settings.pop("fetch_max_wait_ms", svc.fetch_max_wait_ms))
        busy = settings.pop("fetch_max_wait_busy_ms", svc.fetch_max_wait_busy_ms)
        self.fetch_wait = FetchWait(self.fetch_max_wait_ms, self.fetch_max_wait_ms if busy is None else int(busy))
        common = {"bootstrap_servers": svc.bootstrap_servers, "client_id": f"{svc.name}-service", **settings}
        self.consumer_kwargs, self.producer_kwargs, self.admin_kwargs = split_settings(common)
        self.consumer: Any = None
        self.producer: Any = None
        self._admin: Any = None
        self.outbox: list[Send] | None = None       # the batch being answered (publish() adds to it)
        self._current: tuple[TopicPartition, int, float] | None = None
        self.to_commit: dict[TopicPartition, OffsetAndMetadata] = {}
        self.clean = True                           # every processed request's offset is committed
        self.topic_id: str | None = None
        self._next_topic_check = 0.0
        self._producer_replaced_at = 0.0
        self._topics_seen: dict[str, float] = {}    # topic -> until when it is known to exist
        self.unreadable = SkipUnreadable(self.consumer_kwargs, self._skipped, f"{svc.name} ({svc.topic})")

    # -- clients ------------------------------------------------------------------------------------------------
    def _new_consumer(self) -> KafkaConsumer:
        self.fetch_wait.reset()
        consumer = KafkaConsumer(
            **{"max_poll_records": 500, **CLIENT_SETTINGS, **self.consumer_kwargs}, group_id=self.svc.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=self.fetch_max_wait_ms,
            session_timeout_ms=self.session_ms, heartbeat_interval_ms=max(100, self.session_ms // 3),
            allow_auto_create_topics=False)
        consumer.subscribe([self.svc.topic], listener=_Rebalance(self))
        return consumer

    def _new_producer(self) -> KafkaProducer:
        delivery = producer_settings(self.svc.acks, self.svc.enable_idempotence)
        for k in CLIENT_SETTINGS.keys() & self.producer_kwargs.keys():
            del delivery[k]                 # the service's own setting wins
        return KafkaProducer(
            # a short metadata age: a reply partition that is not there yet (the gateway re-creating its reply
            # topic after an outage) is found within seconds while the reply is being resent
            **{"linger_ms": 0, "max_block_ms": 5000, "metadata_max_age_ms": 5000, **self.producer_kwargs},
            **delivery,
            # never auto-create the gateway's reply topic with the broker's default partition count: the
            # gateway's reply keys are minted for the configured count (the gateway re-creates it after an outage)
            allow_auto_create_topics=False)

    def _replace_producer(self, why: str) -> None:
        if time.monotonic() - self._producer_replaced_at < 1.0:
            return
        self._producer_replaced_at = time.monotonic()
        old, self.producer = self.producer, self._new_producer()
        self.svc._producer = self.producer  # noqa: SLF001 - the Responder's handle for publish()
        log.warning("%s: reply producer re-created (%s)", self.svc.name, why)
        try:
            old.close(timeout=0.5)
        except Exception:  # noqa: BLE001
            log.debug("closing the old producer failed", exc_info=True)

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> None:
        svc = self.svc
        self.consumer = self._new_consumer()
        self.producer = self._new_producer()
        svc._producer = self.producer  # noqa: SLF001
        log.info("%s: consuming %s as group %s", svc.name, svc.topic, svc.group_id)
        unassigned_since = time.monotonic()
        try:
            while not svc._stop.is_set():  # noqa: SLF001
                try:
                    if self.to_commit:
                        self._retry_commit()
                    self._maybe_check_topic()
                    batches = self.unreadable.poll(self.consumer, 200)
                    self.fetch_wait.after_poll(self.consumer, bool(batches), time.monotonic())
                    if self.consumer.assignment():
                        svc.ready.set()
                        unassigned_since = time.monotonic()
                    elif time.monotonic() - unassigned_since > 2 * self.session_ms / 1000:
                        # kafka-python can stay "rebalancing" without rejoining: ask again
                        request_rejoin(self.consumer)
                        unassigned_since = time.monotonic()
                    if batches:
                        self._answer(batches)
                except Unidentified as exc:
                    log.error("%s: %s; replacing the consumer (uncommitted requests are read again)", svc.name, exc)
                    self._replace_consumer()
                except Exception:  # noqa: BLE001 - broker away, group gone, commit after a rebalance: go on
                    log.exception("%s: consume loop error; retrying", svc.name)
                    svc._stop.wait(0.5)  # noqa: SLF001
        finally:
            try:
                if self.to_commit:
                    self._commit()
            except Exception:  # noqa: BLE001
                log.warning("%s: final commit failed", svc.name, exc_info=True)
            self.producer.close(timeout=5)
            self.consumer.close(autocommit=False)
            self.unreadable.close()
            if self._admin is not None:
                self._admin.close()
            log.info("%s stopped: %s", svc.name, self.stats)

    def _replace_consumer(self) -> None:
        if self.to_commit:
            self._retry_commit()           # what was answered stays answered: not read (and run) again
        old, self.consumer = self.consumer, None
        try:
            old.close(autocommit=False)
        except Exception:  # noqa: BLE001
            log.debug("closing the stuck consumer failed", exc_info=True)
        self.unreadable.reset()
        self.to_commit.clear()
        self.consumer = self._new_consumer()

    def _skipped(self, tp: TopicPartition, first: int, resume: int) -> None:
        self.stats["invalid"] += resume - first
        self.to_commit[tp] = OffsetAndMetadata(resume, "", -1)   # do not stop on them again after a restart

    def _retry_commit(self) -> None:
        """A commit that failed before, tried again without holding up the poll: only polling lets kafka-python
        rejoin a group that dropped this member."""
        try:
            self._commit()
        except Exception as exc:  # noqa: BLE001 - broker or coordinator away: next round
            log.debug("%s: commit retry failed: %s", self.svc.name, exc)

    def _commit(self) -> None:
        offsets = dict(self.to_commit)
        try:
            self.consumer.commit(offsets)
        except CommitFailedError:
            # the group moved on without this member (rebalance, or a broker that forgot the group): the offsets
            # are not ours to commit any more; the rejoin positions from the group's committed offsets
            log.warning("%s: commit refused by the group (this member was dropped); its partitions are read again "
                        "from the group's committed offsets", self.svc.name)
            self.to_commit.clear()
            raise
        for tp, om in offsets.items():
            if self.to_commit.get(tp) == om:
                del self.to_commit[tp]
        self.clean = not self.to_commit

    # -- answering a batch --------------------------------------------------------------------------------------
    def _answer(self, batches: dict[TopicPartition, list[Any]]) -> None:
        self.outbox = outbox = []
        next_offsets: dict[TopicPartition, int] = {}
        try:
            for tp, records in batches.items():
                for record in records:
                    self._process(tp, record, outbox)
                    next_offsets[tp] = record.offset + 1
        finally:
            self.outbox = None
            self._current = None
        self.clean = False
        self._deliver(outbox)
        for tp, end in next_offsets.items():
            unsettled = [s.offset for s in outbox if s.tp == tp and not s.settled]
            upto = min(unsettled) if unsettled else end
            if upto > (self.to_commit[tp].offset if tp in self.to_commit else -1):
                self.to_commit[tp] = OffsetAndMetadata(upto, "", -1)
        self._commit()

    def _process(self, tp: TopicPartition, record: Any, outbox: list[Send]) -> None:
        svc = self.svc
        try:
            dest, replies = svc.handle(record.value, record.headers or [], record.key)
        except Exception:  # noqa: BLE001 - a malformed request must not stop the service
            self.stats["invalid"] += 1
            log.exception("unreadable request at %s/%d@%d", record.topic, record.partition, record.offset)
            return
        if dest is None:
            return
        deadline = dest["deadline_ms"] / 1000 if dest.get("deadline_ms") else time.time() + svc.reply_retry_ms / 1000
        self._current = (tp, record.offset, deadline)
        corr = dest["correlation_id"]
        for headers, value in replies:          # lazy: a streaming handler runs while its items leave
            seq = next((int(v) for k, v in headers if k == P.H_SEQ), None)
            s = Send(tp, record.offset, dest["topic"], value, dest["key"], headers, dest["partition"], deadline,
                     correlation_id=corr, seq=seq)
            outbox.append(s)
            self._send(s)

    def publish(self, topic: str, value: bytes, key: bytes | None) -> None:
        """An event from a handler: delivered (and retried) with the batch's replies, before its commit."""
        current = self._current
        if self.outbox is None or current is None:
            self.producer.send(topic, value=value, key=key)   # outside a request: fire and forget
            return
        tp, offset, _ = current
        s = Send(tp, offset, topic, value, key, [], None, time.time() + self.svc.reply_retry_ms / 1000)
        self.outbox.append(s)
        self._send(s)

    def _send(self, s: Send) -> None:
        s.attempts += 1
        s.error = None
        try:
            s.future = self.producer.send(s.topic, value=s.value, key=s.key, headers=s.headers or None,
                                          partition=s.partition)
        except Exception as exc:  # noqa: BLE001 - too large, no metadata, a partition not there (yet)
            s.future = None
            s.error = exc

    def _deliver(self, outbox: list[Send]) -> None:
        """Until every send of the batch is settled: acknowledged, answered with an error reply, or given up at its
        deadline. On stop, a short grace, then what is left stays uncommitted."""
        stop_by: float | None = None
        while True:
            pending = [s for s in outbox if not s.settled]
            if not pending:
                return
            if self.svc._stop.is_set():  # noqa: SLF001
                stop_by = stop_by or time.monotonic() + 5
                if time.monotonic() > stop_by:
                    log.warning("%s: stopping with %d send(s) unsettled: their requests stay uncommitted",
                                self.svc.name, len(pending))
                    return
            try:
                self.producer.flush(timeout=1)
            except Exception:  # noqa: BLE001 - KafkaTimeoutError: some not done yet, looked at below
                pass
            for s in pending:
                if s.future is not None:
                    if not s.future.is_done:
                        continue
                    if s.future.succeeded():
                        s.settled = True
                        continue
                    s.error = s.future.exception
                    s.future = None
                if time.time() >= s.retry_at:
                    self._failed(s)
            if any(not s.settled for s in outbox):
                self.svc._stop.wait(0.05)  # noqa: SLF001 - between resends

    def _failed(self, s: Send) -> None:
        exc = s.error
        assert exc is not None
        if is_fatal_producer_error(exc):
            self._replace_producer(f"{type(exc).__name__}: {exc}")
        permanent = isinstance(exc, TOO_LARGE) or (isinstance(exc, KafkaError) and not exc.retriable
                                                     and not is_fatal_producer_error(exc)) \
            or not isinstance(exc, (KafkaError, ValueError))      # ValueError: "Unrecognized partition" (yet)
        if permanent and s.correlation_id is not None and not s.replaced:
            log.error("%s: reply to %s/%s cannot be sent (%s: %s); answering 502 instead", self.svc.name, s.topic,
                      s.partition, type(exc).__name__, exc)
            self.stats["unsendable"] += 1
            self._to_error_reply(s, exc)
            self._send(s)
            return
        if permanent or time.time() > s.deadline:
            what = "reply" if s.correlation_id is not None else "event"
            log.error("%s: %s to %s/%s given up after %d attempt(s) (%s: %s)", self.svc.name, what, s.topic,
                      s.partition, s.attempts, type(exc).__name__, exc)
            self.stats["unsent"] += 1
            s.settled = True                   # nobody waits any more (or nothing could ever send it)
            return
        s.retry_at = time.time() + min(1.0, 0.05 * 2 ** min(s.attempts, 5))
        if not self._topic_exists(s.topic):
            # not (yet) re-created by the gateway after an outage: a send would make some brokers (the embedded
            # one) auto-create it with their default partition count, under the gateway's feet
            s.error = exc
            return
        self.stats["resent"] += 1
        self._send(s)

    def _topic_exists(self, topic: str) -> bool:
        """Asked with a describe (which never creates a topic); a positive answer is kept for a few seconds."""
        if self._topics_seen.get(topic, 0.0) > time.monotonic():
            return True
        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(**self.admin_kwargs)
            exists = any(not d.get("error_code") and d.get("partitions") for d in self._admin.describe_topics([topic]))
        except Exception as exc:  # noqa: BLE001 - broker away: not now
            log.debug("describing %s failed: %s", topic, exc)
            self._close_admin()
            return False
        if exists:
            self._topics_seen[topic] = time.monotonic() + 5
        return exists

    def _to_error_reply(self, s: Send, exc: BaseException) -> None:
        import json

        assert s.correlation_id is not None
        body = {"title": "error", "status": 502, "detail": f"{self.svc.name} ran the request, but its reply could "
                f"not be sent: {type(exc).__name__}"}
        stream = "error" if s.seq is not None else None
        s.headers = P.reply_headers(s.correlation_id, 502, "application/problem+json", seq=s.seq, stream=stream)
        s.value = json.dumps(body).encode()
        s.replaced = True

    # -- re-created topic ---------------------------------------------------------------------------------------
    def _maybe_check_topic(self) -> None:
        """See the module doc. Only while clean: then no position can be moved below a request this member ran."""
        if not self.clean or time.monotonic() < self._next_topic_check:
            return
        self._next_topic_check = time.monotonic() + self.svc.topic_check_interval_s
        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(**self.admin_kwargs)
            descs = self._admin.describe_topics([self.svc.topic])
        except Exception as exc:  # noqa: BLE001 - broker away: next time
            log.debug("topic id check failed: %s", exc)
            self._close_admin()
            return
        now = next((topic_id(d) for d in descs if not d.get("error_code")), None)
        self.stats["topic_checks"] += 1
        if now is None or now == self.topic_id:
            return                                # same log (or no ids: Kafka's OffsetOutOfRange is the way)
        if self.topic_id is not None:
            log.warning("%s: %s was re-created (topic id %s -> %s)", self.svc.name, self.svc.topic, self.topic_id,
                        now)
        consumer = self.consumer
        for tp in sorted(consumer.assignment()):
            committed = consumer.committed(tp)
            target = committed if committed is not None else consumer.beginning_offsets([tp])[tp]
            position = consumer.position(tp)
            if position != target:
                log.warning("%s: partition %d of the new log: reading from %d (the group's committed offset, or "
                            "the start), not %d", self.svc.name, tp.partition, target, position)
                consumer.seek(tp, target)
                self.stats["rewinds"] += 1
        self.topic_id = now

    def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except Exception:  # noqa: BLE001
                pass
