"""gunicorn settings for the gateway, packaged so that a wheel install runs anywhere (twelve-factor: PORT,
WEB_CONCURRENCY, ...; the README's "Deploying" lists every variable)::

    gateway serve                                                      # what it runs:
    gunicorn -c python:gateway.serve.gunicorn_conf gateway.wsgi:app

``conf/gunicorn.conf.py``, the example deployment's file, imports this one. The gateway's config file: the one
``GATEWAY_CONFIG`` names, else the source tree's ``conf/gateway.toml``, else the packaged defaults
(:mod:`gateway.serve`).

Do not import kafka (or anything that does) at the top of this file: it runs in the master before gevent patches,
and kafka-python captures the unpatched selector at import time. The Kafka side starts in ``post_worker_init``,
inside each worker, after the gevent worker has patched.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

from gateway.serve import use_packaged_defaults

__all__ = ["access_log_format", "accesslog", "bind", "child_exit", "control_socket_disable", "graceful_timeout",
           "keepalive", "loglevel", "on_starting", "post_worker_init", "timeout", "worker_class", "worker_connections",
           "worker_exit", "workers"]

use_packaged_defaults()

bind = os.environ.get("GATEWAY_BIND") or f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gateway.serve.worker.GatewayWorker"  # gunicorn's gevent worker + prompt graceful stop
worker_connections = int(os.environ.get("GATEWAY_WORKER_CONNECTIONS", "10000"))
keepalive = 75
control_socket_disable = True  # several gateways on one host must not fight over one socket
# A worker blocks in post_worker_init until it owns a reply partition (reply.startup_wait_ms), so that no
# request reaches a worker that cannot receive replies yet: leave room for that in the worker timeout.
timeout = 60
graceful_timeout = int(os.environ.get("GATEWAY_GRACEFUL_TIMEOUT", "30"))
accesslog = os.environ.get("GATEWAY_ACCESS_LOG") or None
# gunicorn's default line has the whole request target (query strings carry API keys and signed-URL tokens), the
# Basic-auth user and the Referer (another URL with its query): this one has the path, the status, the time and the
# correlation id that ties the line to the request's Kafka records. `--access-logformat` on the command line wins.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms cid=%({x-correlation-id}o)s'
loglevel = os.environ.get("GATEWAY_LOG_LEVEL", "info")

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")


def on_starting(server: Any) -> None:
    """Validate the configuration in the master, before any worker forks: a bad config stops the start with a
    message naming the key and the fix, and a non-zero exit code (gateway.config imports no Kafka)."""
    import sys

    from gateway.config import load_config
    from gateway.errors import ConfigError

    try:
        load_config()
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def post_worker_init(worker: Any) -> None:
    """Runs in the worker after gevent patched and the app was loaded: start the Kafka side."""
    import logging

    logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: "
                        "%(message)s")
    # kafka-python is chatty at INFO; GATEWAY_KAFKA_LOG_LEVEL=INFO shows its group joins and rebalances
    logging.getLogger("kafka").setLevel(os.environ.get("GATEWAY_KAFKA_LOG_LEVEL", "WARNING").upper())
    # the async-results and events tails position while the reply side joins its group; the worker serves only
    # after both (docs/variants.md)
    worker.wsgi.extensions["variants"].start(wait_ready=False)
    worker.wsgi.extensions["gateway"].start(wait_ready=True)
    worker.wsgi.extensions["variants"].wait_ready()


def worker_exit(server: Any, worker: Any) -> None:
    """After the worker drained its HTTP requests (graceful stop/reload): leave the group, close clients."""
    gw = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("gateway")
    if gw is not None:
        gw.stop()
    variants = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("variants")
    if variants is not None:
        variants.stop()


def child_exit(server: Any, worker: Any) -> None:
    from gateway.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)
