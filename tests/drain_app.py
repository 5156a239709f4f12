"""A WSGI app for the worker tests (``tests/test_drain.py``), served by a real gunicorn with ``GatewayWorker``.

``POST <any path>`` answers like the echo service (``{"path", "body"}``, so ``tests.support.loadgen`` checks each reply)
after a random 0..``DRAIN_APP_MAX_MS`` ms, and appends the body's token to ``$DRAIN_APP_LOG`` when it starts: the
executions, counted inside the server. ``GET /slow?ms=N`` logs ``slow <N>`` and answers after N ms. ``GET /timeout``
raises gevent's ``Timeout`` (a BaseException) and ``GET /stream-break`` raises it after the first body chunk.
"""
from __future__ import annotations

import json
import os
import random
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs

import gevent

LOG = os.environ.get("DRAIN_APP_LOG", os.devnull)
MAX_MS = int(os.environ.get("DRAIN_APP_MAX_MS", "5"))


def _executed(line: str) -> None:
    with open(LOG, "a") as f:   # one short O_APPEND write per line: lines of concurrent workers do not mix
        f.write(line + "\n")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes] | list[bytes]:
    method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
    if path == "/timeout":
        raise gevent.Timeout()
    if path == "/stream-break":
        def broken() -> Iterator[bytes]:
            yield b"first part"
            raise gevent.Timeout()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return broken()
    if path == "/slow":
        ms = int(parse_qs(environ.get("QUERY_STRING", "")).get("ms", ["1000"])[0])
        _executed(f"slow {ms}")
        gevent.sleep(ms / 1000)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"slow"]
    body = environ["wsgi.input"].read().decode() if method == "POST" else ""
    if body:
        _executed(json.loads(body)["token"])
    gevent.sleep(random.uniform(0, MAX_MS) / 1000)
    out = json.dumps({"path": path, "body": body}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]
