"""A closed-loop load driver for fault injection: N client threads, each request with a unique token checked
against its reply.

Every request is ``POST <target><prefix>/<client>/<seq>`` with the JSON body ``{"token": "<client>-<seq>-<hex>"}``
on a NEW connection (``Connection: close``): a keep-alive connection that a stopping worker closes between two
requests is a client-side race of HTTP keep-alive, not a request the gateway lost, and a fresh connection per
request keeps the two apart. A reply is ``ok`` only when it is a 200 whose JSON carries exactly the body and path
this request sent (the echo service mirrors both; ``gateway.faulty_service`` too); a 200 with anybody else's body
is ``mismatched``; everything else (non-200, connection error, client timeout) is ``failed``.

The one thing retried is a connection the target REFUSED (nothing listens: an instance that stopped): no byte of
the request was sent, nobody could have lost it, so the client counts it in ``refused`` and tries again; it never
appears as a request.

Used by ``tests/test_faults.py`` and ``gateway.faults`` (the fault table). Threads are fine for ~50 clients: they
spend their time blocked on sockets.
"""
from __future__ import annotations

import http.client
import json
import math
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence
from urllib.parse import urlparse

OK, FAILED, MISMATCHED = "ok", "failed", "mismatched"


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
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    statuses: Counter = field(default_factory=Counter)   # status (or error type) -> count, failed ones only
    throughput: float = 0.0                             # requests/s over the window the results span

    def __str__(self) -> str:
        return (f"{self.requests} requests, {self.ok} ok, {self.failed} failed, {self.mismatched} mismatched, "
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


class LoadGenerator:
    """``clients`` threads in a closed loop against ``targets`` (client i uses ``targets[i % len(targets)]``).

    ``phase`` labels the requests that START while it is set; ``set_targets`` re-routes clients (a load balancer
    draining an instance); ``in_flight()`` lists the requests outstanding right now.
    """

    def __init__(self, targets: str | Sequence[str], clients: int = 50, prefix: str = "/echo/lg",
                 timeout_s: float = 30.0, think_s: float = 0.0, backoff_on_503_s: float = 0.05,
                 phase: str = "load") -> None:
        self.clients = clients
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.think_s = think_s
        self.backoff_on_503_s = backoff_on_503_s
        self.phase = phase
        self.results: list[Result] = []
        self.refused = 0
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

    def start(self) -> "LoadGenerator":
        self._threads = [threading.Thread(target=self._client, args=(i,), name=f"loadgen-{i}", daemon=True)
                         for i in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout_s: float | None = None) -> list[Result]:
        """Let every client finish its current request, then return all results."""
        self._stop.set()
        deadline = time.monotonic() + (self.timeout_s + 5 if timeout_s is None else timeout_s)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"load clients still running after stop: {alive[:5]}")
        return self.results

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def __enter__(self) -> "LoadGenerator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if not self.stopped:
            self.stop()

    def in_flight(self) -> list[tuple[int, str, float, int, str]]:
        """(client, target, start, local_port, state) of every request outstanding now; state is ``connecting``
        (no connection yet) or ``sent``."""
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
        seq = 0
        while not self._stop.is_set():
            result = self._one(client, seq)
            if result is None:        # refused: nothing was sent
                time.sleep(0.02)
                continue
            self.results.append(result)
            seq += 1
            if result.status == 503 and self.backoff_on_503_s:
                time.sleep(self.backoff_on_503_s)   # a polite client honours Retry-After-ish back-off
            elif self.think_s:
                time.sleep(self.think_s)

    def _one(self, client: int, seq: int) -> Result | None:
        path = f"{self.prefix}/{client}/{seq}"
        token = f"{self.run_id}-{client}-{seq}-{uuid.uuid4().hex}"
        body = json.dumps({"token": token})
        with self._lock:
            target = self._targets[client % len(self._targets)]
            phase = self.phase
            start = time.monotonic()
            self._current[client] = (target, start, 0, "connecting")
        url = urlparse(target)
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=self.timeout_s)
        status: int | None = None
        error = correlation_id = ""
        port = 0
        outcome = FAILED
        try:
            try:
                conn.connect()
            except ConnectionRefusedError:
                with self._lock:
                    self.refused += 1
                return None
            port = conn.sock.getsockname()[1]
            with self._lock:
                self._current[client] = (target, start, port, "sent")
            conn.request("POST", path, body=body,
                         headers={"Content-Type": "application/json", "Connection": "close"})
            resp = conn.getresponse()
            raw = resp.read()
            status = resp.status
            correlation_id = resp.getheader("X-Correlation-Id") or ""
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
            conn.close()
            with self._lock:
                self._current.pop(client, None)
        return Result(client, seq, phase, target, start, time.monotonic(), status, outcome, error, correlation_id,
                      port)
