"""The web layer: HTTP requests and websocket frames in, calls of the core out, responses back.

Blueprints: :mod:`.ops` (``/healthz``, ``/readyz``, ``/metrics``), :mod:`.polls` (``/requests/<id>``),
:mod:`.websocket` (``/ws``), :mod:`.proxy` (``/<service>/...``, registered last: it takes every other path).
Shared: :mod:`.edge` (the hook every entry point passes: auth, CORS, rate limits plug in there), :mod:`.requests`
(validation), :mod:`.responses` (replies and problems), :mod:`.guard` (slow and hostile clients),
:mod:`.dispatch` (which variant answers a proxied request), :mod:`.streaming` and :mod:`.answer_on` (the HTTP side
of two variants). Room for an OpenAPI document generated from the config and a status page: more blueprints here,
reading ``current_gateway().config``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from werkzeug.exceptions import HTTPException

from ..errors import GatewayError
from .responses import error_response

if TYPE_CHECKING:
    from flask import Flask, Response

    from ..core.runtime import Gateway


def register(app: Flask, gateway: Gateway) -> None:
    """The blueprints and the one error renderer (every error is ``application/problem+json``)."""
    from .ops import bp as ops_bp
    from .polls import bp as polls_bp
    from .proxy import bp as proxy_bp
    from .websocket import bp as ws_bp

    app.register_blueprint(ops_bp)
    app.register_blueprint(polls_bp)
    app.register_blueprint(ws_bp)
    app.register_blueprint(proxy_bp)
    max_body = gateway.config.limits.max_body_bytes

    @app.after_request
    def _worker_header(response: Response) -> Response:   # which worker answered (polls may go to any)
        response.headers["X-Gateway-Worker"] = gateway.worker_tag.hex()
        return response

    @app.errorhandler(GatewayError)
    @app.errorhandler(HTTPException)                       # werkzeug's own 4xx (413 from MAX_CONTENT_LENGTH, ...)
    @app.errorhandler(Exception)
    def _error(exc: Exception) -> Response:
        return error_response(exc, max_body)
