"""Async request + poll over HTTP: the accept side (called by the proxy) and ``GET /requests/<id>``."""
from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, request

from ..errors import AsyncDeadline, MethodNotAllowed, NotFound
from ..extensions import current_gateway, current_variants
from ..variants.async_results import AsyncResult, now_ms
from .requests import parse_prefer, reply_response, wait_seconds

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..core.runtime import Gateway

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


def _result(gw: Gateway, entry: AsyncResult) -> Response:
    if entry.reply is None:  # past the deadline without a reply
        raise AsyncDeadline(f"{entry.service or 'the service'} did not reply before the request's deadline",
                            correlation_id=entry.request_id, request_id=entry.request_id)
    response = reply_response(gw, gw.config.services.get(entry.service or ""), entry.reply)
    response.headers["Content-Location"] = _location(entry.request_id)
    return response


def _settle(gw: Gateway, entry: AsyncResult, wait_s: float | None, barrier_s: float = 0.0,
            caught_up: bool = False) -> Response:
    """The result if there is one (waiting up to *wait_s* for it), else 202 again.

    With *barrier_s*, a poll first reads the results partition up to its current end (within the wait, not on
    top of it; skipped when the caller just did, *caught_up*): another worker may already have answered 200 from
    a record this worker has not read yet. A 504 is final, so it is only given right after such a read.
    """
    if not entry.done.is_set() and barrier_s and not caught_up:
        started = time.monotonic()
        caught_up = current_variants().async_requests.read_barrier(entry.request_id, barrier_s)
        if wait_s:
            wait_s = max(0.0, wait_s - (time.monotonic() - started))
    if not entry.done.is_set() and wait_s:
        if entry.deadline_ms is not None:
            wait_s = min(wait_s, (entry.deadline_ms - now_ms()) / 1000 + 0.05)
        entry.done.wait(max(0.0, wait_s))
        caught_up = False            # time has passed since the read
    if not entry.done.is_set() and entry.expired(now_ms()) and barrier_s and not caught_up:
        current_variants().async_requests.read_barrier(entry.request_id, barrier_s)
    if entry.done.is_set() or entry.expired(now_ms()):
        return _result(gw, entry)
    return _pending(entry)


def accept(gw: Gateway, svc: ServiceConfig, req: dict[str, Any], prefs: dict[str, str | None]) -> Response:
    wait_s = wait_seconds(prefs, gw.config.async_["max_wait_ms"])
    entry = current_variants().async_requests.accept(svc, **req)
    response = _settle(gw, entry, wait_s)
    if response.status_code == 202:
        response.headers["Preference-Applied"] = "respond-async" + (", wait" if wait_s else "")
    return response


@bp.route("/requests/<rid>", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
          provide_automatic_options=False)
def poll(rid: str) -> Response:
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed("an async result is read with GET", allow=["GET", "HEAD"])
    gw = current_gateway()
    cfg = gw.config.async_
    prefs = parse_prefer(request.headers.getlist("Prefer"))
    wait_s = wait_seconds(prefs, cfg["max_wait_ms"])
    unknown = NotFound(f"no async request {rid!r}: the id is unknown or its result expired (results are kept "
                       f"{cfg['retention_ms'] // 1000} s)", request_id=rid)
    if not _ID_RE.match(rid):
        raise unknown
    started = time.monotonic()
    requests_ = current_variants().async_requests
    bound_s = cfg["unknown_id_wait_ms"] / 1000
    entry = requests_.store.get(rid)
    caught_up = False
    if entry is None and requests_.read_barrier(rid, bound_s):
        entry, caught_up = requests_.store.get(rid), True   # read to the end: the marker is there, or never was
    elif entry is None:
        entry = requests_.store.wait_known(rid, max(0.0, bound_s - (time.monotonic() - started)))
    if entry is None:
        raise unknown
    if wait_s:
        wait_s = max(0.0, wait_s - (time.monotonic() - started))
    return _settle(gw, entry, wait_s, barrier_s=bound_s, caught_up=caught_up)
