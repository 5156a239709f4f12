"""Which variant answers a proxied request (docs/variants.md), decided from the request alone:

1. ``Prefer: respond-async``                               -> 202 + Location, result polled at /requests/<id>
2. ``Accept: application/x-ndjson`` or ``text/event-stream`` -> the reply streamed as it arrives
3. the service has ``answer_on``, the method is listed     -> answer when the entity reaches a state
   or GET with ``If-None-Match`` + ``Prefer: wait=<s>``     -> answer on the entity's next change (304 on expiry)
4. anything else                                             -> plain request-reply (``None`` here)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Response, request

from ..variants.streams import wanted_format
from .requests import parse_prefer

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..core.calls import ServiceRequest
    from ..core.runtime import Gateway


def dispatch_variant(gw: Gateway, svc: ServiceConfig, req: ServiceRequest, parsed: Any) -> Response | None:
    prefs = parse_prefer(request.headers.getlist("Prefer"))
    if "respond-async" in prefs:
        from .polls import accept
        return accept(gw, svc, req, prefs)
    fmt = wanted_format(list(request.accept_mimetypes))
    if fmt is not None:
        from .streaming import stream_response
        return stream_response(gw, svc, req, fmt)
    on = svc.answer_on
    if on is not None:
        from . import answer_on as state
        if request.method == "GET" and request.if_none_match and "wait" in prefs:
            return state.watch(gw, svc, prefs)
        if request.method in on.methods:
            return state.answer_on_state(gw, svc, req, parsed)
    return None
