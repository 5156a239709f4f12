"""gunicorn worker class: the gevent worker, plus a prompt graceful stop.

gunicorn's gevent worker waits, on a graceful stop, until every connection is closed, including idle keep-alive
connections that sit waiting for a next request that will never come; those hold a rolling restart for the whole
``graceful_timeout``. This worker ends idle keep-alive waits as soon as the stop begins (the connection closes
cleanly, as on a keep-alive timeout), while requests in flight still run to completion.

Loaded by the gunicorn master: import nothing that imports kafka here.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import gevent
from gunicorn.workers.ggevent import GeventWorker


class GatewayWorker(GeventWorker):
    def init_process(self) -> None:
        self._idle: dict[gevent.Greenlet, gevent.Timeout] = {}
        gevent.spawn(self._close_idle_when_stopping)
        super().init_process()

    @contextmanager
    def timeout_ctx(self) -> Iterator[None]:
        """The keep-alive wait for the next request on a connection (gunicorn's base_async uses this)."""
        timeout = gevent.Timeout(self.cfg.keepalive if self.alive else 0.001, False)
        me = gevent.getcurrent()
        self._idle[me] = timeout
        try:
            with timeout:
                yield
        finally:
            self._idle.pop(me, None)

    def _close_idle_when_stopping(self) -> None:
        while self.alive:
            gevent.sleep(0.1)
        while True:  # a request that finishes during the drain goes back to an idle wait: end that one too
            for greenlet, timeout in list(self._idle.items()):
                greenlet.kill(timeout, block=False)  # the Timeout is swallowed by its own `with`: clean close
            gevent.sleep(0.1)
