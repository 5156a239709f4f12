"""Parse JSON that a client or a service sent, with a nesting limit.

The standard library parses nested arrays and objects recursively: 100,000 ``[`` raise ``RecursionError`` (not a
``ValueError``), which escaped as a 500 and, in the reply reader's greenlet, could end a websocket session.
Accepting anything just under the interpreter's recursion limit would not do either: every value the gateway
parses may be serialised again (a websocket frame around a reply body, a problem object, an NDJSON line) one or two
levels deeper and further down the stack. So every parse goes through :func:`parse`, which rejects documents
nested deeper than :data:`MAX_DEPTH` with a :class:`JSONError` (a ``ValueError``) saying so; whatever it returns can
be serialised again safely.
"""
from __future__ import annotations

import json
from itertools import accumulate
from typing import Any

MAX_DEPTH = 256        # .NET 64, serde_json 128, Jackson 1000: deep enough for any real document
_ALL_BUT_BRACKETS_AND_QUOTES = bytes(range(256)).translate(None, b'[]{}"')
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")    # +1 / -1 as signed bytes


class JSONError(ValueError):
    """Not JSON, or nested too deeply; the message says which."""


def _too_deep() -> JSONError:
    return JSONError(f"the JSON is nested too deeply (more than {MAX_DEPTH} levels of arrays/objects)")


def depth(text: bytes | str) -> int:
    """Deepest nesting of arrays/objects in a *valid* JSON document (brackets inside strings do not count).

    C-speed steps only (a 1 MiB body costs ~20 ms): drop escaped backslashes and quotes, keep brackets and quotes,
    drop what lies between pairs of quotes, then the running sum of +1/-1 per bracket."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    kept = text.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _ALL_BUT_BRACKETS_AND_QUOTES)
    brackets = b"".join(kept.split(b'"')[::2])          # every other piece lies inside a string
    if not brackets:
        return 0
    return max(accumulate(memoryview(brackets.translate(_STEPS)).cast("b")))


def parse(text: bytes | bytearray | str) -> Any:
    """``json.loads`` that raises :class:`JSONError` (a ``ValueError``) for invalid JSON, undecodable bytes and
    documents nested deeper than :data:`MAX_DEPTH`, and nothing else."""
    if isinstance(text, bytearray):
        text = bytes(text)
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:           # JSONDecodeError, UnicodeDecodeError
        raise JSONError(str(exc)) from None
    # only a document with more opening brackets than the limit can be nested deeper than it
    if isinstance(value, (list, dict)) and _openings(text) > MAX_DEPTH and depth(text) > MAX_DEPTH:
        raise _too_deep()
    return value


def _openings(text: bytes | str) -> int:
    if isinstance(text, str):
        return text.count("[") + text.count("{")
    return text.count(b"[") + text.count(b"{")


def is_json_type(content_type: str | None) -> bool:
    """``application/json`` or a ``+json`` type (parameters ignored): what Flask's ``request.is_json`` says, for a
    content type that is not a Flask request's (a reply record's, a websocket frame's)."""
    mimetype = (content_type or "").split(";", 1)[0].strip().lower()
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))
