"""The edge: one hook point every entry point passes through before the core sees a request.

``admit`` is called by the proxy (plain, streamed, async and answer-on-state requests, on Flask's path and on the
lean path, :mod:`gateway.web.lean`, which calls the same :func:`gateway.web.proxy.proxy_request`), by the async poll
(``GET /requests/<id>``), by the websocket upgrade and by **every websocket request frame**. Its policy is empty
today: nothing is refused. This is where authentication, CORS (with an ``after_request`` for the response
headers) and rate limits plug in, once, for every entry point: append a policy to :data:`POLICIES` (or
``app.extensions["edge_policies"]`` when it must differ per app); a policy raises a
:class:`gateway.errors.GatewayError` (401, 403, 429, ...) to refuse, which each entry point renders as it renders
any error (a problem response, or an error frame on the socket, which stays open).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from flask import current_app

if TYPE_CHECKING:
    from flask import Flask


@dataclass(frozen=True)
class Admission:
    """What the edge knows about one request when it decides."""

    entry: str                              # "proxy", "poll", "websocket" (the upgrade) or "websocket-frame"
    service: str | None                     # the service asked for, when there is one
    method: str
    header: Callable[[str], str | None]     # case-insensitive header look-up (a frame's headers for a frame)


Policy = Callable[[Admission], None]
POLICIES: list[Policy] = []


def admit(entry: str, service: str | None, method: str, header: Callable[[str], str | None],
          app: Flask | None = None) -> None:
    """Run every edge policy on this request; a policy raises to refuse it. *app*: the app whose
    ``edge_policies`` apply, when there is no app context (the lean path); else the current app."""
    policies = [*POLICIES, *(app if app is not None else current_app).extensions.get("edge_policies", ())]
    if not policies:
        return
    admission = Admission(entry, service, method, header)
    for policy in policies:
        policy(admission)
