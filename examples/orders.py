"""orders: POST /orders (validated with marshmallow) -> 201 CREATED; GET /orders/<id>; 404 for unknown ids.

Every state change is published to ``orders.events`` (key = order id, value = the whole order, with a
``version`` that counts its changes): CREATED here, then VALIDATED or FAILED by ``examples.validator``. This
process follows those events too, so GET /orders/<id> shows the current state, with ``ETag: "<version>"``.
"""
from __future__ import annotations

import logging
import os
import secrets
import threading
import time

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from gateway_sdk import HTTPError, Request, Responder

svc = Responder("orders", topic=os.environ.get("ORDERS_TOPIC", "orders.requests"))
EVENTS_TOPIC = os.environ.get("ORDERS_EVENTS_TOPIC", "orders.events")
ORDERS: dict[str, dict] = {}
log = logging.getLogger(__name__)


class ItemSchema(Schema):
    class Meta:
        unknown = RAISE

    sku = fields.String(required=True, validate=validate.Length(min=1, max=64))
    quantity = fields.Integer(required=True, validate=validate.Range(min=1, max=1000))


class OrderSchema(Schema):
    class Meta:
        unknown = RAISE

    customer_id = fields.String(required=True, validate=validate.Length(min=1, max=64))
    items = fields.List(fields.Nested(ItemSchema), required=True, validate=validate.Length(min=1, max=100))


@svc.route("POST", "/orders")
def create_order(req: Request) -> tuple:
    try:
        data = OrderSchema().load(req.json() or {})
    except ValidationError as exc:
        raise HTTPError(422, "invalid order", errors=exc.messages) from None
    order_id = "o-" + secrets.token_hex(8)
    order = {"id": order_id, "state": "CREATED", "version": 1, "created_ms": int(time.time() * 1000), **data}
    ORDERS[order_id] = order
    svc.publish(EVENTS_TOPIC, order, key=order_id)
    return 201, {"Location": f"/orders/{order_id}", "ETag": '"1"'}, order


@svc.route("GET", "/orders/<order_id>")
def get_order(req: Request, order_id: str) -> tuple:
    order = ORDERS.get(order_id)
    if order is None:
        raise HTTPError(404, f"no order {order_id}")
    return 200, {"ETag": f'"{order["version"]}"'}, order


def follow_events(stop: threading.Event) -> None:
    """Apply the validator's events to ORDERS (newer versions only)."""
    import json

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(EVENTS_TOPIC, bootstrap_servers=svc.bootstrap_servers, group_id=None,
                             auto_offset_reset="latest", fetch_max_wait_ms=svc.fetch_max_wait_ms,
                             metrics_enabled=False)
    try:
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    try:
                        event = json.loads(record.value)
                    except ValueError:
                        continue
                    order = ORDERS.get(event.get("id"))
                    if order is not None and event.get("version", 0) > order["version"]:
                        ORDERS[order["id"]] = event
    finally:
        consumer.close()


if __name__ == "__main__":
    from examples._run import serve

    stopping = threading.Event()
    threading.Thread(target=follow_events, args=(stopping,), daemon=True, name="orders-events").start()
    try:
        serve(svc)
    finally:
        stopping.set()
