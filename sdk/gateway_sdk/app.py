"""Responder: consume a service's request topic, dispatch to handlers, produce replies."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import struct
import threading
import time
from dataclasses import dataclass, field
from types import GeneratorType
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs

from . import protocol as P

log = logging.getLogger(__name__)
Handler = Callable[..., Any]


class HTTPError(Exception):
    """Raise in a handler to answer with an error status and a problem+json body."""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra


@dataclass
class Request:
    """What a handler gets: the HTTP request as the gateway forwarded it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    content_type: str | None
    correlation_id: bytes
    deadline_ms: int | None
    key: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        """The body parsed as JSON; an HTTPError(400) when it is not."""
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise HTTPError(400, f"body is not valid JSON: {exc}") from None


def _compile(pattern: str) -> re.Pattern[str]:
    """``/orders/<order_id>`` (one segment) and ``/files/<path:rest>`` (the rest of the path)."""
    out, pos = [], 0
    for m in re.finditer(r"<(?:(path):)?(\w+)>", pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        out.append(f"(?P<{m.group(2)}>{'.+' if m.group(1) else '[^/]+'})")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("^" + "".join(out) + "/?$")


def _header_map(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for k, v in headers:
        if v is not None:
            out.setdefault(k, v)
    return out


def _encode_body(body: Any) -> tuple[bytes, str | None]:
    if body is None:
        return b"", None
    if isinstance(body, bytes):
        return body, "application/octet-stream"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return json.dumps(body).encode(), "application/json"


def _problem(status: int, detail: str, **extra: Any) -> tuple[int, dict[str, str], bytes, str | None]:
    body = {"title": "error", "status": status, "detail": detail, **extra}
    return status, {}, json.dumps(body).encode(), "application/problem+json"


def _env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    return default if raw is None else raw.strip().lower() not in ("0", "false", "no", "off")


class Responder:
    """One service: routes, a consumer on its request topic, a producer for replies.

    *kafka_settings* are kafka-python client settings (``security_protocol``, ``ssl_cafile``, ``sasl_*``,
    ``request_timeout_ms``, ``max_request_size``, ...), one set for all the service's clients: each client gets
    every setting it knows. *acks* and *enable_idempotence* (``KAFKA_ENABLE_IDEMPOTENCE``, default on) are the
    reply producer's durability; *reply_retry_ms* bounds resending a reply for requests without a deadline;
    *topic_check_interval_s* is how often the request topic's id is compared (gateway_sdk.runner).
    """

    def __init__(self, name: str, topic: str, bootstrap_servers: str | list[str] | None = None,
                 group_id: str | None = None, *, acks: int | str = "all", enable_idempotence: bool | None = None,
                 reply_retry_ms: int = 30000, topic_check_interval_s: float = 10.0, **kafka_settings: Any) -> None:
        self.name = name
        self.topic = topic
        servers = bootstrap_servers or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
        self.bootstrap_servers = servers.split(",") if isinstance(servers, str) else list(servers)
        self.group_id = group_id or os.environ.get("SERVICE_GROUP_ID") or f"{name}-service"
        self.session_timeout_ms = int(os.environ.get("KAFKA_SESSION_TIMEOUT_MS", 10000))
        # 500: right for Apache Kafka (a fetch returns as soon as a request arrives); the embedded broker answers
        # only at half the wait, so `./dev run` and the tests set KAFKA_FETCH_MAX_WAIT_MS lower (gateway.cli)
        self.fetch_max_wait_ms = int(os.environ.get("KAFKA_FETCH_MAX_WAIT_MS", 500))
        # the fetch wait while requests come (until gateway_sdk.runner.BUSY_HOLD_S after the last): the idle one by
        # default; `./dev run` sets 10 so that a service on the embedded broker answers fast while used and idles
        # at the longer wait's cost
        busy = os.environ.get("KAFKA_FETCH_MAX_WAIT_BUSY_MS")
        self.fetch_max_wait_busy_ms: int | None = int(busy) if busy else None   # None: the fetch wait itself
        self.acks = acks
        self.enable_idempotence = (_env_flag("KAFKA_ENABLE_IDEMPOTENCE", True) if enable_idempotence is None
                                   else enable_idempotence)
        if self.enable_idempotence and acks not in ("all", -1):
            raise ValueError(f"enable_idempotence needs acks='all' (acks is {acks!r})")
        self.reply_retry_ms = reply_retry_ms
        self.topic_check_interval_s = topic_check_interval_s
        self.kafka_settings = kafka_settings
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._stop = threading.Event()
        self.stats = {"handled": 0, "expired": 0, "errors": 0, "invalid": 0, "unsendable": 0, "unsent": 0,
                      "resent": 0, "rewinds": 0, "topic_checks": 0}
        self.ready = threading.Event()
        self._producer: Any = None
        self._runner: Any = None

    # -- routing ---------------------------------------------------------------------------------------------
    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self._routes.append((method.upper(), _compile(pattern), fn))
            return fn
        return register

    def _match(self, method: str, path: str) -> tuple[Handler | None, dict[str, str], list[str]]:
        allowed = []
        for m, regex, fn in self._routes:
            found = regex.match(path)
            if found:
                if m == method or (method == "HEAD" and m == "GET"):
                    return fn, found.groupdict(), []
                allowed.append(m)
        return None, {}, allowed

    # -- handling (pure: record in, reply records out; unit-testable without Kafka) ------------------------
    def handle(self, value: bytes | None, headers: list[tuple[str, bytes | None]], key: bytes | None = None,
               now_ms: int | None = None) -> tuple[dict[str, Any] | None, Iterator[tuple[list, bytes]]]:
        """Returns (where to reply, iterator of (reply headers, reply value)); nothing to send: (None, empty).

        The iterator is lazy so that a streaming handler's records leave as they are yielded."""
        h = _header_map(headers)
        corr_hex = h.get(P.H_CORRELATION_ID)
        corr = bytes.fromhex(corr_hex.decode()) if corr_hex else h.get(P.H_SPRING_CORRELATION_ID)
        topic = h.get(P.H_REPLY_TOPIC) or h.get(P.H_SPRING_REPLY_TOPIC)
        if not corr or not topic:
            self.stats["invalid"] += 1
            log.warning("request without correlation id or reply topic dropped")
            return None, iter(())
        if P.H_REPLY_PARTITION in h:
            partition: int | None = int(h[P.H_REPLY_PARTITION])
        elif P.H_SPRING_REPLY_PARTITION in h:
            partition = struct.unpack(">i", h[P.H_SPRING_REPLY_PARTITION])[0]
        else:
            partition = None
        deadline = int(h[P.H_DEADLINE_MS]) if P.H_DEADLINE_MS in h else None
        dest = {"topic": topic.decode(), "partition": partition, "key": h.get(P.H_REPLY_KEY),
                "correlation_id": corr, "deadline_ms": deadline}
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        if deadline is not None and now_ms > deadline:
            self.stats["expired"] += 1
            return None, iter(())
        req = Request(
            method=h.get(P.H_METHOD, b"GET").decode(), path=h.get(P.H_PATH, b"/").decode(),
            query=parse_qs(h.get(P.H_QUERY, b"").decode("latin-1")),
            headers={k[len(P.HTTP_HEADER_PREFIX):]: v.decode("latin-1") for k, v in h.items()
                     if k.startswith(P.HTTP_HEADER_PREFIX)},
            body=value or b"", content_type=(h[P.H_CONTENT_TYPE].decode() if P.H_CONTENT_TYPE in h else None),
            correlation_id=corr, deadline_ms=deadline, key=key)
        return dest, self._respond(req)

    def _respond(self, req: Request) -> Iterator[tuple[list, bytes]]:
        fn, params, allowed = self._match(req.method, req.path)
        try:
            if fn is None:
                if allowed:
                    raise HTTPError(405, f"{req.method} not allowed on {req.path}; allowed: {', '.join(allowed)}")
                raise HTTPError(404, f"{self.name} has no route for {req.method} {req.path}")
            req.params = params
            result = fn(req, **params)
        except HTTPError as exc:
            status, headers, body, ctype = _problem(exc.status, exc.detail, **exc.extra)
            yield P.reply_headers(req.correlation_id, status, ctype, headers.items()), body
            return
        except Exception as exc:  # noqa: BLE001 - a handler bug must answer, not hang the client
            self.stats["errors"] += 1
            log.exception("handler for %s %s failed", req.method, req.path)
            status, headers, body, ctype = _problem(500, f"{self.name} failed: {type(exc).__name__}")
            yield P.reply_headers(req.correlation_id, status, ctype, headers.items()), body
            return
        self.stats["handled"] += 1
        if isinstance(result, GeneratorType):
            yield from self._stream(req, result)
            return
        try:
            status, headers, data, ctype = self._encode_result(result)
        except Exception as exc:  # noqa: BLE001 - e.g. a body JSON cannot encode: still answer
            self.stats["errors"] += 1
            log.exception("reply of %s %s could not be encoded", req.method, req.path)
            status, headers, data, ctype = _problem(500, f"{self.name} failed: {type(exc).__name__}")
        yield P.reply_headers(req.correlation_id, status, ctype, headers.items()), data

    @staticmethod
    def _encode_result(result: Any) -> tuple[int, dict[str, str], bytes, str | None]:
        status, body = 200, result
        headers: dict[str, str] = {}
        if isinstance(result, tuple):
            if len(result) == 2:
                status, body = result
            elif len(result) == 3:
                status, headers, body = result
            else:
                raise TypeError("a handler returns body, (status, body) or (status, headers, body)")
        data, ctype = _encode_body(body)
        headers = dict(headers)
        for name in [k for k in headers if k.lower() == "content-type"]:
            ctype = headers.pop(name)
        return int(status), headers, data, ctype

    def _stream(self, req: Request, items: Iterator[Any]) -> Iterator[tuple[list, bytes]]:
        seq = 0
        try:
            for item in items:
                data, ctype = _encode_body(item)
                yield P.reply_headers(req.correlation_id, 200, ctype, seq=seq, stream="more"), data
                seq += 1
        except Exception as exc:  # noqa: BLE001
            self.stats["errors"] += 1
            log.exception("stream for %s %s failed", req.method, req.path)
            body = json.dumps({"title": "error", "status": 500, "detail": f"{type(exc).__name__}"}).encode()
            yield P.reply_headers(req.correlation_id, 500, "application/problem+json", seq=seq,
                                  stream="error"), body
            return
        yield P.reply_headers(req.correlation_id, 200, None, seq=seq, stream="end"), b""

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, install_signal_handlers: bool = True) -> None:
        """Consume until :meth:`stop` (or SIGTERM/SIGINT). Offsets are committed only once every reply of their
        requests was acknowledged (see :mod:`gateway_sdk.runner`)."""
        from .runner import Runner

        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
        self._runner = Runner(self)
        self._runner.run()

    def publish(self, topic: str, value: Any, key: str | bytes | None = None) -> None:
        """Publish an event (not a reply) from inside a handler, e.g. ``orders.events``; dicts become JSON.

        It leaves with the replies of the same batch, before the request offsets are committed (and is sent
        again, like a reply, if the broker did not take it)."""
        if self._runner is None or self._producer is None:
            raise RuntimeError("publish() works inside handlers while the responder runs")
        data, _ = _encode_body(value)
        self._runner.publish(topic, data, key.encode() if isinstance(key, str) else key)

    def stop(self) -> None:
        self._stop.set()
