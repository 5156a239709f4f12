"""Answer on state over HTTP: ``answer_on`` routes and conditional GET waits (see :mod:`gateway.variants.states`)."""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from flask import Response, request

from .. import jsonutil
from ..errors import BadGateway, BadRequest, NotAcceptable, StateTimeout
from ..extensions import current_variants
from .requests import path_segment, reply_response, wait_seconds

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..core.runtime import Gateway
    from ..variants.states import EntityEvent

READ_BARRIER_S = 1.0     # longest a conditional GET waits to catch up with the events topic (see watch)


def _field(doc: Any, name: str) -> str | None:
    if isinstance(doc, dict) and doc.get(name) not in (None, ""):
        value = doc[name]
        return value if isinstance(value, str) else json.dumps(value)
    return None


def _event_response(event: EntityEvent, status: int, etag: str) -> Response:
    return Response(event.raw, status, {"ETag": etag}, content_type="application/json")


def answer_on_state(gw: Gateway, svc: ServiceConfig, req: dict[str, Any], parsed: Any) -> Response:
    on = svc.answer_on
    assert on is not None
    table = current_variants().states.tables[on["topic"]]
    entity_id = None
    if on["id_source"] == "path":
        entity_id = path_segment(request.path, on["id_segment"])
        if entity_id is None:
            raise BadRequest(f"{svc.name} answers {request.method} when the entity reaches a state; put the entity "
                             f"id in path segment {on['id_segment']}")
    elif on["id_source"] == "body":
        entity_id = _field(parsed, on["id_field"])
        if entity_id is None:
            raise BadRequest(f"{svc.name} answers {request.method} when the entity reaches a state; the JSON body "
                             f"needs the entity id in field {on['id_field']!r}")
    sent_at = time.monotonic()   # only events read after the request was sent count
    reply = gw.call(svc, **req)
    cid = reply.correlation_id.hex()
    if reply.stream is not None:
        raise NotAcceptable(f"{svc.name} streams its reply; answer_on routes need one reply", correlation_id=cid)
    if not 200 <= reply.status < 300:
        return reply_response(gw, svc, reply)      # the service refused: no state to wait for
    if entity_id is None:
        try:
            entity_id = _field(jsonutil.parse(reply.body or b"null"), on["id_field"])
        except ValueError:
            entity_id = None
        if entity_id is None:
            raise BadGateway(f"{svc.name}'s reply has no JSON field {on['id_field']!r} with the entity id "
                             "(answer_on.id_field)", correlation_id=cid)
    states = set(on["states"])
    field = on["state_field"]
    event = table.wait(entity_id, lambda e: e.seen_at >= sent_at and e.state(field) in states,
                       on["timeout_ms"] / 1000)
    if event is None:
        last = table.get(entity_id)
        seen = last.state(field) if last is not None else None
        raise StateTimeout(f"{svc.name} entity {entity_id} did not reach {' or '.join(on['states'])} within "
                           f"{on['timeout_ms']} ms (last state seen: {seen})", correlation_id=cid,
                           entity_id=entity_id, last_state=seen)
    response = _event_response(event, reply.status, event.etag(on["version_field"]))
    allowed = gw.config.http["forward_response_headers"]
    for name, value in reply.headers:
        if name in allowed and name != "etag":
            response.headers.add(name, value)
    response.headers["X-Correlation-Id"] = cid
    return response


def watch(gw: Gateway, svc: ServiceConfig, prefs: dict[str, str | None]) -> Response | None:
    """GET + If-None-Match + Prefer: wait: the entity's current event if its ETag differs, else its next change;
    304 when nothing changed in time. Without an entity id in the path: plain request-reply (None)."""
    on = svc.answer_on
    assert on is not None
    entity_id = path_segment(request.path, on["id_segment"])
    if entity_id is None:
        return None
    wait_s = wait_seconds(prefs, gw.config.state["max_wait_ms"]) or 0.0
    raw = request.headers.get("If-None-Match", "")
    etags = {t.strip().removeprefix("W/") for t in raw.split(",") if t.strip()}
    vf = on["version_field"]
    if "*" in etags:      # "any representation": wait for the first event the worker sees for it
        def changed(e: EntityEvent) -> bool:
            return True
    else:
        def changed(e: EntityEvent) -> bool:
            return e.etag(vf) not in etags
    states = current_variants().states
    started = time.monotonic()
    # workers read the events topic independently: catch up first, so that a client holding the ETag another
    # worker just served is never answered with an older event (within the wait, not on top of it)
    states.read_barrier(on["topic"], READ_BARRIER_S)
    wait_s = max(0.0, wait_s - (time.monotonic() - started))
    event = states.tables[on["topic"]].wait(entity_id, changed, wait_s)
    if event is None:
        return Response(status=304, headers={"ETag": raw.split(",")[0].strip(), "Preference-Applied": "wait"})
    return _event_response(event, 200, event.etag(vf))
