"""The topic tail's read barrier, against the real broker, in a gevent-patched subprocess (as in a worker); and
records it cannot parse are skipped (with the rest of their batch) without stopping it.

The tail is given a 1 s fetch wait, so without the barrier it would see a fresh record up to a second late: the
fetch in flight when the record is produced was sent before it and comes back empty (Tansu holds a fetch for half
its wait even when data arrives meanwhile), and the barrier's ListOffsets queues behind that fetch. The barrier
must hand the record over before it returns. (Each barrier costs about one fetch wait, so a longer wait only makes
the test slower: 3 s took ~1.5 s per barrier.)
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

from tests.support.harness import ROOT

SCRIPT = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import json, sys, time
    from kafka import KafkaProducer
    from gateway.config import parse_config
    from gateway.kafka.admin import ensure_topics
    from gateway.kafka.tail import TopicTail
    from tests.support.harness import make_config

    bootstrap, topic = sys.argv[1], sys.argv[2]
    config = parse_config(make_config(bootstrap, {"echo": {"topic": "echo.requests"}}))
    ensure_topics(config, {topic: 3})
    seen = []
    tail = TopicTail(config, topic, lambda r: seen.append((r.partition, r.value.decode())), start="end",
                     fetch_max_wait_ms=1000)
    tail.start()
    assert tail.wait_ready(30), "tail not ready"
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all")
    out = []
    for i in range(5):
        value = f"record-{i}"
        producer.send(topic, value=value.encode(), partition=i % 3).get(10)   # acked: in the log
        started = time.monotonic()
        ok = tail.read_barrier(i % 3, 10)
        out.append({"ok": ok, "seen": [i % 3, value] in [list(s) for s in seen],
                    "ms": round((time.monotonic() - started) * 1000)})
    # nothing new: the barrier is met without waiting for a fetch
    started = time.monotonic()
    out.append({"ok": tail.read_barrier(0, 10), "seen": True, "ms": round((time.monotonic() - started) * 1000)})

    # a record kafka-python cannot parse (header key not UTF-8), then one inside a batch: skipped, the tail reads on
    class NotUtf8(str):
        def encode(self, *a, **k):
            return b"\\xff\\xfe"
    producer.send(topic, value=b"poison", partition=1, headers=[(NotUtf8("x"), b"1")]).get(10)
    batcher = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=100)
    for i in range(4):
        batcher.send(topic, value=b"batch-%d" % i, partition=2, headers=[(NotUtf8("x"), b"1")] if i == 1 else [])
    batcher.flush()
    for p in (1, 2):
        producer.send(topic, value=f"after-{p}".encode(), partition=p).get(10)
        ok = tail.read_barrier(p, 20)
        out.append({"ok": ok, "seen": [p, f"after-{p}"] in [list(s) for s in seen], "ms": 0})
    out.append({"ok": tail.skipped == 1 + 3, "seen": [2, "batch-0"] in [list(s) for s in seen], "ms": 0})
    tail.stop()
    print(json.dumps(out))
""")


def test_read_barrier_hands_over_every_record_already_in_the_partition(broker):
    topic = f"tail-barrier-{uuid.uuid4().hex[:8]}"
    done = subprocess.run([sys.executable, "-c", SCRIPT, broker.bootstrap, topic], cwd=ROOT, capture_output=True,
                          text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 9
    for r in results:
        assert r["ok"] and r["seen"], results
