"""ticker: streaming replies (a handler that is a generator streams) and a slow route for async requests.

GET /ticker/count?n=10&gap_ms=0     {"i": 0} ... {"i": n-1}, one reply record each
GET /ticker/stall?n=2&gap_ms=1500   n items, a pause of gap_ms, then n more (shows the idle timeout)
GET /ticker/fail?n=3                n items, then the handler raises: the stream ends with an error record
GET /ticker/slow?ms=500             one plain reply after ms milliseconds
"""
from __future__ import annotations

import os
import time
from typing import Iterator

from gateway_sdk import HTTPError, Request, Responder

svc = Responder("ticker", topic=os.environ.get("TICKER_TOPIC", "ticker.requests"))


def _int(req: Request, name: str, default: int, most: int) -> int:
    raw = req.arg(name, str(default))
    try:
        value = int(raw or "")
    except ValueError:
        raise HTTPError(400, f"{name}={raw} is not a whole number") from None
    if not 0 <= value <= most:
        raise HTTPError(400, f"{name} must be between 0 and {most}")
    return value


@svc.route("GET", "/ticker/count")
def count(req: Request):  # noqa: ANN201 - a generator: a streaming reply
    n, gap = _int(req, "n", 10, 100000), _int(req, "gap_ms", 0, 10000)

    def items() -> Iterator[dict]:
        for i in range(n):
            if gap and i:
                time.sleep(gap / 1000)
            yield {"i": i}
    return items()


@svc.route("GET", "/ticker/stall")
def stall(req: Request):  # noqa: ANN201
    n, gap = _int(req, "n", 2, 1000), _int(req, "gap_ms", 1500, 10000)
    for i in range(n):
        yield {"i": i}
    time.sleep(gap / 1000)
    for i in range(n, 2 * n):
        yield {"i": i}


@svc.route("GET", "/ticker/fail")
def fail(req: Request):  # noqa: ANN201
    n = _int(req, "n", 3, 1000)
    for i in range(n):
        yield {"i": i}
    raise RuntimeError("the ticker broke on purpose")


@svc.route("GET", "/ticker/slow")
def slow(req: Request) -> dict:
    ms = _int(req, "ms", 500, 10000)
    time.sleep(ms / 1000)
    return {"slept_ms": ms}


if __name__ == "__main__":
    from examples._run import serve
    serve(svc)
