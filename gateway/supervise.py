"""Long-lived greenlets under supervision.

A worker runs a handful of loops for its whole life (reply reader, group member, topic tails, broker probe) and
each websocket runs a writer and a sweeper. A loop that dies silently is the worst failure a gateway can have:
every later request times out while ``/readyz`` still says 200. So every such loop runs through
:class:`Supervised`: an exception is logged with its traceback and counted
(``gateway_greenlet_crashes_total{name}``), the loop is started again after a back-off (or, for loops that must
not restart, ``on_crash`` ends what depends on them), and :func:`health` reports it as down until it runs again,
which ``/readyz`` turns into a 503.

Loops are written to run until told to stop; a loop that returns is finished (not restarted).
"""
from __future__ import annotations

import logging
import time
import weakref
from typing import Callable

import gevent
from gevent import GreenletExit

from . import metrics

log = logging.getLogger(__name__)

_registry: weakref.WeakSet[Supervised] = weakref.WeakSet()


class Supervised:
    """Runs *target* in a greenlet; restarts it after an exception (``restart=True``) with a growing back-off.

    ``healthy`` is False from a crash until the restarted loop runs, and for good after a crash when
    ``restart=False``. Worker-wide loops (``worker_wide=True``) count in :func:`health`, hence in readiness.
    """

    def __init__(self, name: str, target: Callable[[], None], *, restart: bool = True, backoff_s: float = 0.5,
                 max_backoff_s: float = 10.0, on_crash: Callable[[BaseException], None] | None = None,
                 worker_wide: bool = True) -> None:
        self.name = name
        self.target = target
        self.restart = restart
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.on_crash = on_crash
        self.crashes = 0
        self.last_error: str | None = None
        self._down_since: float | None = None
        self._finished = False
        self._stopping = False
        self._greenlet: gevent.Greenlet | None = None
        if worker_wide:
            _registry.add(self)

    def start(self) -> Supervised:
        self._greenlet = gevent.spawn(self._run)
        return self

    @property
    def healthy(self) -> bool:
        """Running (or finished on its own), not between a crash and its restart."""
        if self._greenlet is None:
            return False
        return self._down_since is None and (self._finished or not self._greenlet.dead)

    @property
    def stopping(self) -> bool:
        """Being stopped on purpose: not a loop that is down."""
        return self._stopping

    @property
    def down_for_s(self) -> float:
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def _run(self) -> None:
        backoff = self.backoff_s
        while not self._stopping:
            started = time.monotonic()
            try:
                self._down_since = None
                self.target()
                self._finished = True
                return
            except GreenletExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - gevent.Timeout too: nothing may kill a loop unseen
                self.crashes += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                self._down_since = time.monotonic()
                metrics.GREENLET_CRASHES.labels(self.name).inc()
                if self._stopping:
                    return
                if not self.restart:
                    log.exception("%s failed; not restarted", self.name)
                    if self.on_crash is not None:
                        self.on_crash(exc)
                    return
                if time.monotonic() - started > 30:
                    backoff = self.backoff_s         # it ran fine for a while: start the back-off over
                log.exception("%s failed; restarting it in %.1f s", self.name, backoff)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Let the loop end by itself within *timeout_s* (its own stop flag; 0: not at all), then kill it."""
        self._stopping = True
        g = self._greenlet
        if g is not None and not g.dead:
            if timeout_s > 0:
                g.join(timeout=timeout_s)
            g.kill(block=True, timeout=1)


def health() -> dict[str, str]:
    """Every worker-wide supervised loop: ``ok``, or why it is down (for ``/readyz``)."""
    out = {}
    for s in list(_registry):
        if s.stopping:
            continue
        out[s.name] = "ok" if s.healthy else f"down for {s.down_for_s:.1f}s: {s.last_error}"
    return out


def all_healthy() -> bool:
    return all(s.healthy for s in list(_registry) if not s.stopping)
