"""The pending-reply table: correlation id -> waiter.

The reply reader resolves entries; the request greenlet waits on its entry and removes it when done or expired.
Each entry records the reply partition it expects its reply on, so the reader knows which partitions it must keep
reading after a rebalance took them away (see :class:`gateway.kafka.replies.ReplyReader`).
"""
from __future__ import annotations

import collections
import enum
import heapq
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Callable

import gevent
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

    def expire(self) -> None:
        """The deadline passed: wake the waiter with neither a reply nor an error (a no-op once answered)."""
        if not self.event.is_set():
            self.event.set()

    @property
    def expired(self) -> bool:
        return self.event.is_set() and self.reply is None and self.error is None


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


class Deadlines:
    """When one-shot waiters stop waiting: one loop timer for all of them, instead of a gevent ``Timeout`` per
    request (its creation, start and cancel were ~3% of a loaded worker's CPU samples: ``python -m bench.profile``).

    :meth:`add` a registered :class:`OneShot`; at its deadline (at most :attr:`RESOLUTION_S` later) it is
    expired (:meth:`OneShot.expire`) if it is still in the table. Entries of waiters answered meanwhile are not
    searched for on every reply: they are dropped when their time comes, and the heap is rebuilt from the live ones
    when it holds more than four times as many entries as the table has waiters (long timeouts at a high rate stay
    bounded).
    The timer callback runs in the hub: it only sets events and always re-arms."""

    RESOLUTION_S = 0.01    # expiries within this much of each other share one timer callback

    def __init__(self, table: PendingTable) -> None:
        self._table = table
        self._heap: list[tuple[float, bytes]] = []
        self._timer: Any = None
        self._due = math.inf      # when the armed timer fires (monotonic); inf: not armed

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, waiter: OneShot) -> None:
        heap = self._heap
        heapq.heappush(heap, (waiter.deadline, waiter.correlation_id))
        if len(heap) > 4 * len(self._table) + 1024:
            live = self._table.__contains__
            self._heap = heap = [entry for entry in heap if live(entry[1])]
            heapq.heapify(heap)
        if waiter.deadline + self.RESOLUTION_S < self._due:
            self._arm(heap[0][0])

    def _arm(self, deadline: float) -> None:
        # a new timer each time: a gevent one-shot timer restarted after it fired keeps its old expiry
        if self._timer is not None:
            self._timer.close()
        loop = gevent.get_hub().loop
        loop.update_now()   # the timer counts from the loop's cached time, which can be a busy iteration old
        after = max(0.0, deadline - time.monotonic()) + self.RESOLUTION_S
        self._due = time.monotonic() + after
        self._timer = loop.timer(after)
        self._timer.start(self._fire)

    def _fire(self) -> None:
        self._due = math.inf
        heap = self._heap
        try:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                waiter = self._table.get(heapq.heappop(heap)[1])
                if isinstance(waiter, OneShot):
                    waiter.expire()
        finally:
            if heap:
                self._arm(heap[0][0])
            elif self._timer is not None:
                self._timer.close()
                self._timer = None


class PendingTable:
    """Bounded table of waiters, with per-partition counts and a memory of recently finished ids."""

    def __init__(self, worker_tag: bytes, capacity: int, remember: int = 20000) -> None:
        self.worker_tag = worker_tag
        self.capacity = capacity
        self._waiters: dict[bytes, Waiter] = {}
        self.deadlines = Deadlines(self)
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

    def get(self, correlation_id: bytes) -> Waiter | None:
        return self._waiters.get(correlation_id)

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
