"""Fault injection under continuous load: the scenarios behind ``tests/test_faults.py`` and the README's table.

    .venv/bin/python -m gateway.faults                 # every scenario, then the markdown table
    .venv/bin/python -m gateway.faults scale kill9     # some of them (scale second hup kill9 broker slow)

Each scenario starts a fresh gunicorn (real gevent workers, real broker, the echo example service), drives
``gateway.loadgen`` (50 clients, a unique token per request; half keep-alive, half a new connection per request; a
third resting 0.5 s after each answer, the rest flat out)
through one event, and returns a :class:`Run`: every request the clients made (with its phase), the connections
refused, how many times each request's token is on the request topic (read after the run: a stale keep-alive retry
must never have produced a second record), the gateway's reply-outcome counters over the run
(``gateway_replies_total``: late, foreign, duplicate), when the reply group converged after each event, and the
facts the assertions need (which requests a killed worker or the workers stopped by a HUP held, when the broker was
back, ...). Nothing here asserts: the tests do; the CLI prints.

The reply counters are read from the gateway's ``PROMETHEUS_MULTIPROC_DIR`` (the very files ``/metrics``
renders), which this module chooses per gateway: so the numbers include what a stopped instance or a killed
worker counted before it went away, which a scrape after the fact cannot see. Waiting for a rebalance to settle
reads the same files per worker pid.
"""
from __future__ import annotations

import argparse
import json
import operator
import os
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests

from .broker import EmbeddedBroker
from .loadgen import FAILED, FRESH, KEEPALIVE, MISMATCHED, OK, LoadGenerator, Result, summarize
from .testing import (
    GunicornGateway,
    ProcessExited,
    ServiceProcess,
    make_config,
    metric_value,
    wait_until,
    write_config,
)

# a deadline far above any latency a loaded 2-core machine shows (p50 2-3 s at load 30): a 504 here means lost
ECHO = {"topic": "echo.requests", "content_types": ["*/*"], "timeout_ms": 15000}
FAULTY_TIMEOUT_MS = 2000
FAULTY = {"topic": "faulty.requests", "methods": ["GET", "POST"], "content_types": ["*/*"],
          "timeout_ms": FAULTY_TIMEOUT_MS, "partitions": 1}
REPLY_PARTITIONS = 16
OUTCOMES = ("delivered", "late", "foreign", "duplicate", "invalid")
STEADY_S = 2.0      # load window before and after each event
SETTLE_S = 60.0     # how long the group may take to converge once the workers serve (asserted; seconds on a quiet
                    # machine, 15-50 s when other suites load the 2 cores to a load average of 30-50)
READY_S = 90.0      # how long new workers may take to be ready (generous: a loaded 2-core machine boots slowly)


# -- processes, sockets and metric files -----------------------------------------------------------------------
def worker_pids(master_pid: int) -> set[int]:
    """The gunicorn workers: live processes whose parent is the master."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # "pid (comm) state ppid ...": comm may hold anything
        if int(fields[1]) == master_pid and fields[0] != "Z":
            pids.add(int(entry))
    return pids


def signal_pending(pid: int, sig: int) -> bool:
    """Whether *sig* is pending for process *pid* (sent, not handled yet: the process is stopped, for one)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & (1 << (sig - 1)):
                return True
    return False


def held_client_ports(pid: int, server_port: int) -> set[int]:
    """Client ports of the TCP connections to *server_port* that process *pid* holds (accepted, not closed):
    its socket fds (``/proc/PID/fd`` -> ``socket:[inode]``) matched with ``/proc/PID/net/tcp``."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
            if inode in inodes and state != "0A" and int(local.rsplit(":", 1)[1], 16) == server_port:
                ports.add(int(remote.rsplit(":", 1)[1], 16))
    return ports


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU time the processes used so far."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def vm_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def read_metrics_dir(path: Path) -> str:
    """What /metrics renders from a gateway's multiprocess directory (also after the gateway stopped)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    for _ in range(20):
        try:
            return generate_latest(registry).decode()
        except struct.error:  # a worker that is just starting created its file but did not size it yet
            time.sleep(0.01)
    return generate_latest(registry).decode()


def worker_gauges(path: Path) -> dict[int, dict[str, float]]:
    """Per worker pid: its live gauges (owned / read partitions, ready, in flight) from the metric files."""
    from prometheus_client.mmap_dict import MmapedDict

    out: dict[int, dict[str, float]] = {}
    for f in path.glob("gauge_livesum_*.db"):
        pid = int(f.stem.rsplit("_", 1)[1])
        try:
            values = list(MmapedDict.read_all_values_from_file(str(f)))
        except (OSError, struct.error):
            continue
        gauges = out.setdefault(pid, {})
        for key, value, *_ in values:
            name = json.loads(key)[1]
            gauges[name] = gauges.get(name, 0.0) + value
    return out


def reply_counts(text: str) -> dict[str, float]:
    return {o: metric_value(text, "gateway_replies_total", f'outcome="{o}"') for o in OUTCOMES}


def topic_partitions(bootstrap: str, topics: list[str]) -> dict[str, int | None]:
    """Partition count of each topic (None: missing), asked without auto-creating anything."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        existing = set(admin.list_topics())
        out: dict[str, int | None] = {t: None for t in topics}
        for desc in admin.describe_topics([t for t in topics if t in existing]):
            out[desc.get("name") or desc.get("topic")] = len(desc["partitions"])
        return out
    finally:
        admin.close()


def trace_records(bootstrap: str, topics: list[str], correlation_ids: set[str], wall_offset: float = 0.0,
                  idle_s: float = 1.5, max_s: float = 30.0) -> dict[str, list[str]]:
    """Where did the records of these requests go? Reads *topics* (request topics, reply topic) from the start and
    lists, per correlation id (hex), each record carrying it: ``topic/partition@offset``, its time (on the load
    generator's monotonic clock) and, for a request, the reply partition it asked for. Request record missing:
    the gateway never produced it; reply missing: the service never answered; reply present: the gateway did not
    read it in time."""
    from kafka import KafkaConsumer, TopicPartition

    found: dict[str, list[str]] = {c: [] for c in correlation_ids}
    if not correlation_ids:
        return found
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=50)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        last = started = time.monotonic()
        while time.monotonic() - last < idle_s and time.monotonic() - started < max_s:
            for tp, records in consumer.poll(timeout_ms=200, max_records=5000).items():
                last = time.monotonic()
                for rec in records:
                    h = {k: v for k, v in (rec.headers or []) if v is not None}
                    cid = (h.get("gateway-correlation-id") or b"").decode(errors="replace")
                    if not cid and "kafka_correlationId" in h:
                        cid = h["kafka_correlationId"].hex()
                    if cid in found:
                        extra = f" reply->{h['gateway-reply-partition'].decode()}" \
                            if "gateway-reply-partition" in h else ""
                        if "gateway-status" in h:
                            extra += f" status {h['gateway-status'].decode()}"
                        found[cid].append(f"{tp.topic}/{tp.partition}@{rec.offset} "
                                          f"t={rec.timestamp / 1000 - wall_offset:.3f}{extra}")
    finally:
        consumer.close()
    return found


def produced_tokens(bootstrap: str, topic: str, prefix: str, expected: set[str], idle_s: float = 1.0,
                    max_s: float = 60.0) -> Counter:
    """How many records on *topic* carry each token that starts with *prefix* (a load generator's run id): the
    requests the gateway produced, duplicates included. Reads from the start until every partition is read to the
    end offsets taken now (those are only a hint on some brokers, TANSU.md), every *expected* token was seen, and
    nothing came for *idle_s*."""
    from kafka import KafkaConsumer, TopicPartition

    counts: Counter = Counter()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=50, max_partition_fetch_bytes=4 << 20)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        seen = 0
        last = started = time.monotonic()
        while time.monotonic() - started < max_s:
            for records in consumer.poll(timeout_ms=200, max_records=5000).values():
                last = time.monotonic()
                for rec in records:
                    try:
                        token = json.loads(rec.value)["token"]
                    except (ValueError, TypeError, KeyError):
                        continue
                    if isinstance(token, str) and token.startswith(prefix):
                        seen += counts[token] == 0 and token in expected
                        counts[token] += 1
            at_end = all(consumer.position(tp) >= ends.get(tp, 0) for tp in tps)
            if at_end and seen >= len(expected) and time.monotonic() - last >= idle_s:
                break
    finally:
        consumer.close()
    return counts


# -- the lab: a broker, services, gateways ---------------------------------------------------------------------
class Lab:
    """One broker (optionally on a fixed port), the echo service, a work dir; gateways started on demand.
    Everything it started is stopped by :meth:`close` (or leaving the ``with`` block)."""

    def __init__(self, workdir: Path | None = None, broker_port: int | None = None, echo: bool = True) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="gateway-faults-"))
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker(port=broker_port, log_path=self.log_dir / "broker.log")
        self.services: dict[str, ServiceProcess] = {}
        self.gateways: list[GunicornGateway] = []
        self.configs: dict[str, dict[str, Any]] = {}
        self._want_echo = echo

    def __enter__(self) -> "Lab":
        try:
            self.broker.start()
            if self._want_echo:
                self.ensure_topics({"echo.requests": 4})
                self.start_service("echo", "examples.echo")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def ensure_topics(self, topics: dict[str, int]) -> None:
        from .config import parse_config
        from .kafka.admin import ensure_topics

        ensure_topics(parse_config(make_config(self.bootstrap, {"echo": ECHO})), topics)

    def start_service(self, name: str, module: str, **env: str) -> ServiceProcess:
        proc = ServiceProcess(module, self.bootstrap, self.log_dir, **env)
        self.services[name] = proc
        return proc

    def config(self, services: dict[str, dict[str, Any]] | None = None, **sections: dict[str, Any]) -> Path:
        """A config with a reply topic + group of its own (make_config), topics created, written to a file."""
        from .config import parse_config
        from .kafka.admin import ensure_topics, wanted_topics

        cfg = make_config(self.bootstrap, services or {"echo": ECHO}, **sections)
        cfg["reply"]["partitions"] = REPLY_PARTITIONS
        parsed = parse_config(cfg)
        ensure_topics(parsed, wanted_topics(parsed))
        path = write_config(self.workdir / f"{cfg['reply']['group_id']}.toml", cfg)
        self.configs[str(path)] = cfg
        return path

    def gateway(self, config: Path, workers: int = 2, **env: str) -> GunicornGateway:
        """``GunicornGateway`` with a metrics directory of our choosing (``gw.metrics_dir``)."""
        metrics_dir = Path(tempfile.mkdtemp(prefix="metrics-", dir=self.workdir))
        gw = GunicornGateway(config, self.bootstrap, self.log_dir, workers=workers,
                             extra_env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **env})
        gw.metrics_dir = metrics_dir  # type: ignore[attr-defined]
        gw.config_path = str(config)  # type: ignore[attr-defined]
        self.gateways.append(gw)
        return gw

    def close(self) -> None:
        errors = []
        for stop in [*(gw.stop for gw in self.gateways), *(s.stop for s in self.services.values()),
                     self.broker.stop]:
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - stop everything, report after
                errors.append(exc)
        if errors:
            raise errors[0]


def dir_metrics(gw: GunicornGateway) -> str:
    return read_metrics_dir(gw.metrics_dir)  # type: ignore[attr-defined]


def wait_serving(gw: GunicornGateway, prefix: str = "/echo", timeout_s: float = 90) -> None:
    """Ready workers AND the service answers through them (services join their groups in the background)."""
    gw.wait_ready(timeout_s)
    wait_until(lambda: requests.post(gw.url + prefix + "/warmup", json={}, timeout=10).status_code == 200,
               timeout_s, 0.2, f"{prefix} answered through {gw.url}")


def group_state(gws: list[GunicornGateway]) -> dict[str, Any]:
    """Live workers of these gateways and, per worker, its ready / owned / read gauges."""
    workers: dict[int, dict[str, float]] = {}
    for gw in gws:
        gauges = worker_gauges(gw.metrics_dir)  # type: ignore[attr-defined]
        for pid in worker_pids(gw.pid):
            workers[pid] = {k.replace("gateway_", "").replace("reply_partitions_", ""): v
                            for k, v in gauges.get(pid, {}).items() if k != "gateway_in_flight"}
    total = {k: sum(w.get(k, 0) for w in workers.values()) for k in ("workers_ready", "owned", "read")}
    return {"live": len(workers), **total, "per_worker": workers}


def _settled(state: dict[str, Any], workers: int) -> bool:
    return (state["live"] == workers and state["workers_ready"] == workers and state["owned"] == REPLY_PARTITIONS
            and state["read"] == REPLY_PARTITIONS)


def _alive(gws: list[GunicornGateway]) -> None:
    for gw in gws:
        if not gw.alive():
            raise ProcessExited(f"gunicorn {gw.pid} exited ({gw.proc.returncode}); log {gw.log_path}")


def wait_workers_ready(gws: list[GunicornGateway], workers: int, timeout_s: float = READY_S) -> float:
    """Until exactly *workers* live workers, each serving (reading a positioned reply partition it mints on:
    its own or, while the group has not assigned it any, a borrowed one). Returns the seconds it took; the
    timeout error shows the last state. Whether the group converged is ``settle``'s business."""
    started = time.monotonic()
    state: dict[str, Any] = {}
    while time.monotonic() - started < timeout_s:
        _alive(gws)
        state = group_state(gws)
        if state["live"] == workers and all(w.get("read", 0) >= 1 for w in state["per_worker"].values()):
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"{workers} ready workers not reached within {timeout_s:.0f}s; last state {state}")


def settle(sc: "Scenario", what: str, gws: list[GunicornGateway], workers: int, since: float,
           timeout_s: float = SETTLE_S) -> None:
    """Wait (at most *timeout_s*) until the group converged: *workers* ready workers own every reply partition
    exactly once and none is left draining (owned == read == partitions). Not converging is no request failure
    (a worker that did not learn its new assignment yet keeps minting on partitions it still reads), so it is
    recorded, not raised: ``facts[what]`` is the seconds since *since*, or ``None`` with the last state."""
    deadline = time.monotonic() + timeout_s
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _alive(gws)
        state = group_state(gws)
        if _settled(state, workers):
            sc.facts[what] = round(time.monotonic() - since, 2)
            return
        time.sleep(0.1)
    sc.facts[what] = None
    sc.facts[f"{what}_unsettled_state"] = state


# -- runs and scenarios ----------------------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    title: str
    results: list[Result] = field(default_factory=list)
    replies: dict[str, int] = field(default_factory=dict)   # reply-outcome counter deltas over the run
    facts: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)
    refusals: list[tuple[float, str, str]] = field(default_factory=list)   # (time, phase, target) refused
    produced: Counter | None = None   # token -> records on the request topic (None: not counted)
    error: str = ""
    log_dir: str = ""

    def phase(self, *names: str) -> list[Result]:
        return [r for r in self.results if r.phase in names]

    def failed(self) -> list[Result]:
        return [r for r in self.results if r.outcome == FAILED]

    def mismatched(self) -> list[Result]:
        return [r for r in self.results if r.outcome == MISMATCHED]

    def not_produced_once(self) -> dict[str, list[str]]:
        """Requests whose token is not on the request topic the number of times their outcome requires: an ok
        request exactly once, any request at most once, and no token of this run that no request carried.
        Empty dict: every execution accounted for."""
        if self.produced is None:
            return {"not counted": []}
        bad: dict[str, list[str]] = {}
        tokens = {r.token for r in self.results}
        for r in self.results:
            n = self.produced.get(r.token, 0)
            if n > 1 or (r.outcome == OK and n != 1):
                bad.setdefault(f"{n}x {r.outcome}{' after a stale-connection retry' if r.stale_retry else ''}",
                               []).append(f"[{r.phase}] client {r.client} seq {r.seq} {r.style} {r.token}")
        unknown = [t for t in self.produced if t not in tokens]
        if unknown:
            bad["produced, no request carried it"] = unknown
        return bad

    def report(self) -> str:
        """Per-phase summaries, counters, events and facts: assertion messages and the CLI's log."""
        lines = [f"{self.name}: {self.title}" + (f"\n  ERROR: {self.error}" if self.error else "")]
        for ph in dict.fromkeys(r.phase for r in self.results):
            lines.append(f"  [{ph}] {summarize(self.phase(ph))}")
        lines.append(f"  refused connections: {len(self.refusals)} "
                     f"{dict(Counter(f'{ph} {tg}' for _, ph, tg in self.refusals))}")
        if self.produced is not None:
            bad = self.not_produced_once()
            lines.append(f"  request records: {sum(self.produced.values())} for {len(self.results)} requests; "
                         + ("each as expected" if not bad else
                            "; ".join(f"{k}: {len(v)} (e.g. {v[:3]})" for k, v in bad.items())))
        lines.append(f"  replies: {self.replies}")
        lines.append("  events: " + ", ".join(f"{name} @{t:.3f}" for t, name in self.events))
        for k, v in self.facts.items():
            if isinstance(v, list):
                lines.append(f"  {k}:")
                lines.extend(f"    {x}" for x in v)
            else:
                lines.append(f"  {k}: {v}")
        lines.append(f"  logs: {self.log_dir}")
        return "\n".join(lines)


class ScenarioFailed(Exception):
    """A scenario could not run to its end (a wait timed out, a process died); ``run`` has what was measured."""

    def __init__(self, run: Run) -> None:
        super().__init__(run.report())
        self.run = run


class Scenario:
    """One run's plumbing: its gateways and load generator, counters before/after, cleanup.

    ``with Scenario(...) as sc:`` -- on the way out the load stops, failed requests are traced through the topics,
    every gateway is stopped and the reply counters are summed; an exception becomes :class:`ScenarioFailed`."""

    def __init__(self, name: str, title: str, lab: Lab, clients: int,
                 styles: tuple[str, ...] = (KEEPALIVE, FRESH), request_topic: str | None = ECHO["topic"]) -> None:
        self.run = Run(name, title, log_dir=str(lab.log_dir))
        self.lab = lab
        self.clients = clients
        self.styles = styles
        self.request_topic = request_topic   # where the requests' tokens are counted after the run
        self.gws: list[GunicornGateway] = []
        self.lg: LoadGenerator | None = None
        self.before: dict[str, dict[str, float]] = {}
        self.trace_failures: Callable[[Result], bool] = lambda r: True

    @property
    def facts(self) -> dict[str, Any]:
        return self.run.facts

    def gateway(self, config: Path, workers: int = 2) -> GunicornGateway:
        gw = self.lab.gateway(config, workers)
        self.gws.append(gw)
        return gw

    def load(self, target: str, phase: str, **kwargs: Any) -> LoadGenerator:
        """Start the clients; the reply counters of the gateways running now are taken as the baseline (a gateway
        started later counts from zero)."""
        for gw in self.gws:
            self.before[str(gw.metrics_dir)] = reply_counts(dir_metrics(gw))  # type: ignore[attr-defined]
        kwargs.setdefault("styles", self.styles)
        # a third of the clients rest 0.5 s after each answer: their keep-alive connections sit idle, so a stop
        # closes some under their next request (stale-connection retries, checked by the token count)
        kwargs.setdefault("client_think_s", (0.0, 0.0, 0.0, 0.0, 0.5, 0.5))
        self.lg = LoadGenerator(target, clients=self.clients, phase=phase, **kwargs).start()
        self.lg.mark(f"load ({phase})")
        return self.lg

    def __enter__(self) -> "Scenario":
        self.facts["load_average_at_start"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        try:
            self._finish()
        except Exception as finish_exc:  # noqa: BLE001
            self.facts["cleanup_error"] = repr(finish_exc)
            if exc is None:
                exc = finish_exc
        if exc is not None:
            self.run.error = f"{type(exc).__name__}: {exc}"
            raise ScenarioFailed(self.run) from exc

    def _finish(self) -> None:
        self.facts["load_average_at_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
        try:
            if self.lg is not None:
                if not self.lg.stopped:
                    self.lg.stop()
                self.run.results = list(self.lg.results)
                self.run.events = list(self.lg.events)
                self.run.refusals = list(self.lg.refusals)
                if self.request_topic and self.lab.broker.running:
                    expected = {r.token for r in self.run.results if r.outcome == OK}
                    self.run.produced = produced_tokens(self.lab.bootstrap, self.request_topic, self.lg.run_id,
                                                        expected)
                self._diagnose()
        finally:
            for gw in self.gws:
                gw.stop()
            total = {o: 0.0 for o in OUTCOMES}
            for gw in self.gws:
                after = reply_counts(dir_metrics(gw))
                before = self.before.get(str(gw.metrics_dir), {})  # type: ignore[attr-defined]
                for o in OUTCOMES:
                    total[o] += after[o] - before.get(o, 0.0)
            self.run.replies = {o: int(v) for o, v in total.items()}

    def _diagnose(self, per_kind: int = 4) -> None:
        """For unexpected failures with a correlation id: where their request and reply records are (a few of each
        phase and status)."""
        kinds: dict[tuple[str, str], list[Result]] = {}
        for r in self.run.results:
            if r.outcome != OK and r.correlation_id and self.trace_failures(r):
                same = kinds.setdefault((r.phase, f"{r.status} {r.error}"), [])
                if len(same) < per_kind:
                    same.append(r)
        failed = [r for group in kinds.values() for r in group]
        if not failed or not self.lab.broker.running or self.lg is None:
            return
        topics: set[str] = set()
        for gw in self.gws:
            cfg = self.lab.configs.get(gw.config_path)  # type: ignore[attr-defined]
            if cfg:
                topics.add(cfg["reply"]["topic"])
                topics.update(svc["topic"] for svc in cfg["services"].values())
        try:
            found = trace_records(self.lab.bootstrap, sorted(topics), {r.correlation_id for r in failed},
                                  self.lg.wall_offset)
        except Exception as exc:  # noqa: BLE001
            self.facts["trace_error"] = repr(exc)
            return
        self.facts["failed_traced"] = [
            f"[{r.phase}] client {r.client} start={r.start:.3f} end={r.end:.3f} {r.status} {r.error} "
            f"cid={r.correlation_id}: {found.get(r.correlation_id) or 'no record found'}" for r in failed]


def _hold(seconds: float) -> None:
    """A load window: the clients keep running while the scenario waits (not a synchronisation)."""
    time.sleep(seconds)


def _workers(gw: GunicornGateway, cmp: Callable[[int, int], bool], n: int) -> Callable[[], bool]:
    return lambda: cmp(len(worker_pids(gw.pid)), n)


# -- (a) scale 2 -> 4 -> 2 -------------------------------------------------------------------------------------
def scenario_scale(lab: Lab, clients: int = 50) -> Run:
    with Scenario("scale", "TTIN x2 (2 -> 4 workers), then TTOU x2 (4 -> 2), under load", lab, clients) as sc:
        gw = sc.gateway(lab.config(), workers=2)
        wait_serving(gw)
        settle(sc, "start_settled_s", [gw], 2, time.monotonic())
        lg = sc.load(gw.url, "2 workers")
        _hold(STEADY_S)
        t = lg.mark("TTIN", phase="scaling up")
        for n in (3, 4):
            gw.signal(signal.SIGTTIN)  # one at a time: two pending signals of one kind merge into one
            wait_until(_workers(gw, operator.ge, n), 30, 0.02, f"{n} worker processes")
        wait_workers_ready([gw], 4)
        sc.facts["up_ready_s"] = round(time.monotonic() - t, 2)
        settle(sc, "up_settled_s", [gw], 4, t)
        lg.mark("4 workers", phase="4 workers")
        _hold(STEADY_S)
        t = lg.mark("TTOU", phase="scaling down")
        for n in (3, 2):
            gw.signal(signal.SIGTTOU)
            wait_until(_workers(gw, operator.le, n), 60, 0.02, f"{n} worker processes")
        wait_workers_ready([gw], 2)
        sc.facts["down_done_s"] = round(time.monotonic() - t, 2)
        settle(sc, "down_settled_s", [gw], 2, t)
        lg.mark("2 workers", phase="2 workers again")
        _hold(STEADY_S)
    return sc.run


# -- (b) a second instance joins the group, then stops gracefully ----------------------------------------------
def scenario_second_instance(lab: Lab, clients: int = 50) -> Run:
    with Scenario("second", "a 2nd gunicorn (same config: same reply topic and group) joins, takes half the "
                  "clients, is drained like a load balancer would and stopped with SIGTERM", lab, clients) as sc:
        config = lab.config()
        gw1 = sc.gateway(config, workers=2)
        wait_serving(gw1)
        lg = sc.load(gw1.url, "1 instance")
        _hold(STEADY_S)
        t = lg.mark("2nd starts", phase="2nd joining")
        gw2 = sc.gateway(config, workers=2)
        wait_workers_ready([gw1, gw2], 4)
        sc.facts["join_ready_s"] = round(time.monotonic() - t, 2)
        settle(sc, "join_settled_s", [gw1, gw2], 4, t)
        lg.set_targets([gw1.url, gw2.url])
        lg.mark("half the clients on the 2nd", phase="2 instances")
        _hold(STEADY_S)
        lg.set_targets([gw1.url])
        lg.mark("2nd drained", phase="2nd stopping")
        gw2_workers = worker_pids(gw2.pid)

        def all_accepted() -> bool:
            mine = [f for f in lg.in_flight() if f[1] == gw2.url]
            if any(state != "sent" for *_, state in mine):
                return False
            held = set().union(*(held_client_ports(p, gw2.port) for p in gw2_workers))
            return all(port in held for _, _, _, port, _ in mine)

        # SIGTERM closes gw2's listening socket: a connection the kernel completed but no worker accepted yet
        # would be reset. No new request goes to gw2 now; wait until each one routed there is accepted by one of
        # its workers (that set only shrinks from here on), then stop it while it still holds them.
        wait_until(all_accepted, 10, 0.001, "the requests routed to the 2nd accepted by its workers")
        held = [f for f in lg.in_flight() if f[1] == gw2.url]
        t = lg.mark("SIGTERM 2nd")
        sc.facts["held_by_2nd_at_sigterm"] = len(held)
        gw2.signal(signal.SIGTERM)
        wait_until(lambda: not gw2.alive(), 60, 0.05, "2nd instance exited")
        sc.facts["2nd_stop_s"] = round(time.monotonic() - t, 2)
        sc.facts["2nd_exit_code"] = gw2.proc.returncode
        settle(sc, "leave_settled_s", [gw1], 2, t)
        lg.mark("1 instance", phase="1 instance again")
        _hold(STEADY_S)
    return sc.run


# -- (c) rolling HUP -------------------------------------------------------------------------------------------
def scenario_hup(lab: Lab, clients: int = 50) -> Run:
    """The old workers are frozen (SIGSTOP) while the requests they hold are listed (client ports of the connections
    they accepted, matched with the requests in flight) and until gunicorn's stop signal is pending for each, then
    thawed: ``facts['held_at_hup']`` are requests the old workers held when their stop began, which the drain must
    answer."""
    with Scenario("hup", "SIGHUP: gunicorn starts 2 new workers and stops the 2 old ones gracefully", lab,
                  clients) as sc:
        gw = sc.gateway(lab.config(), workers=2)
        wait_serving(gw)
        settle(sc, "start_settled_s", [gw], 2, time.monotonic())
        lg = sc.load(gw.url, "before")
        _hold(STEADY_S)
        old = worker_pids(gw.pid)
        for pid in old:
            os.kill(pid, signal.SIGSTOP)
        try:
            flying = {(c, start): port for c, _, start, port, state in lg.in_flight() if state == "sent"}
            ports = set().union(*(held_client_ports(pid, gw.port) for pid in old))
            t = lg.mark("HUP", phase="reloading")
            gw.signal(signal.SIGHUP)
            wait_until(lambda: all(signal_pending(pid, signal.SIGTERM) for pid in old), 15, 0.005,
                       "gunicorn's stop pending for every old worker")
            sc.facts["held_at_hup"] = sorted((c, start) for (c, start), port in flying.items() if port in ports)
        finally:
            for pid in old:
                os.kill(pid, signal.SIGCONT)
        wait_until(lambda: not (worker_pids(gw.pid) & old), 60, 0.05, "old workers gone")
        sc.facts["old_workers_gone_s"] = round(time.monotonic() - t, 2)
        wait_workers_ready([gw], 2)
        sc.facts["reload_ready_s"] = round(time.monotonic() - t, 2)
        sc.facts["workers"] = f"{sorted(old)} -> {sorted(worker_pids(gw.pid))}"
        settle(sc, "reload_settled_s", [gw], 2, t)
        lg.mark("new workers", phase="after")
        _hold(STEADY_S)
    return sc.run


def held_results(run: Run) -> list[Result]:
    """The requests of ``facts['held_at_hup']``, as the clients saw them."""
    held = set(map(tuple, run.facts.get("held_at_hup", [])))
    return [r for r in run.results if (r.client, r.start) in held]


# -- (d) kill -9 one worker ------------------------------------------------------------------------------------
def scenario_kill9(lab: Lab, clients: int = 50) -> Run:
    """The victim is frozen (SIGSTOP) while the client ports of the connections it holds are read from /proc,
    then killed: ``facts['held_ports']`` is exactly the set of requests the killed worker held."""
    # fresh connections only: a keep-alive client cannot tell a connection that died with the killed worker (whose
    # request may have been produced) from one closed while idle, so its stale-connection retry would not be safe
    with Scenario("kill9", "SIGKILL one of 2 workers; gunicorn replaces it", lab, clients, styles=(FRESH,)) as sc:
        gw = sc.gateway(lab.config(), workers=2)
        wait_serving(gw)
        lg = sc.load(gw.url, "before")
        _hold(STEADY_S)
        victim = min(worker_pids(gw.pid))
        os.kill(victim, signal.SIGSTOP)
        try:
            held = held_client_ports(victim, gw.port)
            in_flight = lg.in_flight()
        finally:
            t_kill = lg.mark("SIGKILL", phase="after kill")
            os.kill(victim, signal.SIGKILL)
        sc.facts.update(victim=victim, held_ports=sorted(held), held_by_victim=len(held),
                        in_flight_at_kill=len(in_flight), t_kill=t_kill)
        wait_until(lambda: victim not in worker_pids(gw.pid) and len(worker_pids(gw.pid)) == 2, 30, 0.05,
                   "victim replaced")
        wait_workers_ready([gw], 2)
        sc.facts["replaced_ready_s"] = round(time.monotonic() - t_kill, 2)
        settle(sc, "replaced_settled_s", [gw], 2, t_kill)
        lg.mark("replaced", phase="after")
        _hold(STEADY_S)
    return sc.run


# -- (e) broker stop / restart on the same port ----------------------------------------------------------------
def scenario_broker_restart(lab: Lab, clients: int = 50, outage_s: float = 3.0, recover_within_s: float = 60
                            ) -> Run:
    """*lab* must be a Lab of its own: the broker comes back EMPTY (memory storage) on the same port."""
    with Scenario("broker", f"broker stopped for ~{outage_s:.0f} s, restarted EMPTY on the same port", lab,
                  clients, request_topic=None) as sc:   # the restart empties the request topic: nothing to count
        gw = sc.gateway(lab.config(), workers=2)
        wait_serving(gw)
        pids = worker_pids(gw.pid)
        lg = sc.load(gw.url, "before")
        _hold(STEADY_S)
        t_stop = lg.mark("broker stop", phase="outage, undetected")
        lab.broker.stop()
        t_gone = lg.mark("broker exited")
        sc.facts["broker_stop_took_s"] = round(t_gone - t_stop, 2)
        wait_until(lambda: metric_value(gw.metrics(), "gateway_workers_ready") == 0, 15, 0.05,
                   "every worker reports the broker down")
        t_detect = lg.mark("all workers not ready", phase="outage")
        sc.facts["detect_s"] = round(t_detect - t_gone, 2)
        cpu0 = cpu_seconds(pids)
        _hold(outage_s)
        sc.facts["worker_cpu_during_outage"] = f"{(cpu_seconds(pids) - cpu0) / outage_s:.2f} cores"
        t_start = lg.mark("broker start", phase="broker back")
        lab.broker.start()
        sc.facts["t_restart"] = round(t_start, 3)
        cfg = lab.configs[gw.config_path]  # type: ignore[attr-defined]
        wanted = {cfg["reply"]["topic"]: REPLY_PARTITIONS, "echo.requests": 4}
        try:
            sc.facts["first_200_after_restart_s"] = round(lg.wait_ok(1, t_start, recover_within_s) - t_start, 2)
            # serving again = every client got a 200 after the restart
            served = wait_until(lambda: _all_clients_ok_since(lg, t_start), recover_within_s, 0.05,
                                "every client served again")
            sc.facts["all_clients_served_s"] = round(served - t_start, 2)
            # a client may have been served by a worker that recovered first: the gateway has recovered when
            # every worker is ready again
            wait_until(lambda: metric_value(gw.metrics(), "gateway_workers_ready") == 2, recover_within_s, 0.05,
                       "every worker ready again")
            sc.facts["all_workers_ready_s"] = round(time.monotonic() - t_start, 2)
        finally:
            # the broker came back empty: who re-created the topics, with how many partitions?
            sc.facts["topics_configured"] = wanted
            sc.facts["topics_after_restart"] = topic_partitions(lab.bootstrap, list(wanted))
            # a reply produced after the restart may auto-create the reply topic (the embedded broker, with its
            # default 4 partitions) before the gateway re-creates it: then the workers must mint for what is there
            sc.facts["reply_topic_adopted"] = "came back with" in gw.log()
        lg.mark("recovered", phase="recovered")
        _hold(STEADY_S)
        # a loaded machine may still be slow right after the recovery: judge at least one request per client
        wait_until(lambda: sum(1 for r in list(lg.results) if r.phase == "recovered") >= lg.clients,
                   recover_within_s, 0.05, "a request per client after the recovery")
        lg.stop()
        # Requests answered 503 while the broker was going away whose record the producer still delivered after
        # the restart (the service executed a request its client was told had failed)
        answered_503 = [r for r in lg.results if r.status == 503 and r.correlation_id and r.start < t_start]
        found = trace_records(lab.bootstrap, ["echo.requests"], {r.correlation_id for r in answered_503},
                              lg.wall_offset)
        sc.facts["answered_503_then_delivered"] = \
            f"{sum(1 for r in answered_503 if found.get(r.correlation_id))} of {len(answered_503)} 503s " \
            f"before the restart"
        sc.facts["worker_pids_unchanged"] = worker_pids(gw.pid) == pids
        sc.facts["gunicorn_master_alive"] = gw.alive()
        sc.facts["echo_service_alive"] = lab.services["echo"].alive()
    return sc.run


def _all_clients_ok_since(lg: LoadGenerator, since: float) -> float | None:
    first_ok: dict[int, float] = {}
    for r in list(lg.results):
        if r.start >= since and r.outcome == OK:
            first_ok[r.client] = min(r.end, first_ok.get(r.client, r.end))
    return max(first_ok.values()) if len(first_ok) == lg.clients else None


# -- (f) a slow service, then a crash --------------------------------------------------------------------------
def scenario_slow_crash(lab: Lab, clients: int = 50, slow_ms: int = FAULTY_TIMEOUT_MS + 1000) -> Run:
    """The faulty service answers at once, then sleeps *slow_ms* (> its timeout) per request: 504 at the
    deadline, and each reply that still comes is late; then it is SIGKILLed in the middle of a request.
    ``facts['late_replies_on_topic']`` counts the replies on the reply topic for requests answered 504 (read after
    the run): each one must have been counted ``late`` by the gateway. The group has settled before the load, so
    every worker reads the partitions it minted on for the whole run."""
    with Scenario("slow", f"service sleeps {slow_ms} ms per request (timeout {FAULTY_TIMEOUT_MS} ms), then is "
                  "killed mid-request", lab, clients, request_topic=FAULTY["topic"]) as sc:
        sc.trace_failures = lambda r: r.phase == "fast"  # the failures after the switch are the point
        control = lab.workdir / f"faulty-{time.monotonic_ns()}.json"
        busy = control.with_name(control.name + ".busy")
        lab.ensure_topics({"faulty.requests": 1})
        svc = lab.start_service(control.stem, "gateway.faulty_service", FAULTY_CONTROL=str(control))
        config = lab.config({"faulty": FAULTY})
        gw = sc.gateway(config, workers=2)
        wait_serving(gw, "/faulty")
        settle(sc, "start_settled_s", [gw], 2, time.monotonic())
        lg = sc.load(gw.url, "fast", prefix="/faulty/lg")
        _hold(STEADY_S)
        tmp = control.with_suffix(".tmp")
        tmp.write_text(json.dumps({"delay_ms": slow_ms}))
        tmp.rename(control)  # atomic: the service never reads half a file
        lg.mark("slow", phase="slow")
        # long enough for the service to finish requests it sleeps on (their replies come late)
        _hold(slow_ms / 1000 + STEADY_S)
        wait_until(busy.exists, 10, 0.005, "the service in the middle of a request")
        t_crash = lg.mark("SIGKILL service", phase="crashed")
        os.kill(svc.pid, signal.SIGKILL)
        sc.facts["t_crash"] = round(t_crash, 3)
        _hold(FAULTY_TIMEOUT_MS / 1000 + 1)
        lg.stop()
        wait_until(lambda: metric_value(gw.metrics(), "gateway_in_flight") == 0, FAULTY_TIMEOUT_MS / 1000 + 10,
                   0.05, "in-flight back to 0")
        sc.facts["in_flight_zero_after_crash_s"] = round(time.monotonic() - t_crash, 2)
        sc.facts["service_exit"] = svc.proc.wait(5)
        timed_out = {r.correlation_id for r in lg.results if r.status == 504 and r.correlation_id}
        replies = trace_records(lab.bootstrap, [lab.configs[str(config)]["reply"]["topic"]], timed_out,
                                lg.wall_offset)
        sc.facts["answered_504"] = len(timed_out)
        sc.facts["late_replies_on_topic"] = sum(len(v) for v in replies.values())
    return sc.run


# -- the table -------------------------------------------------------------------------------------------------
SCENARIOS: dict[str, tuple[str, Callable[..., Run]]] = {
    "scale": ("(a) scale 2→4→2 workers (TTIN/TTOU)", scenario_scale),
    "second": ("(b) 2nd instance joins, SIGTERM", scenario_second_instance),
    "hup": ("(c) rolling reload (HUP)", scenario_hup),
    "kill9": ("(d) kill -9 one worker", scenario_kill9),
    "broker": ("(e) broker stop + restart (empty)", scenario_broker_restart),
    "slow": ("(f) service slow, then kill -9", scenario_slow_crash),
}


def _codes(results: list[Result]) -> str:
    c = Counter(f"{r.status or 'conn'} {r.error}".strip() for r in results if r.outcome != OK)
    return ", ".join(f"{n}× {k}" for k, n in c.most_common()) or "none"


CONVERGED = {"scale": [("up", "up_settled_s"), ("down", "down_settled_s")],
             "second": [("join", "join_settled_s"), ("leave", "leave_settled_s")],
             "hup": [("reload", "reload_settled_s")], "kill9": [("replaced", "replaced_settled_s")],
             "slow": [("start", "start_settled_s")]}


def converged(key: str, facts: dict[str, Any]) -> str:
    """When the reply group converged after each event of the scenario (seconds after the event)."""
    parts = []
    for label, fact in CONVERGED.get(key, []):
        if fact in facts:
            value = facts[fact]
            parts.append(f"{label} {value} s" if value is not None else f"{label} NOT within {SETTLE_S:.0f} s")
    return ", ".join(parts) or "–"


def produced_once(run: Run) -> str:
    if run.produced is None:
        return "–"
    bad = run.not_produced_once()
    return "yes" if not bad else "; ".join(f"{len(v)}× {k}" for k, v in bad.items())


def note(key: str, run: Run) -> str:
    f = run.facts
    text = ""
    if key == "kill9" and "held_by_victim" in f:
        text = f"killed worker held {f['held_by_victim']} requests; failures {_codes(run.failed())}"
    elif key == "broker" and "detect_s" in f:
        outage = run.phase("outage")
        worst = max((r.latency for r in outage), default=0) * 1000
        text = (f"outage: {len(outage)} requests, {_codes(outage)}, slowest {worst:.0f} ms; first 200 "
                f"{f.get('first_200_after_restart_s')} s, every client {f.get('all_clients_served_s')} s, every "
                f"worker ready {f.get('all_workers_ready_s')} s after the restart; topics back "
                + ("with their configured partition counts" if f.get("topics_after_restart") ==
                   f.get("topics_configured") else f"as {f.get('topics_after_restart')} (configured "
                   f"{f.get('topics_configured')}; the workers "
                   f"{'adopted' if f.get('reply_topic_adopted') else 'did NOT adopt'} the reply topic's count)"))
    elif key == "slow" and run.results:
        text = (f"{_codes(run.failed())}; {f.get('late_replies_on_topic')} replies came after the deadline, all "
                f"counted late" if run.replies.get("late") == f.get("late_replies_on_topic") else
                f"{_codes(run.failed())}; late counted {run.replies.get('late')} of "
                f"{f.get('late_replies_on_topic')} late replies")
        text += f"; in flight 0 {f.get('in_flight_zero_after_crash_s')} s after the kill"
    elif key == "second" and "held_by_2nd_at_sigterm" in f:
        text = f"2nd held {f['held_by_2nd_at_sigterm']} requests at SIGTERM"
    elif key == "hup" and "held_at_hup" in f:
        held = held_results(run)
        text = (f"old workers held {len(held)} requests when their stop began, "
                f"{sum(r.outcome == OK for r in held)} answered ok; new workers serving "
                f"{f.get('reload_ready_s')} s after the HUP")
    if key in ("scale", "second", "hup") and run.failed():
        text += f"; failures {_codes(run.failed())}"
    if run.error:
        text += f" ERROR {run.error.splitlines()[0][:160]}"
    return text.strip("; ")


def table(rows: list[tuple[str, str, Run]]) -> str:
    out = ["| scenario | requests (keep-alive + fresh) | ok | failed | mismatched | stale-connection retries | "
           "refused | each produced once | p99 ms | late | foreign | duplicate | group converged | notes |",
           "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|"]
    for key, label, run in rows:
        s = summarize(run.results)
        r = run.replies
        out.append(f"| {label} | {s.requests} ({s.styles.get(KEEPALIVE, 0)} + {s.styles.get(FRESH, 0)}) | {s.ok} | "
                   f"{s.failed} | {s.mismatched} | {s.stale_retries} | {len(run.refusals)} | {produced_once(run)} | "
                   f"{s.p99_ms:.0f} | {r.get('late', '-')} | {r.get('foreign', '-')} | {r.get('duplicate', '-')} | "
                   f"{converged(key, run.facts)} | {note(key, run)} |")
    return "\n".join(out)


def run_scenarios(keys: list[str], clients: int = 50, verbose: bool = True) -> list[tuple[str, str, Run]]:
    """Run the scenarios in order (one shared lab; the broker restart in a lab of its own)."""
    rows = []
    shared: Lab | None = None
    try:
        for key in keys:
            label, fn = SCENARIOS[key]
            started = time.monotonic()
            own = key == "broker"
            if not own and shared is None:
                shared = Lab().__enter__()
            lab = Lab().__enter__() if own else shared
            assert lab is not None
            try:
                run = fn(lab, clients=clients)
            except ScenarioFailed as exc:
                run = exc.run
            except Exception as exc:  # noqa: BLE001 - a scenario that could not start is a row, not the end
                run = Run(key, label, error=f"{type(exc).__name__}: {exc}", log_dir=str(lab.log_dir))
                traceback.print_exc()
            finally:
                if own:
                    lab.close()
            if verbose:
                print(f"{run.report()}\n  ({time.monotonic() - started:.0f} s)\n", file=sys.stderr, flush=True)
            rows.append((key, label, run))
    finally:
        if shared is not None:
            shared.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.faults",
                                     description="Fault injection under load; prints the markdown fault table.")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"which ones (default: all, in this order): {' '.join(SCENARIOS)}")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    args = parser.parse_args(argv)
    unknown = [k for k in args.scenarios if k not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {' '.join(unknown)}; choose from {' '.join(SCENARIOS)}")
    rows = run_scenarios(args.scenarios or list(SCENARIOS), args.clients)
    print(table(rows))
    return 1 if any(run.error for *_, run in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
