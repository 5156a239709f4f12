"""Fault injection under continuous load (50 clients, every request with a unique token checked against its reply).

Real gunicorn (gevent workers), real broker, the real echo service; the scenarios live in
``tests.support.scenarios`` (``python -m tests.support.faults`` prints the same runs as a table). Half the clients
keep their connection alive, half open a new one per request (the kill -9 scenario: fresh only). After each run the
request topic is read: every request's token must be on it exactly once (a stale keep-alive retry never produced a
second record). Each assertion message is the run's report: per-phase counts, reply-outcome counters, events, and
for failed requests where their records went.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.lab import Lab
from tests.support.loadgen import FRESH, KEEPALIVE, OK, percentile, summarize
from tests.support.scenario import Run
from tests.support.scenarios import (
    FAULTY_TIMEOUT_MS,
    held_results,
    scenario_broker_restart,
    scenario_hup,
    scenario_kill9,
    scenario_scale,
    scenario_second_instance,
    scenario_slow_crash,
)

CLIENTS = 50
# broker restart -> first 200 / every client and worker serving again. Measured: 6.3 s on a quiet machine; first
# 200 after 5.6-8.8 s, every worker 18.7-26.5 s at load average 11-25 (README, fault table)
FIRST_200_S, RECOVERED_S = 20.0, 30.0


def workdir() -> Path:
    """Logs outlive the test (pytest's tmp dirs rotate away quickly when several runs share a machine)."""
    return Path(tempfile.mkdtemp(prefix="gateway-faults-"))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A broker + the echo service for the scenarios that leave the broker alone."""
    with Lab(workdir()) as lab:
        yield lab


def assert_executed_once(run: Run) -> None:
    """Every answered request produced exactly once, none twice; no second reply for any request."""
    assert run.not_produced_once() == {}, run.report()
    assert run.replies["duplicate"] == 0, run.report()


def assert_nothing_lost(run: Run, *event_phases: str) -> None:
    s = summarize(run.results)
    assert s.requests >= 100, run.report()  # the load really ran
    assert s.styles[KEEPALIVE] >= 20 and s.styles[FRESH] >= 20, run.report()  # ... with both client styles
    for phase in event_phases:               # ... and through the event, not only around it
        assert run.phase(phase), f"no request started during {phase!r}\n{run.report()}"
    # a request whose record the service never read (stored once, no reply record at all; the gateway answered
    # 504 at its deadline) is the embedded broker hiding a record written concurrently from a tailing consumer
    # (docs/broker.md, `python -m bench.tailskip`: ~1 in 13,000 with two producers): one per run at most, and
    # only when the trace proves it; anything else failed is the gateway's
    unread = len(run.unread_by_service)
    assert unread <= 1 and (s.failed - unread, s.mismatched) == (0, 0), run.report()
    assert run.refusals == [], run.report()  # the listener never went away
    assert_executed_once(run)


def assert_converged(run: Run, *facts: str) -> None:
    """The reply group converged after each event: every partition owned once, nothing left draining."""
    for fact in facts:
        assert run.facts.get(fact) is not None, f"group did not converge ({fact})\n{run.report()}"


@pytest.mark.timeout(420)
def test_scale_2_to_4_to_2_workers_loses_nothing(lab: Lab) -> None:
    run = scenario_scale(lab, clients=CLIENTS)
    assert_nothing_lost(run, "scaling up", "4 workers", "scaling down")
    assert_converged(run, "up_settled_s", "down_settled_s")


@pytest.mark.timeout(420)
def test_second_instance_joins_and_stops_gracefully_loses_nothing(lab: Lab) -> None:
    run = scenario_second_instance(lab, clients=CLIENTS)
    assert_nothing_lost(run, "2nd joining", "2 instances", "2nd stopping")
    on_2nd = [r for r in run.results if r.target != run.results[0].target]
    assert len(on_2nd) >= 20, run.report()  # the 2nd instance really served
    # held_by_2nd_at_sigterm (in the report) says how many requests the 2nd held when SIGTERM came: usually some,
    # but on a loaded 2-core machine the drain can finish first; the HUP scenario always drains held requests.
    assert run.facts["2nd_exit_code"] == 0, run.report()
    assert_converged(run, "join_settled_s", "leave_settled_s")


@pytest.mark.timeout(300)
def test_rolling_hup_reload_loses_nothing(lab: Lab) -> None:
    run = scenario_hup(lab, clients=CLIENTS)
    assert_nothing_lost(run, "reloading")
    # the old workers held requests when their stop began (frozen until it was pending): the drain answered each
    held = held_results(run)
    assert len(held) >= 1 and len(held) == len(run.facts["held_at_hup"]), run.report()
    t_hup = next(t for t, name in run.events if name == "HUP")
    unserved = [r for r in held if not (r.outcome == OK and not r.stale_retry and r.end > t_hup)]
    assert unserved == [], f"held at the stop, not answered by the drain: {unserved}\n{run.report()}"
    assert_converged(run, "reload_settled_s")


@pytest.mark.timeout(300)
def test_kill9_fails_only_the_requests_the_killed_worker_held(lab: Lab) -> None:
    run = scenario_kill9(lab, clients=CLIENTS)
    held, t_kill = set(run.facts["held_ports"]), run.facts["t_kill"]
    assert not run.mismatched(), run.report()
    for r in run.failed():
        # a failed request was in flight at the kill, on a connection the killed worker had accepted, and got no
        # HTTP response at all (its connection died with the worker)
        assert r.start < t_kill and r.local_port in held and r.status is None, f"{r}\n{run.report()}"
    assert len(run.failed()) <= run.facts["held_by_victim"], run.report()
    after = [r for r in run.results if r.start > t_kill]
    assert len(after) >= 50 and all(r.outcome == OK for r in after), run.report()
    assert_executed_once(run)  # the killed worker's requests: produced at most once, the rest exactly once
    assert_converged(run, "replaced_settled_s")


@pytest.mark.timeout(300)
def test_broker_outage_fails_fast_and_recovers_without_restarts() -> None:
    with Lab(workdir()) as own_lab:  # the broker comes back EMPTY: nobody else may use it
        run = scenario_broker_restart(own_lab, clients=CLIENTS, outage_s=3.0, recover_within_s=60)
    report = run.report()
    assert not run.mismatched(), report
    t_stop = next(t for t, name in run.events if name == "broker stop")
    # steady state: every request answered before the broker went away was ok (one still in flight at the stop may
    # have been lost with the broker's data: a 504 at its deadline)
    done_before = [r for r in run.phase("before") if r.end < t_stop]
    assert len(done_before) >= 20 and all(r.outcome == OK for r in done_before), report
    outage = run.phase("outage")  # started after every worker reported the broker down, before the restart
    assert len(outage) >= 20, report
    for r in outage:  # fail fast: never the 2 s a blocked send may wait (kafka.max_block_ms), nor the 5 s deadline
        assert r.status == 503 and r.error in ("broker_unavailable", "not_ready"), f"{r}\n{report}"
        assert r.latency < 3.0, f"{r}\n{report}"  # bounds for a loaded 2-core CI machine
    assert percentile([r.latency for r in outage], 90) < 2.0, report  # most well under a second when not loaded
    # the topics the broker lost came back with their configured partition counts; the reply topic may have been
    # auto-created first by a service's reply (the embedded broker auto-creates with 4): then the workers adopted
    # its real partition count (keys minted for partitions that exist)
    back, configured = run.facts["topics_after_restart"], run.facts["topics_configured"]
    reply_topic = next(t for t in configured if t != "echo.requests")
    assert back["echo.requests"] == configured["echo.requests"], report
    assert back[reply_topic] == configured[reply_topic] or run.facts["reply_topic_adopted"], report
    assert run.facts["first_200_after_restart_s"] <= FIRST_200_S, report
    assert run.facts["all_clients_served_s"] <= RECOVERED_S, report
    assert run.facts["all_workers_ready_s"] <= RECOVERED_S, report
    recovered = run.phase("recovered")
    assert recovered and all(r.outcome == OK for r in recovered), report
    assert run.facts["worker_pids_unchanged"] and run.facts["gunicorn_master_alive"], report
    assert run.facts["echo_service_alive"], report
    # a reply that reached the broker before it stopped but whose acknowledgement died with it is sent again by
    # the service (at-least-once: gateway_sdk.runner); the gateway drops the second copy and counts it duplicate.
    # Seen in CI (2026-12-07, librdkafka leg, load average 6): 4 duplicates, all at the moment the echo service's
    # producer failed its batches (OutOfOrderSequenceNumber on the emptied broker) and re-sent them. Only then:
    assert run.replies["duplicate"] == 0 or run.facts["service_reply_batches_failed"] > 0, report


@pytest.mark.timeout(300)
def test_slow_then_crashed_service_is_504_at_the_deadline_and_leaves_nothing_pending(lab: Lab) -> None:
    run = scenario_slow_crash(lab, clients=CLIENTS)
    report = run.report()
    assert not run.mismatched(), report
    timeout_s = FAULTY_TIMEOUT_MS / 1000
    t_slow = next(t for t, name in run.events if name == "slow")
    fast = run.phase("fast")
    done_before = [r for r in fast if r.end < t_slow]
    assert len(done_before) >= 20 and all(r.outcome == OK for r in done_before), report
    # in flight at the switch: answered fast if the service got to it before the switch, else 504 like the rest
    degraded = run.phase("slow", "crashed") + [r for r in fast if r.end >= t_slow and r.outcome != OK]
    assert len(degraded) >= 50, report
    for r in degraded:
        assert r.status == 504 and r.error == "reply_timeout", f"{r}\n{report}"
        assert timeout_s - 0.05 <= r.latency <= timeout_s + 3.0, f"{r}\n{report}"  # at the deadline (+ load)
    # every reply that came for a request answered 504 was counted late (the scenario does not wait for the counter)
    assert run.facts["late_replies_on_topic"] >= 1, report
    assert run.replies["late"] == run.facts["late_replies_on_topic"], report
    assert_executed_once(run)
    assert run.facts["in_flight_zero_after_crash_s"] <= timeout_s + 10, report
