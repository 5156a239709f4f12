"""Which variant answers a proxied request (docs/variants.md), decided from the request alone:

1. ``Prefer: respond-async``                               -> 202 + Location, result polled at /requests/<id>
2. ``Accept: application/x-ndjson`` or ``text/event-stream`` -> the reply streamed as it arrives
3. the service has ``answer_on``, the method is listed     -> answer when the entity reaches a state
   or GET with ``If-None-Match`` + ``Prefer: wait=<s>``     -> answer on the entity's next change (304 on expiry)
4. anything else                                             -> plain request-reply (``None`` here)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..variants.streams import wanted_format
from .requests import parse_prefer

if TYPE_CHECKING:
    from flask import Response
    from werkzeug.wrappers import Request

    from ..config import ServiceConfig
    from ..core.calls import ServiceRequest
    from ..core.runtime import Gateway

    Variant = Callable[[Gateway, ServiceRequest, Any], Response]


_STREAM_MARKS = ("event-stream", "ndjson", "jsonl")   # in every media type wanted_format() accepts


def choose_variant(svc: ServiceConfig, request: Request) -> Variant | None:
    """The handler of the variant that answers *request* (called with the gateway, the validated request and its
    parsed JSON body), or None for a plain request-reply. Looks at the headers only; reads no body."""
    prefer = request.headers.get("Prefer")   # one value: the server joined repeated headers (WSGI environ)
    prefs = parse_prefer([prefer] if prefer is not None else [])
    if "respond-async" in prefs:
        from .polls import accept
        return lambda gw, req, parsed: accept(gw, svc, req, prefs)
    accept = request.headers.get("Accept", "").lower()   # parsed only when it can name a stream format
    fmt = wanted_format(list(request.accept_mimetypes)) if any(m in accept for m in _STREAM_MARKS) else None
    if fmt is not None:
        from .streaming import stream_response
        return lambda gw, req, parsed: stream_response(gw, svc, req, fmt)
    on = svc.answer_on
    if on is not None:
        from . import answer_on as state
        if request.method == "GET" and request.if_none_match and "wait" in prefs:
            return lambda gw, req, parsed: state.watch(gw, svc, prefs)
        if request.method in on.methods:
            return lambda gw, req, parsed: state.answer_on_state(gw, svc, req, parsed)
    return None


def dispatch_variant(gw: Gateway, svc: ServiceConfig, request: Request, req: ServiceRequest, parsed: Any
                     ) -> Response | None:
    """The variant's response to *request*, or None: a plain request-reply, for the caller to make."""
    variant = choose_variant(svc, request)
    return variant(gw, req, parsed) if variant is not None else None
