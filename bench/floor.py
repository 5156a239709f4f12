"""The raw floor: request-reply straight over Kafka with kafka-python, no HTTP, no gateway.

One process, one OS thread driving the loop (kafka-python's producer has its own I/O thread): the loop keeps
*concurrency* requests outstanding, closed-loop like wrk's connections: every reply it reads is timed and at once
replaced by a new request. That is the shape of a gateway worker (one OS thread; greenlets share one producer and
one reply reader), without 64 OS threads fighting over the GIL, which would measure Python thread scheduling
rather than Kafka.

The producer and the reply consumer are built from the same parsed gateway config, with the same arguments as
``gateway.core.runtime.Gateway.start`` and ``gateway.kafka.replies.ReplyReader.start``; requests carry the gateway's
wire-protocol headers (``request_headers``), so the echo service cannot tell them from the gateway's.
"""
from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from gateway.core.routing import mint_reply_key
from gateway.protocol import ReplyTo, decode_reply, new_correlation_id, new_worker_tag, request_headers

from .stats import CellResult

if TYPE_CHECKING:
    from gateway.config import Config, ServiceConfig

    from .procstat import CpuMeter


class FloorClient:
    """A kafka-python requester reading every partition of its own reply topic (*reply_partitions*: the
    partitions per reader the run compares at), replies asked round-robin over them."""

    def __init__(self, config: Config, svc: ServiceConfig, reply_topic: str, reply_partitions: int,
                 path: str = "/echo/bench") -> None:
        k = config.kafka
        self.svc = svc
        self.path = path
        self.producer = KafkaProducer(
            **config.kafka_client_kwargs(), acks=k.acks, linger_ms=k.linger_ms, enable_idempotence=k.enable_idempotence,
            max_block_ms=k.max_block_ms, compression_type=k.compression_type, retries=3,
            delivery_timeout_ms=max(k.request_timeout_ms * 2, 10000),
            max_request_size=max(1048576, config.limits.max_body_bytes + 65536))
        self.consumer = KafkaConsumer(
            **config.kafka_client_kwargs(), group_id=None, enable_auto_commit=False,
            fetch_max_wait_ms=k.fetch_max_wait_ms, fetch_min_bytes=1, auto_offset_reset="latest",
            max_poll_records=2000)
        tps = [TopicPartition(reply_topic, p) for p in range(reply_partitions)]
        self.consumer.assign(tps)
        self.consumer.seek_to_end(*tps)
        for tp in tps:
            self.consumer.position(tp)
        self.reply_to = itertools.cycle([ReplyTo(reply_topic, p, mint_reply_key(p, reply_partitions))
                                         for p in range(reply_partitions)])
        self.tag = new_worker_tag()
        self._outstanding: dict[bytes, float] = {}
        self._sending = False  # replace each answered request with a new one

    def _send(self) -> None:
        cid = new_correlation_id(self.tag)
        deadline_ms = int(time.time() * 1000) + self.svc.timeout_ms
        headers = request_headers(cid, next(self.reply_to), deadline_ms, "GET", self.path, "", None, ())
        self._outstanding[cid] = time.perf_counter()
        self.producer.send(self.svc.topic, value=b"", key=None, headers=headers)

    def _poll(self) -> list[float]:
        """Read replies; for each of ours: its latency (s), and send its replacement at once."""
        latencies = []
        for records in self.consumer.poll(timeout_ms=100).values():
            for record in records:
                reply = decode_reply(record.value, record.headers or [], record.partition, record.offset)
                sent = self._outstanding.pop(reply.correlation_id, None)
                if sent is None:
                    continue  # late reply of an earlier cell, or a duplicate
                latencies.append(time.perf_counter() - sent)
                if reply.status != 200:
                    raise RuntimeError(f"echo answered {reply.status}: {reply.body[:200]!r}")
                if self._sending:
                    self._send()
        return latencies

    def run(self, concurrency: int, warmup_s: float, duration_s: float, meter: CpuMeter | None = None) -> CellResult:
        """Warm up, then count the replies that arrive in the measured window; drain before returning.

        *meter*, when given, is started and stopped at the edges of the measured window."""
        self._outstanding.clear()
        self._sending = True
        for _ in range(concurrency):
            self._send()
        start = time.perf_counter() + warmup_s
        end = start + duration_s
        measured: list[float] = []
        in_window = False
        while True:
            got = self._poll()
            now = time.perf_counter()
            if now > end:
                break
            if now >= start:
                if not in_window and meter is not None:
                    meter.start()
                in_window = True
                measured.extend(got)
        cpu = meter.stop() if meter is not None else {}
        self._sending = False
        errors = self.drain(5.0)
        result = CellResult.from_latencies(measured, duration_s, errors)
        result.cpu = cpu
        return result

    def drain(self, timeout_s: float) -> int:
        """Wait for the replies still outstanding; returns how many never came."""
        deadline = time.perf_counter() + timeout_s
        while self._outstanding and time.perf_counter() < deadline:
            self._poll()
        missing = len(self._outstanding)
        self._outstanding.clear()
        return missing

    def wait_answering(self, timeout_s: float, burst: int = 64) -> None:
        """Until a burst of requests is answered within 1 s twice in a row (every echo member has joined)."""
        deadline = time.monotonic() + timeout_s
        good = 0
        while good < 2:
            if time.monotonic() > deadline:
                raise TimeoutError(f"echo did not answer {burst} requests within 1 s in {timeout_s} s")
            self._sending = False
            for _ in range(burst):
                self._send()
            good = good + 1 if self.drain(1.0) == 0 else 0

    def close(self) -> None:
        self.producer.close(timeout=3)
        self.consumer.close(autocommit=False)
