"""Where one request's time goes inside a gateway worker, event by event (wall clock, not CPU).

    python -m bench.timeline                   # 1 client, 1 reply partition per worker, 10 s
    python -m bench.timeline --clients 8 --ppr 16

A bench gateway cell (fresh broker, echo service, two workers) whose workers run the shipped gunicorn config plus a
recorder (``bench/gunicorn_timeline.conf.py``): each worker notes, with ``time.perf_counter``, when a request
reaches the app, when its record is handed to the producer, when kafka-python builds and writes its produce and
fetch requests and reads their responses, when the reply is dispatched and when the response is written. wrk
drives the cell; the table gives, for the requests of the measured window, the median offset of each event's
first occurrence after the request reached the app (events in less than a third of the requests are left out).
At 1 client the requests are one after another, so every event between two arrivals belongs to the request that
arrived first; at more clients events of overlapping requests mix: read those tables as rates, not as one request.

The recorder wraps kafka-python's connection and transport methods (``KafkaConnection._send_request``,
``_sock_send``, ``_sock_recv``): private, so :func:`hook_points` names them and ``install`` fails loudly when a
kafka-python upgrade renames them (``tests/test_bench_smoke.py`` checks the installed version). A bench tool only;
nothing of it runs in the gateway.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

LABELS = {
    "in": "request reached the app (WSGI call)",
    "handed": "waiter registered, record handed to the producer",
    "built:produce": "produce request built (kafka-python)",
    "built:fetch": "fetch request built (kafka-python)",
    "wire:produce": "produce request written to the socket",
    "wire:fetch": "fetch request written to the socket",
    "read:produce": "produce response read (record acknowledged)",
    "read:fetch": "fetch response read",
    "dispatch": "reply dispatched to its waiter",
    "app-done": "app returned the response",
    "written": "response written to the client",
}


def hook_points() -> list[tuple[type, str]]:
    """The kafka-python methods the recorder wraps (private: checked by a test against the installed version)."""
    from kafka.net import transport
    from kafka.net.connection import KafkaConnection

    return [(KafkaConnection, "_send_request"), (transport.KafkaTCPTransport, "_sock_send"),
            (transport.KafkaTCPTransport, "_sock_recv")]


class Recorder:
    """Installed in a worker by the timeline gunicorn config: records while ``<dir>/on`` exists, writes
    ``<pid>.txt`` (``event offset`` lines, a blank line between requests) once ``<dir>/dump`` appears."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.events: list[tuple[str, float]] = []
        self.on = False
        self._kinds: dict[int, str] = {}    # id(transport) -> "produce" / "fetch"

    def note(self, event: str) -> None:
        if self.on:
            self.events.append((event, time.perf_counter()))

    def install(self, worker: Any) -> None:
        import gevent
        import gunicorn.http.wsgi
        from kafka.net.connection import KafkaConnection

        from gateway.core import calls
        from gateway.kafka import replies

        for cls, name in hook_points():
            if name not in cls.__dict__:
                raise RuntimeError(f"kafka-python has no {cls.__name__}.{name} any more: update bench/timeline.py")
        note, kinds = self.note, self._kinds
        app = worker.wsgi

        def wsgi(environ: Any, start_response: Any) -> Any:
            note("in")
            body = app(environ, start_response)
            note("app-done")
            return body
        worker.wsgi = wsgi
        close = gunicorn.http.wsgi.Response.close
        gunicorn.http.wsgi.Response.close = lambda resp: (close(resp), note("written"))[0]
        open_call = calls.open_call
        calls.open_call = lambda *a, **k: (open_call(*a, **k), note("handed"))[0]
        dispatch = replies.ReplyReader._dispatch
        replies.ReplyReader._dispatch = lambda reader, record: (note("dispatch"), dispatch(reader, record))[1]
        send_request = KafkaConnection._send_request

        def _send_request(conn: Any, request: Any, *a: Any, **k: Any) -> Any:
            kind = {"ProduceRequest": "produce", "FetchRequest": "fetch"}.get(type(request).__name__)
            if kind and conn.transport is not None:
                kinds[id(conn.transport)] = kind
                note(f"built:{kind}")
            return send_request(conn, request, *a, **k)
        KafkaConnection._send_request = _send_request
        for cls, name, event in ((c, n, "wire" if n == "_sock_send" else "read") for c, n in hook_points()[1:]):
            method = cls.__dict__[name]

            def wrapped(transport: Any, _method: Any = method, _event: str = event) -> Any:
                result = _method(transport)
                kind = kinds.get(id(transport))
                if kind:
                    note(f"{_event}:{kind}")
                return result
            setattr(cls, name, wrapped)
        gevent.spawn(self._control)

    def _control(self) -> None:
        import gevent

        while not (self.dir / "dump").exists():
            self.on = (self.dir / "on").exists()
            gevent.sleep(0.1)
        self.on = False
        lines = []
        for event, t in self.events:
            if event == "in":
                lines.append("")
            lines.append(f"{event} {t:.6f}")
        (self.dir / f"{os.getpid()}.txt").write_text("\n".join(lines) + "\n")


def offsets(text: str) -> dict[str, list[float]]:
    """Per event, its offset (ms) from the request's arrival, first occurrence in each request's segment."""
    out: dict[str, list[float]] = defaultdict(list)
    for segment in text.split("\n\n"):
        rows = [line.split() for line in segment.strip().splitlines()]
        if not rows or rows[0][0] != "in":
            continue
        t0 = float(rows[0][1])
        seen: set[str] = set()
        for event, t in rows:
            if event not in seen:
                seen.add(event)
                out[event].append(1000 * (float(t) - t0))
    return out


def table(per_event: dict[str, list[float]]) -> str:
    requests = len(per_event.get("in", []))
    rows = ["| event | requests with it | p50 ms after arrival | p90 |", "|---|---:|---:|---:|"]
    kept = [(e, v) for e, v in per_event.items() if len(v) * 3 >= requests]
    for event, values in sorted(kept, key=lambda kv: statistics.median(kv[1])):
        values = sorted(values)
        rows.append(f"| {LABELS.get(event, event)} | {len(values)} | {statistics.median(values):.2f} | "
                    f"{values[int(0.9 * (len(values) - 1))]:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from tests.support.harness import base_env, wait_until

    from .procstat import children
    from .profile import start_gunicorn, under_load
    from .run import PATH, Bench, Settings

    parser = argparse.ArgumentParser(prog="python -m bench.timeline", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--ppr", type=int, default=1, help="reply partitions per worker (1)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds recorded (10)")
    parser.add_argument("--client", default="kafka-python", choices=["kafka-python", "librdkafka"],
                        help="kafka.client (librdkafka writes from its own threads: only the gateway's events)")
    args = parser.parse_args(argv)
    bench = Bench(Settings())
    rec_dir = Path(tempfile.mkdtemp(prefix="bench-timeline-"))
    try:
        with ExitStack() as stack:
            config, _ = bench._kafka(stack, args.ppr * bench.s.workers, args.client)  # noqa: SLF001 - same package
            env = base_env(config.kafka.bootstrap_servers[0], GATEWAY_CONFIG=str(bench.log_dir / "gateway.toml"),
                           BENCH_TIMELINE_DIR=str(rec_dir))
            proc, url = start_gunicorn(stack, bench.log_dir, env, "gunicorn_timeline.conf.py")
            workers = children(proc.pid)

            def record() -> None:
                (rec_dir / "on").touch()
                time.sleep(args.duration)
                (rec_dir / "on").unlink()
                (rec_dir / "dump").touch()
            _, r = under_load(bench, url + PATH, args.clients, args.duration, record)
            files = [rec_dir / f"{w}.txt" for w in workers]
            wait_until(lambda: all(f.exists() for f in files), 30, 0.2, "workers' timelines written")
            time.sleep(0.2)
    finally:
        bench.close()
    per_event: dict[str, list[float]] = defaultdict(list)
    for f in files:
        for event, values in offsets(f.read_text()).items():
            per_event[event].extend(values)
    print(f"{args.client}, {args.clients} client(s), {args.ppr} reply partition(s) per worker: wrk p50 "
          f"{r.p50_ms:.2f} ms, {r.rps:.0f} req/s; {len(per_event.get('in', []))} requests recorded\n")
    print(table(per_event))
    return 0


if __name__ == "__main__":
    sys.exit(main())
