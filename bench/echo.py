"""The bench's echo service: confluent-kafka (librdkafka), answering the gateway and the asyncio baseline alike.

librdkafka does its network I/O in its own C threads, so this process costs little CPU per request and is not the
bottleneck of any path (the example services are kafka-python, pure Python: the point is to measure the
requesters, not the service). It honours the gateway's wire protocol (sdk/gateway_sdk/protocol.py):

* reply to ``gateway-reply-topic`` / ``gateway-reply-partition`` (decimal) with key ``gateway-reply-key`` when the
  request has them, else to Spring's ``kafka_replyTopic`` / ``kafka_replyPartition`` (4-byte big-endian);
* copy the correlation id headers (``gateway-correlation-id`` hex, ``kafka_correlationId`` raw bytes);
* status 200, the request's value as the reply's value, its content type (if any) as the reply's.

Usage: ``python -m bench.echo BOOTSTRAP TOPIC [--fetch-max-wait-ms 10]``; prints ``ready`` once it has partitions.
"""
from __future__ import annotations

import argparse
import signal
import struct
import sys

from confluent_kafka import Consumer, KafkaException, Producer

from gateway.protocol import (
    H_CONTENT_TYPE,
    H_CORRELATION_ID,
    H_REPLY_KEY,
    H_REPLY_PARTITION,
    H_REPLY_TOPIC,
    H_SPRING_CORRELATION_ID,
    H_SPRING_REPLY_PARTITION,
    H_SPRING_REPLY_TOPIC,
    H_STATUS,
)

OK = b"200"


def reply_for(headers: list[tuple[str, bytes | None]]) -> tuple[str, int, bytes | None, list] | None:
    """(topic, partition, key, reply headers) for a request's headers; None if it says nowhere to reply."""
    h = {k: v for k, v in reversed(headers) if v is not None}  # first occurrence wins
    reply: list[tuple[str, bytes]] = [(H_STATUS, OK)]
    for name in (H_CORRELATION_ID, H_SPRING_CORRELATION_ID, H_CONTENT_TYPE):
        if name in h:
            reply.append((name, h[name]))
    if H_REPLY_TOPIC in h:
        return h[H_REPLY_TOPIC].decode(), int(h.get(H_REPLY_PARTITION, b"-1")), h.get(H_REPLY_KEY), reply
    if H_SPRING_REPLY_TOPIC in h:
        raw = h.get(H_SPRING_REPLY_PARTITION)
        return h[H_SPRING_REPLY_TOPIC].decode(), struct.unpack(">i", raw)[0] if raw else -1, None, reply
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__.split("\n")[0])
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("--group", default="bench-echo")
    parser.add_argument("--fetch-max-wait-ms", type=int, default=10, help="the gateway's default fetch wait (10)")
    args = parser.parse_args(argv)

    common = {"bootstrap.servers": args.bootstrap, "client.id": "bench-echo", "broker.address.family": "v4"}
    consumer = Consumer({**common, "group.id": args.group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": True, "auto.commit.interval.ms": 1000,
                         "session.timeout.ms": 3000, "heartbeat.interval.ms": 1000,
                         "fetch.wait.max.ms": args.fetch_max_wait_ms, "fetch.min.bytes": 1,
                         "allow.auto.create.topics": False})
    # linger 0 like the requesters: replies that accumulate while a produce request is in flight still share a
    # batch, and one client is not kept waiting for a linger timer
    # murmur2_random: a reply by key alone lands where Java's partitioner (and the gateway's key minting) puts it
    producer = Producer({**common, "linger.ms": 0, "acks": 1, "enable.idempotence": False,
                         "partitioner": "murmur2_random"})
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    announced = False
    consumer.subscribe([args.topic])
    try:
        while not stopping:
            # consume() waits for its whole timeout unless num_messages arrive: block in poll() for the first
            # record, then take what else is already fetched without waiting
            first = consumer.poll(0.1)
            batch = [first, *consumer.consume(num_messages=999, timeout=0)] if first is not None else []
            for msg in batch:
                if msg.error():
                    continue  # e.g. partition EOF; librdkafka recovers by itself
                dest = reply_for(msg.headers() or [])
                if dest is None:
                    continue
                topic, partition, key, headers = dest
                try:
                    producer.produce(topic, value=msg.value(), key=key, partition=partition, headers=headers)
                except BufferError:
                    producer.poll(0.05)  # local queue full: let deliveries drain, then try once more
                    producer.produce(topic, value=msg.value(), key=key, partition=partition, headers=headers)
            producer.poll(0)  # serve delivery reports
            if not announced and consumer.assignment():
                print("ready", flush=True)
                announced = True
    except KafkaException as exc:
        print(f"echo: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        producer.flush(5)
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
