"""basket: one basket per customer. GET /basket/<customer>, POST /basket/<customer>/items, DELETE /basket/<customer>."""
from __future__ import annotations

import os

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from gateway_sdk import HTTPError, Request, Responder

svc = Responder("basket", topic=os.environ.get("BASKET_TOPIC", "basket.requests"))
BASKETS: dict[str, dict[str, int]] = {}


class AddItemSchema(Schema):
    class Meta:
        unknown = RAISE

    sku = fields.String(required=True, validate=validate.Length(min=1, max=64))
    quantity = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1000))


def _view(customer: str) -> dict:
    items = BASKETS.get(customer, {})
    return {"customer_id": customer, "items": [{"sku": s, "quantity": q} for s, q in sorted(items.items())],
            "total_quantity": sum(items.values())}


@svc.route("GET", "/basket/<customer>")
def get(req: Request, customer: str) -> dict:
    return _view(customer)


@svc.route("POST", "/basket/<customer>/items")
def add(req: Request, customer: str) -> tuple:
    try:
        item = AddItemSchema().load(req.json() or {})
    except ValidationError as exc:
        raise HTTPError(422, "invalid item", errors=exc.messages) from None
    basket = BASKETS.setdefault(customer, {})
    basket[item["sku"]] = basket.get(item["sku"], 0) + item["quantity"]
    return 201, _view(customer)


@svc.route("DELETE", "/basket/<customer>")
def clear(req: Request, customer: str) -> tuple:
    if BASKETS.pop(customer, None) is None:
        raise HTTPError(404, f"no basket for {customer}")
    return 204, None


if __name__ == "__main__":
    from examples._run import serve
    serve(svc)
