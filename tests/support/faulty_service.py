"""A service that can be made slow, for fault injection (``tests.support.scenarios``, ``tests/test_faults.py``).

    FAULTY_CONTROL=/tmp/ctl.json python -m tests.support.faulty_service

Replies like the echo example (``{"path", "body"}``, so ``tests.support.loadgen`` can check every reply) after sleeping
``delay_ms`` milliseconds, read per request from the JSON file ``$FAULTY_CONTROL`` (missing file: no delay). While
a handler sleeps, the file ``$FAULTY_CONTROL.busy`` exists: a test kills the process when it sees it, to crash it
in the middle of a request.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from gateway_sdk import Request, Responder

svc = Responder("faulty", topic=os.environ.get("FAULTY_TOPIC", "faulty.requests"))
CONTROL = Path(os.environ.get("FAULTY_CONTROL", "/nonexistent/faulty-control.json"))
BUSY = CONTROL.with_name(CONTROL.name + ".busy")


def delay_ms() -> int:
    try:
        return int(json.loads(CONTROL.read_text()).get("delay_ms", 0))
    except (OSError, ValueError):
        return 0


def handle(req: Request, **_: str) -> dict:
    delay = delay_ms()
    if delay:
        BUSY.write_text(req.correlation_id.hex())
        try:
            time.sleep(delay / 1000)
        finally:
            BUSY.unlink(missing_ok=True)
    return {"path": req.path, "body": req.body.decode(errors="replace"), "delay_ms": delay}


for method in ("GET", "POST"):
    svc.route(method, "/<path:rest>")(handle)

if __name__ == "__main__":
    from examples._run import serve
    serve(svc)
