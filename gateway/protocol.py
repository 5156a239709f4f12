"""The wire contract between the gateway and the services, in one place.

A request record's value is the HTTP body as the client sent it (bytes, unchanged); everything else travels in
Kafka headers. A reply record's value is the HTTP response body; its headers carry the correlation id and,
optionally, the status and response headers. The README's "Wire protocol" table documents each header.

Spring for Apache Kafka's request-reply headers are set as well, in Spring's encodings, so that an unmodified
``@KafkaListener`` + ``@SendTo`` service answers through the gateway: ``kafka_correlationId`` (raw bytes),
``kafka_replyTopic`` (UTF-8), ``kafka_replyPartition`` (4-byte big-endian int).
"""
from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass, field
from typing import Iterable, Sequence

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
    """A record that does not follow the wire contract."""


def _header(headers: Sequence[tuple[str, bytes | None]], name: str) -> bytes | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def decode_reply(value: bytes | None, headers: Sequence[tuple[str, bytes | None]],
                 partition: int = -1, offset: int = -1) -> Reply:
    """Decode a reply record; the correlation id is ``gateway-correlation-id`` (hex) or Spring's raw bytes."""
    corr: bytes | None = None
    status = 200
    content_type = None
    http: list[tuple[str, str]] = []
    seq = None
    stream = None
    spring_corr = None
    for k, v in headers:
        if v is None:
            continue
        if k == H_CORRELATION_ID:
            try:
                corr = bytes.fromhex(v.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise ProtocolError(f"{H_CORRELATION_ID} is not hex") from None
        elif k == H_SPRING_CORRELATION_ID:
            spring_corr = v
        elif k == H_STATUS:
            try:
                status = int(v)
            except ValueError:
                raise ProtocolError(f"{H_STATUS} {v!r} is not a number") from None
            if not 100 <= status <= 599:
                raise ProtocolError(f"{H_STATUS} {status} is not an HTTP status")
        elif k == H_CONTENT_TYPE:
            content_type = v.decode("latin-1")
        elif k.startswith(HTTP_HEADER_PREFIX):
            http.append((k[len(HTTP_HEADER_PREFIX):], v.decode("latin-1")))
        elif k == H_SEQ:
            try:
                seq = int(v)
            except ValueError:
                raise ProtocolError(f"{H_SEQ} {v!r} is not a number") from None
        elif k == H_STREAM:
            stream = v.decode("ascii", "replace")
    corr = corr or spring_corr
    if not corr:
        raise ProtocolError("reply has no correlation id header")
    return Reply(corr, status, value or b"", content_type, http, seq, stream, partition, offset)


def reply_headers(correlation_id: bytes, status: int = 200, content_type: str | None = "application/json",
                  http_headers: Iterable[tuple[str, str]] = (), seq: int | None = None,
                  stream: str | None = None) -> Headers:
    """Headers of a reply record (what :mod:`gateway.responder` sends)."""
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
