"""Websocket frames, both ways: a request frame checked and turned into a service request (the same checks as an
HTTP request's, :mod:`gateway.web.requests`, behind the same edge hook), a reply record turned into a frame.

A request frame is a JSON object ``{"id", "service", "method", "path", "headers", "body"}``; every frame the gateway
sends back carries the request's ``id``: one reply frame, or a streaming reply's item frames then an ``end`` (or
``error``) frame.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Container

from .. import jsonutil
from ..config import HTTP_METHODS
from ..core.calls import ServiceRequest
from ..errors import BadRequest
from ..variants.streams import problem_of
from . import edge
from .guard import check_header, check_text
from .requests import check_content_type, check_method, check_size, forwarded_headers, lookup_service, record_key

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..core.runtime import Gateway
    from ..protocol import Reply

FIELDS = {"id", "service", "method", "path", "headers", "body"}


class DuplicateId(BadRequest):
    code, title = "duplicate_id", "A request with this id is already in flight on this socket"


@dataclass(frozen=True)
class FrameRequest:
    frame_id: str | int
    svc: ServiceConfig
    request: ServiceRequest


def parse_frame(gw: Gateway, frame: dict[str, Any], in_flight: Container[Any] = ()) -> FrameRequest:
    """A request frame as a service request; a :class:`gateway.errors.GatewayError` says what to fix (an id
    still *in_flight* on the socket: :class:`DuplicateId`)."""
    unknown = set(frame) - FIELDS
    if unknown:
        raise BadRequest(f"unknown frame field(s) {', '.join(sorted(unknown))}; a frame has "
                         f"{', '.join(sorted(FIELDS))}")
    frame_id = frame.get("id")
    if not isinstance(frame_id, (str, int)) or isinstance(frame_id, bool) or len(str(frame_id)) > 128:
        raise BadRequest("every frame needs an \"id\": a string or integer (at most 128 characters) that the "
                         "reply frames will carry")
    if frame_id in in_flight:
        raise DuplicateId(f"request {frame_id!r} is still in flight on this socket; use a new id")
    method = frame.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        raise BadRequest(f"method {method!r} is not one of {', '.join(HTTP_METHODS)}")
    method = method.upper()
    headers = frame.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in headers.items()):
        raise BadRequest('"headers" is an object of string values')
    for name, value in headers.items():
        check_header(name, value)
    headers = {k.lower(): v for k, v in headers.items()}

    def lookup(name: str) -> str | None:
        return headers.get(name.lower())

    service = frame.get("service")
    edge.admit("websocket-frame", service if isinstance(service, str) else None, method, lookup)
    svc = lookup_service(gw, service)
    check_method(svc, method)
    rel = frame.get("path", "")
    if not isinstance(rel, str) or (rel and rel[0] not in "/?"):
        raise BadRequest('"path" is the path under the service, starting with "/" (e.g. "/o-1"), or empty')
    check_text('"path"', rel)
    rel_path, _, query = rel.partition("?")
    path = f"/{svc.name}{rel_path}"
    body, content_type = _body(gw, svc, frame.get("body"), headers.get("content-type"))
    return FrameRequest(frame_id, svc, ServiceRequest(
        method=method, path=path, query=query, content_type=content_type, http_headers=forwarded_headers(gw, lookup),
        body=body, key=record_key(svc, path, lookup, frame.get("body"))))


def _body(gw: Gateway, svc: ServiceConfig, body: Any, content_type: str | None) -> tuple[bytes, str | None]:
    if body is None:
        return b"", None
    if content_type and isinstance(body, str):
        check_text('"body"', body)
        data, ctype = body.encode(), content_type
    else:
        data, ctype = json.dumps(body).encode(), "application/json"
    check_content_type(svc, ctype.split(";", 1)[0].strip().lower())
    check_size(len(data), gw.config.limits.max_body_bytes)
    return data, ctype


def frame_body(reply: Reply, content_type: str | None) -> dict[str, Any]:
    """The body as the frame carries it, read as *content_type* (the reply's, or the service's default)."""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if not reply.body:
        return {"body": None}
    if jsonutil.is_json_type(ctype):
        try:
            return {"body": jsonutil.parse(reply.body)}
        except ValueError:
            pass
    if ctype.startswith("text/") or ctype.endswith(("json", "xml")):
        return {"body": reply.body.decode("utf-8", "replace")}
    return {"body": base64.b64encode(reply.body).decode(), "body_encoding": "base64"}


def reply_frame(frame_id: Any, reply: Reply, default_content_type: str) -> dict[str, Any]:
    """One reply record (a plain reply, or one record of a stream, in order) as the frame the client gets."""
    ctype = reply.content_type or default_content_type
    if reply.stream is None:
        return {"id": frame_id, "status": reply.status, "correlation_id": reply.correlation_id.hex(),
                "headers": dict(reply.headers), "content_type": ctype, **frame_body(reply, ctype)}
    if reply.stream == "more":
        return {"id": frame_id, "seq": reply.seq, "stream": "more", **frame_body(reply, ctype)}
    if reply.stream == "end":
        return {"id": frame_id, "seq": reply.seq, "stream": "end"}
    return {"id": frame_id, "seq": reply.seq, "stream": "error", "error": problem_of(reply)}
