"""Every response the web layer writes, built in one place: a service's reply, a problem (``application/problem+json``,
RFC 9457, for every error, with the correlation id when one was minted).

The reply's headers are already filtered to ``http.forward_response_headers`` by
:func:`gateway.protocol.decode_reply`: they are copied as they are.
"""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from flask import Response
from werkzeug.exceptions import HTTPException

from ..errors import PROBLEM_JSON, GatewayError
from ..errors import problem_response as render_problem

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..protocol import Reply

log = logging.getLogger("gateway")


def reply_response(svc: ServiceConfig | None, reply: Reply, *, skip: tuple[str, ...] = ()) -> Response:
    """A service's reply as the HTTP response: status, body, content type, forwarded headers (except *skip*)."""
    default_type = svc.reply_content_type if svc is not None else "application/json"
    response = Response(reply.body, status=reply.status, content_type=reply.content_type or default_type)
    copy_reply_headers(response, reply, skip)
    return response


def copy_reply_headers(response: Response, reply: Reply, skip: tuple[str, ...] = ()) -> None:
    """The reply's forwarded headers and ``X-Correlation-Id`` onto *response*."""
    for name, value in reply.headers:
        if name not in skip:
            response.headers.add(name, value)
    response.headers["X-Correlation-Id"] = reply.correlation_id.hex()


def problem_response(error: GatewayError, correlation_id: str | None = None) -> Response:
    """*error* as an ``application/problem+json`` response (rendered by :func:`gateway.errors.problem_response`,
    which the WSGI safety net uses too)."""
    body, status, headers = render_problem(error, correlation_id or error.extra.get("correlation_id"))
    return Response(body, status, headers)


def problem_of_dict(problem: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    """A problem object that is already built (a service's stream error) as the response."""
    return Response(json.dumps(problem), status, {**(headers or {}), "Content-Type": PROBLEM_JSON})


def error_response(exc: Exception, max_body_bytes: int) -> Response:
    """Any exception a view raised, as a problem: a :class:`GatewayError` as it says, werkzeug's own 4xx (413 from
    ``MAX_CONTENT_LENGTH``, ...) with its status, anything else a logged 500. Flask's error handlers and the lean
    path (:mod:`gateway.web.lean`) both render through here."""
    if isinstance(exc, GatewayError):
        return problem_response(exc)
    if isinstance(exc, HTTPException):
        err = GatewayError(exc.description)
        err.status, err.code, err.title = exc.code or 500, (exc.name or "error").lower().replace(" ", "_"), \
            exc.name or "Error"
        if exc.code == 413:
            err.detail = f"the request body is larger than limits.max_body_bytes ({max_body_bytes})"
        return problem_response(err)
    log.exception("unexpected error")
    return problem_response(GatewayError("unexpected gateway error; see the gateway log"))
