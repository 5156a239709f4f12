"""One websocket session: its requests in flight, its writer and sweeper greenlets (``/ws``, see
:mod:`gateway.web.websocket`).

A request frame is read by :mod:`gateway.web.ws_frames` (checked as an HTTP request is, behind the same edge
hook) and becomes a call of the core (:mod:`gateway.core.calls`) with a
:class:`gateway.core.pending.Callback` waiter; the session closes the call when the request is over (its last
reply, an error, a deadline, the socket closed). A reply is framed in the reply reader's greenlet and queued; one
writer greenlet writes the frames (so frames never interleave on the wire); a sweeper expires requests past their
deadline and idle streams. The writer and sweeper run under :class:`gateway.supervise.Supervised`: should one
crash, the crash is logged and counted and the session ends as a closed socket would, releasing its requests.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent

from .. import jsonutil, metrics
from ..core.pending import Callback
from ..errors import (
    BadRequest,
    GatewayError,
    MalformedJSON,
    PayloadTooLarge,
    ReplyTimeout,
)
from ..supervise import Supervised
from ..variants.streams import OutputBuffer, Reorderer, StreamBroken, StreamIdle
from .guard import WriteTimeout, abort
from .ws_frames import parse_frame, reply_frame

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..core.calls import Call
    from ..core.runtime import Gateway
    from ..protocol import Reply

log = logging.getLogger(__name__)


class SocketBusy(GatewayError):
    status, code, title = 429, "socket_in_flight_limit", "Too many requests in flight on this socket"


_CLOSE = object()      # in the output buffer: write what came before, then close the socket (slow consumer)
SLOW_CONSUMER = 1008   # policy violation: the close code of a dropped slow consumer (as the library's ping timeout)


@dataclass
class _InFlight:
    frame_id: Any
    correlation_id: bytes
    svc: ServiceConfig
    first_deadline: float
    stream_deadline: float
    reorder: Reorderer = field(default_factory=Reorderer)
    last_at: float = 0.0
    call: Call | None = None


class Session:
    """One websocket: its in-flight requests, its writer and sweeper greenlets."""

    def __init__(self, gw: Gateway, ws: Any) -> None:
        self.gw = gw
        self.ws = ws
        self.limits = gw.config.websocket
        self.inflight: dict[Any, _InFlight] = {}
        limits = gw.config.limits
        writes = getattr(ws.sock, "deadline", None)       # gateway.web.websocket._SendAll's
        self.out = OutputBuffer(limits.write_buffer_records, limits.write_buffer_bytes,
                                (lambda: writes.armed) if writes is not None else (lambda: True))
        self.closed = False
        self.dropped: str | None = None      # why the client was dropped as a slow consumer

    # -- outgoing ----------------------------------------------------------------------------------------------
    def send(self, frame: dict[str, Any]) -> None:
        """Queue a frame for the writer; never blocks (called in the reply reader's greenlet too)."""
        if self.closed or self.dropped:
            return
        text = json.dumps(frame)
        if not self.out.put(text, len(text)):
            self._drop("buffer_full", f"slow consumer: more than {self.out.max_records} frames or "
                                      f"{self.out.max_bytes} bytes unread")

    def send_error(self, frame_id: Any, error: GatewayError, correlation_id: str | None = None) -> None:
        self.send({"id": frame_id, "error": error.to_problem(correlation_id)})   # a 405's problem has "allow"

    def _drop(self, reason: str, detail: str) -> None:
        """A slow consumer: count it, release its requests now, and have the writer close the socket after
        what is already queued (1008 + *detail*), or abort it if a write timed out."""
        if self.dropped:
            return
        self.dropped = detail
        metrics.SLOW_CONSUMERS.labels("websocket", reason).inc()
        log.warning("websocket dropped (%s): %s; %d requests released", reason, detail, len(self.inflight))
        self._release_all()
        self.out.put_final(_CLOSE)

    def _release_all(self) -> None:
        for entry in list(self.inflight.values()):
            self._finish(entry)

    def _writer(self) -> None:
        from simple_websocket import ConnectionClosed

        while True:
            item = self.out.get()
            if item is None:
                return
            try:
                if item is _CLOSE:
                    self.ws.close(SLOW_CONSUMER, (self.dropped or "slow consumer")[:120])
                    # wakes the session's receive (the library's reader sees the end); the close frame still
                    # reaches a client that reads
                    abort(self.ws.sock, discard=False)
                    return
                self.ws.send(item)
            except WriteTimeout as exc:     # the connection is already aborted
                self._drop("write_timeout", f"slow consumer: {exc}")
                return
            except (ConnectionClosed, OSError):     # the connection is gone: end the session's receive too
                self.closed = True
                abort(self.ws.sock)
                return

    def _crashed(self, exc: BaseException) -> None:
        """``on_crash`` of the writer and the sweeper (already logged and counted by Supervised): end the session
        as a closed socket would, releasing its requests."""
        self.closed = True
        self._release_all()
        abort(self.ws.sock)

    # -- request frames ----------------------------------------------------------------------------------------
    def on_frame(self, data: Any) -> None:
        if isinstance(data, bytes):
            raise BadRequest("frames are JSON text; binary frames are not accepted")
        limit = self.limits.max_frame_bytes
        if len(data) > limit and len(data.encode("utf-8", "surrogatepass")) > limit:
            raise PayloadTooLarge(f"the frame is larger than websocket.max_frame_bytes "
                                  f"({self.limits.max_frame_bytes})")
        try:
            frame = jsonutil.parse(data)
        except ValueError as exc:
            raise MalformedJSON(f"the frame is not valid JSON: {exc}") from None
        if not isinstance(frame, dict):
            raise BadRequest('a frame is a JSON object: {"id", "service", "method", "path", "headers", "body"}')
        frame_id = frame.get("id")
        try:
            self._request(frame)
        except GatewayError as exc:
            self.send_error(frame_id if isinstance(frame_id, (str, int)) else None, exc)

    def _request(self, frame: dict[str, Any]) -> None:
        parsed = parse_frame(self.gw, frame, self.inflight)
        if len(self.inflight) >= self.limits.max_in_flight:
            raise SocketBusy(f"this socket already has {self.limits.max_in_flight} requests in flight "
                             "(websocket.max_in_flight); wait for some replies")
        svc, now = parsed.svc, time.monotonic()
        entry = _InFlight(parsed.frame_id, b"", svc, now + svc.timeout_ms / 1000, now + svc.stream_timeout_ms / 1000)

        def make(correlation_id: bytes, partition: int, deadline: float) -> Callback:
            entry.correlation_id = correlation_id
            return Callback(correlation_id, partition, deadline, lambda r: self._on_reply(entry, r),
                            lambda exc: self._on_error(entry, exc))

        self.inflight[parsed.frame_id] = entry
        try:
            entry.call = self.gw.open_call(svc, make, parsed.request, timeout_ms=svc.stream_timeout_ms)
        except BaseException:
            self._finish(entry)
            raise

    # -- replies (called in the reply reader's greenlet: frame and queue, never block) -------------------------
    def _finish(self, entry: _InFlight, answered: bool = False) -> None:
        """The request is over for this socket: it leaves the socket's table and its call is closed."""
        if self.inflight.get(entry.frame_id) is entry:
            del self.inflight[entry.frame_id]
        if entry.call is not None:
            entry.call.close(answered)

    def _on_reply(self, entry: _InFlight, reply: Reply) -> bool:
        entry.last_at = time.monotonic()
        cid = reply.correlation_id.hex()
        try:
            ready = entry.reorder.push(reply)
        except StreamBroken as exc:
            self.send_error(entry.frame_id, exc, cid)
            self._finish(entry, answered=True)
            return True
        for r in ready:
            self.send(reply_frame(entry.frame_id, r, entry.svc.reply_content_type))
        if entry.reorder.done or self.dropped or self.closed:
            self._finish(entry, answered=True)
            return True
        return False

    def _on_error(self, entry: _InFlight, exc: BaseException) -> None:
        if self.inflight.get(entry.frame_id) is entry:
            err = exc if isinstance(exc, GatewayError) else GatewayError(str(exc))
            self.send_error(entry.frame_id, err, entry.correlation_id.hex())
        self._finish(entry)

    def _sweep(self) -> None:
        while not self.closed:
            gevent.sleep(0.1)
            now = time.monotonic()
            for entry in list(self.inflight.values()):
                error: GatewayError | None = None
                if entry.last_at == 0.0 and now > entry.first_deadline:
                    metrics.TIMEOUTS.labels(entry.svc.name).inc()
                    error = ReplyTimeout(f"{entry.svc.name} did not reply within {entry.svc.timeout_ms} ms")
                elif entry.last_at and now > entry.stream_deadline:
                    error = StreamIdle(f"the stream did not end within stream_timeout_ms "
                                       f"({entry.svc.stream_timeout_ms})")
                elif entry.last_at and now - entry.last_at > entry.svc.stream_idle_timeout_ms / 1000:
                    error = StreamIdle(f"no stream record for stream_idle_timeout_ms "
                                       f"({entry.svc.stream_idle_timeout_ms})")
                if error is not None:
                    self.send_error(entry.frame_id, error, entry.correlation_id.hex())
                    self._finish(entry)

    # -- the socket's life -------------------------------------------------------------------------------------
    def run(self) -> None:
        from simple_websocket import ConnectionClosed

        def supervised(name: str, target: Any) -> Supervised:
            return Supervised(name, target, restart=False, worker_wide=False, on_crash=self._crashed).start()

        writer = supervised("websocket-writer", self._writer)
        sweeper = supervised("websocket-sweeper", self._sweep)
        try:
            while not self.closed:
                data = self.ws.receive()
                try:
                    self.on_frame(data)
                except GatewayError as exc:
                    self.send_error(None, exc)
                except Exception:  # noqa: BLE001 - a bug must cost one frame, not the session
                    log.exception("websocket frame failed")
                    self.send_error(None, GatewayError("unexpected gateway error handling this frame; see the "
                                                       "gateway log"))
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self._release_all()
            sweeper.stop(timeout_s=0)
            self.out.put_final(None)
            writer.stop(timeout_s=1)    # what is queued cannot reach a closed socket: do not wait for it
            self.out.clear()


