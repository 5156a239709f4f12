"""echo: replies with the method, path, query, headers and body it received."""
from __future__ import annotations

import base64
import os

from gateway_sdk import Request, Responder

svc = Responder("echo", topic=os.environ.get("ECHO_TOPIC", "echo.requests"))


def echo(req: Request, **_: str) -> dict:
    try:
        body: object = req.body.decode()
        encoding = "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(req.body).decode(), "base64"
    return {"method": req.method, "path": req.path, "query": req.query, "headers": req.headers,
            "content_type": req.content_type, "body": body, "body_encoding": encoding}


for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
    svc.route(method, "/<path:rest>")(echo)  # any path: the echo service mirrors whatever it is sent

if __name__ == "__main__":
    from examples._run import serve
    serve(svc)
