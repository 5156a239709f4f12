"""Streaming replies: put a stream's reply records back in order, and write them as NDJSON or Server-Sent Events.

A service streams by answering one request with many reply records, each with ``gateway-seq`` (0, 1, 2, ...) and
``gateway-stream``: ``more`` on every item, ``end`` on the last record (its body is ignored) or ``error`` (its body,
a problem, ends the stream). Kafka keeps one partition in order, but a service may use several producers or
retry, so :class:`Reorderer` releases records strictly by seq and drops duplicates.

:class:`ReplyStream` is the waiter side: a :class:`gateway.core.pending.Callback` feeds it from the reply reader's
greenlet, the HTTP or websocket greenlet takes records from its queue with a timeout (the idle gap).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from gevent.queue import Empty, Queue

from .. import jsonutil, metrics
from ..core.pending import Callback
from ..errors import GatewayError

if TYPE_CHECKING:
    from ..protocol import Reply

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
TERMINAL = ("end", "error")


class StreamBroken(GatewayError):
    status, code, title = 502, "stream_broken", "The service's stream broke the wire protocol"


class StreamIdle(GatewayError):
    status, code, title = 504, "stream_idle", "The stream stalled"


class SlowConsumer(GatewayError):
    status, code, title = 503, "slow_consumer", "The client did not read the stream fast enough"


class Totals:
    """What every :class:`OutputBuffer` of this worker holds right now (``/readyz``: ``write_buffered``)."""

    records = 0
    bytes = 0


# what one fetch of a reply partition may bring at once: kafka-python's max_partition_fetch_bytes and librdkafka's
# max.partition.fetch.bytes (both 1 MiB by default, and the gateway sets neither)
FETCH_BYTES = 1024 * 1024


class OutputBuffer:
    """What waits to be written to one client (a streaming response, a websocket): a gevent queue bounded by
    records and bytes while the client does not read.

    :meth:`put` refuses what would pass a bound while *writer_blocked* says a write to the client is stuck (its
    receive window is full), so the caller can drop the slow client. While the writer is not blocked the bound
    may be passed: the reply reader hands over a whole fetch at once (without yielding), and a client that reads
    fine must not be dropped for a burst its writer is about to drain. By *burst_bytes* (one fetch of a reply
    partition) at most, though: on a loaded worker the writer may not run between two fetches, and what one client
    holds must stay bounded even then (a writer that did not get to write a whole fetch is as good as blocked).
    One record is always accepted, however large; :meth:`put_final` always succeeds (the last word: an error, an
    end marker)."""

    def __init__(self, max_records: int, max_bytes: int,
                 writer_blocked: Callable[[], bool] = lambda: True, burst_bytes: int = FETCH_BYTES) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.writer_blocked = writer_blocked
        self.burst_bytes = burst_bytes
        self.records = 0
        self.bytes = 0
        self._queue: Queue = Queue()

    def put(self, item: Any, size: int) -> bool:
        if self.records and (self.records + 1 > self.max_records or self.bytes + size > self.max_bytes) and (
                self.bytes + size > self.max_bytes + self.burst_bytes or self.writer_blocked()):
            return False
        self._add(item, size)
        return True

    def put_final(self, item: Any) -> None:
        self._add(item, 0)

    def _add(self, item: Any, size: int) -> None:
        self.records += 1
        self.bytes += size
        Totals.records += 1
        Totals.bytes += size
        self._queue.put((item, size))

    def get(self, timeout_s: float | None = None) -> Any:
        """The next item; raises ``gevent.queue.Empty`` after *timeout_s*."""
        item, size = self._queue.get(timeout=timeout_s)
        self.records -= 1
        self.bytes -= size
        Totals.records -= 1
        Totals.bytes -= size
        return item

    def empty(self) -> bool:
        return self._queue.empty()

    def clear(self) -> None:
        while not self._queue.empty():
            self.get(0)


class Reorderer:
    """Releases a stream's records in seq order, each once; a plain reply (no ``gateway-stream``) is a stream
    of one. ``done`` once the terminal record (end/error/plain) was released."""

    def __init__(self, max_buffered: int = 10000, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.next_seq = 0
        self.done = False
        self.duplicates = 0
        self._buffer: dict[int, Reply] = {}
        self._bytes = 0
        self._max = max_buffered
        self._max_bytes = max_bytes

    def push(self, reply: Reply) -> list[Reply]:
        if self.done:
            self.duplicates += 1
            return []
        if reply.stream is None:
            if self.next_seq == 0 and not self._buffer:
                self.done = True
                return [reply]
            raise StreamBroken("a reply without gateway-stream arrived in the middle of a stream")
        if reply.stream not in ("more", *TERMINAL):
            raise StreamBroken(f"gateway-stream {reply.stream!r} is not more, end or error")
        if reply.seq is None or reply.seq < 0:
            raise StreamBroken("a stream record has no gateway-seq")
        if reply.seq < self.next_seq or reply.seq in self._buffer:
            self.duplicates += 1
            return []
        if reply.seq != self.next_seq and (len(self._buffer) >= self._max
                                           or self._bytes + len(reply.body) > self._max_bytes):
            raise StreamBroken(f"more than {self._max} stream records or {self._max_bytes} bytes arrived out of "
                               f"order (missing seq {self.next_seq})")
        self._buffer[reply.seq] = reply
        self._bytes += len(reply.body)
        out = []
        while self.next_seq in self._buffer:
            r = self._buffer.pop(self.next_seq)
            self._bytes -= len(r.body)
            out.append(r)
            self.next_seq += 1
            if r.stream in TERMINAL:
                self.done = True
                self._buffer.clear()
                self._bytes = 0
                break
        return out


class ReplyStream:
    """A waiter that queues a request's replies in order for the HTTP greenlet that writes them, in an
    :class:`OutputBuffer`: a client that does not read fast enough is dropped (a last :class:`SlowConsumer` error,
    the waiter released, ``gateway_slow_consumers_dropped_total{kind}`` counted). Use :meth:`waiter` as
    ``open_call``'s factory."""

    def __init__(self, buffer: OutputBuffer, kind: str) -> None:
        self.buffer = buffer
        self.kind = kind
        self.reorder = Reorderer(max_bytes=buffer.max_bytes)
        self.dropped = False

    def waiter(self, correlation_id: bytes, partition: int, deadline: float) -> Callback:
        return Callback(correlation_id, partition, deadline, self._on_reply, self.buffer.put_final)

    def _on_reply(self, reply: Reply) -> bool:
        try:
            for r in self.reorder.push(reply):
                if not self.buffer.put(r, len(r.body)):
                    self._drop()
                    break
        except StreamBroken as exc:
            self.reorder.done = True
            self.buffer.put_final(exc)
        return self.reorder.done

    def _drop(self) -> None:
        self.dropped = True
        self.reorder.done = True
        metrics.SLOW_CONSUMERS.labels(self.kind, "buffer_full").inc()
        self.buffer.put_final(SlowConsumer(
            f"more than {self.buffer.max_records} records or {self.buffer.max_bytes} bytes were waiting to be "
            "written to this client (limits.write_buffer_records / write_buffer_bytes): read faster"))

    def next(self, timeout_s: float, why: str = "") -> Reply:
        """The next record in order; raises :class:`StreamIdle` after *timeout_s*, or the waiter's failure."""
        try:
            item = self.buffer.get(max(0.0, timeout_s))
        except Empty:
            raise StreamIdle(f"no stream record within {int(timeout_s * 1000)} ms{why}") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """The response is over: let go of whatever it did not write."""
        self.buffer.clear()


# -- encodings ---------------------------------------------------------------------------------------------------
def item_json(reply: Reply) -> str:
    """One stream item as one line of JSON: JSON bodies as they are (compacted if they span lines), text as a
    JSON string, an empty body as null, other bytes as their UTF-8 reading (replacement characters)."""
    body = reply.body
    if not body:
        return "null"
    if jsonutil.is_json_type(reply.content_type):
        text = body.decode("utf-8", "replace").strip()
        if "\n" not in text and "\r" not in text:
            return text
        try:
            return json.dumps(jsonutil.parse(text), separators=(",", ":"))
        except ValueError:
            return json.dumps(text)
    return json.dumps(body.decode("utf-8", "replace"))


def problem_of(reply: Reply) -> dict[str, Any]:
    """The problem object of a ``gateway-stream=error`` record (or a generic one if its body is not JSON)."""
    try:
        body = jsonutil.parse(reply.body or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"detail": reply.body.decode("utf-8", "replace")}
    body.setdefault("type", "urn:kafka-rest-gateway:error:service_stream_error")
    body.setdefault("title", "The service ended the stream with an error")
    body.setdefault("status", reply.status if reply.status >= 400 else 500)
    return body


class NDJSONFormat:
    """``application/x-ndjson``: one JSON value per line; an error ends the stream with a problem object line
    (``"type": "urn:kafka-rest-gateway:error:..."``); a clean end is the end of the chunked body."""

    content_type = NDJSON

    @staticmethod
    def item(reply: Reply) -> bytes:
        return (item_json(reply) + "\n").encode()

    @staticmethod
    def end(seq: int) -> bytes:
        return b""

    @staticmethod
    def error(problem: dict[str, Any]) -> bytes:
        return (json.dumps(problem) + "\n").encode()


class SSEFormat:
    """``text/event-stream``: each item an event with ``id: <seq>``; ``event: end`` or ``event: error`` last, so
    an EventSource can close instead of reconnecting."""

    content_type = SSE

    @staticmethod
    def item(reply: Reply) -> bytes:
        return f"id: {reply.seq}\ndata: {item_json(reply)}\n\n".encode()

    @staticmethod
    def end(seq: int) -> bytes:
        return f"event: end\ndata: {json.dumps({'items': seq})}\n\n".encode()

    @staticmethod
    def error(problem: dict[str, Any]) -> bytes:
        return f"event: error\ndata: {json.dumps(problem)}\n\n".encode()


def wanted_format(accept_values: list[tuple[str, float]]) -> type[NDJSONFormat] | type[SSEFormat] | None:
    """The stream format the client explicitly accepts (not via ``*/*``), SSE first."""
    named = {mt.lower() for mt, q in accept_values if q > 0}
    if SSE in named:
        return SSEFormat
    if NDJSON in named or "application/jsonl" in named:
        return NDJSONFormat
    return None
