"""The optional librdkafka client (confluent-kafka) for the hot path: the request producer and the reply reader.

Chosen by ``kafka.client = "librdkafka"`` (``pip install 'kafka-rest-gateway[librdkafka]'``). kafka-python stays
the default, and keeps everything off the hot path in either case: group membership, admin, the variants' tails.
Why it exists: kafka-python does its network I/O in Python, in greenlets of the worker (produce and fetch hand-offs
to its I/O loop, gevent timeouts, locks: ~0.4 ms of a worker's CPU per request, README "Benchmark"); librdkafka
does it in its own C threads, outside the GIL.

Under gevent, no librdkafka call may wait: it would block the worker's only OS thread, hub included. librdkafka
fetches and sends in its own C threads; the greenlets only look: the reply reader takes what the fetcher queued
with ``consume(n, 0)`` every ``POLL_STEP_S`` while requests wait (nothing at all while none does), a greenlet
serves delivery reports with ``poll(0)`` while any is due. The few calls that must wait (watermark and metadata
queries) run in a gevent ``ThreadPool`` thread. A pool thread per poll was tried first: the GIL hand-offs between
it and the hub capped a worker below kafka-python (docs/broker.md).

The two classes offer the subset of kafka-python's ``KafkaProducer`` / ``KafkaConsumer`` the gateway uses, with
the same meaning, so their callers (``gateway.core.calls``, ``gateway.kafka.replies``) stay client-neutral.
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import gevent
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as RdTopicPartition
from gevent.event import Event
from gevent.threadpool import ThreadPool

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

SERVE_INTERVAL_S = 0.2          # how often an idle producer serves librdkafka's events
POLL_STEP_S = 0.001             # how often a reader waiting for replies / a producer awaiting reports looks
IDLE_PAUSE_S = 1.0              # a reply reader with nothing to wait for stops fetching after this long


def common_settings(config: Config) -> dict[str, Any]:
    """librdkafka's names for ``[kafka]``'s connection settings (``Config.kafka_client_kwargs`` for kafka-python)."""
    k = config.kafka
    s: dict[str, Any] = {
        "bootstrap.servers": ",".join(k.bootstrap_servers), "client.id": k.client_id,
        "security.protocol": k.security_protocol.lower(),
        "topic.metadata.refresh.interval.ms": k.metadata_max_age_ms,
        "socket.timeout.ms": max(k.request_timeout_ms, k.fetch_max_wait_ms + 1000),
        "socket.nagle.disable": True,           # kafka-python and aiokafka set TCP_NODELAY too: latency
        "reconnect.backoff.max.ms": 1000,       # a broker back from a restart is found within a second
    }
    for ours, theirs in (("sasl_mechanism", "sasl.mechanism"), ("sasl_plain_username", "sasl.username"),
                         ("sasl_plain_password", "sasl.password"), ("ssl_cafile", "ssl.ca.location"),
                         ("ssl_certfile", "ssl.certificate.location"), ("ssl_keyfile", "ssl.key.location")):
        value = getattr(k, ours)
        if value:
            s[theirs] = value
    return s


class ProduceError(Exception):
    """A record librdkafka did not deliver (or refused to queue); ``fatal``: the producer is unusable from now on
    (an idempotent producer whose id the broker lost), see :func:`gateway.kafka.is_fatal_producer_error`."""

    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal

    @classmethod
    def of(cls, err: KafkaError) -> ProduceError:
        return cls(f"{err.name()}: {err.str()}", fatal=err.fatal())


class RecordMetadata(NamedTuple):
    topic: str
    partition: int
    offset: int


class Delivery:
    """The future :meth:`RdProducer.send` returns: kafka-python's ``FutureRecordMetadata`` subset
    (``add_callback``, ``add_errback``, ``get``). Resolved in the hub, never in a librdkafka thread."""

    __slots__ = ("_callbacks", "_errbacks", "done", "value", "error", "_event")

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Any], Any]] = []
        self._errbacks: list[Callable[[BaseException], Any]] = []
        self.done = False
        self.value: RecordMetadata | None = None
        self.error: BaseException | None = None
        self._event: Event | None = None

    def add_callback(self, fn: Callable[[Any], Any]) -> Delivery:
        if not self.done:
            self._callbacks.append(fn)
        elif self.error is None:
            fn(self.value)
        return self

    def add_errback(self, fn: Callable[[BaseException], Any]) -> Delivery:
        if not self.done:
            self._errbacks.append(fn)
        elif self.error is not None:
            fn(self.error)
        return self

    def get(self, timeout: float | None = None) -> RecordMetadata:
        if not self.done:
            self._event = self._event or Event()
            if not self._event.wait(timeout):
                raise ProduceError(f"not delivered within {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value

    def resolve(self, value: RecordMetadata | None, error: BaseException | None) -> None:
        if self.done:
            return
        self.done, self.value, self.error = True, value, error
        for fn in (self._errbacks if error is not None else self._callbacks):
            try:
                fn(error if error is not None else value)
            except Exception:  # noqa: BLE001 - one callback must not cost the others
                log.exception("delivery callback failed")
        self._callbacks = self._errbacks = []  # type: ignore[assignment]
        if self._event is not None:
            self._event.set()


class RdProducer:
    """``KafkaProducer``'s subset the gateway uses, on librdkafka."""

    def __init__(self, config: Config) -> None:
        k = config.kafka
        settings = {
            **common_settings(config), "acks": str(k.acks), "enable.idempotence": k.enable_idempotence,
            "linger.ms": k.linger_ms, "compression.type": k.compression_type or "none",
            "request.timeout.ms": k.request_timeout_ms,
            "message.timeout.ms": max(k.request_timeout_ms * 2, 10000),
            "message.max.bytes": max(1048576, config.limits.max_body_bytes + 65536),
            # keyed records land where Java's (and kafka-python's) partitioner puts them: a service keyed by
            # entity sees one entity on one partition whichever client the gateway runs
            "partitioner": "murmur2_random",
        }
        if not k.enable_idempotence:
            settings["message.send.max.retries"] = 0   # as gateway_sdk.clients.producer_settings: no double writes
        settings.update(k.librdkafka)                  # the operator's own, last
        self._producer = Producer(settings)
        self._pool = ThreadPool(1)                   # the calls that wait (flush, metadata), one at a time
        self._outstanding = 0                        # records sent, delivery not reported yet
        # records sent in this turn of the event loop, handed to librdkafka together at its end (_hand_over)
        self._queued: list[tuple[str, bytes | None, bytes | None, Any, int, Delivery]] = []
        self._loop = gevent.get_hub().loop
        self._wake = Event()
        self._closed = False
        self._serving = gevent.spawn(self._serve)

    # -- delivery reports: served by a greenlet (poll(0) never waits), every POLL_STEP_S while any is due ----
    def _serve(self) -> None:
        while not self._closed:
            self._producer.poll(0)
            if self._outstanding:
                gevent.sleep(POLL_STEP_S)
            else:
                self._wake.clear()
                self._wake.wait(SERVE_INTERVAL_S)    # librdkafka's own events (errors) still get served

    def _report(self, delivery: Delivery, err: KafkaError | None, msg: Any) -> None:   # in _serve's poll
        self._outstanding -= 1
        if err is not None:
            delivery.resolve(None, ProduceError.of(err))
        else:
            delivery.resolve(RecordMetadata(msg.topic(), msg.partition(), msg.offset()), None)

    # -- KafkaProducer's subset --------------------------------------------------------------------------------
    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> Delivery:
        """Queue a record; it reaches librdkafka at the end of this turn of the event loop, with every other record
        sent in that turn. With linger.ms = 0 librdkafka sends a record the moment it gets one; the gateway's
        greenlets send one at a time, so each record went in its own produce request and its own batch (what
        kafka-python and aiokafka batch by themselves: records sent while their I/O waits). Handed over together,
        they share requests and batches, and nothing waits for a linger. A record librdkafka refuses fails through
        the delivery's errback (the request answers 503, as a failed delivery does)."""
        if self._closed:
            raise ProduceError("the producer is closed")
        delivery = Delivery()
        if not self._queued:
            self._loop.run_callback(self._hand_over)
        self._queued.append((topic, value, key, headers, -1 if partition is None else partition, delivery))
        self._outstanding += 1
        if self._outstanding == 1:
            self._wake.set()
        return delivery

    def _hand_over(self) -> None:
        """In the hub, after the greenlets that ran in this turn: produce() never blocks (a full queue raises)."""
        queued, self._queued = self._queued, []
        produce, report = self._producer.produce, self._report
        refused: list[tuple[Delivery, ProduceError]] = []
        for topic, value, key, headers, partition, delivery in queued:
            try:
                produce(topic, value=value, key=key, headers=headers, partition=partition,
                        on_delivery=lambda err, msg, d=delivery: report(d, err, msg))
            except BufferError:
                refused.append((delivery, ProduceError("librdkafka's send queue is full")))
            except KafkaException as exc:
                refused.append((delivery, ProduceError.of(exc.args[0])))
            except Exception as exc:  # noqa: BLE001 - in the hub: one record must not cost the others their delivery
                refused.append((delivery, ProduceError(f"{type(exc).__name__}: {exc}")))
        if refused:     # the errbacks may block (they re-create the producer on a fatal error): not in the hub
            self._outstanding -= len(refused)
            gevent.spawn(lambda: [d.resolve(None, e) for d, e in refused])

    def refresh_metadata(self, timeout_s: float = 5.0) -> None:
        """Metadata now (kafka-python: ``request_metadata_update``): after an outage partitions may have vanished."""
        self._pool.apply(self._producer.list_topics, (None, timeout_s))

    def flush(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._outstanding and (deadline is None or time.monotonic() < deadline):
            gevent.sleep(POLL_STEP_S)                # the serving greenlet reports meanwhile

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued (up to *timeout* s), then stop; what is still undelivered fails."""
        if self._closed:
            return
        try:
            self.flush(5.0 if timeout is None else timeout)
            if self._outstanding:
                self._producer.purge()
                self.flush(1.0)                      # serves the purged records' reports (failed: 503)
        finally:
            self._closed = True
            self._wake.set()
            self._serving.join(1.0)
            self._pool.kill()


class Record(NamedTuple):
    """kafka-python's ``ConsumerRecord`` subset the reply reader uses."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


class RdReplyConsumer:
    """``KafkaConsumer``'s subset the reply reader uses (manual assignment, no group), on librdkafka.

    Positions are kept here, as kafka-python keeps them: a partition is handed to librdkafka only once its
    position is known (``seek``, ``seek_to_end``, ``seek_to_beginning``), at that position; a partition re-assigned
    keeps its position. librdkafka fetches in the background (kafka-python only inside ``poll``):
    :meth:`set_fetching` pauses every partition while the reader has nothing to wait for."""

    def __init__(self, config: Config, max_records: int = 2000,
                 on_unreadable: Callable[[int, int], None] | None = None) -> None:
        self.topic = config.reply.topic
        self._on_unreadable = on_unreadable      # (partition, offset) of a record Python cannot take apart
        self._consumer = Consumer({
            **common_settings(config),
            # librdkafka insists on a group id; this one is never joined (no subscribe) and nothing is committed
            "group.id": f"{config.reply.group_id}-reader-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            # only when a position fell off the log (a re-created topic): every record there is new
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": config.kafka.fetch_max_wait_ms, "fetch.min.bytes": 1,
            "enable.partition.eof": False,
            **config.kafka.librdkafka,                  # the operator's own, last
        })
        self._max_records = max_records
        self._query_timeout_s = config.kafka.request_timeout_ms / 1000   # a watermark query, as any request
        self._pool = ThreadPool(1)       # every call that waits, one at a time
        self._positions: dict[tuple[str, int], int | None] = {}   # assigned partitions -> next offset (None: unknown)
        self._active: set[tuple[str, int]] = set()                 # handed to librdkafka
        self._fetching = False          # the reader resumes fetching when a request waits
        # not fetching, the partitions are not handed to librdkafka at all (only their positions kept here):
        # librdkafka's resume() leaves its broker thread asleep until its next timeout (~500 ms per request after
        # an idle second, confluent-kafka-go#630), an assign wakes it at once
        self._paused = True
        # pausing costs a fetch restart on the next request (a new fetch version: what was fetched for the old one
        # is fetched again), so only after IDLE_PAUSE_S of idleness. libev's idle-timeout idiom: a repeating timer
        # re-armed with again(). A one-shot timer that already fired would fire at once on its next start() (it
        # keeps its old expiry): that paused after every request (tests/test_librdkafka.py counts pauses)
        self._pause_timer = gevent.get_hub().loop.timer(IDLE_PAUSE_S, IDLE_PAUSE_S)
        self.pauses = 0                 # times fetching was paused (idle for IDLE_PAUSE_S)

    @staticmethod
    def _key(tp: Any) -> tuple[str, int]:
        return (tp.topic, tp.partition)

    def assignment(self) -> set[Any]:
        from kafka import TopicPartition
        return {TopicPartition(t, p) for t, p in self._positions}

    def assign(self, partitions: list[Any]) -> None:
        """The partitions to read from now on: those kept keep their position, new ones wait for a seek."""
        wanted = {self._key(tp) for tp in partitions}
        gone = [k for k in self._positions if k not in wanted]
        self._unassign(gone)
        for k in gone:
            del self._positions[k]
        for k in wanted:
            self._positions.setdefault(k, None)

    def _unassign(self, keys: list[tuple[str, int]]) -> None:
        active = [k for k in keys if k in self._active]
        if active:
            self._consumer.incremental_unassign([RdTopicPartition(t, p) for t, p in active])
            self._active.difference_update(active)

    def _place(self, positions: dict[tuple[str, int], int]) -> None:
        """Read *positions* from these offsets (unassign + assign: a seek right after an assign can find the
        partition's fetcher not started yet); while paused, only remember them."""
        self._positions.update(positions)
        if self._paused:
            return
        self._unassign(list(positions))
        self._consumer.incremental_assign([RdTopicPartition(t, p, off) for (t, p), off in positions.items()])
        self._active.update(positions)

    def seek(self, partition: Any, offset: int) -> None:
        self._place({self._key(partition): offset})

    def seek_to_end(self, *partitions: Any) -> None:
        self._place(self._watermarks(partitions, high=True))

    def seek_to_beginning(self, *partitions: Any) -> None:
        self._place(self._watermarks(partitions, high=False))

    def _watermarks(self, partitions: tuple[Any, ...], high: bool) -> dict[tuple[str, int], int]:
        def query() -> dict[tuple[str, int], int]:
            return {self._key(tp): self._consumer.get_watermark_offsets(
                        RdTopicPartition(tp.topic, tp.partition), timeout=self._query_timeout_s)[1 if high else 0]
                    for tp in partitions}
        return self._pool.apply(query)

    def position(self, partition: Any) -> int | None:
        return self._positions.get(self._key(partition))

    def set_fetching(self, fetching: bool) -> None:
        """Fetch in the background (True), or stop fetching after IDLE_PAUSE_S (False: the reader waits for
        nothing; kafka-python fetches only inside ``poll``, so it needs no such call)."""
        if fetching == self._fetching:
            return
        self._fetching = fetching
        self._pause_timer.stop()
        if not fetching:
            self._pause_timer.again(self._pause, True)
        elif self._paused:
            self._pause(False)

    def _pause(self, pause: bool) -> None:
        self._paused = pause
        if pause:
            self._pause_timer.stop()
            self.pauses += 1
            self._unassign(list(self._active))
        else:
            self._place({k: off for k, off in self._positions.items() if off is not None})

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Record]]:
        from kafka import TopicPartition

        unplaced = [TopicPartition(t, p) for (t, p), off in self._positions.items() if off is None]
        if unplaced:        # kafka-python would reset these by policy; the reader always seeks first
            self.seek_to_end(*unplaced)
        # never a waiting call: consume(n, 0) returns what librdkafka's fetcher queued already (it fetches in its
        # own thread); between looks the greenlet sleeps, so the hub serves the HTTP side meanwhile
        n = max_records or self._max_records
        deadline = time.monotonic() + timeout_ms / 1000
        messages = self._consumer.consume(n, 0)
        while not messages and time.monotonic() < deadline:
            gevent.sleep(POLL_STEP_S)
            messages = self._consumer.consume(n, 0)
        out: dict[Any, list[Record]] = {}
        positions = self._positions
        for m in messages:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.debug("reply consumer: %s", err)
                continue
            key = (m.topic(), m.partition())
            offset = m.offset()
            # released meanwhile, or fetched before a pause and read already (librdkafka drops what it fetched for
            # an unassigned partition; this keeps a position from ever going back)
            if key not in positions or offset < (positions[key] or 0):
                continue
            positions[key] = offset + 1
            try:
                headers = m.headers() or []
                # confluent-kafka 2.16 sometimes returns from headers() with the decode error still set; the next
                # builtin call raises it (seen in tests/test_librdkafka.py): this one, here, where it is handled
                tp = TopicPartition(*key)
            # a header key that is not UTF-8 (confluent-kafka 2.16 raises SystemError "returned a result with an
            # exception set" for it): skipped and counted, like kafka-python's unparsable batches
            except (UnicodeDecodeError, SystemError):
                log.warning("unreadable reply at %s/%d@%d (a header key is not UTF-8): skipped", *key, offset)
                if self._on_unreadable is not None:    # (gateway.kafka.unreadable)
                    self._on_unreadable(key[1], offset)
                continue
            out.setdefault(tp, []).append(Record(key[0], key[1], offset, m.key(), m.value(), headers))
        return out

    def close(self, autocommit: bool = False, timeout_ms: int | None = None) -> None:
        self._pause_timer.stop()
        try:
            self._pool.apply(self._consumer.close)
        finally:
            self._pool.kill()
