"""Records kafka-python cannot parse: find them, skip them, count them, read on.

Anyone who can write to a topic can write a record kafka-python cannot parse, e.g. a header key that is not valid
UTF-8 (``_read_msg`` decodes header keys; the UnicodeDecodeError surfaces as ``CorruptRecordError``). ``poll()``
then raises without moving the partition's position, and the error does not say which partition it was. Worse,
kafka-python 3.0.12 keeps the failed batch as the partition's "next records" and the next ``poll()`` spins on it
forever (a busy loop that never yields: under gevent the whole worker stops) until the position of that partition
changes. So after a ``CorruptRecordError`` the consumer must not be polled again before the bad partition was
found and moved past the record, and that is what :class:`SkipUnreadable` does, with public API only:

1. **Which partition?** A separate *probe* consumer (no group) fetches, for each partition the consumer reads,
   from the consumer's position (one record at most). The partition whose fetch raises with no record returned
   holds the bad record.
2. **Where does it end?** kafka-python parses every record of a fetched batch, also those below the fetch offset
   (``PartitionRecords`` skips them only after parsing), so when the bad record sits inside a multi-record batch,
   every offset up to the end of that batch fails the same way: the rest of the batch cannot be read with this
   client. Write P(x) = "the fetch from x raises with no record returned": P holds from the stuck position to the
   batch's last offset and fails just after it (a readable record, or the end of the log). Exponential steps
   (x+1, x+2, x+4, ...) until P fails, then a binary search between the last step that held and the first that
   failed: about 2·log2(batch size) fetches. Caveat: if a second unreadable batch lies within the last
   exponential step, readable records between the two may be skipped too; the log says which range was skipped.
3. The consumer seeks past the batch; the skipped range is reported to ``on_skip`` (which counts it: replies as
   ``gateway_replies_total{outcome="invalid"}``, requests in the SDK's ``stats["invalid"]``).

If no partition can be blamed (the log changed meanwhile, e.g. the topic was re-created), :class:`Unidentified`
is raised and the owner replaces its consumer (the only other way out of kafka-python's loop).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CorruptRecordError, OffsetOutOfRangeError

log = logging.getLogger(__name__)

MAX_STEP = 1 << 24          # no Kafka batch holds that many records; past it the log has ended anyway


class Unidentified(RuntimeError):
    """A poll raised CorruptRecordError, but no partition's fetch raises any more: replace the consumer."""


def batch_end(raises_at: Callable[[int], bool], stuck: int) -> int:
    """The first offset after *stuck* whose fetch does not raise (P above), for P(stuck) true. Pure: the fetch is
    *raises_at*. Exponential steps, then a binary search between the last step that raised and the first that
    did not."""
    lo, step = stuck, 1
    while True:
        hi = stuck + step
        if not raises_at(hi):
            break
        lo, step = hi, step * 2
        if step > MAX_STEP:
            raise RuntimeError(f"offsets {stuck}..{hi} all fail to parse; giving up")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if raises_at(mid):
            lo = mid
        else:
            hi = mid
    return hi


class SkipUnreadable:
    """Polls *a consumer* and, when a record cannot be parsed, moves that partition past it (see the module doc).

    ``client_kwargs`` are the connection settings (bootstrap servers, SSL/SASL) for the probe consumer;
    ``on_skip(tp, first, next_offset)`` is told every skipped range ``[first, next_offset)``.
    """

    def __init__(self, client_kwargs: dict[str, Any], on_skip: Callable[[TopicPartition, int, int], None],
                 what: str, probe_timeout_s: float = 10.0) -> None:
        self.client_kwargs = dict(client_kwargs)
        self.on_skip = on_skip
        self.what = what
        self.probe_timeout_s = probe_timeout_s
        self.skipped = 0                       # records (offsets) skipped so far
        self._poisoned = False                 # a poll raised and the partition was not moved yet
        self._probe: KafkaConsumer | None = None
        self._known: dict[tuple[TopicPartition, int], bool] = {}

    def poll(self, consumer: Any, timeout_ms: int, **kwargs: Any) -> dict[TopicPartition, list[Any]]:
        """``consumer.poll(timeout_ms, **kwargs)``; after a ``CorruptRecordError`` the bad partition is moved past
        the unreadable batch (and nothing is returned this time). Other errors propagate."""
        if self._poisoned:
            self._skip_past(consumer)          # never poll a poisoned consumer: kafka-python would spin
            return {}
        try:
            return consumer.poll(timeout_ms=timeout_ms, **kwargs)
        except CorruptRecordError as exc:
            log.warning("%s: a record cannot be parsed (%s); finding and skipping it", self.what, exc)
            self._poisoned = True
        self._skip_past(consumer)
        return {}

    def reset(self) -> None:
        """The owner replaced its consumer: nothing of the old one is poisoned any more."""
        self._poisoned = False
        self._known.clear()

    def close(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            try:
                probe.close(autocommit=False)
            except Exception:  # noqa: BLE001 - closing a helper: say so, go on
                log.debug("probe consumer did not close cleanly", exc_info=True)

    # -- finding the partition and the end of its unreadable batch ----------------------------------------------
    def _skip_past(self, consumer: Any) -> None:
        # a probe consumer per search: one whose fetch raised must not fetch that offset again (kafka-python's
        # spin, see above), which the answers memoized within this search guarantee, and only within it
        self._known.clear()
        try:
            found = False
            for tp in sorted(consumer.assignment() - set(consumer.paused())):
                stuck = consumer.position(tp)
                if stuck is None or not self._raises_at(tp, stuck):
                    continue
                resume = batch_end(lambda x, tp=tp: self._raises_at(tp, x), stuck)
                consumer.seek(tp, resume)      # a new position also drains kafka-python's stuck batch
                self.skipped += resume - stuck
                log.error("%s: skipped %d unreadable record(s) at %s/%d offsets %d..%d (the rest of a batch "
                          "kafka-python cannot parse)", self.what, resume - stuck, tp.topic, tp.partition, stuck,
                          resume - 1)
                self.on_skip(tp, stuck, resume)
                found = True
        finally:
            self.close()
        if not found:
            raise Unidentified(f"{self.what}: a record could not be parsed, but no partition's fetch fails now")
        self._poisoned = False

    def _raises_at(self, tp: TopicPartition, offset: int) -> bool:
        """P(offset): does a fetch of *tp* from *offset* raise with no record returned?"""
        key = (tp, offset)
        if key in self._known:
            return self._known[key]
        probe = self._probe_consumer()
        probe.assign([])                       # fresh partition state: highwater() unknown until this fetch
        probe.assign([tp])
        probe.seek(tp, offset)
        deadline = time.monotonic() + self.probe_timeout_s
        answer: bool | None = None
        while answer is None and time.monotonic() < deadline:
            try:
                records = probe.poll(timeout_ms=50, max_records=1)
            except CorruptRecordError:
                answer = True
            except OffsetOutOfRangeError:
                answer = False                 # past the log's end (Kafka): nothing there that fails
            else:
                if records.get(tp) or probe.highwater(tp) is not None:
                    answer = False             # a record parsed, or the fetch came back with nothing to read
        if answer is None:
            raise TimeoutError(f"{self.what}: probing {tp.topic}/{tp.partition}@{offset} got no answer within "
                               f"{self.probe_timeout_s:.0f}s")
        self._known[key] = answer
        return answer

    def _probe_consumer(self) -> KafkaConsumer:
        if self._probe is None:
            self._probe = KafkaConsumer(**self.client_kwargs, group_id=None, enable_auto_commit=False,
                                        auto_offset_reset="none", fetch_max_wait_ms=10, fetch_min_bytes=1,
                                        max_poll_records=1, allow_auto_create_topics=False)
        return self._probe
