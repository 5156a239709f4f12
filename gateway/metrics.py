"""Prometheus metrics, correct under several gunicorn workers.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (``conf/gunicorn.conf.py`` sets it in the master before forking), every
worker writes its samples to files there and ``/metrics`` sums all workers' samples, whichever worker answers
the scrape. Without it (a single process), the default registry is used.
"""
from __future__ import annotations

import functools
import os
import struct
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

REQUESTS = Counter("gateway_requests_total", "HTTP requests answered, by service and status",
                   ["service", "status"])
LATENCY = Histogram("gateway_request_duration_seconds", "Time from HTTP request to HTTP response, by service",
                    ["service"], buckets=(.002, .005, .01, .015, .02, .03, .05, .075, .1, .25, .5, 1, 2.5, 5, 10, 30))
TIMEOUTS = Counter("gateway_reply_timeouts_total", "Requests answered 504 because no reply came in time",
                   ["service"])
IN_FLIGHT = Gauge("gateway_in_flight", "Requests waiting for a reply", ["service"], multiprocess_mode="livesum")
# per worker (a pid label each): the pending table itself, so a waiter nobody removes shows as a leak
PENDING = Gauge("gateway_pending", "Entries in this worker's pending-reply table", multiprocess_mode="liveall")
REPLIES = Counter("gateway_replies_total",
                  "Reply records read, by outcome: delivered, late (nobody waits), duplicate, foreign (another "
                  "worker's, read during a partition handover), invalid (breaks the wire protocol)", ["outcome"])
PRODUCE_ERRORS = Counter("gateway_produce_errors_total", "Request records the broker did not take", ["service"])
OWNED_PARTITIONS = Gauge("gateway_reply_partitions_owned", "Reply partitions assigned to live workers",
                         multiprocess_mode="livesum")
READING_PARTITIONS = Gauge("gateway_reply_partitions_read", "Reply partitions read (owned + draining)",
                           multiprocess_mode="livesum")


@functools.lru_cache(maxsize=4096)
def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once per label set: the request and reply paths count every request
    and reply record, and labels() costs a lock, a validation and a dict lookup each time. Label values are
    service names, statuses and outcomes: a bounded set (the cache is bounded anyway)."""
    return metric.labels(*labels)


def reply_outcome(outcome: str) -> Counter:
    """``REPLIES.labels(outcome)``, cached (:func:`child`)."""
    return child(REPLIES, outcome)


READERS_FETCHING = Gauge("gateway_reply_readers_fetching",
                         "Workers whose reply reader is fetching: it fetches only while a request waits for a reply "
                         "(0 when the gateway is idle)", multiprocess_mode="livesum")
READER_IDLE = Counter("gateway_reply_reader_idle_total",
                      "Times a reply reader stopped fetching because no request was waiting for a reply")
WORKERS_READY = Gauge("gateway_workers_ready", "Live workers that are ready to serve", multiprocess_mode="livesum")
REBALANCES = Counter("gateway_rebalances_total", "Reply-group assignments received")
GREENLET_CRASHES = Counter("gateway_greenlet_crashes_total",
                           "Exceptions that ended a supervised loop (restarted unless noted in the log), by loop",
                           ["name"])


def render() -> tuple[bytes, str]:
    if not MULTIPROC:
        return generate_latest(), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    for _ in range(5):
        try:
            return generate_latest(registry), CONTENT_TYPE_LATEST
        except struct.error:
            # a worker that is just starting has created its file but not sized it yet: read again
            time.sleep(0.01)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """gunicorn ``child_exit`` hook: drop a dead worker's live gauges."""
    if MULTIPROC:
        multiprocess.mark_process_dead(pid)


SLOW_CONSUMERS = Counter("gateway_slow_consumers_dropped_total",
                         "Clients dropped because they did not read their streamed response or websocket fast "
                         "enough, by kind (websocket, ndjson, sse) and reason (buffer_full: "
                         "limits.write_buffer_records/bytes waiting; write_timeout: one write blocked "
                         "limits.write_timeout_ms)", ["kind", "reason"])
