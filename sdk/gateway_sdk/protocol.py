"""The wire contract between the gateway and the services, in one place.

A request record's value is the HTTP body as the client sent it (bytes, unchanged); everything else travels in
Kafka headers. A reply record's value is the HTTP response body; its headers carry the correlation id and,
optionally, the status and response headers. The README's "Wire protocol" table documents each header.

Spring for Apache Kafka's request-reply headers are set as well, in Spring's encodings, so that an unmodified
``@KafkaListener`` + ``@SendTo`` service answers through the gateway: ``kafka_correlationId`` (raw bytes),
``kafka_replyTopic`` (UTF-8), ``kafka_replyPartition`` (4-byte big-endian int).
"""
from __future__ import annotations

import re
import secrets
import struct
from dataclasses import dataclass, field
from typing import Container, Iterable, Sequence

__all__ = [
    "header_value",
    "HTTP_HEADER_PREFIX", "H_ASYNC", "H_CONTENT_TYPE", "H_CORRELATION_ID", "H_DEADLINE_MS", "H_METHOD", "H_PATH",
    "H_QUERY", "H_REPLY_KEY", "H_REPLY_PARTITION", "H_REPLY_TOPIC", "H_SEQ", "H_SERVICE", "H_SPRING_CORRELATION_ID",
    "H_SPRING_REPLY_PARTITION", "H_SPRING_REPLY_TOPIC", "H_STATUS", "H_STREAM", "H_TRACEPARENT", "H_TRACESTATE",
    "Headers", "NO_BODY_STATUSES", "ProtocolError", "RANDOM_BYTES", "Reply", "ReplyTo", "WORKER_TAG_BYTES",
    "decode_reply", "new_correlation_id", "new_worker_tag", "reply_correlation_id", "reply_headers",
    "request_headers",
]

# -- request headers (gateway -> service)
H_CORRELATION_ID = "gateway-correlation-id"   # hex of the correlation id bytes
H_REPLY_TOPIC = "gateway-reply-topic"
H_REPLY_PARTITION = "gateway-reply-partition"  # decimal ASCII
H_REPLY_KEY = "gateway-reply-key"              # the key to put on the reply when replying by key
H_DEADLINE_MS = "gateway-deadline-ms"          # epoch ms after which the reply is useless
H_METHOD = "gateway-method"
H_PATH = "gateway-path"
H_QUERY = "gateway-query"                      # raw query string, without '?'
H_CONTENT_TYPE = "content-type"
H_TRACEPARENT = "traceparent"
H_TRACESTATE = "tracestate"
HTTP_HEADER_PREFIX = "http-"                   # http-<lower-case name>: forwarded request/response headers
# Spring for Apache Kafka (KafkaHeaders.CORRELATION_ID / REPLY_TOPIC / REPLY_PARTITION)
H_SPRING_CORRELATION_ID = "kafka_correlationId"
H_SPRING_REPLY_TOPIC = "kafka_replyTopic"
H_SPRING_REPLY_PARTITION = "kafka_replyPartition"

# -- reply headers (service -> gateway)
H_STATUS = "gateway-status"                    # decimal ASCII HTTP status, default 200
H_SEQ = "gateway-seq"                          # streaming replies: 0, 1, 2, ...
H_STREAM = "gateway-stream"                    # streaming replies: "more" | "end" | "error"

# -- async results topic (gateway -> gateway): the "accepted" marker record, key = request id (hex)
H_ASYNC = "gateway-async"                      # "accepted" on the marker; absent on the service's reply
H_SERVICE = "gateway-service"                  # the service the async request went to (marker only)

WORKER_TAG_BYTES = 8
RANDOM_BYTES = 16                               # 128 bits of randomness per correlation id


def new_worker_tag() -> bytes:
    return secrets.token_bytes(WORKER_TAG_BYTES)


def new_correlation_id(worker_tag: bytes) -> bytes:
    """``worker tag (8 bytes) + 16 random bytes``: unguessable, and tells a reader whether a reply is its own."""
    return worker_tag + secrets.token_bytes(RANDOM_BYTES)


@dataclass(frozen=True)
class ReplyTo:
    """Where the service must send the reply."""

    topic: str
    partition: int
    key: bytes


Headers = list[tuple[str, bytes]]


def request_headers(correlation_id: bytes, reply_to: ReplyTo, deadline_ms: int, method: str, path: str,
                    query: str, content_type: str | None, http_headers: Iterable[tuple[str, str]]) -> Headers:
    """Headers of a request record, gateway and Spring forms."""
    topic = reply_to.topic.encode()
    headers: Headers = [
        (H_CORRELATION_ID, correlation_id.hex().encode()),
        (H_REPLY_TOPIC, topic),
        (H_REPLY_PARTITION, str(reply_to.partition).encode()),
        (H_REPLY_KEY, reply_to.key),
        (H_DEADLINE_MS, str(deadline_ms).encode()),
        (H_METHOD, method.encode()),
        (H_PATH, path.encode()),
        (H_QUERY, query.encode()),
        (H_SPRING_CORRELATION_ID, correlation_id),
        (H_SPRING_REPLY_TOPIC, topic),
        (H_SPRING_REPLY_PARTITION, struct.pack(">i", reply_to.partition)),
    ]
    if content_type:
        headers.append((H_CONTENT_TYPE, content_type.encode()))
    for name, value in http_headers:
        if name in (H_TRACEPARENT, H_TRACESTATE):
            headers.append((name, value.encode("latin-1")))
        else:
            headers.append((HTTP_HEADER_PREFIX + name, value.encode("latin-1")))
    return headers


@dataclass
class Reply:
    """A decoded reply record."""

    correlation_id: bytes
    status: int
    body: bytes
    content_type: str | None
    headers: list[tuple[str, str]] = field(default_factory=list)
    seq: int | None = None
    stream: str | None = None
    partition: int = -1
    offset: int = -1


class ProtocolError(ValueError):
    """A record that does not follow the wire contract. ``correlation_id`` is set when the record still says which
    request it answers: that request is failed at once (502) instead of waiting for its deadline."""

    def __init__(self, message: str, correlation_id: bytes | None = None) -> None:
        super().__init__(message)
        self.correlation_id = correlation_id


# each used with fullmatch (a "$" would let a trailing newline through)
_STATUS_RE = re.compile(rb"[0-9]{3}")                  # int() alone would also take b" 2_00 "
_SEQ_RE = re.compile(rb"[0-9]{1,18}")
_HEX_RE = re.compile(rb"(?:[0-9a-fA-F]{2})+")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP field name (RFC 9110 token)
_CONTROL_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")   # CR, LF, NUL...: never in a field value (HTAB may be)
NO_BODY_STATUSES = (204, 304)


def header_value(headers: Iterable[tuple[str, bytes | None]], name: str) -> bytes | None:
    """The value of the first header called *name* (record headers are a list: names may repeat), or None."""
    for k, v in headers:
        if k == name:
            return v
    return None


def reply_correlation_id(headers: Sequence[tuple[str, bytes | None]]) -> bytes | None:
    """The request a reply answers: ``gateway-correlation-id`` (hex), else Spring's raw ``kafka_correlationId``.
    None when neither is usable."""
    hexed = header_value(headers, H_CORRELATION_ID)
    if hexed and _HEX_RE.fullmatch(hexed):
        return bytes.fromhex(hexed.decode("ascii"))
    return header_value(headers, H_SPRING_CORRELATION_ID) or None


def _field_value(name: str, v: bytes, corr: bytes) -> str:
    if _CONTROL_RE.search(v):
        raise ProtocolError(f"{name} holds a control character (CR, LF, NUL, ...): not a valid HTTP field value",
                            corr)
    return v.decode("latin-1")


def decode_reply(value: bytes | None, headers: Sequence[tuple[str, bytes | None]],
                 partition: int = -1, offset: int = -1, forward: Container[str] | None = None) -> Reply:
    """Decode and validate a reply record; the correlation id is ``gateway-correlation-id`` (hex) or Spring's raw
    bytes. Anything the gateway could not turn into a valid HTTP response (a 1xx or garbage status, CR/LF or other
    control characters in a header value or the content type, a header name that is not an HTTP token) raises
    :class:`ProtocolError` carrying the correlation id, so the caller can answer 502 at once.

    *forward* (lower-case names, ``http.forward_response_headers``): only these ``http-<name>`` headers are kept,
    and only they are validated: a header the response will not carry cannot make the reply unusable."""
    corr = reply_correlation_id(headers)
    hexed = header_value(headers, H_CORRELATION_ID)
    if hexed and not _HEX_RE.fullmatch(hexed):
        raise ProtocolError(f"{H_CORRELATION_ID} is not hex", corr)     # corr: Spring's form, if it came too
    if not corr:
        raise ProtocolError("reply has no correlation id header")
    status = 200
    content_type = None
    http: list[tuple[str, str]] = []
    seq = None
    stream = None
    for k, v in headers:
        if v is None:
            continue
        if k == H_STATUS:
            if not _STATUS_RE.fullmatch(v):
                raise ProtocolError(f"{H_STATUS} {v[:20]!r} is not a three-digit HTTP status", corr)
            status = int(v)
            if not 200 <= status <= 599:
                raise ProtocolError(f"{H_STATUS} {status} is not a final HTTP status (200-599)", corr)
        elif k == H_CONTENT_TYPE:
            content_type = _field_value(H_CONTENT_TYPE, v, corr)
        elif k.startswith(HTTP_HEADER_PREFIX):
            name = k[len(HTTP_HEADER_PREFIX):].lower()
            if forward is not None and name not in forward:
                continue
            if not _TOKEN_RE.fullmatch(name):
                raise ProtocolError(f"reply header {k!r}: {name!r} is not an HTTP field name", corr)
            http.append((name, _field_value(k, v, corr)))
        elif k == H_SEQ:
            if not _SEQ_RE.fullmatch(v):
                raise ProtocolError(f"{H_SEQ} {v[:20]!r} is not a number", corr)
            seq = int(v)
        elif k == H_STREAM:
            stream = v.decode("ascii", "replace")
    body = value or b""
    if status in NO_BODY_STATUSES:
        body = b""          # HTTP forbids a body here; a service's stray bytes must not corrupt the connection
    return Reply(corr, status, body, content_type, http, seq, stream, partition, offset)


def reply_headers(correlation_id: bytes, status: int = 200, content_type: str | None = "application/json",
                  http_headers: Iterable[tuple[str, str]] = (), seq: int | None = None,
                  stream: str | None = None) -> Headers:
    """Headers of a reply record (what :mod:`gateway_sdk` sends)."""
    headers: Headers = [(H_CORRELATION_ID, correlation_id.hex().encode()),
                        (H_SPRING_CORRELATION_ID, correlation_id),
                        (H_STATUS, str(status).encode())]
    if content_type:
        headers.append((H_CONTENT_TYPE, content_type.encode()))
    for name, value in http_headers:
        headers.append((HTTP_HEADER_PREFIX + name.lower(), value.encode("latin-1")))
    if seq is not None:
        headers.append((H_SEQ, str(seq).encode()))
    if stream is not None:
        headers.append((H_STREAM, stream.encode()))
    return headers
