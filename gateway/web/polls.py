"""Async request + poll over HTTP: the 202 of an accepted request and ``GET /requests/<id>``.

What an async request means (the accepted marker, the results tail, read barriers, deadlines) lives in
:mod:`gateway.variants.async_results`; this module only turns its answers into responses.
"""
from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING

from flask import Blueprint, Response, request

from ..errors import AsyncDeadline, MethodNotAllowed, NotFound
from ..extensions import current_gateway, current_variants
from . import edge
from .requests import ALL_METHODS, parse_prefer, wait_seconds
from .responses import reply_response

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..core.calls import ServiceRequest
    from ..core.runtime import Gateway
    from ..variants.async_results import AsyncResult

bp = Blueprint("async", __name__)
_ID_RE = re.compile(r"^[0-9a-f]{48}$")


def _location(rid: str) -> str:
    return f"/requests/{rid}"


def _pending(entry: AsyncResult) -> Response:
    rid = entry.request_id
    body = {"id": rid, "status": "pending", "location": _location(rid), "service": entry.service,
            "deadline_ms": entry.deadline_ms}
    return Response(json.dumps(body), 202, {"Location": _location(rid), "Retry-After": "1",
                                            "Preference-Applied": "respond-async",
                                            "Content-Type": "application/json"})


def _respond(gw: Gateway, entry: AsyncResult, final: bool) -> Response:
    if not final:
        return _pending(entry)
    if entry.reply is None:  # past the deadline without a reply
        raise AsyncDeadline(f"{entry.service or 'the service'} did not reply before the request's deadline",
                            correlation_id=entry.request_id, request_id=entry.request_id)
    response = reply_response(gw.config.services.get(entry.service or ""), entry.reply)
    response.headers["Content-Location"] = _location(entry.request_id)
    return response


def accept(gw: Gateway, svc: ServiceConfig, req: ServiceRequest, prefs: dict[str, str | None]) -> Response:
    wait_s = wait_seconds(prefs, gw.config.async_requests.max_wait_ms)
    requests_ = current_variants().async_requests
    entry = requests_.accept(svc, req)
    response = _respond(gw, entry, requests_.settle(entry, wait_s))
    if response.status_code == 202:
        response.headers["Preference-Applied"] = "respond-async" + (", wait" if wait_s else "")
    return response


@bp.route("/requests/<rid>", methods=ALL_METHODS, provide_automatic_options=False)
def poll(rid: str) -> Response:
    edge.admit("poll", None, request.method, request.headers.get)
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed("an async result is read with GET", allow=["GET", "HEAD"])
    gw = current_gateway()
    cfg = gw.config.async_requests
    wait_s = wait_seconds(parse_prefer(request.headers.getlist("Prefer")), cfg.max_wait_ms)
    if not _ID_RE.match(rid):
        entry = None
    else:
        started = time.monotonic()
        requests_ = current_variants().async_requests
        bound_s = cfg.unknown_id_wait_ms / 1000
        entry, caught_up = requests_.lookup(rid, bound_s)
        if entry is not None:
            if wait_s:
                wait_s = max(0.0, wait_s - (time.monotonic() - started))
            return _respond(gw, entry, requests_.settle(entry, wait_s, barrier_s=bound_s, caught_up=caught_up))
    raise NotFound(f"no async request {rid!r}: the id is unknown or its result expired (results are kept "
                   f"{cfg.retention_ms // 1000} s)", request_id=rid)
