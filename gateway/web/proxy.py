"""The request path: ``/<service>/<path...>`` -> one request record -> wait for the reply -> HTTP response."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from .. import jsonutil, metrics
from ..errors import GatewayError, MalformedJSON, MethodNotAllowed, NotAcceptable, UnknownService, UnsupportedMediaType
from ..extensions import current_gateway
from .dispatch import dispatch_variant
from .guard import read_body, utf8_path, utf8_query
from .requests import forwarded_headers, record_key, reply_response

if TYPE_CHECKING:
    from ..config import ServiceConfig

bp = Blueprint("proxy", __name__)
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or mimetype.endswith("+json")


def _validate_body(svc: ServiceConfig, body_timeout_ms: int) -> tuple[bytes, str | None, Any]:
    body = read_body(request, body_timeout_ms)
    content_type = request.headers.get("Content-Type")
    parsed = None
    if body:
        mimetype = request.mimetype
        if not mimetype:
            raise UnsupportedMediaType(f"a request body needs a Content-Type; {svc.name} accepts "
                                       f"{', '.join(svc.content_types)}")
        if "*/*" not in svc.content_types and mimetype not in svc.content_types:
            raise UnsupportedMediaType(f"{svc.name} does not accept {mimetype}; send one of "
                                       f"{', '.join(svc.content_types)}")
        if _is_json(mimetype):
            try:
                parsed = jsonutil.parse(body)
            except ValueError as exc:
                raise MalformedJSON(f"the body is not valid JSON: {exc}") from None
    return body, content_type, parsed


@bp.route("/<service>", defaults={"rest": ""}, methods=ALL_METHODS, provide_automatic_options=False)
@bp.route("/<service>/<path:rest>", methods=ALL_METHODS, provide_automatic_options=False)
def proxy(service: str, rest: str) -> Response:
    gw = current_gateway()
    started = time.perf_counter()
    svc = gw.config.services.get(service)
    label = service if svc is not None else "_unknown"
    status = 500
    try:
        if svc is None:
            raise UnknownService(f"no service {service!r}; known: {', '.join(sorted(gw.config.services))}")
        if request.method not in svc.methods:
            raise MethodNotAllowed(f"{service} accepts {', '.join(svc.methods)}", allow=list(svc.methods))
        utf8_path(request.environ)
        query = utf8_query(request.query_string)
        body, content_type, parsed = _validate_body(svc, gw.config.limits["body_timeout_ms"])
        req = dict(method=request.method, path=request.path, query=query,
                   content_type=content_type, http_headers=forwarded_headers(gw, request.headers.get), body=body,
                   key=record_key(svc, request.path, request.headers.get, parsed))
        special = dispatch_variant(gw, svc, req, parsed)  # async, streaming, answer-on-state (docs/variants.md)
        if special is not None:
            status = special.status_code
            return special
        reply = gw.call(svc, **req)
        if reply.stream is not None:
            raise NotAcceptable(f"{service} answers {request.method} {request.path} with a stream; ask for it with "
                                "Accept: application/x-ndjson or Accept: text/event-stream",
                                correlation_id=reply.correlation_id.hex())
        status = reply.status
        return reply_response(gw, svc, reply)
    except GatewayError as exc:
        status = exc.status
        raise
    except HTTPException as exc:  # 413 from werkzeug's MAX_CONTENT_LENGTH check
        status = exc.code or 500
        raise
    finally:
        metrics.REQUESTS.labels(label, str(status)).inc()
        metrics.LATENCY.labels(label).observe(time.perf_counter() - started)
