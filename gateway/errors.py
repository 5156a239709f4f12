"""One error hierarchy: every error the gateway answers with knows its HTTP status and a stable code.

Errors are rendered once, by :func:`problem_response`, as ``application/problem+json`` (RFC 9457) so that
clients get the same shape for every failure, with the correlation id when one was minted.
"""
from __future__ import annotations

import json
from typing import Any

PROBLEM_JSON = "application/problem+json"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the fix."""


class GatewayError(Exception):
    """Root of every error that becomes an HTTP response."""

    status = 500
    code = "internal"
    title = "Internal gateway error"
    retry_after_s: int | None = None

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra

    def to_problem(self, correlation_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"urn:kafka-rest-gateway:error:{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        if correlation_id:
            body["correlation_id"] = correlation_id
        body.update(self.extra)
        return body


class BadRequest(GatewayError):
    status, code, title = 400, "bad_request", "Bad request"


class MalformedJSON(BadRequest):
    code, title = "malformed_json", "Malformed JSON body"


class UnknownService(GatewayError):
    status, code, title = 404, "unknown_service", "Unknown service"


class NotFound(GatewayError):
    status, code, title = 404, "not_found", "Not found"


class MethodNotAllowed(GatewayError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class NotAcceptable(GatewayError):
    status, code, title = 406, "not_acceptable", "Not acceptable"


class PayloadTooLarge(GatewayError):
    status, code, title = 413, "payload_too_large", "Request body too large"


class UnsupportedMediaType(GatewayError):
    status, code, title = 415, "unsupported_media_type", "Unsupported content type"


class BadGateway(GatewayError):
    status, code, title = 502, "bad_reply", "The service's reply cannot be used"


class ServiceUnavailable(GatewayError):
    status, code, title = 503, "unavailable", "Service unavailable"
    retry_after_s = 1


class BrokerUnavailable(ServiceUnavailable):
    code, title = "broker_unavailable", "Kafka broker unavailable"


class NotReady(ServiceUnavailable):
    code, title = "not_ready", "Gateway worker not ready"


class TooManyInFlight(ServiceUnavailable):
    code, title = "too_many_in_flight", "Too many requests in flight in this worker"


class ReplyTimeout(GatewayError):
    status, code, title = 504, "reply_timeout", "No reply before the deadline"


class AsyncDeadline(GatewayError):
    status, code, title = 504, "async_deadline", "No reply before the async request's deadline"


class StateTimeout(GatewayError):
    status, code, title = 504, "state_timeout", "The entity did not reach the awaited state in time"


def problem_response(error: GatewayError, correlation_id: str | None = None) -> tuple[bytes, int, dict[str, str]]:
    """Render *error* as a ``(body, status, headers)`` triple for Flask."""
    headers = {"Content-Type": PROBLEM_JSON}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if "allow" in error.extra:                      # 405 says which methods would do
        headers["Allow"] = ", ".join(error.extra["allow"])
    if correlation_id:
        headers["X-Correlation-Id"] = correlation_id
    return json.dumps(error.to_problem(correlation_id)).encode(), error.status, headers
