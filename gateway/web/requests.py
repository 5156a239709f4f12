"""Request validation shared by every entry point (the HTTP proxy and websocket frames): which service, which
method (405 + Allow), content type (415), size (413), forwarded headers, the record key, ``Prefer``.

Each check raises a :class:`gateway.errors.GatewayError` saying what to fix; nothing is registered or produced
before they all pass.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from ..config import HTTP_METHODS
from ..errors import BadRequest, MethodNotAllowed, PayloadTooLarge, UnknownService, UnsupportedMediaType
from .guard import check_header

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..core.runtime import Gateway


TRACE_HEADERS = ("traceparent", "tracestate")
ALL_METHODS = list(HTTP_METHODS)      # routes take every method, so that a wrong one gets 405 + Allow, not 404


def lookup_service(gw: Gateway, name: Any) -> ServiceConfig:
    """The configured service *name*, or 404 listing the known ones."""
    svc = gw.config.services.get(name) if isinstance(name, str) else None
    if svc is None:
        raise UnknownService(f"no service {name!r}; known: {', '.join(sorted(gw.config.services))}")
    return svc


def check_method(svc: ServiceConfig, method: str) -> None:
    """405 with ``Allow`` for a method the service does not take."""
    if method not in svc.methods:
        raise MethodNotAllowed(f"{svc.name} accepts {', '.join(svc.methods)}", allow=list(svc.methods))


def check_content_type(svc: ServiceConfig, mimetype: str | None) -> None:
    """415 for a body the service does not accept (or a body without a content type)."""
    if not mimetype:
        raise UnsupportedMediaType(f"a request body needs a Content-Type; {svc.name} accepts "
                                   f"{', '.join(svc.content_types)}")
    if "*/*" not in svc.content_types and mimetype not in svc.content_types:
        raise UnsupportedMediaType(f"{svc.name} does not accept {mimetype}; send one of "
                                   f"{', '.join(svc.content_types)}")


def check_size(size: int, limit: int, what: str = "the body", setting: str = "limits.max_body_bytes") -> None:
    """413 past *limit* bytes (werkzeug checks HTTP bodies itself: ``MAX_CONTENT_LENGTH``)."""
    if size > limit:
        raise PayloadTooLarge(f"{what} is larger than {setting} ({limit})")


def path_segment(path: str, index: int) -> str | None:
    """The *index*-th non-empty segment of *path* (``/orders/o-1`` -> 0: ``orders``, 1: ``o-1``)."""
    segments = [s for s in path.split("/") if s]
    return segments[index] if index < len(segments) else None


def forwarded_headers(gw: Gateway, header: Callable[[str], str | None]) -> list[tuple[str, str]]:
    """The allow-listed request headers (``http.forward_request_headers``) plus trace context, looked up with
    *header* (case-insensitive); 400 for a value that an HTTP header cannot carry."""
    out = []
    for name in (*gw.config.http.forward_request_headers, *TRACE_HEADERS):
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
    if spec.source == "path":
        segment = path_segment(path, spec.segment)
        return segment.encode("utf-8", "surrogatepass") if segment is not None else None
    if spec.source == "header":
        value = header(spec.header)
        return value.encode("latin-1", "replace") if value is not None else None
    if isinstance(parsed, dict) and parsed.get(spec.field) is not None:
        value = parsed[spec.field]
        # a JSON string may hold a lone surrogate ("\ud800"): the key only has to be stable, not valid UTF-8
        return (value if isinstance(value, str) else json.dumps(value)).encode("utf-8", "surrogatepass")
    return None


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
