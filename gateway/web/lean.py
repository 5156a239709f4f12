"""The lean path: a plain request to a configured service, served without Flask's per-request machinery.

For every request Flask builds and pushes a request and an app context, binds and matches the URL map, opens a
session, sends signals, runs ``after_request`` and the teardowns. :class:`LeanPath` sits in front of Flask
(``app.wsgi_app``) and serves the hot route itself: ``/<service>`` and ``/<service>/<path>`` for a configured
service, answered by a plain request-reply. It builds the request object Flask would (``flask.Request``, with
``limits.max_body_bytes``), calls the function the Flask view calls (:func:`.proxy.proxy_request`: the edge hook,
validation, the guard, metrics), renders errors with the function Flask's error handlers call
(:func:`.responses.error_response`) and sets ``X-Gateway-Worker`` as the ``after_request`` does
(:func:`worker_header`). The safety net (``Connection: close`` while draining, escapes as problems) wraps both
paths, outermost, as before.

Everything else goes to Flask unchanged: other paths; a service whose name a route also begins with; a path
werkzeug's router would redirect or refuse (``//``, a newline, a ``/`` right after the service); a method the
routes do not take; a request a variant answers (async, streams, answer on state: :func:`.dispatch.choose_variant`),
whose handlers use Flask's context; and everything, as long as the app has request hooks or signal receivers
that the gateway did not register itself (a ``before_request``, an ``after_request`` adding CORS headers, a
``teardown_request``, an extension listening to ``request_started``): they need Flask's context, so with them every
request takes Flask's path, as before. ``http.lean_path = false`` sends every request to Flask;
``tests/test_lean_path.py`` checks that both paths answer the same. (An app that makes Flask check the Host header,
``SERVER_NAME``, ``TRUSTED_HOSTS`` or host matching, sends every request to Flask too.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

from flask import signals

from ..extensions import gateway_of
from .dispatch import choose_variant
from .proxy import proxy_request
from .requests import ALL_METHODS
from .responses import error_response

if TYPE_CHECKING:
    from flask import Flask, Response

    from ..config import ServiceConfig
    from ..core.runtime import Gateway

    WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


_SIGNALS = (signals.request_started, signals.request_finished, signals.request_tearing_down,
            signals.got_request_exception, signals.appcontext_pushed, signals.appcontext_popped,
            signals.appcontext_tearing_down)


def request_hooks(app: Flask) -> tuple[int, ...]:
    """How many request hooks and signal receivers *app* has, those Flask runs around a view."""
    hooks = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs,
             app.url_value_preprocessors, app.teardown_appcontext_funcs)
    return (*(sum(map(len, h.values())) if isinstance(h, dict) else len(h) for h in hooks),
            *(len(signal.receivers) for signal in _SIGNALS))


def worker_header(response: Response, gw: Gateway) -> Response:
    """Which worker answered (async polls may go to any): on every response, whichever path served it."""
    response.headers["X-Gateway-Worker"] = gw.worker_tag.hex()
    return response


class LeanPath:
    """WSGI middleware in front of Flask's ``wsgi_app``: plain requests to a service here, the rest to *flask*."""

    def __init__(self, app: Flask, flask: WSGIApp) -> None:
        self.app = app
        self.flask = flask
        self.gw = gateway_of(app)
        # a name that a route of its own begins with (/requests/<id>, /static/...) is left to Flask's router
        routed = {rule.rule.split("/")[1] for rule in app.url_map.iter_rules() if not rule.rule.startswith("/<")}
        self.services = {name: svc for name, svc in self.gw.config.services.items() if name not in routed}
        if app.config.get("SERVER_NAME") or app.config.get("TRUSTED_HOSTS") or app.url_map.host_matching \
                or app.subdomain_matching:
            self.services = {}              # Flask would check the Host header: every request goes to Flask
        self.methods = frozenset(ALL_METHODS)
        self.max_body = self.gw.config.limits.max_body_bytes      # for the 413's detail, as Flask's handlers
        self.hooks = request_hooks(app)     # the gateway's own (register() adds the worker header's before this)

    def service(self, environ: dict[str, Any]) -> ServiceConfig | None:
        """The service a request goes to when the proxy route is the only one werkzeug's router could match it
        to, exactly as it would; else None."""
        path: str = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in self.methods or "//" in path or "\n" in path:
            return None
        name, sep, rest = path[1:].partition("/")
        if not path.startswith("/") or (sep and not rest):
            return None
        return self.services.get(name)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        svc = self.service(environ)
        if svc is None or request_hooks(self.app) != self.hooks:
            return self.flask(environ, start_response)
        request = self.app.request_class(environ)
        request.max_content_length = self.app.config["MAX_CONTENT_LENGTH"]   # as Flask's request reads it
        try:
            plain = choose_variant(svc, request) is None
        except Exception:  # noqa: BLE001 - Flask's path meets it again and renders it as it always did
            plain = False
        if not plain:
            return self.flask(environ, start_response)
        try:
            response = proxy_request(self.app, request, svc.name, plain=True)
        except Exception as exc:  # noqa: BLE001 - as Flask's error handlers: every error is a problem response
            response = error_response(exc, self.max_body)
        return worker_header(response, self.gw)(environ, start_response)
