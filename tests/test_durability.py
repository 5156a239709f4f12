"""Issue 7, section 6: durability defaults, and serving again after the broker came back EMPTY with the
idempotent producer on (the default) and off.

The embedded broker never lets an idempotent producer recover after a restart (docs/broker.md): the gateway re-creates
its producer when it recovers, the SDK on the first fatal producer-id error (its reply is then resent, never its
handler run again). One broker restart checks four clients: a gateway and an SDK service with each setting.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import requests
from kafka.admin import KafkaAdminClient

from gateway.broker import EmbeddedBroker, free_port
from gateway.config import parse_config
from gateway.kafka.admin import ensure_topics, wanted_topics
from tests.support.harness import GunicornGateway, ServiceProcess, make_config, wait_until, write_config


def _ok(gw: GunicornGateway, service: str) -> bool:
    token = uuid.uuid4().hex
    r = requests.post(f"{gw.url}/{service}/x", json={"t": token}, timeout=10)
    if r.status_code != 200:
        print(f"{service}: {r.status_code} {r.text[:200]}")
    return r.status_code == 200 and token in r.json()["body"]


@pytest.mark.timeout(300)
def test_broker_back_empty_serves_with_and_without_idempotence(tmp_path: Path, log_dir: Path) -> None:
    broker = EmbeddedBroker(port=free_port(), log_path=log_dir / "durability-broker.log").start()
    procs: list = []
    try:
        gateways = {}
        for idem in (True, False):
            name = "idem" if idem else "plain"
            cfg = make_config(broker.bootstrap, {name: {"topic": f"{name}.requests", "timeout_ms": 5000}},
                              kafka={"enable_idempotence": idem, "topic_check_interval_ms": 3000})
            cfg["reply"]["partitions"] = 2
            ensure_topics(parse_config(cfg), wanted_topics(parse_config(cfg)))
            svc = ServiceProcess("examples.echo", broker.bootstrap, log_dir, ECHO_TOPIC=f"{name}.requests",
                                 SERVICE_GROUP_ID=f"{name}-svc", KAFKA_ENABLE_IDEMPOTENCE=str(idem).lower())
            svc.env_topic = f"{name}.requests"  # type: ignore[attr-defined]
            procs.append(svc)
            gw = GunicornGateway(write_config(tmp_path / f"{name}.toml", cfg), broker.bootstrap, log_dir, workers=1)
            procs.append(gw)
            gateways[name] = (gw, cfg)
        for name, (gw, _) in gateways.items():
            gw.wait_ready(90)
            wait_until(lambda gw=gw, name=name: _ok(gw, name), 60, 0.2, f"{name} served before the restart")
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        replicas = {d["name"]: len(d["partitions"][0]["replica_nodes"])
                    for d in admin.describe_topics([cfg["reply"]["topic"] for _, cfg in gateways.values()])}
        admin.close()
        assert set(replicas.values()) == {1}    # replication factor min(3, brokers) = 1 on one broker

        # same port, nothing in it: topics, groups, producer ids gone; faster than the gateway's 1 s probe sees,
        # so only the topic-id check (kafka.topic_check_interval_ms) can tell
        broker.stop()
        broker.start()
        for name, (gw, _) in gateways.items():
            wait_until(lambda gw=gw, name=name: _ok(gw, name), 90, 0.5, f"{name} served after the restart")
        for name, (gw, _) in gateways.items():  # and then every request, not just one that got through
            results = [_ok(gw, name) for _ in range(20)]
            svc = next(p for p in procs if isinstance(p, ServiceProcess) and p.env_topic == f"{name}.requests")
            assert all(results), (f"{name}: {results.count(False)} of 20 failed after recovery\n--- gateway log\n"
                                  f"{gw.log()[-4000:]}\n--- service log\n{svc.log()[-4000:]}")
        for p in procs:
            assert p.alive(), f"{p.name} exited: {p.log()[-2000:]}"
    finally:
        for p in procs:
            p.stop()
        broker.stop()
