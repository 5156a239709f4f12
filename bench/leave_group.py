"""The embedded broker's LeaveGroup fault, with plain kafka-python consumers (no gateway, no gevent).

    .venv/bin/python bench/leave_group.py        # both variants; prints seconds to converge (None: not in 60 s)

Two members own a 16-partition topic; two new members join, and once that rebalance has begun (an old member gave
up its partitions to rejoin) the first two stop at once, as a gunicorn HUP does. With LeaveGroup (``close()``)
the embedded broker (Tansu 0.6.0) kept naming a departed member as the group's leader in most runs, and the new
members never got partitions (None); without it (the process just exits: the broker expires it after the session
timeout) they always did.
README, "The reply group after scaling and reloads"; ``reply.leave_group_on_stop``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MEMBER = """
import os, signal, sys
from kafka import KafkaConsumer
boot, group, topic, name, leave = sys.argv[1:6]
c = KafkaConsumer(bootstrap_servers=boot, group_id=group, session_timeout_ms=3000, heartbeat_interval_ms=1000,
                  max_poll_interval_ms=6000, enable_auto_commit=False)
c.subscribe([topic])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
while not stop:
    c.poll(timeout_ms=500)
    print(name, len(c.assignment()), flush=True)
if leave == "leave":
    c.close(autocommit=False)   # sends LeaveGroup
os._exit(0)
"""


def converge_after_reload(bootstrap: str, leave: bool, limit_s: float = 60) -> float | None:
    from kafka.admin import KafkaAdminClient, NewTopic

    topic, group = f"t-{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 16, 1)])
    admin.close()
    owned: dict[str, int] = {}
    procs = []

    def member(name: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", MEMBER, bootstrap, group, topic, name,
                              "leave" if leave else "go"], stdout=subprocess.PIPE, text=True)

        def read() -> None:
            for line in p.stdout:  # type: ignore[union-attr]
                n, k = line.split()
                owned[n] = int(k)
            owned.pop(name, None)
        threading.Thread(target=read, daemon=True).start()
        procs.append(p)
        return p

    def wait(names: set[str]) -> float | None:
        t = time.monotonic()
        while time.monotonic() - t < limit_s:
            if set(owned) == names and all(owned.values()) and sum(owned.values()) == 16:
                return round(time.monotonic() - t, 1)
            time.sleep(0.1)
        return None

    try:
        old = [member("A"), member("B")]
        if wait({"A", "B"}) is None:
            raise RuntimeError("the first two members never got their partitions")
        member("C"), member("D")
        # their JoinGroup starts a rebalance: the old members give up their partitions to rejoin. Stop them then
        t = time.monotonic()
        while not (owned.get("A") == 0 or owned.get("B") == 0) and time.monotonic() - t < 30:
            time.sleep(0.02)
        for p in old:
            p.send_signal(signal.SIGTERM)
        return wait({"C", "D"})
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)


def main() -> int:
    from gateway.broker import EmbeddedBroker

    broker = EmbeddedBroker().start()
    try:
        for leave in (True, False):
            print(f"old members {'send LeaveGroup' if leave else 'just exit'}: new members own every partition "
                  f"after {converge_after_reload(broker.bootstrap, leave)} s", flush=True)
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
