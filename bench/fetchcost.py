"""CPU per fetch of a fetching-but-idle gevent consumer (the reply reader's shape), by partitions read and poll
timeout, each run on a fresh embedded broker::

    python -m bench.fetchcost 1:100,16:100,16:5        # partitions:poll_ms per run
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def child(bootstrap: str, partitions: int, seconds: float, poll_ms: int) -> None:
    """Runs in its own process (gevent patches before kafka is imported): counts fetch responses and CPU."""
    from gevent import monkey

    monkey.patch_all()
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=10, fetch_min_bytes=1, metrics_enabled=False)
    tps = [TopicPartition("t", p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_end()
    for tp in tps:
        consumer.position(tp)
    count = [0]
    # a measurement only: count the fetch responses by wrapping kafka-python's private handler
    handle = consumer._fetcher._handle_fetch_response

    def counted(*args: object, **kwargs: object) -> object:
        count[0] += 1
        return handle(*args, **kwargs)

    consumer._fetcher._handle_fetch_response = counted
    warm_until = time.monotonic() + 2
    while time.monotonic() < warm_until:
        consumer.poll(timeout_ms=poll_ms)
    count[0] = 0
    cpu0, wall0 = time.process_time(), time.monotonic()
    while time.monotonic() < wall0 + seconds:
        consumer.poll(timeout_ms=poll_ms)
    print(json.dumps({"n": partitions, "fetches": count[0], "cpu_ms": (time.process_time() - cpu0) * 1000,
                      "wall": time.monotonic() - wall0}), flush=True)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(specs: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    from gateway.broker import EmbeddedBroker

    for spec in specs.split(","):
        partitions, poll_ms = map(int, spec.split(":"))
        with EmbeddedBroker() as broker:
            admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
            admin.create_topics([NewTopic("t", 16, 1)])
            admin.close()
            pid = broker.pid
            before = _cpu_seconds(pid)
            out = subprocess.run([sys.executable, "-m", "bench.fetchcost", "child", broker.bootstrap,
                                  str(partitions), "8", str(poll_ms)], capture_output=True, text=True)
            broker_ms = (_cpu_seconds(pid) - before) * 1000
            r = json.loads(out.stdout.strip().splitlines()[-1])
            fetches = max(1, r["fetches"])
            print(f"poll {poll_ms:3} partitions {partitions:2}: {r['fetches']} fetches in {r['wall']:.1f}s, "
                  f"consumer {r['cpu_ms'] / fetches:.3f} ms CPU/fetch, broker ~{broker_ms / fetches:.3f} ms "
                  "CPU/fetch (incl. 2 s warm-up)", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "child":
        child(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
    else:
        main(sys.argv[1])
