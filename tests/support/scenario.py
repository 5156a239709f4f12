"""A scenario's plumbing: :class:`Run` (what one run measured), :class:`Scenario` (its gateways and load generator,
counters before and after, tracing of failed requests, cleanup). The scenarios themselves: ``scenarios.py``."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .harness import GunicornGateway
from .lab import ECHO, Lab, dir_metrics
from .loadgen import FAILED, FRESH, KEEPALIVE, MISMATCHED, OK, LoadGenerator, Result, summarize
from .metrics import OUTCOMES, reply_counts
from .tracing import produced_tokens, trace_records


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
    # failed requests whose request record is stored once and no reply record exists: the service never read it
    # (the embedded broker can hide a record from a tailing consumer, docs/broker.md; not the gateway's loss)
    unread_by_service: list[str] = field(default_factory=list)

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
        if self.unread_by_service:
            lines.append(f"  never read by the service (stored once, no reply record): {self.unread_by_service}")
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
        self.run.unread_by_service = [
            r.correlation_id for r in failed if r.error == "reply_timeout"
            and len(records := found.get(r.correlation_id) or []) == 1 and " reply->" in records[0]]
        # what the gateway and the services said about it: a CI machine's logs are gone after the run
        self.facts["warnings_in_logs"] = _warnings(Path(self.run.log_dir))


def _warnings(log_dir: Path, most: int = 40) -> list[str]:
    """The last WARNING/ERROR lines of every log in *log_dir* (gateway workers, services), oldest first per file."""
    out: list[str] = []
    for path in sorted(log_dir.glob("*.log")):
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        hits = [line for line in lines if "WARNING" in line or "ERROR" in line or "Traceback" in line]
        out.extend(f"{path.name}: {line[:300]}" for line in hits[-most:])
    return out[-most * 3:]
