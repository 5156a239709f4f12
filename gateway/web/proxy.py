"""The request path: ``/<service>/<path...>`` -> validate -> the variant's handler or one request-reply -> response.

Only translation happens here: what the request means (a call, an async request, a stream, a wait for a state)
is decided by :mod:`gateway.web.dispatch` and carried out by the core and the variants.

:func:`proxy_request` is the whole of it, a plain function over a werkzeug request: the Flask view below calls it,
and so does the lean path (:mod:`gateway.web.lean`), which serves plain request-replies without Flask's
per-request machinery.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from .. import jsonutil, metrics
from ..core.calls import ServiceRequest
from ..errors import GatewayError, MalformedJSON, NotAcceptable
from ..extensions import gateway_of
from . import edge
from .dispatch import dispatch_variant
from .guard import read_body, utf8_path, utf8_query
from .requests import ALL_METHODS, check_content_type, check_method, forwarded_headers, lookup_service, record_key
from .responses import reply_response

if TYPE_CHECKING:
    from flask import Flask
    from werkzeug.wrappers import Request

    from ..config import ServiceConfig

bp = Blueprint("proxy", __name__)


def _validate_body(request: Request, svc: ServiceConfig, body_timeout_ms: int) -> tuple[bytes, str | None, Any]:
    body = read_body(request, body_timeout_ms)
    parsed = None
    if body:
        check_content_type(svc, request.mimetype)
        if request.is_json:
            try:
                parsed = jsonutil.parse(body)
            except ValueError as exc:
                raise MalformedJSON(f"the body is not valid JSON: {exc}") from None
    return body, request.headers.get("Content-Type"), parsed


def proxy_request(app: Flask, request: Request, service: str, plain: bool = False) -> Response:
    """One proxied request to *service* (the path's first segment): the edge, validation, the variant or one
    request-reply, the metrics. Raises what the caller renders as a problem (:func:`.responses.error_response`).
    *plain*: the caller knows that no variant answers it (:func:`.dispatch.choose_variant` said None)."""
    gw = gateway_of(app)
    started = time.perf_counter()
    label = service if service in gw.config.services else "_unknown"
    status = 500
    try:
        edge.admit("proxy", service, request.method, request.headers.get, app=app)
        svc = lookup_service(gw, service)
        check_method(svc, request.method)
        utf8_path(request.environ)
        query = utf8_query(request.query_string)
        body, content_type, parsed = _validate_body(request, svc, gw.config.limits.body_timeout_ms)
        req = ServiceRequest(method=request.method, path=request.path, query=query, content_type=content_type,
                             http_headers=forwarded_headers(gw, request.headers.get), body=body,
                             key=record_key(svc, request.path, request.headers.get, parsed))
        # async, streaming, answer-on-state (docs/variants.md)
        special = None if plain else dispatch_variant(gw, svc, request, req, parsed)
        if special is not None:
            status = special.status_code
            return special
        reply = gw.call(svc, req)
        if reply.stream is not None:
            raise NotAcceptable(f"{service} answers {request.method} {request.path} with a stream; ask for it with "
                                "Accept: application/x-ndjson or Accept: text/event-stream",
                                correlation_id=reply.correlation_id.hex())
        status = reply.status
        return reply_response(svc, reply)
    except GatewayError as exc:
        status = exc.status
        raise
    except HTTPException as exc:  # 413 from werkzeug's MAX_CONTENT_LENGTH check
        status = exc.code or 500
        raise
    finally:
        metrics.child(metrics.REQUESTS, label, str(status)).inc()
        metrics.child(metrics.LATENCY, label).observe(time.perf_counter() - started)


@bp.route("/<service>", defaults={"rest": ""}, methods=ALL_METHODS, provide_automatic_options=False)
@bp.route("/<service>/<path:rest>", methods=ALL_METHODS, provide_automatic_options=False)
def proxy(service: str, rest: str) -> Response:
    return proxy_request(current_app, request, service)
