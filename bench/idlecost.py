"""What one idle kafka-python consumer costs on the embedded broker, by fetch wait: ``python -m bench.idlecost``.

For each fetch_max_wait_ms (default 10, 100, 500) and each loop shape, on a fresh broker with one topic of
--partitions partitions and nothing written to it: one consumer process assigned to every partition (no group),
polling; CPU of the consumer and of the broker over --duration s, from /proc. Shapes:

* ``consumer.poll(timeout_ms=200)`` (a service's loop) or ``poll(timeout_ms=5)`` (the gateway reply reader's,
  ``reply.poll_interval_ms`` before its default became 100);
* in a plain thread, or under gevent's monkey patching as in a gunicorn worker.

Also the broker alone (no client), for reference.
"""
from __future__ import annotations

import argparse
import sys
import time


def consume(bootstrap: str, topic: str, partitions: int, wait_ms: int, poll_ms: int, use_gevent: bool) -> None:
    if use_gevent:
        from gevent import monkey
        monkey.patch_all()
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=wait_ms, fetch_min_bytes=1)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_end()
    print("ready", flush=True)
    while True:
        consumer.poll(timeout_ms=poll_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idlecost", description=__doc__.split("\n")[0])
    parser.add_argument("--waits", default="10,100,500", help="fetch_max_wait_ms values (10,100,500)")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--consume", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.consume:
        b, t, n, w, p, g = args.consume
        consume(b, t, int(n), int(w), int(p), g == "1")
        return 0

    import tempfile
    from pathlib import Path

    from kafka.admin import KafkaAdminClient, NewTopic

    from gateway.broker import EmbeddedBroker
    from tests.support.harness import Process, base_env, wait_until

    from .procstat import CpuMeter

    log_dir = Path(tempfile.mkdtemp(prefix="bench-idlecost-"))
    shapes = [("thread, poll 200 ms", 200, "0"), ("thread, poll 5 ms", 5, "0"), ("gevent, poll 200 ms", 200, "1"),
              ("gevent, poll 5 ms", 5, "1")]
    rows = ["| fetch_max_wait_ms | loop | consumer CPU % | broker CPU % |", "|---:|---|---:|---:|"]

    def run(wait: int | None, shape: tuple[str, int, str] | None) -> tuple[float, float, float]:
        with EmbeddedBroker(log_path=log_dir / "broker.log") as broker:
            admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
            admin.create_topics([NewTopic("idle", args.partitions, 1)])
            admin.close()
            groups = {"broker": [broker.pid]}
            proc = None
            if wait is not None and shape is not None:
                proc = Process("consumer", [sys.executable, "-m", "bench.idlecost", "--consume", broker.bootstrap,
                                            "idle", str(args.partitions), str(wait), str(shape[1]), shape[2]],
                               base_env(broker.bootstrap), log_dir)
                wait_until(lambda: "ready" in proc.log(), 30, 0.1, "consumer ready")
                groups["consumer"] = [proc.pid]
            time.sleep(2)  # past start-up
            try:
                with CpuMeter(groups) as meter:
                    time.sleep(args.duration)
            finally:
                if proc is not None:
                    proc.stop()
            r = meter.result
            return r.get("consumer", 0.0), r["broker"], r["other"]

    _, broker_alone, other = run(None, None)
    rows.append(f"| – | no client (broker alone) | – | {broker_alone:.1f} |")
    print(rows[-1], f"(other load {other:.0f}%)", flush=True)
    for wait in (int(w) for w in args.waits.split(",")):
        for shape in shapes:
            consumer, broker, other = run(wait, shape)
            rows.append(f"| {wait} | {shape[0]} | {consumer:.1f} | {broker:.1f} |")
            print(rows[-1], f"(other load {other:.0f}%)", flush=True)
    print(f"\nIdle consumer on {args.partitions} partition(s), {args.duration:g} s each, fresh broker each:\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
