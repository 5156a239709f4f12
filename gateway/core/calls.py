"""The request lifecycle, in one place: mint ids -> register a waiter -> produce -> wait -> remove.

Every entry point goes through here: a plain request (:meth:`Call.reply`), a streamed reply and a websocket request
(a :class:`~gateway.core.pending.Callback` waiter, closed by whoever holds the :class:`Call`), answer-on-state (a
plain call, then a wait on the entity table) and an async request (:func:`send_async`: no waiter, the results
tail answers it). Whoever opens a :class:`Call` closes it (``with`` where it fits): the close removes the waiter
from the pending table, forgets the unacknowledged record and counts the request out of ``gateway_in_flight``.

Room left here for what reuses the lifecycle: an in-process WSGI client or a Kafka-to-HTTP bridge opens calls
exactly as the web layer does; an Idempotency-Key store would wrap :func:`open_call`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from .. import metrics
from ..errors import BrokerUnavailable, GatewayError, NotReady, ReplyTimeout
from ..protocol import H_ASYNC, H_DEADLINE_MS, H_SERVICE, ReplyTo, new_correlation_id, request_headers
from .pending import OneShot, Waiter
from .routing import partition_for_key

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..protocol import Reply
    from .runtime import Gateway

log = logging.getLogger(__name__)
W = TypeVar("W", bound=Waiter)


@dataclass(frozen=True)
class ServiceRequest:
    """What one request record carries, whatever the entry point (HTTP, a websocket frame)."""

    method: str
    path: str
    query: str
    content_type: str | None
    http_headers: Sequence[tuple[str, str]]
    body: bytes
    key: bytes | None


class Call:
    """One request in flight, from registration (in :func:`open_call`) to :meth:`close` (idempotent)."""

    __slots__ = ("gw", "svc", "waiter", "timeout_ms", "_open")

    def __init__(self, gw: Gateway, svc: ServiceConfig, waiter: Waiter, timeout_ms: int | None = None) -> None:
        self.gw = gw
        self.svc = svc
        self.waiter = waiter
        self.timeout_ms = timeout_ms or svc.timeout_ms
        self._open = True
        metrics.child(metrics.IN_FLIGHT, svc.name).inc()

    @property
    def correlation_id(self) -> bytes:
        return self.waiter.correlation_id

    def close(self, answered: bool = False) -> None:
        """Done with this request: its waiter leaves the pending table (*answered*: a later reply for it counts
        as a duplicate, not as late)."""
        if self._open:
            self._open = False
            self.gw.pending.remove(self.correlation_id, answered=answered)
            self.gw.unacked.pop(self.correlation_id, None)
            metrics.child(metrics.IN_FLIGHT, self.svc.name).dec()

    def __enter__(self) -> Call:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reply(self) -> Reply:
        """Wait for the one reply of a :class:`OneShot` call: raises ReplyTimeout (504) or the waiter's failure
        (e.g. BrokerUnavailable, 503), with the correlation id."""
        waiter = self.waiter
        assert isinstance(waiter, OneShot)
        try:
            self.gw.pending.deadlines.add(waiter)   # wakes the waiter at its deadline (one timer for all)
            waiter.event.wait()
            if waiter.error is not None:
                raise waiter.error
            if waiter.reply is None:
                metrics.child(metrics.TIMEOUTS, self.svc.name).inc()
                raise ReplyTimeout(f"{self.svc.name} did not reply within {self.timeout_ms} ms")
            return waiter.reply
        except GatewayError as exc:
            exc.extra.setdefault("correlation_id", self.correlation_id.hex())
            raise


def open_call(gw: Gateway, svc: ServiceConfig, waiter_factory: Callable[[bytes, int, float], W],
              request: ServiceRequest, timeout_ms: int | None = None) -> Call:
    """Mint ids, register a waiter, produce the request record; the caller closes the returned call."""
    gw.check_ready()
    route = gw.router.next()
    if route is None:
        raise NotReady("this worker owns no reply partition yet; retry")
    partition, reply_key = route
    timeout_ms = timeout_ms or svc.timeout_ms
    correlation_id = new_correlation_id(gw.worker_tag)
    deadline_ms = int(time.time() * 1000) + timeout_ms
    # encode before registering: input that cannot go onto a record must fail here, not leave a waiter behind
    headers = request_headers(correlation_id, ReplyTo(gw.config.reply.topic, partition, reply_key), deadline_ms,
                              request.method, request.path, request.query, request.content_type,
                              request.http_headers)
    # register before producing, with no yield in between (router.next -> register): the reader cannot release
    # this partition while the request is in flight.
    waiter = waiter_factory(correlation_id, partition, time.monotonic() + timeout_ms / 1000)
    gw.pending.register(waiter)
    producer = gw.producer
    try:
        future = producer.send(svc.topic, value=request.body, key=request.key, headers=headers)
    except BaseException as exc:  # KafkaTimeoutError (metadata / full buffer), closed producer, gevent's Timeout
        gw.pending.remove(correlation_id)
        if not isinstance(exc, Exception):
            raise
        metrics.child(metrics.PRODUCE_ERRORS, svc.name).inc()
        gw.on_producer_error(producer, exc)
        raise BrokerUnavailable(f"could not hand the request to Kafka: {type(exc).__name__}") from None

    def on_error(exc: BaseException) -> None:
        gw.unacked.pop(correlation_id, None)
        metrics.child(metrics.PRODUCE_ERRORS, svc.name).inc()
        log.warning("request %s to %s not delivered: %s", correlation_id.hex(), svc.topic, exc)
        waiter.fail(BrokerUnavailable(f"Kafka did not accept the request: {type(exc).__name__}"))
        gw.on_producer_error(producer, exc)

    gw.unacked[correlation_id] = waiter
    future.add_callback(lambda _: gw.unacked.pop(correlation_id, None))
    future.add_errback(on_error)
    return Call(gw, svc, waiter, timeout_ms)


def call(gw: Gateway, svc: ServiceConfig, request: ServiceRequest) -> Reply:
    """One request, one reply."""
    with open_call(gw, svc, OneShot, request) as c:
        return c.reply()


@dataclass(frozen=True)
class AsyncTicket:
    request_id: str
    accepted_ms: int
    deadline_ms: int


def send_async(gw: Gateway, svc: ServiceConfig, request: ServiceRequest, results_topic: str, num_partitions: int,
               on_marker: Callable[[AsyncTicket], Any]) -> AsyncTicket:
    """An async request: no waiter (the service replies onto *results_topic*, keyed by the request id, which every
    worker tails). The accepted marker first (acked, then *on_marker*), then the request (acked): once this
    returns, every worker will know the id."""
    gw.check_ready()
    correlation_id = new_correlation_id(gw.worker_tag)
    rid = correlation_id.hex()
    rkey = rid.encode()
    partition = partition_for_key(rkey, num_partitions)
    accepted = int(time.time() * 1000)
    ticket = AsyncTicket(rid, accepted, accepted + svc.async_timeout_ms)
    timeout_s = gw.config.kafka.request_timeout_ms / 1000
    marker = [(H_ASYNC, b"accepted"), (H_DEADLINE_MS, str(ticket.deadline_ms).encode()),
              (H_SERVICE, svc.name.encode())]
    headers = request_headers(correlation_id, ReplyTo(results_topic, partition, rkey), ticket.deadline_ms,
                              request.method, request.path, request.query, request.content_type,
                              request.http_headers)
    try:
        gw.producer.send(results_topic, key=rkey, value=b"", headers=marker, partition=partition).get(timeout_s)
        on_marker(ticket)
        gw.producer.send(svc.topic, value=request.body, key=request.key, headers=headers).get(timeout_s)
    except Exception as exc:  # noqa: BLE001 - KafkaTimeoutError, KafkaError, closed producer
        metrics.child(metrics.PRODUCE_ERRORS, svc.name).inc()
        raise BrokerUnavailable(f"could not hand the async request to Kafka: {type(exc).__name__}") from None
    return ticket
