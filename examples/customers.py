"""customers: POST /customers -> 201; GET /customers/<id>; PUT /customers/<id>; 404 for unknown ids."""
from __future__ import annotations

import os
import secrets

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from gateway_sdk import HTTPError, Request, Responder

svc = Responder("customers", topic=os.environ.get("CUSTOMERS_TOPIC", "customers.requests"))
CUSTOMERS: dict[str, dict] = {}


class CustomerSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    email = fields.Email(required=True)


def _load(req: Request) -> dict:
    try:
        return CustomerSchema().load(req.json() or {})
    except ValidationError as exc:
        raise HTTPError(422, "invalid customer", errors=exc.messages) from None


@svc.route("POST", "/customers")
def create(req: Request) -> tuple:
    customer = {"id": "c-" + secrets.token_hex(8), **_load(req)}
    CUSTOMERS[customer["id"]] = customer
    return 201, {"Location": f"/customers/{customer['id']}"}, customer


@svc.route("GET", "/customers/<customer_id>")
def get(req: Request, customer_id: str) -> dict:
    if customer_id not in CUSTOMERS:
        raise HTTPError(404, f"no customer {customer_id}")
    return CUSTOMERS[customer_id]


@svc.route("PUT", "/customers/<customer_id>")
def update(req: Request, customer_id: str) -> dict:
    if customer_id not in CUSTOMERS:
        raise HTTPError(404, f"no customer {customer_id}")
    CUSTOMERS[customer_id] = {"id": customer_id, **_load(req)}
    return CUSTOMERS[customer_id]


if __name__ == "__main__":
    from examples._run import serve
    serve(svc)
