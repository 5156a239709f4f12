"""The outermost WSGI layer: nothing the gateway raises reaches gunicorn's HTML error page.

Flask turns every ``Exception`` into a problem+json response, but gevent's ``Timeout`` and ``GreenletExit`` are
``BaseException``: they pass Flask by, and gunicorn answers them with an HTML ``500 Internal Server Error`` (or,
for a ``GreenletExit`` in the gevent worker, with nothing at all). :class:`SafetyNet` renders any such escape as
``application/problem+json``: ``503 not_ready`` while the worker drains (the request was interrupted by the
stop; retry), ``500 internal`` otherwise. When the response's headers are already on the wire it cannot change
the status, so it aborts the connection instead (the client sees a truncated response, never a wrong one).

It also closes the connection after every response whose headers go out once the worker began to stop (``Connection:
close``): gunicorn only does so for requests that *started* after the stop, and drops a ``Connection`` header set by
the application.

Imports nothing that imports kafka (the gunicorn master loads the worker class, which loads this).
"""
from __future__ import annotations

import http
import logging
import socket
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from ..errors import GatewayError, NotReady, problem_response
from ..web.guard import BODY_READ, CLOSE_CONNECTION

if TYPE_CHECKING:
    from types import TracebackType

    StartResponse = Callable[..., Callable[[bytes], Any]]

log = logging.getLogger(__name__)


class Aborted(RuntimeError):
    """Raised to the server when a response must be cut off: gunicorn then shuts the socket down."""


def close_after_response(start_response: StartResponse) -> bool:
    """Ask gunicorn to close the connection after this response (``Connection: close``).

    gunicorn passes its ``Response.start_response`` bound method as *start_response*; ``Response.force_close()``
    is what gunicorn itself calls for requests that start after the stop began. Reaching the bound method's owner
    is the one way in (gunicorn ignores a ``Connection`` header from the app); ``tests/test_drain.py`` fails if
    gunicorn changes this. Other servers: returns False and does nothing."""
    force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
    if callable(force_close):
        force_close()
        return True
    return False


def _framing_unsure(environ: dict[str, Any]) -> bool:
    """Must the connection close after this answer because where the request ends is not known? When its body's
    framing broke (``web.guard.read_body``), or when it came in chunks the app did not read (a route that takes
    no body): gunicorn would read them to find the next request, and on broken chunks write an error page of its
    own after the app's answer."""
    return bool(environ.get(CLOSE_CONNECTION)) or ("HTTP_TRANSFER_ENCODING" in environ
                                                   and not environ.get(BODY_READ))


class _Headers:
    """Holds the application's status and headers until the first body bytes go out (PEP 3333 lets middleware
    delay them), so that an error before that point can still become a clean problem response."""

    def __init__(self, start_response: StartResponse, draining: Callable[[], bool]) -> None:
        self._real = start_response
        self._draining = draining
        self._pending: tuple[str, list[tuple[str, str]]] | None = None
        self.sent = False

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: tuple[type[BaseException], BaseException, TracebackType] | None = None
                       ) -> Callable[[bytes], Any]:
        if exc_info is not None and self.sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self._pending = (status, list(headers))
        return self.write

    def commit(self) -> None:
        """Hand status and headers to the server; it writes them with the first body bytes."""
        if self.sent:
            return
        if self._pending is None:
            raise RuntimeError("the application returned a body without calling start_response")
        if self._draining():
            close_after_response(self._real)
        status, headers = self._pending
        self._write = self._real(status, headers)
        self.sent = True

    def write(self, data: bytes) -> None:  # PEP 3333's legacy write(); Flask does not use it
        self.commit()
        self._write(data)

    def replace(self, status: str, headers: list[tuple[str, str]]) -> None:
        self._pending = (status, headers)


class SafetyNet:
    """Wraps the WSGI app (``GatewayWorker`` puts it outermost). *draining* says whether the worker is stopping.

    Attribute reads fall through to the wrapped app: gunicorn hooks use ``worker.wsgi.extensions``."""

    def __init__(self, app: Callable[..., Iterable[bytes]], draining: Callable[[], bool] = lambda: False) -> None:
        self.app = app
        self.draining = draining

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        headers = _Headers(start_response, lambda: self.draining() or _framing_unsure(environ))
        try:
            body = self.app(environ, headers.start_response)
        except StopIteration:   # gunicorn's "close quietly" (a websocket session that ended): not an error
            raise
        except BaseException as exc:  # noqa: BLE001 - the point: Timeout, GreenletExit, anything
            return self._failed(exc, environ, headers, calling=True)
        return self._iterate(body, environ, headers)

    def _iterate(self, body: Iterable[bytes], environ: dict[str, Any], headers: _Headers) -> Iterator[bytes]:
        try:
            for chunk in body:
                headers.commit()
                yield chunk
            headers.commit()
        except GeneratorExit:
            raise
        except BaseException as exc:  # noqa: BLE001
            yield from self._failed(exc, environ, headers, calling=False)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    def _failed(self, exc: BaseException, environ: dict[str, Any], headers: _Headers, calling: bool
                ) -> list[bytes]:
        draining = self.draining()
        where = f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}"
        upgraded = environ.get("HTTP_UPGRADE", "").lower() == "websocket"
        if headers.sent or upgraded:
            # the status is on the wire (or the socket speaks websocket now): cut the connection off
            log.error("%s: %s after the response started%s; aborting the connection", where,
                      type(exc).__name__, " (worker stopping)" if draining else "", exc_info=exc)
            sock = environ.get("gunicorn.socket")
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # whatever the server writes next goes nowhere
                except OSError:
                    pass
            if calling and not headers.sent:
                raise StopIteration from exc  # gunicorn closes the connection quietly
            raise Aborted(f"{type(exc).__name__} after the response started") from exc
        if draining:
            log.warning("%s interrupted by the worker's stop (%s): answering 503 not_ready", where,
                        type(exc).__name__)
            error: GatewayError = NotReady("the gateway worker stopped while handling this request; retry")
        else:
            log.error("%s: unexpected %s escaped the application", where, type(exc).__name__, exc_info=exc)
            error = GatewayError("unexpected gateway error; see the gateway log")
        body, status, extra = problem_response(error)
        phrase = http.HTTPStatus(status).phrase
        headers.replace(f"{status} {phrase}", [*extra.items(), ("Content-Length", str(len(body)))])
        headers.commit()
        return [body]
