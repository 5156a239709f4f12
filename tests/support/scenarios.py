"""The fault scenarios behind ``tests/test_faults.py`` and the fault table (``python -m tests.support.faults``).

Each scenario starts a fresh gunicorn (real gevent workers, real broker, the echo example service), drives
``tests.support.loadgen`` (50 clients, a unique token per request; half keep-alive, half a new connection per
request; a third resting 0.5 s after each answer, the rest flat out) through one event, and returns a :class:`Run`:
every request the clients made (with its phase), the connections refused, how many times each request's token is
on the request topic (read after the run: a stale keep-alive retry must never have produced a second record), the
gateway's reply-outcome counters over the run (``gateway_replies_total``: late, foreign, duplicate), when the reply
group converged after each event, and the facts the assertions need (which requests a killed worker or the workers
stopped by a HUP held, when the broker was back, ...). Nothing here asserts: the tests do; the CLI prints.
"""
from __future__ import annotations

import json
import operator
import os
import signal
import time
from typing import Callable

from .harness import GunicornGateway, metric_value, wait_until
from .lab import REPLY_PARTITIONS, Lab, settle, wait_serving, wait_workers_ready
from .loadgen import FRESH, OK, LoadGenerator, Result
from .procs import cpu_seconds, held_client_ports, signal_pending, worker_pids
from .scenario import Run, Scenario
from .tracing import topic_partitions, trace_records

FAULTY_TIMEOUT_MS = 2000
FAULTY = {"topic": "faulty.requests", "methods": ["GET", "POST"], "content_types": ["*/*"],
          "timeout_ms": FAULTY_TIMEOUT_MS, "partitions": 1}
STEADY_S = 2.0      # load window before and after each event


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
            # held: written whole to a connection an old worker accepted, and still unanswered now that its stop is
            # pending (a response written just before the freeze reaches its client during the freeze: not held)
            still = {(c, start) for c, _, start, _, state in lg.in_flight() if state == "sent"}
            sc.facts["held_at_hup"] = sorted(key for key, port in flying.items() if port in ports and key in still)
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
        cpu0 = sum(map(cpu_seconds, pids))
        _hold(outage_s)
        sc.facts["worker_cpu_during_outage"] = f"{(sum(map(cpu_seconds, pids)) - cpu0) / outage_s:.2f} cores"
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
        # reply batches the service's producer saw fail (each of their replies is sent again: gateway_sdk.runner)
        sc.facts["service_reply_batches_failed"] = lab.services["echo"].log().count("Failed to produce messages")
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
        svc = lab.start_service(control.stem, "tests.support.faulty_service", FAULTY_CONTROL=str(control))
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

