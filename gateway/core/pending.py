"""The pending-reply table: correlation id -> waiter.

The reply reader resolves entries; the request greenlet waits on its entry and removes it when done or expired.
Each entry records the reply partition it expects its reply on, so the reader knows which partitions it must keep
reading after a rebalance took them away (see :class:`gateway.kafka.replies.ReplyReader`).
"""
from __future__ import annotations

import collections
import enum
import logging
from typing import TYPE_CHECKING, Callable

from gevent.event import Event

from .. import metrics
from ..errors import BadGateway, TooManyInFlight

if TYPE_CHECKING:
    from ..protocol import Reply

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    DELIVERED = "delivered"   # handed to its waiter
    DUPLICATE = "duplicate"   # a second reply for a correlation id already answered
    LATE = "late"             # ours, but nobody waits any more (timed out, client gone)
    FOREIGN = "foreign"       # another worker's request (partition handover); that worker reads it too
    INVALID = "invalid"       # unusable (breaks the wire protocol, or handling it failed): its waiter got a 502


class Waiter:
    """One outstanding request. Subclasses decide what a reply does; :meth:`deliver` returns True when done."""

    __slots__ = ("correlation_id", "partition", "deadline", "__weakref__")

    def __init__(self, correlation_id: bytes, partition: int, deadline: float) -> None:
        self.correlation_id = correlation_id
        self.partition = partition
        self.deadline = deadline

    def deliver(self, reply: Reply) -> bool:
        raise NotImplementedError

    def fail(self, error: BaseException) -> None:
        raise NotImplementedError


class OneShot(Waiter):
    """Waits for exactly one reply (the request-reply case)."""

    __slots__ = ("event", "reply", "error")

    def __init__(self, correlation_id: bytes, partition: int, deadline: float) -> None:
        super().__init__(correlation_id, partition, deadline)
        self.event = Event()
        self.reply: Reply | None = None
        self.error: BaseException | None = None

    def deliver(self, reply: Reply) -> bool:
        self.reply = reply
        self.event.set()
        return True

    def fail(self, error: BaseException) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()


class Callback(Waiter):
    """Hands every reply to a function (streams, websockets); done when the function returns True."""

    __slots__ = ("on_reply", "on_error")

    def __init__(self, correlation_id: bytes, partition: int, deadline: float,
                 on_reply: Callable[[Reply], bool], on_error: Callable[[BaseException], None]) -> None:
        super().__init__(correlation_id, partition, deadline)
        self.on_reply = on_reply
        self.on_error = on_error

    def deliver(self, reply: Reply) -> bool:
        return self.on_reply(reply)

    def fail(self, error: BaseException) -> None:
        self.on_error(error)


class PendingTable:
    """Bounded table of waiters, with per-partition counts and a memory of recently finished ids."""

    def __init__(self, worker_tag: bytes, capacity: int, remember: int = 20000) -> None:
        self.worker_tag = worker_tag
        self.capacity = capacity
        self._waiters: dict[bytes, Waiter] = {}
        self._per_partition: collections.Counter[int] = collections.Counter()
        self._finished: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._remember = remember
        # called when a waiter is registered into an empty table: the reply reader fetches nothing while the
        # table is empty (gateway.kafka.replies) and resumes here, before the request's record is produced
        self.on_busy: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._waiters)

    def __contains__(self, correlation_id: bytes) -> bool:
        return correlation_id in self._waiters

    def register(self, waiter: Waiter) -> None:
        if len(self._waiters) >= self.capacity:
            raise TooManyInFlight(f"this worker already waits for {self.capacity} replies (limits.max_in_flight); "
                                  "retry shortly")
        self._waiters[waiter.correlation_id] = waiter
        self._per_partition[waiter.partition] += 1
        metrics.PENDING.set(len(self._waiters))
        if len(self._waiters) == 1 and self.on_busy is not None:
            self.on_busy()

    def remove(self, correlation_id: bytes, answered: bool = False) -> Waiter | None:
        """Drop an entry (answered, timed out or abandoned). Only answered ids are remembered, so that a second
        reply for them counts as a duplicate while a reply after a timeout counts as late."""
        waiter = self._waiters.pop(correlation_id, None)
        if waiter is not None:
            metrics.PENDING.set(len(self._waiters))
            p = waiter.partition
            self._per_partition[p] -= 1
            if self._per_partition[p] <= 0:
                del self._per_partition[p]
            if answered:
                self._finished[correlation_id] = None
                if len(self._finished) > self._remember:
                    self._finished.popitem(last=False)
        return waiter

    def resolve(self, reply: Reply) -> Outcome:
        waiter = self._waiters.get(reply.correlation_id)
        if waiter is None:
            return self._unknown(reply.correlation_id)
        try:
            done = waiter.deliver(reply)
        except Exception as exc:  # noqa: BLE001 - e.g. a reply a websocket cannot encode: fail THIS request only
            log.exception("delivering the reply for %s failed", reply.correlation_id.hex())
            self.fail(reply.correlation_id, BadGateway(f"the gateway could not pass the service's reply on: "
                                                       f"{type(exc).__name__}"))
            return Outcome.INVALID
        if done:
            self.remove(reply.correlation_id, answered=True)
        return Outcome.DELIVERED

    def fail(self, correlation_id: bytes, error: BaseException) -> Outcome:
        """Answer a request with *error* now (e.g. a 502 for a reply that breaks the wire protocol). A later reply
        for it counts as a duplicate. Returns what the id was to this table (INVALID when a waiter got it)."""
        waiter = self.remove(correlation_id, answered=True)
        if waiter is None:
            return self._unknown(correlation_id)
        try:
            waiter.fail(error)
        except Exception:  # noqa: BLE001 - a failing error callback must not take the reader down
            log.exception("failing the waiter for %s failed", correlation_id.hex())
        return Outcome.INVALID

    def _unknown(self, correlation_id: bytes) -> Outcome:
        if not correlation_id.startswith(self.worker_tag):
            return Outcome.FOREIGN
        return Outcome.DUPLICATE if correlation_id in self._finished else Outcome.LATE

    def pending_on(self, partition: int) -> int:
        return self._per_partition.get(partition, 0)

    def partitions_in_use(self) -> set[int]:
        return set(self._per_partition)

    def fail_all(self, error: BaseException) -> None:
        for cid in list(self._waiters):
            waiter = self.remove(cid)
            if waiter is not None:
                waiter.fail(error)
