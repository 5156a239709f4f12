"""REST request-response gateway for services behind Kafka topics.

``create_app()`` builds the Flask app; nothing connects to Kafka at import time. Under gunicorn,
``conf/gunicorn.conf.py`` starts each worker's Kafka side after gevent has patched.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flask import Flask
from werkzeug.exceptions import HTTPException

from .errors import GatewayError, problem_response
from .extensions import current_gateway

if TYPE_CHECKING:
    from .config import Config

__all__ = ["create_app", "current_gateway"]


def create_app(config: Config | None = None) -> Flask:
    from .config import load_config
    from .core.runtime import Gateway
    from .variants.runtime import Variants
    from .web.ops import bp as ops_bp
    from .web.polls import bp as async_bp
    from .web.proxy import bp as proxy_bp
    from .web.websocket import bp as ws_bp

    config = config or load_config()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.limits["max_body_bytes"]
    gateway = app.extensions["gateway"] = Gateway(config)
    app.extensions["variants"] = Variants(gateway)
    app.register_blueprint(ops_bp)
    app.register_blueprint(async_bp)
    app.register_blueprint(ws_bp)
    app.register_blueprint(proxy_bp)

    @app.after_request
    def _worker_header(response):  # noqa: ANN001, ANN202 - which worker answered (polls may go to any)
        response.headers["X-Gateway-Worker"] = gateway.worker_tag.hex()
        return response

    @app.errorhandler(GatewayError)
    def _gateway_error(exc: GatewayError):  # noqa: ANN202
        return problem_response(exc, exc.extra.get("correlation_id"))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # noqa: ANN202 - werkzeug's own 4xx (413 from MAX_CONTENT_LENGTH, ...)
        err = GatewayError(exc.description)
        err.status, err.code, err.title = exc.code or 500, (exc.name or "error").lower().replace(" ", "_"), \
            exc.name or "Error"
        if exc.code == 413:
            err.detail = f"the request body is larger than limits.max_body_bytes ({config.limits['max_body_bytes']})"
        return problem_response(err)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # noqa: ANN202
        logging.getLogger("gateway").exception("unexpected error")
        return problem_response(GatewayError("unexpected gateway error; see the gateway log"))

    return app
