"""A load driver for fault injection: N client threads, each request with a unique token checked against its reply.

Every request is ``POST <target><prefix>/<client>/<seq>`` with the JSON body
``{"token": "<run>-<client>-<seq>-<hex>"}``. A reply is ``ok`` only when it is a 200 whose JSON carries exactly the
body and path this request sent (the echo service mirrors both; ``tests.support.faulty_service`` too); a 200 with
anybody else's body is ``mismatched``; everything else (non-200, connection error, client timeout) is ``failed``.

Two client styles, mixed as you like (client ``i`` uses ``styles[i % len(styles)]``):

* ``fresh``: a new connection per request (``Connection: close``).
* ``keepalive``: one persistent connection per client, re-opened when the server says ``Connection: close``. When a
  REUSED connection fails with EOF or a reset before any byte of the response arrived, the request is sent once
  more on a new connection and counted as a ``stale_retry``: a server closing an idle keep-alive connection races
  with the client's next request on the wire, and the retry is safe only because the gateway never processes a
  request on a connection it closes while idle (``gateway.serve.worker``). The fault suite proves it: every token
  must be on the request topic exactly once. A failure on a NEW connection, or after a response byte, is never
  retried.

Pacing: flat out (closed loop: the next request as soon as the last one is answered), ``rate`` requests/s over
all clients, or per client (``client_rates``, cycled like the styles: ``None`` is flat out). A paced client keeps
its own fixed schedule and does not burst to catch up when it fell behind. Or a rest after each answer
(``think_s``, or per client ``client_think_s``): a keep-alive connection sits idle then, whatever the latency,
which is when a stopping server closes it under the next request.

A connection the target REFUSED (nothing listens: an instance that stopped) carried no byte of a request: it is
counted (``refused``, with time, phase and target in ``refusals``) and tried again, and never appears as a request.
Where nothing should refuse (a reload, a scale-down), the fault suite asserts there was none.

Used by ``tests/test_faults.py``, ``tests/test_drain.py`` and ``tests.support.scenarios`` (the fault table). Threads
are fine for ~50 clients: they spend their time blocked on sockets.

Over 300 lines for a reason: the client loop, its connection plumbing (counting sockets, refusals, stale-connection
retries) and the result bookkeeping are one protocol; split, each part would only make sense with the others open.
"""
from __future__ import annotations

import http.client
import io
import json
import math
import random
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence
from urllib.parse import urlparse

OK, FAILED, MISMATCHED = "ok", "failed", "mismatched"
FRESH, KEEPALIVE = "fresh", "keepalive"
STYLES = (FRESH, KEEPALIVE)
# what a server closing a connection under a request looks like to http.client
CLOSED_UNDER_US = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, http.client.RemoteDisconnected)


@dataclass
class Result:
    """One request as the client saw it. Times are ``time.monotonic()``."""

    client: int
    seq: int
    phase: str
    target: str
    start: float
    end: float
    status: int | None          # None: no HTTP response at all (connection reset, client timeout)
    outcome: str                # ok | failed | mismatched
    error: str = ""             # problem+json code, or the exception's type name
    correlation_id: str = ""    # X-Correlation-Id of the response (hex), when there was one
    local_port: int = 0         # client port of the connection (maps the request to a server-side socket)
    style: str = FRESH
    token: str = ""
    stale_retry: bool = False   # first sent on a reused keep-alive connection that the server had closed
    reused: bool = False        # answered on a keep-alive connection opened for an earlier request

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def worker_tag(self) -> str:
        """The first 8 bytes of the correlation id: which gateway worker minted it."""
        return self.correlation_id[:16]


@dataclass
class Summary:
    requests: int = 0
    ok: int = 0
    failed: int = 0
    mismatched: int = 0
    stale_retries: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    statuses: Counter = field(default_factory=Counter)   # status (or error type) -> count, failed ones only
    styles: Counter = field(default_factory=Counter)     # requests per client style
    throughput: float = 0.0                             # requests/s over the window the results span

    def __str__(self) -> str:
        return (f"{self.requests} requests ({dict(self.styles)}), {self.ok} ok, {self.failed} failed, "
                f"{self.mismatched} mismatched, {self.stale_retries} stale-connection retries, "
                f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, max {self.max_ms:.0f} ms, "
                f"{self.throughput:.0f} req/s, failures {dict(self.statuses)}")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of *values*; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(results: Iterable[Result]) -> Summary:
    results = list(results)
    s = Summary(requests=len(results))
    lat = [r.latency * 1000 for r in results]
    for r in results:
        s.styles[r.style] += 1
        s.stale_retries += r.stale_retry
        if r.outcome == OK:
            s.ok += 1
        elif r.outcome == MISMATCHED:
            s.mismatched += 1
        else:
            s.failed += 1
            s.statuses[f"{r.status or 'no response'} {r.error}".strip()] += 1
    s.p50_ms, s.p99_ms, s.max_ms = percentile(lat, 50), percentile(lat, 99), max(lat, default=0.0)
    if results:
        span = max(r.end for r in results) - min(r.start for r in results)
        s.throughput = len(results) / span if span > 0 else 0.0
    return s


class _CountingSocket:
    """A client socket that counts the bytes received since :attr:`received` was reset (http.client reads through
    ``makefile``): tells "closed before any response byte" from "cut off mid-response"."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.received = 0

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        # the socket's own raw file keeps the descriptor open while the response is read (http.client closes the
        # connection before reading a Connection: close response)
        return io.BufferedReader(_CountingRaw(self, self._sock.makefile("rb", buffering=0)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _CountingRaw(io.RawIOBase):
    def __init__(self, owner: _CountingSocket, raw: Any) -> None:
        self._owner = owner
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self._raw.readinto(buf) or 0
        self._owner.received += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


class _Connection(http.client.HTTPConnection):
    def __init__(self, target: str, timeout_s: float) -> None:
        url = urlparse(target)
        super().__init__(url.hostname or "127.0.0.1", url.port, timeout=timeout_s)
        self.target = target

    def connect(self) -> None:
        super().connect()
        self.sock = _CountingSocket(self.sock)  # type: ignore[assignment]

    @property
    def received(self) -> int:
        return self.sock.received if isinstance(self.sock, _CountingSocket) else 0

    @property
    def port_(self) -> int:
        return self.sock.getsockname()[1] if self.sock is not None else 0


class _Refused(Exception):
    """Nothing listens: no byte of any request was sent."""


class LoadGenerator:
    """``clients`` threads against ``targets`` (client i uses ``targets[i % len(targets)]``, the style
    ``styles[i % len(styles)]`` and the pace ``client_rates[i % len(client_rates)]``); flat out, or paced at
    ``rate`` requests/s in total.

    ``phase`` labels the requests that START while it is set; ``set_targets`` re-routes clients (a load balancer
    draining an instance: a keep-alive client moves at its next request); ``in_flight()`` lists the requests
    outstanding right now.
    """

    def __init__(self, targets: str | Sequence[str], clients: int = 50, prefix: str = "/echo/lg",
                 timeout_s: float = 30.0, think_s: float = 0.0, backoff_on_503_s: float = 0.05,
                 phase: str = "load", styles: Sequence[str] = (FRESH,), rate: float | None = None,
                 client_rates: Sequence[float | None] = (None,), client_think_s: Sequence[float] = ()) -> None:
        unknown = set(styles) - set(STYLES)
        if unknown or not styles:
            raise ValueError(f"styles must be some of {STYLES}, not {list(styles)}")
        self.clients = clients
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.think_s = think_s
        self.backoff_on_503_s = backoff_on_503_s
        self.phase = phase
        self.styles = tuple(styles)
        self.rate = rate
        self.client_rates = tuple(client_rates) or (None,)
        self.client_think_s = tuple(client_think_s) or (think_s,)
        self.results: list[Result] = []
        self.refused = 0
        self.refusals: list[tuple[float, str, str]] = []   # (time, phase, target) of each refused connection
        self.events: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._targets: tuple[str, ...] = ()
        self.set_targets(targets)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._current: dict[int, tuple[str, float, int, str]] = {}   # client -> (target, start, port, state)
        self.run_id = uuid.uuid4().hex[:8]
        self.wall_offset = time.time() - time.monotonic()   # monotonic + wall_offset = epoch seconds

    # -- control ---------------------------------------------------------------------------------------------
    def set_targets(self, targets: str | Sequence[str]) -> None:
        """Route clients to *targets* from their next request on. A request that already picked its target is in
        :meth:`in_flight` by the time this returns (the pick and the registration happen under one lock)."""
        new = (targets,) if isinstance(targets, str) else tuple(targets)
        if not new:
            raise ValueError("at least one target")
        with self._lock:
            self._targets = new

    def mark(self, event: str, phase: str | None = None) -> float:
        """Record a named moment (kill, restart, ...), optionally start a new *phase*; return the moment's
        monotonic time (requests that start from then on carry the new phase)."""
        with self._lock:
            t = time.monotonic()
            if phase is not None:
                self.phase = phase
        self.events.append((t, event))
        return t

    def start(self) -> LoadGenerator:
        self._threads = [threading.Thread(target=self._client, args=(i,), name=f"loadgen-{i}", daemon=True)
                         for i in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout_s: float | None = None) -> list[Result]:
        """Let every client finish its current request, then return all results."""
        self._stop.set()
        deadline = time.monotonic() + (2 * self.timeout_s + 5 if timeout_s is None else timeout_s)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"load clients still running after stop: {alive[:5]}")
        return self.results

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if not self.stopped:
            self.stop()

    def in_flight(self) -> list[tuple[int, str, float, int, str]]:
        """(client, target, start, local_port, state) of every request outstanding now; state is ``connecting``
        (no connection yet), ``sending`` (being written) or ``sent`` (written whole, waiting for the response)."""
        with self._lock:
            return [(c, *v) for c, v in self._current.items()]

    def phase_results(self, *phases: str) -> list[Result]:
        return [r for r in self.results if r.phase in phases]

    def count(self, since: float = 0.0, outcome: str | None = None) -> int:
        return sum(1 for r in list(self.results) if r.end >= since and (outcome is None or r.outcome == outcome))

    def wait_ok(self, n: int, since: float, timeout_s: float) -> float:
        """Block until *n* requests that started after *since* were ok; return the end time of the n-th."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            oks = sorted(r.end for r in list(self.results) if r.start >= since and r.outcome == OK)
            if len(oks) >= n:
                return oks[n - 1]
            time.sleep(0.05)
        raise TimeoutError(f"fewer than {n} ok requests within {timeout_s}s")

    # -- the clients -----------------------------------------------------------------------------------------
    def _client(self, client: int) -> None:
        style = self.styles[client % len(self.styles)]
        conn: list[_Connection | None] = [None]   # the keep-alive connection, if any
        own_rate = self.client_rates[client % len(self.client_rates)]
        think_s = self.client_think_s[client % len(self.client_think_s)]
        interval = self.clients / self.rate if self.rate else 1 / own_rate if own_rate else 0.0
        next_at = time.monotonic() + random.uniform(0, interval)
        seq = 0
        try:
            while not self._stop.is_set():
                if interval:
                    delay = next_at - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                    next_at = max(next_at + interval, time.monotonic())   # behind schedule: no burst
                result = self._one(client, seq, style, conn)
                if result is None:        # refused: nothing was sent
                    time.sleep(0.02)
                    continue
                self.results.append(result)
                seq += 1
                if result.status == 503 and self.backoff_on_503_s:
                    time.sleep(self.backoff_on_503_s)   # a polite client honours Retry-After-ish back-off
                elif think_s:
                    time.sleep(think_s)   # a keep-alive connection rests idle meanwhile
        finally:
            if conn[0] is not None:
                conn[0].close()

    def _connect(self, target: str) -> _Connection:
        conn = _Connection(target, self.timeout_s)
        try:
            conn.connect()
        except ConnectionRefusedError:
            conn.close()
            with self._lock:
                self.refused += 1
                self.refusals.append((time.monotonic(), self.phase, target))
            raise _Refused from None
        return conn

    def _one(self, client: int, seq: int, style: str, keep: list[_Connection | None]) -> Result | None:
        path = f"{self.prefix}/{client}/{seq}"
        token = f"{self.run_id}-{client}-{seq}-{uuid.uuid4().hex}"
        body = json.dumps({"token": token})
        with self._lock:
            target = self._targets[client % len(self._targets)]
            phase = self.phase
            start = time.monotonic()
            self._current[client] = (target, start, 0, "connecting")
        headers = {"Content-Type": "application/json"}
        if style == FRESH:
            headers["Connection"] = "close"
        status: int | None = None
        error = correlation_id = ""
        port = 0
        outcome = FAILED
        stale = reused = False
        conn = keep[0]
        if conn is not None and conn.target != target:   # re-routed (a load balancer moved this client)
            conn.close()
            conn = keep[0] = None
        try:
            while True:
                reused = conn is not None
                if conn is None:
                    try:
                        conn = self._connect(target)
                    except _Refused:
                        if not stale:
                            return None   # not a request: nothing was sent
                        if self._stop.is_set() or time.monotonic() - start > self.timeout_s:
                            raise
                        time.sleep(0.02)
                        continue
                port = conn.port_
                with self._lock:
                    self._current[client] = (target, start, port, "sending")
                try:
                    conn.sock.received = 0  # type: ignore[union-attr]
                    conn.request("POST", path, body=body, headers=headers)
                    with self._lock:   # every byte handed to the kernel: on loopback, in the server's socket
                        self._current[client] = (target, start, port, "sent")
                    resp = conn.getresponse()
                    raw = resp.read()
                except CLOSED_UNDER_US:
                    if reused and not stale and conn.received == 0:
                        # a stale keep-alive connection: closed by the server while idle, before our request
                        # reached a worker that would process it. Once, on a new connection.
                        stale = True
                        conn.close()
                        conn = keep[0] = None
                        continue
                    raise
                break
            status = resp.status
            correlation_id = resp.getheader("X-Correlation-Id") or ""
            if style == KEEPALIVE and not resp.will_close:
                keep[0] = conn
            else:
                conn.close()
                keep[0] = None
            conn = None
            if status == 200:
                try:
                    reply = json.loads(raw)
                    same = reply.get("body") == body and reply.get("path") == path
                except (ValueError, AttributeError):
                    same = False
                outcome = OK if same else MISMATCHED
            else:
                try:
                    error = json.loads(raw).get("code", "")
                except (ValueError, AttributeError):
                    error = raw[:60].decode(errors="replace")
        except Exception as exc:  # noqa: BLE001 - every client-side failure is a data point
            error = type(exc).__name__
        finally:
            if conn is not None:   # failed mid-way: never reuse it
                conn.close()
                keep[0] = None
            with self._lock:
                self._current.pop(client, None)
        return Result(client, seq, phase, target, start, time.monotonic(), status, outcome, error, correlation_id,
                      port, style, token, stale, reused and not stale)
