"""Streaming replies over HTTP: NDJSON or Server-Sent Events, chunked, written as records arrive."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator

from flask import Response, request
from werkzeug.wsgi import ClosingIterator

from .. import metrics
from ..errors import GatewayError, ReplyTimeout
from ..variants.streams import NDJSONFormat, OutputBuffer, ReplyStream, SSEFormat, StreamIdle, problem_of
from .guard import WriteDeadline, client_socket
from .responses import problem_of_dict, reply_response

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..core.calls import ServiceRequest
    from ..core.runtime import Gateway
    from ..protocol import Reply

_BATCH = 256           # records already queued are written in one chunk of at most this many records
_CHUNK_BYTES = 65536   # and about this many bytes: what is taken out of the bounded buffer must stay small too


def stream_response(gw: Gateway, svc: ServiceConfig, req: ServiceRequest,
                    fmt: type[NDJSONFormat] | type[SSEFormat]) -> Response:
    limits = gw.config.limits
    kind = "sse" if fmt is SSEFormat else "ndjson"
    # gunicorn writes each chunk after the generator yields it, and has no write timeout of its own
    writes = WriteDeadline(client_socket(request.environ), limits.write_timeout_ms)
    buffer = OutputBuffer(limits.write_buffer_records, limits.write_buffer_bytes, lambda: writes.armed)
    stream = ReplyStream(buffer, kind)
    call = gw.open_call(svc, stream.waiter, req, timeout_ms=svc.stream_timeout_ms)
    cid = call.correlation_id
    closed = False

    def close() -> None:
        nonlocal closed
        writes.disarm()            # armed until here: the last chunk and gunicorn's terminating chunk
        if not closed:
            closed = True
            call.close()
            stream.close()
            if writes.expired and not stream.dropped:
                metrics.SLOW_CONSUMERS.labels(kind, "write_timeout").inc()

    try:
        first = stream.next(svc.timeout_ms / 1000)
    except StreamIdle:
        close()
        metrics.TIMEOUTS.labels(svc.name).inc()
        raise ReplyTimeout(f"{svc.name} did not reply within {svc.timeout_ms} ms", correlation_id=cid.hex()) from None
    except GatewayError as exc:
        close()
        exc.extra.setdefault("correlation_id", cid.hex())
        raise
    if first.stream is None:              # a plain reply: answer it as it is
        close()
        return reply_response(svc, first)
    if first.stream == "error":           # nothing sent yet: the error can still be the HTTP status
        close()
        problem = {**problem_of(first), "correlation_id": cid.hex()}
        status = problem["status"] if isinstance(problem["status"], int) and 400 <= problem["status"] <= 599 else 502
        return problem_of_dict(problem, status, {"X-Correlation-Id": cid.hex()})
    deadline = time.monotonic() + svc.stream_timeout_ms / 1000
    idle_s = svc.stream_idle_timeout_ms / 1000

    def write(chunk: bytes) -> Iterator[bytes]:
        writes.arm()               # gunicorn writes the chunk, then resumes the generator
        yield chunk
        writes.disarm()

    def chunks() -> Iterator[bytes]:
        r: Reply = first
        out: list[bytes] = []
        size = 0
        while True:
            if r.stream == "more":
                out.append(fmt.item(r))
                size += len(out[-1])
            else:
                out.append(fmt.end(r.seq or 0) if r.stream == "end" else fmt.error(problem_of(r)))
                writes.arm()       # disarmed by close(), after gunicorn's last write
                yield b"".join(out)
                return
            if stream.buffer.empty() or len(out) >= _BATCH or size >= _CHUNK_BYTES:
                yield from write(b"".join(out))
                out, size = [], 0
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise StreamIdle(f"the stream did not end within stream_timeout_ms ({svc.stream_timeout_ms})")
                if remaining < idle_s:
                    r = stream.next(remaining, f" (the stream's deadline, stream_timeout_ms={svc.stream_timeout_ms})")
                else:
                    r = stream.next(idle_s, f" (stream_idle_timeout_ms={svc.stream_idle_timeout_ms})")
            except GatewayError as exc:
                out.append(fmt.error(exc.to_problem(cid.hex())))
                writes.arm()       # disarmed by close(), after gunicorn's last write
                yield b"".join(out)
                return

    headers = {"X-Correlation-Id": cid.hex(), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(ClosingIterator(chunks(), [close]), 200, headers, content_type=fmt.content_type)
