"""The HTTP ceiling: a bare Flask app returning a constant, served exactly like the gateway.

Run as ``gunicorn -c conf/gunicorn.conf.py bench.ceiling:app`` (same worker class, worker count, connections,
keep-alive and hooks as the gateway): stand-ins for the ``gateway`` and ``variants`` extensions let the gateway's
``post_worker_init`` and ``worker_exit`` hooks run unchanged, with no Kafka behind them. Every extension those
hooks index must be here, or the worker fails in ``post_worker_init`` and never serves.
"""
from __future__ import annotations

from flask import Flask, Response

BODY = b'{"method": "GET", "path": "/echo/bench", "note": "constant reply of the HTTP ceiling app"}'


class _NoKafka:
    """What ``conf/gunicorn.conf.py`` calls on ``app.extensions["gateway"]`` and ``["variants"]``; nothing to
    start or stop."""

    def start(self, wait_ready: bool = True) -> bool:
        return True

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        return True

    def stop(self) -> None:
        pass


app = Flask(__name__)
app.extensions["gateway"] = _NoKafka()
app.extensions["variants"] = _NoKafka()


@app.route("/echo/<path:rest>", methods=["GET", "POST"])
def constant(rest: str) -> Response:
    return Response(BODY, content_type="application/json")
