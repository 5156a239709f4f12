"""Helpers shared by the HTTP blueprints and the websocket: a reply as a response, ``Prefer``, what a request
record carries (forwarded headers, record key)."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from flask import Response

from ..errors import BadRequest
from .guard import check_header

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..core.runtime import Gateway
    from ..protocol import Reply


TRACE_HEADERS = ("traceparent", "tracestate")


def path_segment(path: str, index: int) -> str | None:
    """The *index*-th non-empty segment of *path* (``/orders/o-1`` -> 0: ``orders``, 1: ``o-1``)."""
    segments = [s for s in path.split("/") if s]
    return segments[index] if index < len(segments) else None


def forwarded_headers(gw: Gateway, header: Callable[[str], str | None]) -> list[tuple[str, str]]:
    """The allow-listed request headers (``http.forward_request_headers``) plus trace context, looked up with
    *header* (case-insensitive); 400 for a value that an HTTP header cannot carry."""
    out = []
    for name in (*gw.config.http["forward_request_headers"], *TRACE_HEADERS):
        value = header(name)
        if value is not None:
            check_header(name, value)
            out.append((name, value))
    return out


def record_key(svc: ServiceConfig, path: str, header: Callable[[str], str | None], parsed: Any) -> bytes | None:
    """The request record's key as the service's ``key`` setting says: a path segment, a header or a JSON field."""
    spec = svc.key
    if spec is None:
        return None
    if spec["source"] == "path":
        segment = path_segment(path, spec["segment"])
        return segment.encode("utf-8", "surrogatepass") if segment is not None else None
    if spec["source"] == "header":
        value = header(spec["header"])
        return value.encode("latin-1", "replace") if value is not None else None
    if isinstance(parsed, dict) and parsed.get(spec["field"]) is not None:
        value = parsed[spec["field"]]
        # a JSON string may hold a lone surrogate ("\ud800"): the key only has to be stable, not valid UTF-8
        return (value if isinstance(value, str) else json.dumps(value)).encode("utf-8", "surrogatepass")
    return None


def reply_response(gw: Gateway, svc: ServiceConfig | None, reply: Reply) -> Response:
    """A service's reply as the HTTP response: status, body, content type, allow-listed headers."""
    default_type = svc.reply_content_type if svc is not None else "application/json"
    response = Response(reply.body, status=reply.status, content_type=reply.content_type or default_type)
    allowed = gw.config.http["forward_response_headers"]
    for name, value in reply.headers:
        if name in allowed:
            response.headers.add(name, value)
    response.headers["X-Correlation-Id"] = reply.correlation_id.hex()
    return response


def parse_prefer(values: list[str]) -> dict[str, str | None]:
    """``Prefer`` (RFC 7240): ``respond-async, wait=10`` -> {"respond-async": None, "wait": "10"}.

    Parameters after ``;`` are ignored; names are case-insensitive; the first occurrence of a name wins."""
    prefs: dict[str, str | None] = {}
    for header in values:
        for token in header.split(","):
            pref = token.split(";", 1)[0].strip()
            if not pref:
                continue
            name, _, value = pref.partition("=")
            prefs.setdefault(name.strip().lower(), value.strip().strip('"') if _ else None)
    return prefs


def wait_seconds(prefs: dict[str, str | None], cap_ms: int) -> float | None:
    """``wait=<seconds>`` capped at *cap_ms*; None when absent; 400 when it is not a whole number >= 0."""
    if "wait" not in prefs:
        return None
    raw = prefs["wait"]
    try:
        value = int(raw or "")
    except ValueError:
        raise BadRequest(f"Prefer: wait={raw} is not a whole number of seconds (e.g. Prefer: wait=10)") from None
    if value < 0:
        raise BadRequest(f"Prefer: wait={raw} must not be negative")
    return min(value, cap_ms / 1000)
