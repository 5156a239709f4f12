"""Where did the records go? Read a run's topics after the fact: partition counts, the records carrying given
correlation ids, and how many times each request token was produced (exactly once, or something is wrong)."""
from __future__ import annotations

import json
import time
from collections import Counter


def topic_partitions(bootstrap: str, topics: list[str]) -> dict[str, int | None]:
    """Partition count of each topic (None: missing), asked without auto-creating anything."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        existing = set(admin.list_topics())
        out: dict[str, int | None] = {t: None for t in topics}
        for desc in admin.describe_topics([t for t in topics if t in existing]):
            out[desc.get("name") or desc.get("topic")] = len(desc["partitions"])
        return out
    finally:
        admin.close()


def trace_records(bootstrap: str, topics: list[str], correlation_ids: set[str], wall_offset: float = 0.0,
                  idle_s: float = 1.5, max_s: float = 30.0) -> dict[str, list[str]]:
    """Where did the records of these requests go? Reads *topics* (request topics, reply topic) from the start and
    lists, per correlation id (hex), each record carrying it: ``topic/partition@offset``, its time (on the load
    generator's monotonic clock) and, for a request, the reply partition it asked for. Request record missing:
    the gateway never produced it; reply missing: the service never answered; reply present: the gateway did not
    read it in time."""
    from kafka import KafkaConsumer, TopicPartition

    found: dict[str, list[str]] = {c: [] for c in correlation_ids}
    if not correlation_ids:
        return found
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=50)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        last = started = time.monotonic()
        while time.monotonic() - last < idle_s and time.monotonic() - started < max_s:
            for tp, records in consumer.poll(timeout_ms=200, max_records=5000).items():
                last = time.monotonic()
                for rec in records:
                    h = {k: v for k, v in (rec.headers or []) if v is not None}
                    cid = (h.get("gateway-correlation-id") or b"").decode(errors="replace")
                    if not cid and "kafka_correlationId" in h:
                        cid = h["kafka_correlationId"].hex()
                    if cid in found:
                        extra = f" reply->{h['gateway-reply-partition'].decode()}" \
                            if "gateway-reply-partition" in h else ""
                        if "gateway-status" in h:
                            extra += f" status {h['gateway-status'].decode()}"
                        found[cid].append(f"{tp.topic}/{tp.partition}@{rec.offset} "
                                          f"t={rec.timestamp / 1000 - wall_offset:.3f}{extra}")
    finally:
        consumer.close()
    return found


def produced_tokens(bootstrap: str, topic: str, prefix: str, expected: set[str], idle_s: float = 1.0,
                    max_s: float = 60.0) -> Counter:
    """How many records on *topic* carry each token that starts with *prefix* (a load generator's run id): the
    requests the gateway produced, duplicates included. Reads from the start until every partition is read to the
    end offsets taken now (those are only a hint on some brokers), every *expected* token was seen, and
    nothing came for *idle_s*."""
    from kafka import KafkaConsumer, TopicPartition

    counts: Counter = Counter()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=50, max_partition_fetch_bytes=4 << 20)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        seen = 0
        last = started = time.monotonic()
        while time.monotonic() - started < max_s:
            for records in consumer.poll(timeout_ms=200, max_records=5000).values():
                last = time.monotonic()
                for rec in records:
                    try:
                        token = json.loads(rec.value)["token"]
                    except (ValueError, TypeError, KeyError):
                        continue
                    if isinstance(token, str) and token.startswith(prefix):
                        seen += counts[token] == 0 and token in expected
                        counts[token] += 1
            at_end = all(consumer.position(tp) >= ends.get(tp, 0) for tp in tps)
            if at_end and seen >= len(expected) and time.monotonic() - last >= idle_s:
                break
    finally:
        consumer.close()
    return counts

