"""REST request-response gateway for services behind Kafka topics.

``create_app()`` builds the Flask app; nothing connects to Kafka at import time. Under gunicorn,
``conf/gunicorn.conf.py`` starts each worker's Kafka side after gevent has patched.

The layers (README, "How it works"): :mod:`gateway.web` (HTTP and websocket frames in, responses out) ->
:mod:`gateway.core` (the request lifecycle, the pending table) and :mod:`gateway.variants` (async results,
streams, answer on state) -> :mod:`gateway.kafka` (reply reader, group membership, tails, admin).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask

from .extensions import GATEWAY, VARIANTS, current_gateway

if TYPE_CHECKING:
    from .config import Config

__all__ = ["create_app", "current_gateway"]


def create_app(config: Config | None = None) -> Flask:
    from . import web
    from .config import load_config
    from .core.runtime import Gateway
    from .variants.runtime import Variants

    config = config or load_config()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.limits.max_body_bytes
    gateway = app.extensions[GATEWAY] = Gateway(config)
    app.extensions[VARIANTS] = Variants(gateway)
    web.register(app, gateway)
    return app
