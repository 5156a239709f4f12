"""gunicorn worker class: the gevent worker, plus a prompt graceful stop that never fails a request.

gunicorn's gevent worker waits, on a graceful stop, until every connection is closed, including idle keep-alive
connections that sit waiting for a next request that will never come; those hold a rolling restart for the whole
``graceful_timeout``. This worker closes idle keep-alive connections as soon as the stop begins, while requests in
flight run to completion:

* **Only idle, only when nothing arrived.** A connection is closed only while its greenlet waits for a NEXT request
  (not the first: a client that just connected is about to send one) and no byte of a request is waiting in the
  socket. A request that already arrived is served, with ``Connection: close``.
* **Race-free.** The close is a hub callback that checks, when it runs (no other greenlet can run meanwhile), that
  the greenlet is still in that same idle wait, and only then throws the wait's own silent ``Timeout`` into it.
  (``Greenlet.kill(..., block=False)`` delivers LATER: a greenlet that read a request in between got the Timeout in
  the middle of that request, and its client gunicorn's HTML 500.)
* **Every response written after the stop began says ``Connection: close``**, and nothing that escapes the app
  reaches gunicorn's HTML error page (:class:`gateway.serve.safety.SafetyNet`, outermost).

What a keep-alive client can still see: its request crossed the close of an idle connection on the wire (EOF or a
reset before any response byte). Nothing sent on such a connection was processed; retry on a new connection.

Loaded by the gunicorn master: import nothing that imports kafka here.
"""
from __future__ import annotations

import array
import fcntl
import logging
import termios
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import gevent
from gunicorn.workers.ggevent import GeventWorker

from .safety import SafetyNet

log = logging.getLogger(__name__)
CLOSE_NOW_S = 0.001   # the "wait" of an idle keep-alive connection that begins after the stop


@dataclass
class _Conn:
    sock: Any
    waits: int = 0                          # request waits so far (1: the first request)
    idle: gevent.Timeout | None = None      # set while waiting for a next request (a keep-alive wait)


def bytes_waiting(sock: Any) -> int:
    """Bytes received on *sock* and not read yet (FIONREAD: no read, never blocks); 0 when it cannot tell."""
    try:
        buf = array.array("i", [0])
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf, True)
        return buf[0]
    except (OSError, ValueError):
        return 0


class SettledConfig:
    """gunicorn's settings as one worker reads them: each setting looked up once, then a plain attribute.

    gunicorn's ``Config.__getattr__`` looks every setting up in its table and calls ``Setting.get()``, and its HTTP
    code reads settings per request (parsing, forwarded-header policy, keep-alive, chunking, the access log): 5% of
    a loaded worker's CPU samples (``python -m bench.profile``). A worker's settings never change once it runs (a
    reload starts new workers), so the worker reads them through this. :meth:`set` still reaches gunicorn's
    ``Config`` and forgets the cached value. Only the worker's public ``cfg`` attribute is swapped;
    ``tests/test_units.py`` checks that every setting reads the same through it."""

    def __init__(self, cfg: Any) -> None:
        object.__setattr__(self, "wrapped", cfg)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.wrapped, name)      # AttributeError as gunicorn raises it for an unknown name
        object.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.wrapped, name, value)
        self.__dict__.pop(name, None)

    def set(self, name: str, value: Any) -> None:
        self.wrapped.set(name, value)
        self.__dict__.pop(name, None)


class GatewayWorker(GeventWorker):
    def init_process(self) -> None:
        self._conns: dict[gevent.Greenlet, _Conn] = {}
        # after the fork, before anything serves: this worker's settings are final (see SettledConfig)
        self.cfg = SettledConfig(self.cfg)
        gevent.spawn(self._close_idle_when_stopping)
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = SafetyNet(self.wsgi, draining=lambda: not self.alive)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        """One connection, in its own greenlet: remembered so that its waits can be told apart."""
        me = gevent.getcurrent()
        self._conns[me] = _Conn(client)
        try:
            super().handle(listener, client, addr)
        finally:
            self._conns.pop(me, None)

    @contextmanager
    def timeout_ctx(self) -> Iterator[None]:
        """Wraps gunicorn's wait for the next request on a connection (base_async's keep-alive loop)."""
        me = gevent.getcurrent()
        conn = self._conns.get(me)
        if conn is not None:
            conn.waits += 1
        if conn is None or conn.waits == 1:   # the first request: the client connected to send it
            with gevent.Timeout(self.cfg.keepalive, False):
                yield
            return
        stopping_and_idle = not self.alive and not bytes_waiting(conn.sock)
        timeout = gevent.Timeout(CLOSE_NOW_S if stopping_and_idle else self.cfg.keepalive, False)
        conn.idle = timeout
        try:
            with timeout:   # an expiry (or the sweep's throw of this very Timeout) ends the wait silently
                yield
        finally:
            conn.idle = None

    def _close_idle_when_stopping(self) -> None:
        while self.alive:
            gevent.sleep(0.1)
        loop = gevent.get_hub().loop
        while True:   # again and again: a wait that had bytes waiting may stall on a partial request
            loop.run_callback(self._sweep)
            gevent.sleep(0.1)

    def _sweep(self) -> None:
        """Runs in the hub, so every greenlet checked here is suspended and stays where it is until thrown into:
        what is checked still holds when the Timeout arrives."""
        for greenlet, conn in list(self._conns.items()):
            timeout = conn.idle
            if timeout is None or greenlet.dead or bytes_waiting(conn.sock):
                continue   # busy with a request, gone, or a request is arriving: it is served with Connection: close
            try:
                greenlet.throw(timeout)   # swallowed by the wait's own `with timeout`: the connection closes
            except BaseException:  # noqa: BLE001 - never let one connection stop the sweep
                log.exception("closing an idle keep-alive connection failed")
