"""validator: moves orders CREATED -> VALIDATED or FAILED on ``orders.events``.

It reads the events (consumer group ``orders-validator``), checks each CREATED order and publishes the order's
next version: FAILED (with a ``reason``) when it asks for more than MAX_QUANTITY items in total or for a sku
that is out of stock, VALIDATED otherwise. The gateway's ``answer_on`` config makes ``POST /orders`` answer once
the order is VALIDATED or FAILED (docs/variants.md, variant 4).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

log = logging.getLogger("validator")
EVENTS_TOPIC = os.environ.get("ORDERS_EVENTS_TOPIC", "orders.events")
MAX_QUANTITY = int(os.environ.get("VALIDATOR_MAX_QUANTITY", "50"))
OUT_OF_STOCK = {"unobtainium"}


def check(order: dict) -> tuple[str, str | None]:
    """(new state, reason)."""
    items = order.get("items") or []
    missing = sorted({i.get("sku") for i in items} & OUT_OF_STOCK)
    if missing:
        return "FAILED", f"out of stock: {', '.join(missing)}"
    total = sum(int(i.get("quantity", 0)) for i in items)
    if total > MAX_QUANTITY:
        return "FAILED", f"{total} items is more than the {MAX_QUANTITY} allowed per order"
    return "VALIDATED", None


def run(stop: threading.Event, ready: threading.Event | None = None) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    from gateway_sdk.clients import request_rejoin

    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092").split(",")
    session_ms = int(os.environ.get("KAFKA_SESSION_TIMEOUT_MS", "10000"))
    consumer = KafkaConsumer(EVENTS_TOPIC, bootstrap_servers=servers, group_id="orders-validator",
                             enable_auto_commit=False, auto_offset_reset="earliest", metrics_enabled=False,
                             fetch_max_wait_ms=int(os.environ.get("KAFKA_FETCH_MAX_WAIT_MS", "500")),
                             session_timeout_ms=session_ms, heartbeat_interval_ms=max(100, session_ms // 3))
    producer = KafkaProducer(bootstrap_servers=servers, linger_ms=0, acks=1, enable_idempotence=False,
                             metrics_enabled=False)
    handled = 0
    unassigned_since = time.monotonic()
    try:
        while not stop.is_set():
            batches = consumer.poll(timeout_ms=200)
            if consumer.assignment():
                if ready is not None:
                    ready.set()
                unassigned_since = time.monotonic()
            elif time.monotonic() - unassigned_since > 2 * session_ms / 1000:
                request_rejoin(consumer)     # see docs/broker.md, "Rejoin stuck"
                unassigned_since = time.monotonic()
            for records in batches.values():
                for record in records:
                    try:
                        order = json.loads(record.value)
                    except (TypeError, ValueError):
                        continue
                    if not isinstance(order, dict) or order.get("state") != "CREATED":
                        continue
                    state, reason = check(order)
                    event = {**order, "state": state, "version": int(order.get("version", 1)) + 1,
                             "validated_ms": int(time.time() * 1000)}
                    if reason:
                        event["reason"] = reason
                    producer.send(EVENTS_TOPIC, key=record.key, value=json.dumps(event).encode())
                    handled += 1
            if batches:
                producer.flush(timeout=10)
                consumer.commit()
    finally:
        producer.close(timeout=5)
        consumer.close()
        log.info("validator stopped after %d orders", handled)


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s validator %(levelname)s "
                                                                          "%(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    log.info("validating orders on %s", EVENTS_TOPIC)
    run(stopping)
