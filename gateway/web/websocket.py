"""``/ws``: request-reply over one websocket, many requests in flight, replies pushed as they arrive.

A request frame is a JSON object ``{"id", "service", "method", "path", "headers", "body"}``; every frame the gateway
sends back carries the request's ``id``: one reply frame, or a streaming reply's item frames then an ``end`` (or
``error``) frame; bad input gets an error frame ``{"id", "error": <problem>}`` and the socket stays open.

This module is the endpoint (the upgrade, writes bounded in time); :mod:`gateway.web.ws_session` is the session
(frames in, calls of the core, frames out). Each request's reply comes back to this worker exactly like an HTTP
request's. A closed socket drops all its pending entries.

A client that does not read is dropped, never buffered without bound: the frames waiting for it are bounded
(``limits.write_buffer_records`` / ``write_buffer_bytes``; past them the socket is closed with 1008 "slow
consumer"), each write is bounded (``limits.write_timeout_ms``; past it the connection is aborted), and the
library pings every ``websocket.ping_interval_ms`` (a client that does not answer is closed, 1008 "Ping/Pong
timeout"). Either way its requests leave the pending table at once.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, request

from ..errors import (
    GatewayError,
    MethodNotAllowed,
)
from ..extensions import current_gateway, current_variants
from .guard import WriteDeadline, WriteTimeout
from .requests import (
    ALL_METHODS,
)
from .ws_session import Session

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)
bp = Blueprint("ws", __name__)


class UpgradeRequired(GatewayError):
    status, code, title = 426, "upgrade_required", "WebSocket upgrade required"


class _SendAll:
    """simple-websocket writes with ``socket.send``, which may write part of a frame; write all of it, one writer
    at a time (the library's own reader thread answers pings on the same socket), each write within
    ``limits.write_timeout_ms``: past it the connection is aborted and :class:`WriteTimeout` (an ``OSError``, which
    the library's thread treats as a dead connection) raised."""

    def __init__(self, sock: Any, timeout_ms: int) -> None:
        self._sock = sock
        self._lock = threading.Lock()   # gevent-patched: a cooperative lock
        self.deadline = WriteDeadline(sock, timeout_ms)

    def send(self, data: bytes) -> int:
        with self._lock:
            try:
                with self.deadline:
                    self._sock.sendall(data)
            except OSError:
                if self.deadline.expired:
                    raise WriteTimeout(f"a write blocked for more than limits.write_timeout_ms "
                                       f"({self.deadline.timeout_ms} ms)") from None
                raise
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)



@bp.route("/ws", methods=ALL_METHODS, provide_automatic_options=False)
def not_websocket() -> Response:
    """Plain HTTP on /ws: say what to do instead of falling through to the proxy ("no service 'ws'")."""
    if request.method != "GET":
        raise MethodNotAllowed("/ws is a websocket endpoint: GET with Upgrade: websocket", allow=["GET"])
    raise UpgradeRequired("/ws speaks WebSocket: connect with a websocket client (Upgrade: websocket)")


@bp.route("/ws", endpoint="websocket", websocket=True)   # werkzeug matches this rule only for upgrade requests
def websocket() -> Response:
    from simple_websocket import Server

    gw = current_gateway()
    gw.check_ready()
    variants = current_variants()
    cfg = gw.config.websocket
    ping_s = cfg.ping_interval_ms / 1000 or None
    ws = Server(request.environ, max_message_size=4 * cfg.max_frame_bytes + 4096, ping_interval=ping_s)
    # the library's own thread sends pings (and the close after a ping timeout) through this too
    ws.sock = _SendAll(ws.sock, gw.config.limits.write_timeout_ms)
    variants.sockets += 1
    try:
        Session(gw, ws).run()
    except Exception:  # noqa: BLE001 - the connection is a websocket now: an HTTP error page must not follow
        log.exception("websocket session failed")
    finally:
        variants.sockets -= 1
        try:
            ws.close()
        except Exception:  # noqa: BLE001 - already closed by the client
            pass
    return _Upgraded(ws.mode)


class _Upgraded(Response):
    """The connection was a websocket: nothing more may be written to it as HTTP (as flask-sock does)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if self.mode == "gunicorn":
            raise StopIteration()   # gunicorn's async worker closes the connection quietly on StopIteration
        if self.mode == "werkzeug":
            return super().__call__(environ, start_response)
        return []
