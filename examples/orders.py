"""orders: POST /orders (validated with marshmallow) -> 201 CREATED; GET /orders/<id>; 404 for unknown ids."""
from __future__ import annotations

import os
import secrets
import time

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from gateway.responder import HTTPError, Request, Responder

svc = Responder("orders", topic=os.environ.get("ORDERS_TOPIC", "orders.requests"))
ORDERS: dict[str, dict] = {}


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
    order = {"id": order_id, "state": "CREATED", "created_ms": int(time.time() * 1000), **data}
    ORDERS[order_id] = order
    return 201, {"Location": f"/orders/{order_id}"}, order


@svc.route("GET", "/orders/<order_id>")
def get_order(req: Request, order_id: str) -> dict:
    order = ORDERS.get(order_id)
    if order is None:
        raise HTTPError(404, f"no order {order_id}")
    return order


if __name__ == "__main__":
    from examples._run import serve
    serve(svc)
