"""Per-hop timing from the records themselves: where does a request-reply spend its time inside Kafka?

Every record carries its producer's CreateTime (ms, wall clock; all processes share this host's clock). Pairing a
request record with its reply record by correlation id gives, per request,

    service leg = reply CreateTime - request CreateTime
                = request hop (producer -> broker -> echo's fetch) + echo's handling until it calls send()

so ``end-to-end - service leg`` is the reply hop (echo's send -> broker -> reply reader's fetch) plus what the
requester does around it (for the gateway: HTTP parsing, Flask, waking the request greenlet, writing the
response). Read after the cell, from offsets taken before it: the measurement does not disturb the cell. Records
are paired by Spring's ``kafka_correlationId`` (raw bytes), which the gateway, the floor and the baseline all send
and the echo service copies.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kafka import KafkaConsumer, TopicPartition

from gateway.protocol import H_SPRING_CORRELATION_ID

from .stats import percentile

if TYPE_CHECKING:
    from gateway.config import Config

Offsets = dict[TopicPartition, int]


@dataclass
class Hops:
    pairs: int
    service_leg_p50_ms: float
    service_leg_p99_ms: float


class HopReader:
    def __init__(self, config: Config, request_topic: str, reply_topic: str) -> None:
        self.consumer = KafkaConsumer(**config.kafka_client_kwargs(), group_id=None, enable_auto_commit=False,
                                      fetch_max_wait_ms=50, max_poll_records=5000)
        self.topics = (request_topic, reply_topic)

    def _partitions(self) -> list[TopicPartition]:
        out = []
        for topic in self.topics:
            parts = self.consumer.partitions_for_topic(topic) or set()
            out.extend(TopicPartition(topic, p) for p in sorted(parts))
        return out

    def mark(self) -> Offsets:
        """End offsets now: the next cell's records start there."""
        return dict(self.consumer.end_offsets(self._partitions()))

    def read(self, since: Offsets, max_pairs: int = 3000, timeout_s: float = 20.0) -> Hops:
        """Pair the records written since *since* (at most about *max_pairs* requests, at most *timeout_s*)."""
        until = self.consumer.end_offsets(list(since))
        todo = {tp for tp in since if until[tp] > since[tp]}
        self.consumer.assign(sorted(todo, key=lambda tp: (tp.topic, tp.partition)))
        for tp in todo:
            self.consumer.seek(tp, since[tp])
        times: dict[str, dict[bytes, int]] = {t: {} for t in self.topics}
        deadline = time.monotonic() + timeout_s
        pairs = 0   # counted as they form: the request and reply partitions are read at their own pace
        while todo and pairs < max_pairs and time.monotonic() < deadline:
            for tp, records in self.consumer.poll(timeout_ms=500).items():
                other = times[self.topics[1] if tp.topic == self.topics[0] else self.topics[0]]
                for r in records:
                    if r.offset >= until[tp]:
                        todo.discard(tp)
                        break
                    cid = next((v for k, v in r.headers or [] if k == H_SPRING_CORRELATION_ID), None)
                    if cid is not None:
                        times[tp.topic][cid] = r.timestamp
                        pairs += cid in other
                if self.consumer.position(tp) >= until[tp]:
                    todo.discard(tp)
            self.consumer.assign([tp for tp in self.consumer.assignment() if tp in todo])
        requests, replies = (times[t] for t in self.topics)
        legs = sorted(float(replies[c] - t) for c, t in requests.items() if c in replies)
        return Hops(len(legs), percentile(legs, 50), percentile(legs, 99))

    def close(self) -> None:
        self.consumer.close(autocommit=False)
