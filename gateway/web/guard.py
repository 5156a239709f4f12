"""What a hostile or slow client can do to a worker, bounded in one place.

* **A body that trickles in** (``Content-Length: 100``, one byte sent): :func:`read_body` reads it within
  ``limits.body_timeout_ms`` or answers ``408 body_timeout``. The read is interrupted inside gunicorn's body
  reader, which marks the request's body as failed, and gunicorn never reuses such a connection (its parser stops
  at the next request): the 408 is the last thing written on it. Request *headers* are bounded by gunicorn itself:
  the gevent worker reads every request line and header block, the first on a new connection included, under its
  keep-alive timeout (``timeout_ctx``), then closes the connection.
* **A client that stops reading** a stream or a websocket: :class:`WriteDeadline` arms a timer around each write;
  a write still blocked when it fires gets the connection aborted (which wakes the write with an error), so a
  client that never reads holds a greenlet, a socket and its bounded buffer for ``limits.write_timeout_ms`` at most.
* **Text that cannot travel on a record**: :func:`check_text` (a lone surrogate in a websocket frame's path or body
  cannot be UTF-8) and :func:`check_header` (header values are Latin-1 text without control characters, as in
  HTTP) say what to fix with a 400 before anything is registered or produced.
"""
from __future__ import annotations

import re
import socket
import struct
from typing import TYPE_CHECKING, Any

import gevent
from gunicorn.http.errors import NoMoreData, ParseException

from ..errors import BadRequest, GatewayError

if TYPE_CHECKING:
    from flask import Request

CLOSE_CONNECTION = "gateway.close_connection"   # environ key: close the connection after this answer
BODY_READ = "gateway.body_read"                 # environ key: read_body read the whole body
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_NOT_FIELD_TEXT = re.compile(r"[^\t\x20-\x7e\x80-\xff]")     # RFC 9110 field-value, as Latin-1 text


class BodyTimeout(GatewayError):
    status, code, title = 408, "body_timeout", "The request body did not arrive in time"


class MalformedBody(BadRequest):
    code, title = "malformed_body", "Malformed request body"


class WriteTimeout(OSError):
    """A write to a client blocked past ``limits.write_timeout_ms``; the connection was aborted."""


# -- slow bodies --------------------------------------------------------------------------------------------------
def read_body(request: Request, timeout_ms: int) -> bytes:
    """The whole request body, or :class:`BodyTimeout` if it has not arrived within *timeout_ms*."""
    environ = request.environ
    if environ.get("CONTENT_LENGTH") in (None, "", "0") and "HTTP_TRANSFER_ENCODING" not in environ:
        return request.get_data(cache=False)    # no body: the server reads nothing, so no timer (it costs CPU)
    error = BodyTimeout(f"the request body did not arrive within limits.body_timeout_ms ({timeout_ms} ms); send "
                        "the whole body at once (Content-Length must match what is sent)")
    try:
        with gevent.Timeout(timeout_ms / 1000, error):
            body = request.get_data(cache=False)    # werkzeug enforces MAX_CONTENT_LENGTH (413)
        request.environ[BODY_READ] = True
        return body
    except (ParseException, NoMoreData) as exc:
        # the server's body reader (gunicorn's, chunked or not) refused the framing: the client's fault, a 400; the
        # connection cannot carry another request (where this body ends is unknown): closed after the answer
        request.environ[CLOSE_CONNECTION] = True
        raise MalformedBody(f"the request body's framing is broken ({type(exc).__name__}: {exc}); send a "
                            "Content-Length body, or chunks as HTTP/1.1 defines them") from None


# -- slow readers -------------------------------------------------------------------------------------------------
def abort(sock: Any, discard: bool = True) -> None:
    """End a connection at once: the blocked write (and read) on it fail. With *discard*, on close the kernel also
    drops what it still holds for it (RST instead of a FIN after megabytes the client will never read); without,
    what was written (a close frame) still reaches a client that reads."""
    if discard:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, AttributeError):
            pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass


class WriteDeadline:
    """A timer around writes to one client: ``with deadline:`` arms it, leaving disarms it; if it fires first the
    connection is aborted and :attr:`expired` is set. Arm it yourself (:meth:`arm`) across a ``yield`` when the
    write happens in the server's code (a streamed response).

    ``gevent.get_hub().loop.timer`` is gevent's documented loop interface; the callback runs in the hub, so it
    only sets a flag and aborts the socket (no blocking, nothing that can raise)."""

    def __init__(self, sock: Any, timeout_ms: int) -> None:
        self.sock = sock
        self.timeout_ms = timeout_ms
        self.expired = False
        self._timer: Any = None

    @property
    def armed(self) -> bool:
        """A write is under way; seen from another greenlet, it is blocked (a write that does not block does not
        yield)."""
        return self._timer is not None

    def arm(self) -> None:
        if self._timer is None and self.sock is not None and not self.expired:
            loop = gevent.get_hub().loop
            loop.update_now()   # the loop's cached time can be a whole busy iteration old: count from now
            self._timer = loop.timer(self.timeout_ms / 1000)
            self._timer.start(self._fire)

    def disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.close()

    def _fire(self) -> None:
        self.disarm()
        self.expired = True
        abort(self.sock)

    def __enter__(self) -> WriteDeadline:
        self.arm()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disarm()


def client_socket(environ: dict[str, Any]) -> Any:
    """The client's socket (gunicorn, or werkzeug's dev server); None elsewhere (then writes are not bounded)."""
    return environ.get("gunicorn.socket") or environ.get("werkzeug.socket")


# -- text that must fit on a record -------------------------------------------------------------------------------
def check_text(what: str, value: str) -> None:
    """*value* goes onto a record as UTF-8: a lone surrogate (``"\\ud800"`` in JSON) cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequest(f"{what} is not valid Unicode: {value[exc.start]!r} at position {exc.start} is a lone "
                         "surrogate; send UTF-8 text") from None


def check_header(name: str, value: str) -> None:
    """A header that may go onto a record: the name an HTTP token, the value Latin-1 text without control
    characters (what an HTTP header can carry; the record keeps its bytes)."""
    if not _TOKEN.fullmatch(name):
        raise BadRequest(f"header name {name!r} is not an HTTP token (letters, digits and !#$%&'*+.^_`|~-)")
    bad = _NOT_FIELD_TEXT.search(value)
    if bad is not None:
        ch = bad.group()
        raise BadRequest(f"header {name}: character {ch!r} (U+{ord(ch):04X}) at position {bad.start()} cannot be "
                         "carried in an HTTP header: values are Latin-1 text without control characters "
                         "(percent-encode or base64 anything else)")


def utf8_path(environ: dict[str, Any]) -> None:
    """The request path as received (percent-decoded by the server) must be UTF-8: werkzeug would silently turn
    other bytes into U+FFFD, and the service would see a path the client never sent."""
    raw = environ.get("PATH_INFO", "").encode("latin-1", "replace")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the path is not UTF-8: byte 0x{raw[exc.start]:02x} at position {exc.start} (after "
                         "percent-decoding); percent-encode UTF-8 text") from None


def utf8_query(raw: bytes) -> str:
    """The query string as text, byte for byte (it travels on the record as UTF-8)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the query string is not UTF-8: byte 0x{raw[exc.start]:02x} at position {exc.start}; "
                         "percent-encode it") from None
