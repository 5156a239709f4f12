"""Answer on state over HTTP: ``answer_on`` routes and conditional GET waits.

The waiting itself (an entity reaching a state, its next change) is :class:`gateway.variants.states.StateWatcher`'s;
this module finds the entity id in the request or the reply and turns events into responses.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flask import Response, request

from .. import jsonutil
from ..errors import BadGateway, BadRequest, NotAcceptable
from ..extensions import current_variants
from ..variants.states import entity_field
from .requests import path_segment, wait_seconds
from .responses import copy_reply_headers, reply_response

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..core.calls import ServiceRequest
    from ..core.runtime import Gateway
    from ..variants.states import EntityEvent


def _event_response(event: EntityEvent, status: int, etag: str) -> Response:
    return Response(event.raw, status, {"ETag": etag}, content_type="application/json")


def answer_on_state(gw: Gateway, svc: ServiceConfig, req: ServiceRequest, parsed: Any) -> Response:
    on = svc.answer_on
    assert on is not None
    entity_id = None
    if on.id_source == "path":
        entity_id = path_segment(request.path, on.id_segment)
        if entity_id is None:
            raise BadRequest(f"{svc.name} answers {request.method} when the entity reaches a state; put the entity "
                             f"id in path segment {on.id_segment}")
    elif on.id_source == "body":
        entity_id = entity_field(parsed, on.id_field)
        if entity_id is None:
            raise BadRequest(f"{svc.name} answers {request.method} when the entity reaches a state; the JSON body "
                             f"needs the entity id in field {on.id_field!r}")
    sent_at = time.monotonic()   # only events read after the request was sent count
    reply = gw.call(svc, req)
    cid = reply.correlation_id.hex()
    if reply.stream is not None:
        raise NotAcceptable(f"{svc.name} streams its reply; answer_on routes need one reply", correlation_id=cid)
    if not 200 <= reply.status < 300:
        return reply_response(svc, reply)      # the service refused: no state to wait for
    if entity_id is None:
        try:
            entity_id = entity_field(jsonutil.parse(reply.body or b"null"), on.id_field)
        except ValueError:
            entity_id = None
        if entity_id is None:
            raise BadGateway(f"{svc.name}'s reply has no JSON field {on.id_field!r} with the entity id "
                             "(answer_on.id_field)", correlation_id=cid)
    event = current_variants().states.wait_for_state(svc.name, on, entity_id, sent_at, cid)
    response = _event_response(event, reply.status, event.etag(on.version_field))
    copy_reply_headers(response, reply, skip=("etag",))
    return response


def watch(gw: Gateway, svc: ServiceConfig, prefs: dict[str, str | None]) -> Response | None:
    """GET + If-None-Match + Prefer: wait: the entity's current event if its ETag differs, else its next change;
    304 when nothing changed in time. Without an entity id in the path: plain request-reply (None)."""
    on = svc.answer_on
    assert on is not None
    entity_id = path_segment(request.path, on.id_segment)
    if entity_id is None:
        return None
    wait_s = wait_seconds(prefs, gw.config.state.max_wait_ms) or 0.0
    match = request.if_none_match
    etags = {"*"} if match.star_tag else {f'"{t}"' for t in match.as_set(include_weak=True)}
    event = current_variants().states.wait_for_change(on, entity_id, etags, wait_s)
    if event is None:
        raw = request.headers.get("If-None-Match", "")
        return Response(status=304, headers={"ETag": raw.split(",")[0].strip(), "Preference-Applied": "wait"})
    return _event_response(event, 200, event.etag(on.version_field))
