"""The ``gateway`` command.

    gateway serve          run the gateway: gunicorn with the packaged config (gateway.serve), from any directory
    gateway dev            broker (unless KAFKA_BOOTSTRAP_SERVERS is set) + topics + every Procfile process
    gateway broker         run the embedded broker in the foreground
    gateway topics         create the missing topics (reply topic and every service's request topic)
    gateway check-config   validate the configuration and print what it defines
    gateway config-docs    print every setting as a markdown table (the README's is this output)
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .config import load_config
from .errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _config():  # noqa: ANN202
    try:
        return load_config()
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    extra = args.gunicorn_args[1:] if args.gunicorn_args[:1] == ["--"] else args.gunicorn_args
    serve(args.config, args.bind or (), args.workers, extra)


def cmd_check_config(_: argparse.Namespace) -> int:
    cfg = _config()
    print(f"brokers: {', '.join(cfg.kafka.bootstrap_servers)}")
    print(f"reply topic: {cfg.reply.topic} ({cfg.reply.partitions} partitions), group {cfg.reply.group_id}")
    for svc in cfg.services.values():
        print(f"service {svc.name}: topic {svc.topic}, {'/'.join(svc.methods)}, timeout {svc.timeout_ms} ms")
    return 0


def cmd_config_docs(_: argparse.Namespace) -> int:
    from .config import config_table

    print(config_table())
    return 0


def cmd_topics(_: argparse.Namespace) -> int:
    from .kafka.admin import ensure_topics, wanted_topics

    cfg = _config()
    wanted = wanted_topics(cfg)
    actual = ensure_topics(cfg, wanted)
    status = 0
    for name, n in wanted.items():
        note = "" if actual.get(name) == n else f"  (configured {n}: change it by hand)"
        if name == cfg.reply.topic and actual.get(name, 0) < n:
            status = 1
        print(f"{name}: {actual.get(name)} partitions{note}")
    return status


def cmd_broker(args: argparse.Namespace) -> int:
    from .broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port).start()
    print(f"embedded broker on {broker.bootstrap} (memory storage); Ctrl-C stops it", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set() and broker.running:
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    broker.stop()
    return 0


def read_procfile(path: Path) -> list[tuple[str, str]]:
    entries = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            name, command = line.split(":", 1)
            entries.append((name.strip(), command.strip()))
    return entries


def _pump(name: str, stream, width: int) -> None:  # noqa: ANN001
    for raw in iter(stream.readline, b""):
        sys.stdout.write(f"{name:<{width}} | {raw.decode(errors='replace')}")
        sys.stdout.flush()


def cmd_dev(args: argparse.Namespace) -> int:
    """Everything for a local run, like ``heroku local``: broker, topics, the Procfile's processes."""
    broker = None
    env = dict(os.environ)
    if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
        from .broker import EmbeddedBroker

        broker = EmbeddedBroker(port=args.broker_port).start()
        env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
        # the example services' fetch wait W on the embedded broker, which re-checks a waiting fetch at W/2, 3W/4, ...
        # instead of answering when a request arrives: ~W/6 (33 ms) added on average, and an idle service costs ~1%
        # of a core (at 10 ms: ~11%; bench/README.md, "Idle"). The SDK's default (500) is Apache Kafka's, where a
        # fetch returns as soon as a request arrives.
        env.setdefault("KAFKA_FETCH_MAX_WAIT_MS", "200")
        # ... and while requests come (until 5 s after the last), 10: answered in ~10 ms, not ~100 (gateway_sdk.runner)
        env.setdefault("KAFKA_FETCH_MAX_WAIT_BUSY_MS", "10")
        print(f"embedded broker on {broker.bootstrap}", flush=True)
    try:
        return _dev(args, env)
    finally:
        if broker:
            broker.stop()


def _dev(args: argparse.Namespace, env: dict[str, str]) -> int:
    env.setdefault("PORT", str(args.port))
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    cmd_topics(args)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    entries = read_procfile(ROOT / "Procfile")
    width = max(len(n) for n, _ in entries)
    for name, command in entries:
        proc = subprocess.Popen(command, shell=True, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=_pump, args=(name, proc.stdout, width), daemon=True).start()
        procs.append((name, proc))
    url = f"http://localhost:{env['PORT']}"
    print(f"\ngateway on {url}  (Ctrl-C stops everything)\ntry:\n"
          f"  curl -s -X POST {url}/orders -H 'Content-Type: application/json' "
          "-d '{\"customer_id\": \"c-1\", \"items\": [{\"sku\": \"apple\", \"quantity\": 2}]}'\n"
          f"  curl -s {url}/echo/hello?x=1\n", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set() and all(p.poll() is None for _, p in procs):
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    for name, proc in procs:
        if proc.poll() is not None:
            print(f"{name} exited with {proc.returncode}; stopping the rest", flush=True)
    for _, proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 35
    for _, proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="REST request-response gateway for Kafka")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the gateway (gunicorn, packaged config)",
                       description="Run the gateway: gunicorn -c python:gateway.serve.gunicorn_conf gateway.wsgi:app. "
                       "Environment: GATEWAY_CONFIG, PORT, WEB_CONCURRENCY, KAFKA_BOOTSTRAP_SERVERS, ... (README).")
    p.add_argument("--config", metavar="PATH", help="the gateway's config file (default: GATEWAY_CONFIG, else "
                   "conf/gateway.toml of a source tree, else the packaged defaults)")
    p.add_argument("--bind", action="append", metavar="ADDRESS", help="host:port to listen on, repeatable "
                   "(default: 0.0.0.0:$PORT, PORT defaults to 8000)")
    p.add_argument("--workers", type=int, metavar="N", help="gevent worker processes (default: $WEB_CONCURRENCY or 2)")
    p.add_argument("gunicorn_args", nargs=argparse.REMAINDER, help="after --: more gunicorn options")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("dev", help="run broker + topics + Procfile processes")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (PORT overrides)")
    p.add_argument("--broker-port", type=int, default=9092)
    p.set_defaults(func=cmd_dev)
    p = sub.add_parser("broker", help="run the embedded broker")
    p.add_argument("--port", type=int, default=9092)
    p.set_defaults(func=cmd_broker)
    sub.add_parser("topics", help="create missing topics").set_defaults(func=cmd_topics)
    sub.add_parser("check-config", help="validate the configuration").set_defaults(func=cmd_check_config)
    sub.add_parser("config-docs", help="print the configuration table (markdown)").set_defaults(func=cmd_config_docs)
    args = parser.parse_args(argv)
    from .serve import use_packaged_defaults

    use_packaged_defaults()   # a wheel install has no conf/gateway.toml: every command reads the packaged defaults
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
