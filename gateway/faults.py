"""Fault injection under continuous load: the scenarios behind ``tests/test_faults.py`` and the README's table.

    .venv/bin/python -m gateway.faults                 # every scenario, then the markdown table
    .venv/bin/python -m gateway.faults scale kill9     # some of them

Each scenario starts a fresh gunicorn (real gevent workers, real broker), drives ``gateway.loadgen`` (50 clients,
a unique token per request) through the event, and returns a :class:`Run`: every request the clients made, the
reply-outcome counters of the gateway (``gateway_replies_total``: late, foreign, duplicate) over the run, and the
facts the assertions need (who held what at a kill, when the broker was back, ...). Nothing here asserts: the
tests do, the CLI prints.

The reply counters are read from the gateway's ``PROMETHEUS_MULTIPROC_DIR`` (the files ``/metrics`` renders),
which this module chooses per gateway: the numbers then include what a stopped instance or a killed worker
counted before it went away, which a scrape after the fact could not see.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import requests

from .broker import EmbeddedBroker
from .loadgen import FAILED, MISMATCHED, OK, LoadGenerator, Result, summarize
from .testing import GunicornGateway, ServiceProcess, make_config, metric_value, wait_until, write_config

ECHO = {"topic": "echo.requests", "content_types": ["*/*"], "timeout_ms": 5000}
FAULTY_TIMEOUT_MS = 1000
FAULTY = {"topic": "faulty.requests", "methods": ["GET", "POST"], "content_types": ["*/*"],
          "timeout_ms": FAULTY_TIMEOUT_MS, "partitions": 1}
REPLY_PARTITIONS = 16
OUTCOMES = ("delivered", "late", "foreign", "duplicate", "invalid")


# -- processes and /proc ---------------------------------------------------------------------------------------
def worker_pids(master_pid: int) -> set[int]:
    """The gunicorn workers: processes whose parent is the master."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, split after the last ')'
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == master_pid and fields[0] != "Z":
            pids.add(int(entry))
    return pids


def held_client_ports(pid: int, server_port: int) -> set[int]:
    """Client ports of the TCP connections to *server_port* that process *pid* holds (accepted, not closed).

    Maps the process's socket fds (``/proc/PID/fd`` -> ``socket:[inode]``) to ``/proc/PID/net/tcp`` rows."""
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


def vm_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def read_metrics_dir(path: Path) -> str:
    """What /metrics would render from a gateway's multiprocess directory (also after the gateway stopped)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    return generate_latest(registry).decode()


def reply_counts(text: str) -> dict[str, float]:
    return {o: metric_value(text, "gateway_replies_total", f'outcome="{o}"') for o in OUTCOMES}


def trace_records(bootstrap: str, topics: list[str], correlation_ids: set[str], wall_offset: float = 0.0,
                  idle_s: float = 1.5) -> dict[str, list[str]]:
    """Where did the records of these requests go? Reads *topics* from the beginning (request topics and the
    reply topic) and lists, per correlation id (hex), every record that carries it: ``topic/partition@offset``,
    its timestamp and, for requests, the reply partition it asked for. A diagnosis aid for failed requests:
    request record missing = the gateway never produced it; reply missing = the service never answered;
    reply present = the gateway did not read it (or not in time)."""
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
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            for tp, records in consumer.poll(timeout_ms=200, max_records=5000).items():
                last = time.monotonic()
                for rec in records:
                    h = {k: v for k, v in (rec.headers or []) if v is not None}
                    cid = (h.get("gateway-correlation-id") or b"").decode(errors="replace")
                    if not cid and "kafka_correlationId" in h:
                        cid = h["kafka_correlationId"].hex()
                    if cid in found:
                        extra = ""
                        if "gateway-reply-partition" in h:
                            extra = f" reply->{h['gateway-reply-partition'].decode()}"
                        if "gateway-status" in h:
                            extra += f" status {h['gateway-status'].decode()}"
                        t_rel = rec.timestamp / 1000 - wall_offset
                        found[cid].append(f"{tp.topic}/{tp.partition}@{rec.offset} t={t_rel:.3f}{extra}")
    finally:
        consumer.close()
    return found


# -- the lab: a broker, the services, gateways -----------------------------------------------------------------
class Lab:
    """One broker (optionally on a fixed port), the echo service, a temp dir; gateways started on demand."""

    def __init__(self, workdir: Path | None = None, broker_port: int | None = None, echo: bool = True) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="gateway-faults-"))
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker(port=broker_port, log_path=self.log_dir / "broker.log")
        self.services: dict[str, ServiceProcess] = {}
        self.gateways: list[GunicornGateway] = []
        self.configs: dict[Path, dict[str, Any]] = {}
        self._want_echo = echo

    def __enter__(self) -> "Lab":
        self.broker.start()
        if self._want_echo:
            self.ensure_topics({"echo.requests": 4})
            self.start_service("echo", "examples.echo")
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
        """A fresh reply topic + group (make_config) whose topics exist, written to a file."""
        from .config import parse_config
        from .kafka.admin import ensure_topics, wanted_topics

        cfg = make_config(self.bootstrap, services or {"echo": ECHO}, **sections)
        cfg["reply"]["partitions"] = REPLY_PARTITIONS
        parsed = parse_config(cfg)
        ensure_topics(parsed, wanted_topics(parsed))
        path = write_config(self.workdir / f"{cfg['reply']['group_id']}.toml", cfg)
        self.configs[path] = cfg
        return path

    def gateway(self, config: Path, workers: int = 2, **env: str) -> GunicornGateway:
        metrics_dir = Path(tempfile.mkdtemp(prefix="metrics-", dir=self.workdir))
        gw = GunicornGateway(config, self.bootstrap, self.log_dir, workers=workers,
                             extra_env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **env})
        gw.metrics_dir = metrics_dir  # type: ignore[attr-defined]
        gw.env_config = str(config)  # type: ignore[attr-defined]
        self.gateways.append(gw)
        return gw

    def close(self) -> None:
        for gw in self.gateways:
            gw.stop()
        for svc in self.services.values():
            svc.stop()
        self.broker.stop()


def dir_metrics(gw: GunicornGateway) -> str:
    return read_metrics_dir(gw.metrics_dir)  # type: ignore[attr-defined]


def wait_serving(gw: GunicornGateway, prefix: str = "/echo", timeout_s: float = 60) -> None:
    """Ready workers AND the service answers through them (services join their groups in the background)."""
    gw.wait_ready(timeout_s)
    wait_until(lambda: requests.post(gw.url + prefix + "/warmup", json={}, timeout=10).status_code == 200,
               timeout_s, 0.2, f"{prefix} answered through {gw.url}")


def settled(gws: list[GunicornGateway], workers: int) -> Callable[[], bool]:
    """Predicate: *workers* live workers in total, all ready, every reply partition owned exactly once and nothing
    left draining (owned == read == partitions). Reads each gateway's metric files, not a scrape, so that an
    instance that is half-way stopped still counts."""
    def check() -> bool:
        texts = [dir_metrics(gw) for gw in gws]
        live = sum(len(worker_pids(gw.pid)) for gw in gws)
        ready = sum(metric_value(t, "gateway_workers_ready") for t in texts)
        owned = sum(metric_value(t, "gateway_reply_partitions_owned") for t in texts)
        read = sum(metric_value(t, "gateway_reply_partitions_read") for t in texts)
        return live == workers and ready == workers and owned == REPLY_PARTITIONS and read == REPLY_PARTITIONS
    return check


# -- one run -------------------------------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    title: str
    results: list[Result] = field(default_factory=list)
    replies: dict[str, float] = field(default_factory=dict)   # reply-outcome counter deltas over the run
    facts: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)
    error: str = ""

    def phase(self, *names: str) -> list[Result]:
        return [r for r in self.results if r.phase in names]

    def failed(self) -> list[Result]:
        return [r for r in self.results if r.outcome == FAILED]

    def mismatched(self) -> list[Result]:
        return [r for r in self.results if r.outcome == MISMATCHED]

    def report(self) -> str:
        """Per-phase summary + facts, for assertion messages and the CLI."""
        lines = [f"{self.name}: {self.title}" + (f"  ERROR: {self.error}" if self.error else "")]
        seen: list[str] = []
        for r in self.results:
            if r.phase not in seen:
                seen.append(r.phase)
        for ph in seen:
            lines.append(f"  [{ph}] {summarize(self.phase(ph))}")
        lines.append(f"  replies: {self.replies}")
        lines.append("  events: " + ", ".join(f"{name} @{t:.3f}" for t, name in self.events))
        for k, v in self.facts.items():
            if isinstance(v, list):
                lines.append(f"  {k}:")
                lines.extend(f"    {x}" for x in v)
            else:
                lines.append(f"  {k}: {v}")
        return "\n".join(lines)


class _Scenario:
    """Shared plumbing: counters before/after, a load generator, the Run to fill in."""

    def __init__(self, run: Run, clients: int, lab: Lab) -> None:
        self.run = run
        self.clients = clients
        self.lab = lab
        self.before: dict[str, dict[str, float]] = {}

    def diagnose(self, lg: LoadGenerator, gws: list[GunicornGateway], limit: int = 20) -> None:
        """For failed requests with a correlation id: where their request and reply records are."""
        failed = [r for r in self.run.results if r.outcome != OK and r.correlation_id][:limit]
        if not failed or not self.lab.broker.running:
            return
        topics: set[str] = set()
        for gw in gws:
            cfg = self.lab.configs.get(Path(gw.env_config)) if hasattr(gw, "env_config") else None
            if cfg:
                topics.add(cfg["reply"]["topic"])
                topics.update(svc["topic"] for svc in cfg["services"].values())
        try:
            found = trace_records(self.lab.bootstrap, sorted(topics), {r.correlation_id for r in failed},
                                  lg.wall_offset)
        except Exception as exc:  # noqa: BLE001
            self.run.facts["trace_error"] = repr(exc)
            return
        self.run.facts["failed_traced"] = [
            f"{r.phase} start={r.start:.3f} end={r.end:.3f} {r.status} {r.error} worker={r.worker_tag} "
            f"cid={r.correlation_id}: {found.get(r.correlation_id) or 'no record found'}" for r in failed]

    def count_before(self, *gws: GunicornGateway) -> None:
        for gw in gws:
            self.before[str(gw.metrics_dir)] = reply_counts(dir_metrics(gw))  # type: ignore[attr-defined]

    def count_after(self, *gws: GunicornGateway) -> None:
        total = {o: 0.0 for o in OUTCOMES}
        for gw in gws:
            after = reply_counts(dir_metrics(gw))
            before = self.before.get(str(gw.metrics_dir), {})  # type: ignore[attr-defined]
            for o in OUTCOMES:
                total[o] += after[o] - before.get(o, 0.0)
        self.run.replies = {o: int(v) for o, v in total.items()}


STEADY_S = 2.0


def _hold(seconds: float) -> None:
    """A load window: the clients keep running while the scenario waits (not a synchronisation)."""
    time.sleep(seconds)


# -- (a) scale 2 -> 4 -> 2 -------------------------------------------------------------------------------------
def scenario_scale(lab: Lab, clients: int = 50) -> Run:
    run = Run("scale", "TTIN x2 (2 -> 4 workers), then TTOU x2 (4 -> 2), under load")
    sc = _Scenario(run, clients, lab)
    gw = lab.gateway(lab.config(), workers=2)
    lg: LoadGenerator | None = None
    try:
        wait_serving(gw)
        sc.count_before(gw)
        lg = LoadGenerator(gw.url, clients=clients, phase="2 workers").start()
        lg.mark("load")
        _hold(STEADY_S)
        for target in (3, 4):
            t = lg.mark(f"TTIN -> {target}", phase="scaling up")
            gw.signal(signal.SIGTTIN)  # one at a time: two pending signals of one kind would merge into one
            wait_until(lambda: len(worker_pids(gw.pid)) >= target, 30, 0.05, f"{target} worker processes")
        wait_until(settled([gw], 4), 30, 0.1, "4 workers settled")
        run.facts["scale_up_settled_s"] = round(time.monotonic() - t, 2)
        lg.mark("4 workers", phase="4 workers")
        _hold(STEADY_S)
        t = lg.mark("TTOU", phase="scaling down")
        for target in (3, 2):
            gw.signal(signal.SIGTTOU)
            wait_until(lambda: len(worker_pids(gw.pid)) <= target, 40, 0.05, f"{target} worker processes")
        wait_until(settled([gw], 2), 30, 0.1, "2 workers settled")
        run.facts["scale_down_settled_s"] = round(time.monotonic() - t, 2)
        lg.mark("2 workers", phase="2 workers again")
        _hold(STEADY_S)
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _finish(sc, lg, [gw])
    return run


# -- (b) a second instance joins the group, then stops gracefully ----------------------------------------------
def scenario_second_instance(lab: Lab, clients: int = 50) -> Run:
    run = Run("second-instance", "a 2nd gunicorn (same group) joins, takes half the clients, is drained and "
              "stopped with SIGTERM")
    sc = _Scenario(run, clients, lab)
    config = lab.config()
    gw1 = lab.gateway(config, workers=2)
    gw2: GunicornGateway | None = None
    lg: LoadGenerator | None = None
    try:
        wait_serving(gw1)
        sc.count_before(gw1)
        lg = LoadGenerator(gw1.url, clients=clients, phase="1 instance").start()
        lg.mark("load")
        _hold(STEADY_S)
        t = lg.mark("2nd instance starts", phase="2nd joining")
        gw2 = lab.gateway(config, workers=2)
        sc.count_before(gw2)
        wait_until(settled([gw1, gw2], 4), 60, 0.1, "2 instances x 2 workers settled")
        run.facts["join_settled_s"] = round(time.monotonic() - t, 2)
        lg.set_targets([gw1.url, gw2.url])
        lg.mark("half the clients on the 2nd", phase="2 instances")
        _hold(STEADY_S)
        # drain like a load balancer: route everybody to gw1, then stop gw2 while it still holds requests
        lg.set_targets([gw1.url])
        lg.mark("2nd drained", phase="2nd stopping")
        gw2_workers = worker_pids(gw2.pid)

        def gw2_requests_accepted() -> bool:
            mine = [f for f in lg.in_flight() if f[1] == gw2.url]
            if any(state != "sent" for *_, state in mine):
                return False
            held = set().union(*(held_client_ports(p, gw2.port) for p in gw2_workers))
            return all(port in held for _, _, _, port, _ in mine)

        # SIGTERM closes gw2's listening socket: a connection the kernel completed but no worker accepted yet
        # would be reset. No new request goes to gw2 now; wait until each one routed there is accepted by one of
        # its workers (the set can only shrink from here on).
        wait_until(gw2_requests_accepted, 10, 0.001, "gw2's requests accepted by its workers")
        held = [f for f in lg.in_flight() if f[1] == gw2.url]
        t = lg.mark("SIGTERM 2nd")
        run.facts["in_flight_on_2nd_at_sigterm"] = len(held)
        gw2.signal(signal.SIGTERM)
        wait_until(lambda: not gw2.alive(), 40, 0.05, "2nd instance exited")
        run.facts["2nd_stop_s"] = round(time.monotonic() - t, 2)
        run.facts["2nd_exit_code"] = gw2.proc.returncode
        wait_until(settled([gw1], 2), 30, 0.1, "1 instance settled")
        run.facts["leave_settled_s"] = round(time.monotonic() - t, 2)
        lg.mark("1 instance", phase="1 instance again")
        _hold(STEADY_S)
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _finish(sc, lg, [gw1] + ([gw2] if gw2 else []))
    return run


# -- (c) rolling HUP -------------------------------------------------------------------------------------------
def scenario_hup(lab: Lab, clients: int = 50) -> Run:
    run = Run("hup", "SIGHUP: gunicorn starts 2 new workers, then stops the 2 old ones gracefully")
    sc = _Scenario(run, clients, lab)
    gw = lab.gateway(lab.config(), workers=2)
    lg: LoadGenerator | None = None
    try:
        wait_serving(gw)
        sc.count_before(gw)
        lg = LoadGenerator(gw.url, clients=clients, phase="before").start()
        lg.mark("load")
        _hold(STEADY_S)
        old = worker_pids(gw.pid)
        t = lg.mark("HUP", phase="reloading")
        gw.signal(signal.SIGHUP)
        wait_until(lambda: not (worker_pids(gw.pid) & old), 60, 0.05, "old workers gone")
        wait_until(settled([gw], 2), 30, 0.1, "2 new workers settled")
        run.facts["reload_settled_s"] = round(time.monotonic() - t, 2)
        run.facts["workers"] = f"{sorted(old)} -> {sorted(worker_pids(gw.pid))}"
        lg.mark("after", phase="after")
        _hold(STEADY_S)
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _finish(sc, lg, [gw])
    return run


# -- (d) kill -9 one worker ------------------------------------------------------------------------------------
def scenario_kill9(lab: Lab, clients: int = 50) -> Run:
    """The victim is frozen (SIGSTOP) while the client ports of the connections it holds are read from /proc,
    then killed: ``facts['held_ports']`` is exactly the set of requests the killed worker held."""
    run = Run("kill9", "SIGKILL one of 2 workers; gunicorn replaces it")
    sc = _Scenario(run, clients, lab)
    gw = lab.gateway(lab.config(), workers=2)
    lg: LoadGenerator | None = None
    try:
        wait_serving(gw)
        sc.count_before(gw)
        lg = LoadGenerator(gw.url, clients=clients, phase="before").start()
        lg.mark("load")
        _hold(STEADY_S)
        victim = min(worker_pids(gw.pid))
        os.kill(victim, signal.SIGSTOP)
        try:
            held = held_client_ports(victim, gw.port)
            in_flight = lg.in_flight()
        finally:
            t_kill = lg.mark("SIGKILL", phase="after kill")
            os.kill(victim, signal.SIGKILL)
        run.facts.update(victim=victim, held_ports=held, held_by_victim=len(held), in_flight_at_kill=len(in_flight),
                         t_kill=t_kill)
        wait_until(lambda: victim not in worker_pids(gw.pid) and len(worker_pids(gw.pid)) == 2, 30, 0.05,
                   "victim replaced")
        wait_until(settled([gw], 2), 30, 0.1, "2 workers settled")
        run.facts["replaced_settled_s"] = round(time.monotonic() - t_kill, 2)
        lg.mark("after", phase="after")
        _hold(STEADY_S)
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _finish(sc, lg, [gw])
    return run


# -- (e) broker stop / restart on the same port ----------------------------------------------------------------
def scenario_broker_restart(lab: Lab, clients: int = 50, outage_s: float = 3.0, recover_within_s: float = 60
                            ) -> Run:
    """*lab* must be a Lab of its own (the broker comes back EMPTY)."""
    run = Run("broker-restart", f"broker stopped for ~{outage_s:.0f} s, restarted EMPTY on the same port")
    sc = _Scenario(run, clients, lab)
    gw = lab.gateway(lab.config(), workers=2)
    lg: LoadGenerator | None = None
    try:
        wait_serving(gw)
        pids = worker_pids(gw.pid)
        sc.count_before(gw)
        lg = LoadGenerator(gw.url, clients=clients, phase="before").start()
        lg.mark("load")
        _hold(STEADY_S)
        t_stop = lg.mark("broker stop", phase="outage, undetected")
        lab.broker.stop()
        wait_until(lambda: metric_value(gw.metrics(), "gateway_workers_ready") == 0, 15, 0.05,
                   "every worker reports the broker down")
        t_detect = lg.mark("all workers not ready", phase="outage")
        run.facts["detect_s"] = round(t_detect - t_stop, 2)
        _hold(outage_s)
        t_start = lg.mark("broker start", phase="broker back")
        lab.broker.start()
        run.facts["t_restart"] = t_start
        first_ok = lg.wait_ok(1, t_start, recover_within_s)
        run.facts["first_200_after_restart_s"] = round(first_ok - t_start, 2)
        # serving again = every client got a 200 after the restart
        all_ok = wait_until(lambda: _all_clients_ok_since(lg, t_start), recover_within_s, 0.05,
                            "every client served again")
        run.facts["all_clients_served_s"] = round(all_ok - t_start, 2)
        lg.mark("recovered", phase="recovered")
        _hold(STEADY_S)
        run.facts["worker_pids_unchanged"] = worker_pids(gw.pid) == pids
        run.facts["gunicorn_master_alive"] = gw.alive()
        echo = lab.services.get("echo")
        run.facts["echo_service_alive"] = echo.alive() if echo else None
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if not lab.broker.running:
            lab.broker.start()
        _finish(sc, lg, [gw])
    return run


def _all_clients_ok_since(lg: LoadGenerator, since: float) -> float | None:
    last_ok: dict[int, float] = {}
    for r in list(lg.results):
        if r.start >= since and r.outcome == OK:
            last_ok.setdefault(r.client, r.end)
    if len(last_ok) < lg.clients:
        return None
    return max(last_ok.values())


# -- (f) a slow service, then a crash --------------------------------------------------------------------------
def scenario_slow_crash(lab: Lab, clients: int = 50, slow_ms: int = 1500) -> Run:
    """The faulty service answers, then sleeps *slow_ms* (> its 1000 ms timeout) per request: 504 at the deadline,
    each reply that still comes counts as late; then it is SIGKILLed in the middle of a request."""
    run = Run("slow-crash", f"service sleeps {slow_ms} ms (timeout {FAULTY_TIMEOUT_MS} ms), then is killed "
              "mid-request")
    sc = _Scenario(run, clients, lab)
    control = lab.workdir / f"faulty-{time.monotonic_ns()}.json"
    busy = control.with_name(control.name + ".busy")
    lab.ensure_topics({"faulty.requests": 1})
    svc = lab.start_service(f"faulty-{control.stem}", "gateway.faulty_service", FAULTY_CONTROL=str(control))
    gw = lab.gateway(lab.config({"faulty": FAULTY}), workers=2)
    lg: LoadGenerator | None = None
    try:
        wait_serving(gw, "/faulty")
        sc.count_before(gw)
        lg = LoadGenerator(gw.url, clients=clients, prefix="/faulty/lg", phase="fast").start()
        lg.mark("load")
        _hold(STEADY_S)
        control.write_text(json.dumps({"delay_ms": slow_ms}))
        t_slow = lg.mark("slow", phase="slow")
        wait_until(lambda: reply_counts(dir_metrics(gw))["late"] - sc.before[str(gw.metrics_dir)]["late"] >= 1,
                   15, 0.05, "a late reply counted")
        run.facts["first_late_after_s"] = round(time.monotonic() - t_slow, 2)
        _hold(STEADY_S)
        wait_until(busy.exists, 10, 0.005, "the service in the middle of a request")
        t_crash = lg.mark("SIGKILL service", phase="crashed")
        os.kill(svc.pid, signal.SIGKILL)
        run.facts["t_crash"] = t_crash
        _hold(FAULTY_TIMEOUT_MS / 1000 + 1)
        lg.stop()
        wait_until(lambda: metric_value(gw.metrics(), "gateway_in_flight") == 0, FAULTY_TIMEOUT_MS / 1000 + 5,
                   0.05, "in-flight back to 0")
        run.facts["in_flight_zero_after_crash_s"] = round(time.monotonic() - t_crash, 2)
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _finish(sc, lg, [gw])
        svc.stop(5)
    return run


def _finish(sc: _Scenario, lg: LoadGenerator | None, gws: list[GunicornGateway]) -> None:
    try:
        if lg is not None:
            if not lg.stopped:
                lg.stop()
            sc.run.results = list(lg.results)
            sc.run.events = list(lg.events)
            sc.run.facts.setdefault("refused_connects_retried", lg.refused)
            sc.diagnose(lg, gws)
    finally:
        for gw in gws:
            gw.stop()
        try:
            sc.count_after(*gws)
        except Exception as exc:  # noqa: BLE001
            sc.run.facts["reply_counts_error"] = repr(exc)


# -- the table -------------------------------------------------------------------------------------------------
SCENARIOS: dict[str, tuple[str, Callable[..., Run]]] = {
    "scale": ("(a) scale 2→4→2 workers (TTIN/TTOU)", scenario_scale),
    "second": ("(b) 2nd instance joins, stops gracefully", scenario_second_instance),
    "hup": ("(c) rolling reload (HUP)", scenario_hup),
    "kill9": ("(d) kill -9 one worker", scenario_kill9),
    "broker": ("(e) broker stop + restart (empty)", scenario_broker_restart),
    "slow": ("(f) service slow, then killed", scenario_slow_crash),
}


def note(key: str, run: Run) -> str:
    f = run.facts
    if run.error:
        return f"ERROR {run.error}"
    if key == "kill9":
        return f"killed worker held {f.get('held_by_victim')} requests; back to 2 settled in " \
               f"{f.get('replaced_settled_s')} s"
    if key == "broker":
        outage = [r for r in run.phase("outage")]
        worst = max((r.latency for r in outage), default=0) * 1000
        return (f"detected in {f.get('detect_s')} s; {len(outage)} requests during the outage, slowest "
                f"{worst:.0f} ms ({_codes(outage)}); first 200 {f.get('first_200_after_restart_s')} s, every "
                f"client {f.get('all_clients_served_s')} s after the restart")
    if key == "slow":
        return f"failures: {_codes(run.failed())}; in-flight 0 {f.get('in_flight_zero_after_crash_s')} s after the kill"
    if key == "second":
        return f"{f.get('in_flight_on_2nd_at_sigterm')} requests in flight on the 2nd at SIGTERM, all answered" \
            if not run.failed() else f"failures: {_codes(run.failed())}"
    if key == "scale":
        return f"settled: up {f.get('scale_up_settled_s')} s, down {f.get('scale_down_settled_s')} s"
    if key == "hup":
        return f"new workers settled in {f.get('reload_settled_s')} s"
    return ""


def _codes(results: list[Result]) -> str:
    from collections import Counter
    c = Counter(f"{r.status or 'conn'} {r.error}".strip() for r in results if r.outcome != OK)
    return ", ".join(f"{n}× {k}" for k, n in c.most_common()) or "none"


def table(rows: list[tuple[str, str, Run]]) -> str:
    out = ["| scenario | requests | ok | failed | mismatched | p99 ms | late | foreign | duplicate | notes |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for key, label, run in rows:
        s = summarize(run.results)
        r = run.replies
        out.append(f"| {label} | {s.requests} | {s.ok} | {s.failed} | {s.mismatched} | {s.p99_ms:.0f} | "
                   f"{r.get('late', '-')} | {r.get('foreign', '-')} | {r.get('duplicate', '-')} | {note(key, run)} |")
    return "\n".join(out)


def run_all(keys: list[str], clients: int = 50, verbose: bool = True) -> list[tuple[str, str, Run]]:
    rows = []
    shared: Lab | None = None
    try:
        for key in keys:
            label, fn = SCENARIOS[key]
            started = time.monotonic()
            if key == "broker":
                lab_cm: Any = Lab()
                lab = lab_cm.__enter__()
            else:
                if shared is None:
                    shared = Lab().__enter__()
                lab, lab_cm = shared, None
            run = Run(key, label)
            try:
                run = fn(lab, clients=clients)
            except Exception as exc:  # noqa: BLE001 - a failed scenario is a row, not the end of the table
                run.error = run.error or f"{type(exc).__name__}: {exc}"
                if verbose:
                    traceback.print_exc()
            finally:
                if lab_cm is not None:
                    lab_cm.__exit__(None, None, None)
            if verbose:
                print(run.report(), f"\n  ({time.monotonic() - started:.0f} s, logs in {lab.log_dir})\n",
                      file=sys.stderr, flush=True)
            rows.append((key, label, run))
    finally:
        if shared is not None:
            shared.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"which ones (default: all): {', '.join(SCENARIOS)}")
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args(argv)
    unknown = [k for k in args.scenarios if k not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    keys = args.scenarios or list(SCENARIOS)
    rows = run_all(keys, args.clients)
    print(table(rows))
    return 1 if any(run.error for *_, run in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
