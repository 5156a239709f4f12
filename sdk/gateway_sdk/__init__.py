"""The service-side SDK (distribution ``kafka-rest-gateway-sdk``): what a Python service imports to answer requests
that come through the gateway. Its one dependency is kafka-python.

    from gateway_sdk import Responder, HTTPError

    svc = Responder("orders", topic="orders.requests")

    @svc.route("POST", "/orders")
    def create(req):
        return 201, {"id": "o-1", "state": "CREATED"}

    @svc.route("GET", "/orders/<order_id>")
    def get(req, order_id):
        raise HTTPError(404, f"no order {order_id}")

    svc.run()   # until SIGTERM/SIGINT

A handler returns a body (dict/list -> JSON, str -> text, bytes -> octet-stream), ``(status, body)``,
``(status, headers, body)``, or a generator (a streaming reply: each item becomes one reply record)::

    @svc.route("GET", "/ticker/count")
    def count(req):
        for i in range(int(req.arg("n", "10"))):
            yield {"i": i}      # one record each: gateway-seq=i, gateway-stream=more; then gateway-stream=end
                                # (an exception ends the stream with a gateway-stream=error record)

``svc.publish(topic, value, key)`` sends an event from inside a handler (e.g. ``orders.events``). The SDK
handles correlation, where to reply (topic + partition + key), deadlines (expired requests are dropped and
counted), errors (an exception becomes a 500 problem reply, never a hung request) and graceful shutdown.

Modules: ``app`` (the Responder: routes and handling), ``runner`` (its Kafka loop), ``protocol`` (the wire contract,
shared with the gateway), ``clients`` and ``unreadable`` (Kafka helpers, shared with the gateway too).

The router is a few lines of regular expressions (``app._compile``), not werkzeug's ``Map``/``Rule``: those would
make werkzeug a dependency of every service, and the SDK installs with kafka-python alone. An unrouted method on a
known path answers 405, any other unrouted request 404.
"""
from .app import HTTPError, Request, Responder

__all__ = ["HTTPError", "Request", "Responder"]
