"""Latency from produce to a gevent consumer's poll() returning the record, by poll timeout (fetch wait 10 ms),
each run on a fresh embedded broker::

    python -m bench.polllat 5,100
"""
from __future__ import annotations

import json
import subprocess
import sys
import time


def child(bootstrap: str, poll_ms: int, n: int) -> None:
    """Runs in its own process (gevent patches before kafka is imported)."""
    from gevent import monkey

    monkey.patch_all()
    import gevent
    from gevent.event import Event
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=10, metrics_enabled=False)
    tp = TopicPartition("t", 0)
    consumer.assign([tp])
    consumer.seek_to_end()
    consumer.position(tp)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1, enable_idempotence=False,
                             metrics_enabled=False)
    waiting: dict[bytes, Event] = {}

    def reader() -> None:
        while True:
            for records in consumer.poll(timeout_ms=poll_ms).values():
                for record in records:
                    event = waiting.get(record.value)
                    if event is not None:
                        event.set()

    gevent.spawn(reader)
    latencies = []
    for i in range(n):
        key = str(i).encode()
        event = waiting[key] = Event()
        started = time.perf_counter()
        producer.send("t", value=key, partition=0)
        event.wait(5)
        latencies.append((time.perf_counter() - started) * 1000)
        gevent.sleep(0.005 + (i % 7) * 0.003)   # paced, at varying phases of the poll
    latencies.sort()
    print(json.dumps({"p50": latencies[len(latencies) // 2], "p90": latencies[int(len(latencies) * 0.9)],
                      "cpu": time.process_time()}), flush=True)


def main(polls: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    from gateway.broker import EmbeddedBroker

    for poll_ms in (int(x) for x in polls.split(",")):
        with EmbeddedBroker() as broker:
            admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
            admin.create_topics([NewTopic("t", 1, 1)])
            admin.close()
            out = subprocess.run([sys.executable, "-m", "bench.polllat", "child", broker.bootstrap, str(poll_ms),
                                  "300"], capture_output=True, text=True)
            last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-800:]
            print(f"poll {poll_ms:3}: {last}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main(sys.argv[1])
