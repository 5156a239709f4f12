"""Async request + poll: ``Prefer: respond-async`` -> 202 + ``Location: /requests/<id>``; any worker answers the poll.

Why any worker can: the service replies straight onto the **results topic** (``async.results_topic``), keyed by
the request id, and every worker tails that whole topic (group-less, from ``now - retention``) into a
:class:`ResultStore`. Before answering 202 the accepting worker produces an *accepted marker* (same key, with the
deadline) and waits for the broker's ack, so every worker can tell "pending" from "unknown" (404) once its tail
has read that far. Workers tail independently, so one may lag another: before a poll answers "pending", 404 or
504, the worker reads its results partition up to the end offset it has at that moment (a read barrier), so
once any worker has answered 200, every later poll on any worker answers 200 too. Should the barrier not
complete within ``async.unknown_id_wait_ms`` the poll answers from what the worker has read. Nothing is held by
the accepting worker: it may die right after the 202 and the result is still retrievable from any other one.

The request id is the correlation id in hex (8-byte worker tag + 128 random bits): unguessable.
"""
from __future__ import annotations

import collections
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gevent.event import Event

from ..core.calls import AsyncTicket, send_async
from ..core.routing import partition_for_key
from ..errors import BadGateway, NotReady
from ..protocol import H_ASYNC, H_DEADLINE_MS, H_SERVICE, ProtocolError, Reply, decode_reply, header_value
from .streams import NDJSON, Reorderer, StreamBroken, item_json, problem_of

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..core.calls import ServiceRequest
    from ..core.runtime import Gateway

log = logging.getLogger(__name__)
REQUEST_ID_HEX = 48    # 24 bytes: the correlation id


def now_ms() -> int:
    return int(time.time() * 1000)


class ResultTooLarge(BadGateway):
    code, title = "result_too_large", "The async result is too large to keep"


@dataclass
class AsyncResult:
    """What every worker knows about one async request."""

    request_id: str
    accepted_ms: int
    deadline_ms: int | None = None
    service: str | None = None
    reply: Reply | None = None
    done: Event = field(default_factory=Event)
    size: int = 0                          # bytes this entry holds (its body, or the stream items gathered so far)
    reorder: Reorderer | None = None        # a streamed reply being gathered (the store's)
    gathered: list[Reply] = field(default_factory=list)

    def expired(self, at_ms: int) -> bool:
        """Past the deadline without a reply."""
        return self.reply is None and self.deadline_ms is not None and at_ms > self.deadline_ms


class ResultStore:
    """request id -> :class:`AsyncResult`, bounded by retention, count and bytes; fed by the results tail.

    Every worker keeps a copy of every result, so the bounds are per worker: ``max_results`` entries and
    ``max_store_bytes`` bytes of bodies (the least recently completed go first), one result at most
    ``max_result_bytes`` (and a streamed one ``max_stream_records`` items; larger ones are kept as a 502
    ``result_too_large`` problem instead)."""

    def __init__(self, retention_ms: int, max_results: int, max_store_bytes: int = 128 * 1024 * 1024,
                 max_result_bytes: int = 1024 * 1024, max_stream_records: int = 10000) -> None:
        self.retention_ms = retention_ms
        self.max_results = max_results
        self.max_store_bytes = max_store_bytes
        self.max_result_bytes = max_result_bytes
        self.max_stream_records = max_stream_records
        self.bytes = 0
        self._entries: collections.OrderedDict[str, AsyncResult] = collections.OrderedDict()
        self._known: dict[str, Event] = {}      # polls waiting for an id to become known

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, rid: str, ts_ms: int) -> AsyncResult:
        entry = self._entries.get(rid)
        if entry is None:
            entry = self._entries[rid] = AsyncResult(rid, ts_ms)
            self._evict()
            waiting = self._known.pop(rid, None)
            if waiting is not None:
                waiting.set()
        return entry

    def _resize(self, entry: AsyncResult, size: int) -> None:
        self.bytes += size - entry.size
        entry.size = size
        if entry.request_id in self._entries:
            self._entries.move_to_end(entry.request_id)     # the newest result is the last to go
        self._evict()

    def _evict(self) -> None:
        while len(self._entries) > self.max_results or (self.bytes > self.max_store_bytes and self._entries):
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.size

    def _too_large(self, entry: AsyncResult, reply: Reply, what: str) -> AsyncResult:
        log.warning("async result %s dropped: %s", entry.request_id, what)
        entry.gathered, entry.reorder = [], None
        error = ResultTooLarge(f"the result is too large to keep: {what}")
        entry.reply = _problem_reply(reply.correlation_id, error.status, error.to_problem())
        entry.done.set()
        self._resize(entry, len(entry.reply.body))
        return entry

    def accepted(self, rid: str, ts_ms: int, deadline_ms: int | None, service: str | None) -> AsyncResult:
        entry = self._entry(rid, ts_ms)
        entry.accepted_ms = min(entry.accepted_ms, ts_ms)
        entry.deadline_ms = deadline_ms
        entry.service = service
        return entry

    def replied(self, reply: Reply, ts_ms: int) -> AsyncResult | None:
        """A service's reply record. Streams are gathered into one NDJSON body when complete."""
        entry = self._entry(reply.correlation_id.hex(), ts_ms)
        if entry.done.is_set():
            return None                          # duplicate, or what follows a result too large to keep
        limit = self.max_result_bytes
        if reply.stream is None:
            if len(reply.body) > limit:
                return self._too_large(entry, reply, f"{len(reply.body)} bytes > async.max_result_bytes ({limit})")
            entry.reply = reply
            entry.done.set()
            self._resize(entry, len(reply.body))
            return entry
        if entry.reorder is None:
            entry.reorder = Reorderer(self.max_stream_records, limit)
        try:
            released = entry.reorder.push(reply)
        except StreamBroken as exc:
            entry.gathered, entry.reorder = [], None
            entry.reply = _problem_reply(reply.correlation_id, exc.status, exc.to_problem())
            entry.done.set()
            self._resize(entry, len(entry.reply.body))
            return entry
        entry.gathered.extend(released)
        size = entry.size + sum(len(r.body) for r in released)
        if len(entry.gathered) > self.max_stream_records or size > limit:
            return self._too_large(entry, reply, f"the stream passed async.max_stream_records "
                                                 f"({self.max_stream_records}) or async.max_result_bytes ({limit})")
        if entry.reorder.done:
            lines = []
            for item in entry.gathered:
                if item.stream == "more":
                    lines.append(item_json(item))
                elif item.stream == "error":
                    lines.append(json.dumps(problem_of(item)))
            body = "".join(x + "\n" for x in lines).encode()
            if len(body) > limit:
                return self._too_large(entry, reply, f"{len(body)} bytes of NDJSON > async.max_result_bytes "
                                                     f"({limit})")
            entry.reply = Reply(reply.correlation_id, 200, body, NDJSON)
            entry.gathered, entry.reorder = [], None
            entry.done.set()
            size = len(body)
        self._resize(entry, size)
        return entry

    def get(self, rid: str, at_ms: int | None = None) -> AsyncResult | None:
        entry = self._entries.get(rid)
        if entry is None:
            return None
        at_ms = now_ms() if at_ms is None else at_ms
        if at_ms - entry.accepted_ms > self.retention_ms:
            if self._entries.pop(rid, None) is not None:
                self.bytes -= entry.size
            return None
        return entry

    def wait_known(self, rid: str, timeout_s: float) -> AsyncResult | None:
        entry = self.get(rid)
        if entry is not None or timeout_s <= 0:
            return entry
        event = self._known.setdefault(rid, Event())
        try:
            event.wait(timeout_s)
        finally:
            if not event.is_set() and self._known.get(rid) is event:
                del self._known[rid]
        return self.get(rid)


def _problem_reply(correlation_id: bytes, status: int, problem: dict[str, Any]) -> Reply:
    return Reply(correlation_id, status, json.dumps(problem).encode(), "application/problem+json")


class AsyncRequests:
    """Per-worker: the results tail and store, accept and look-up."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        cfg = gw.config.async_requests
        self.topic = cfg.results_topic
        self.num_partitions = cfg.partitions
        self.store = ResultStore(cfg.retention_ms, cfg.max_results, cfg.max_store_bytes,
                                 cfg.max_result_bytes, cfg.max_stream_records)
        self.tail: Any = None

    # -- lifecycle (see gateway.variants.runtime) ----------------------------------------------------------------------
    def start(self, actual_partitions: int | None) -> None:
        from ..kafka.tail import TopicTail

        if actual_partitions:
            self.num_partitions = actual_partitions
        retention = self.store.retention_ms
        self.tail = TopicTail(self.gw.config, self.topic, self.on_record, start="beginning",
                              since_ms=lambda: now_ms() - retention,
                              fetch_max_wait_ms=self.gw.config.async_requests.fetch_max_wait_ms)
        self.tail.start()

    @property
    def ready(self) -> bool:
        return self.tail is not None and self.tail.ready

    def stop(self) -> None:
        if self.tail is not None:
            self.tail.stop()

    # -- results tail ------------------------------------------------------------------------------------------
    def on_record(self, record: Any) -> None:
        headers = record.headers or []
        ts = record.timestamp if record.timestamp and record.timestamp > 0 else now_ms()
        if header_value(headers, H_ASYNC) == b"accepted":
            if record.key is None:
                return
            deadline = header_value(headers, H_DEADLINE_MS)
            service = header_value(headers, H_SERVICE)
            self.store.accepted(record.key.decode("ascii", "replace"), ts, int(deadline) if deadline else None,
                                service.decode() if service else None)
            return
        try:
            reply = decode_reply(record.value, headers, record.partition, record.offset,
                                 forward=self.gw.config.http.forward_response_headers)
        except ProtocolError as exc:
            log.warning("dropping result at %s/%d@%d: %s", record.topic, record.partition, record.offset, exc)
            return
        self.store.replied(reply, ts)

    def read_barrier(self, rid: str, timeout_s: float) -> bool:
        """Block until this worker has read everything on *rid*'s results partition (see ``TopicTail``)."""
        if self.tail is None:
            return False
        return self.tail.read_barrier(partition_for_key(rid.encode(), self.num_partitions), timeout_s)

    # -- request path ------------------------------------------------------------------------------------------
    def accept(self, svc: ServiceConfig, request: ServiceRequest) -> AsyncResult:
        """Marker first (acked), then the request: once this returns, every worker will know the id."""
        if self.tail is None:
            self.gw.check_ready()
            raise NotReady("this worker's async results reader is not started yet")
        accepted: list[AsyncResult] = []

        def on_marker(ticket: AsyncTicket) -> None:
            accepted.append(self.store.accepted(ticket.request_id, ticket.accepted_ms, ticket.deadline_ms, svc.name))

        send_async(self.gw, svc, request, self.topic, self.num_partitions, on_marker)
        return accepted[0]

    def lookup(self, rid: str, bound_s: float) -> tuple[AsyncResult | None, bool]:
        """The entry for *rid*, reading the results partition to its end (within *bound_s*) when this worker has
        not seen it yet (another worker may have accepted it a moment ago); and whether that read completed."""
        started = time.monotonic()
        entry = self.store.get(rid)
        if entry is None and self.read_barrier(rid, bound_s):
            return self.store.get(rid), True     # read to the end: the marker is there, or never was
        if entry is None:
            entry = self.store.wait_known(rid, max(0.0, bound_s - (time.monotonic() - started)))
        return entry, False

    def settle(self, entry: AsyncResult, wait_s: float | None, barrier_s: float = 0.0,
               caught_up: bool = False) -> bool:
        """Wait up to *wait_s* for *entry*'s result; True when it is final (a result, or past its deadline).

        With *barrier_s*, first read the results partition up to its current end (within the wait, not on top of
        it; skipped when the caller just did, *caught_up*): another worker may already have answered 200 from a
        record this worker has not read yet. Past the deadline is final (a 504), so it is only said right after
        such a read.
        """
        if not entry.done.is_set() and barrier_s and not caught_up:
            started = time.monotonic()
            caught_up = self.read_barrier(entry.request_id, barrier_s)
            if wait_s:
                wait_s = max(0.0, wait_s - (time.monotonic() - started))
        if not entry.done.is_set() and wait_s:
            if entry.deadline_ms is not None:
                wait_s = min(wait_s, (entry.deadline_ms - now_ms()) / 1000 + 0.05)
            entry.done.wait(max(0.0, wait_s))
            caught_up = False            # time has passed since the read
        if not entry.done.is_set() and entry.expired(now_ms()) and barrier_s and not caught_up:
            self.read_barrier(entry.request_id, barrier_s)
        return entry.done.is_set() or entry.expired(now_ms())
