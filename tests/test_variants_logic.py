"""Pure logic of the variants (docs/variants.md): Prefer parsing, stream reordering and encodings, the async
result store, the entity-state table, config checks. No Kafka here; the *_kafka tests cover what crosses it."""
from __future__ import annotations

import json
from types import SimpleNamespace

import gevent
import pytest

from gateway.config import parse_config
from gateway.errors import BadRequest, ConfigError
from gateway.protocol import Reply
from gateway.variants.async_results import ResultStore, now_ms
from gateway.variants.states import EntityTable, parse_event
from gateway.variants.streams import NDJSONFormat, Reorderer, SSEFormat, StreamBroken, item_json, wanted_format
from gateway.web.requests import parse_prefer, wait_seconds

CID = bytes(range(24))


def rec(seq: int | None, stream: str | None, body: bytes = b"{}", ctype: str | None = "application/json") -> Reply:
    return Reply(CID, 200, body, ctype, seq=seq, stream=stream)


def test_prefer_parsing_and_wait():
    prefs = parse_prefer(["respond-async, wait=10", "handling=lenient; x=1"])
    assert prefs == {"respond-async": None, "wait": "10", "handling": "lenient"}
    assert wait_seconds(prefs, 5000) == 5.0          # capped
    assert wait_seconds({}, 5000) is None
    for bad in ("abc", "-1", "", "1.5"):
        with pytest.raises(BadRequest):
            wait_seconds({"wait": bad}, 5000)


def test_reorderer_orders_dedupes_and_ends():
    r = Reorderer()
    assert r.push(rec(2, "more")) == []
    assert [x.seq for x in r.push(rec(0, "more"))] == [0]
    assert r.push(rec(0, "more")) == [] and r.duplicates == 1
    assert [x.seq for x in r.push(rec(1, "more"))] == [1, 2]
    assert r.push(rec(4, "end")) == []
    assert [x.seq for x in r.push(rec(3, "more"))] == [3, 4]
    assert r.done
    assert r.push(rec(5, "more")) == []


def test_reorderer_plain_reply_and_protocol_breaks():
    r = Reorderer()
    assert r.push(rec(None, None)) and r.done
    for bad in (rec(None, "more"), rec(0, "sideways")):
        with pytest.raises(StreamBroken):
            Reorderer().push(bad)
    r = Reorderer(max_buffered=2)
    r.push(rec(1, "more"))
    r.push(rec(2, "more"))
    with pytest.raises(StreamBroken, match="missing seq 0"):
        r.push(rec(3, "more"))


def test_item_encodings():
    assert item_json(rec(0, "more", b'{\n "a": 1\n}')) == '{"a":1}'
    assert item_json(rec(0, "more", b"hi", "text/plain")) == '"hi"'
    assert item_json(rec(0, "more", b"")) == "null"
    assert NDJSONFormat.item(rec(0, "more", b'{"a":1}')) == b'{"a":1}\n'
    assert SSEFormat.item(rec(7, "more", b'{"a":1}')) == b'id: 7\ndata: {"a":1}\n\n'
    assert SSEFormat.error({"status": 504}).startswith(b"event: error\ndata: ")
    assert wanted_format([("text/event-stream", 1)]) is SSEFormat
    assert wanted_format([("application/x-ndjson", 1)]) is NDJSONFormat
    assert wanted_format([("*/*", 1)]) is None


def test_result_store_marker_reply_retention_and_bound():
    store = ResultStore(retention_ms=1000, max_results=2)
    rid = CID.hex()
    store.accepted(rid, 10_000, 12_000, "echo")
    entry = store.get(rid, at_ms=10_500)
    assert entry is not None and not entry.done.is_set() and not entry.expired(11_000) and entry.expired(12_001)
    store.replied(Reply(CID, 201, b"ok", "text/plain"), 10_600)
    assert entry.done.is_set() and entry.reply.status == 201
    assert store.replied(Reply(CID, 500, b"dup", None), 10_700) is None     # first reply wins
    assert store.get(rid, at_ms=11_001) is None                               # past retention
    for i in range(3):
        store.accepted(f"{i:048x}", 20_000, None, None)
    assert len(store) == 2 and store.get(f"{0:048x}", at_ms=20_001) is None   # oldest evicted


def test_result_store_gathers_a_stream_and_wait_known():
    store = ResultStore(60_000, 100)
    rid = CID.hex()
    now = now_ms()
    waiter = gevent.spawn(store.wait_known, rid, 5)
    gevent.sleep(0)
    store.replied(rec(1, "more", b'{"i":1}'), now)
    assert waiter.get(timeout=1) is not None                                  # woken by the first record
    store.replied(rec(2, "end", b""), now)
    store.replied(rec(0, "more", b'{"i":0}'), now)
    entry = store.get(rid)
    assert entry.done.is_set() and entry.reply.content_type == "application/x-ndjson"
    assert entry.reply.body == b'{"i":0}\n{"i":1}\n'
    assert store.wait_known("f" * 48, 0.01) is None


def _event(key: str, offset: int, **value: object) -> SimpleNamespace:
    return SimpleNamespace(key=key.encode(), value=json.dumps(value).encode(), partition=0, offset=offset)


def test_entity_table_wait_current_next_and_stale():
    table = EntityTable(max_entities=2)
    table.update(parse_event(_event("o-1", 5, state="CREATED", version=1), None))
    done = lambda e: e.state("state") in ("VALIDATED", "FAILED")  # noqa: E731
    assert table.wait("o-1", done, 0.01) is None
    g = gevent.spawn(table.wait, "o-1", done, 5)
    gevent.sleep(0)
    assert table.waiting() == 1
    table.update(parse_event(_event("o-1", 6, state="VALIDATED", version=2), None))
    hit = g.get(timeout=1)
    assert hit.state("state") == "VALIDATED" and hit.etag("version") == '"2"' and hit.etag(None) == '"e0.6"'
    assert not table.update(parse_event(_event("o-1", 5, state="CREATED", version=1), None))  # a re-read
    assert table.wait("o-1", done, 0).offset == 6 and table.waiting() == 0
    table.update(parse_event(_event("o-2", 7, state="X"), None))
    table.update(parse_event(_event("o-3", 8, state="X"), None))
    assert len(table) == 2 and table.get("o-1") is None
    assert parse_event(SimpleNamespace(key=None, value=b'{"id": 9}', partition=0, offset=1), "id").entity_id == "9"
    assert parse_event(SimpleNamespace(key=b"k", value=b"[1]", partition=0, offset=1), None) is None


BASE = {"services": {"orders": {"topic": "orders.requests", "methods": ["GET", "POST"]}}}


def test_config_variant_defaults_and_checks():
    cfg = parse_config({**BASE, "services": {"orders": {**BASE["services"]["orders"], "timeout_ms": 700,
                                                        "answer_on": {"topic": "orders.events",
                                                                      "states": ["VALIDATED"]}}}})
    on = cfg.services["orders"].answer_on
    assert on.timeout_ms == 700 and on.methods == ("POST",) and on.id_source == "reply"
    assert cfg.services["orders"].async_timeout_ms == 700 and cfg.async_requests.results_topic == "gateway.results"
    bad = [
        ({"async": {"results_topic": "orders.requests"}}, "async.results_topic"),
        ({"services": {"orders": {"topic": "orders.requests", "methods": ["GET"],
                                  "answer_on": {"topic": "e", "states": ["X"]}}}}, "answer_on.methods"),
        ({"services": {"orders": {"topic": "orders.requests",
                                  "answer_on": {"topic": "orders.requests", "states": ["X"]}}}}, "answer_on.topic"),
        ({"services": {"orders": {"topic": "orders.requests", "answer_on": {"topic": "e", "states": []}}}}, "states"),
        ({"websocket": {"max_in_flight": 0}}, "max_in_flight"),
        ({"async": {"retention": 5}}, "unknown key"),
    ]
    for override, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_config({**BASE, **override})


def test_docs_document_every_variant_config_key():
    """docs/variants.md has one table row per key of the variants' config sections (tested against the schema)."""
    from pathlib import Path

    from gateway.config import schema_docs

    doc = (Path(__file__).resolve().parent.parent / "docs" / "variants.md").read_text()
    own = ("async.", "websocket.", "state.", "services.<name>.answer_on", "services.<name>.async_timeout_ms",
           "services.<name>.stream_")
    keys = [k for k, *_ in schema_docs() if k.startswith(own)]
    assert len(keys) == 31
    missing = [k for k in keys if f"| `{k}` |" not in doc]
    assert not missing, f"document these keys in docs/variants.md: {missing}"
