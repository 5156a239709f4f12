"""The web layer: HTTP requests and websocket frames in, calls of the core out, responses back.

Blueprints: :mod:`.ops` (``/healthz``, ``/readyz``, ``/metrics``), :mod:`.polls` (``/requests/<id>``),
:mod:`.websocket` (``/ws``), :mod:`.proxy` (``/<service>/...``, registered last: it takes every other path).
In front of Flask, :mod:`.lean` serves plain requests to a service with the proxy's own function, without Flask's
per-request machinery.
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
    """The blueprints, the one error renderer (every error is ``application/problem+json``) and, unless
    ``http.lean_path`` is off, the lean path in front of Flask for plain requests to a service."""
    from .lean import LeanPath, worker_header
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
        return worker_header(response, gateway)

    @app.errorhandler(GatewayError)
    @app.errorhandler(HTTPException)                       # werkzeug's own 4xx (413 from MAX_CONTENT_LENGTH, ...)
    @app.errorhandler(Exception)
    def _error(exc: Exception) -> Response:
        return error_response(exc, max_body)

    if gateway.config.http.lean_path:
        app.wsgi_app = LeanPath(app, app.wsgi_app)  # type: ignore[method-assign]
