"""Ops endpoints: liveness, readiness (per worker), Prometheus metrics (all workers)."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .. import metrics
from ..extensions import current_gateway, current_variants

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    state = current_gateway().readiness()
    variants = current_variants().readiness()
    ready = state["ready"] and variants["variants_ready"]
    return jsonify({**state, **variants, "ready": ready}), 200 if ready else 503


@bp.get("/metrics")
def prometheus() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
