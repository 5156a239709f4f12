"""What a worker tells the broker and the clients over its life, seen on the wire: a broker of its own behind a
TCP proxy that reads the Kafka request frames (so the test sees a LeaveGroup, holds a Produce, or cuts the broker
off like a network partition would: new connections refused, open ones silent).

README claims checked here: a worker that the group gives no partition (more workers than reply partitions) logs
an error and reports not-ready; workers leave the group at a stop; requests whose record the broker had not
acknowledged fail at once (503) when the broker goes away.
"""
from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from gateway.broker import broker_binary, free_port, wait_for_port
from tests.support.harness import GunicornGateway, make_config, wait_until, write_config

LEAVE_GROUP, PRODUCE, JOIN_GROUP = 13, 0, 11


class _Link:
    """One proxied connection: client -> broker frames parsed (and maybe held), broker -> client bytes copied."""

    def __init__(self, proxy: KafkaProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.broker = socket.create_connection(proxy.upstream)
        self.blocked = False       # after a held Produce nothing more is forwarded (responses must stay in order)
        for target in (self._requests, self._responses):
            threading.Thread(target=target, daemon=True).start()

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.client.recv(n - len(data))
            if not chunk:
                raise ConnectionError
            data += chunk
        return data

    def _requests(self) -> None:
        try:
            while True:
                (size,) = struct.unpack(">i", self._read(4))
                frame = self._read(size)
                api_key = struct.unpack(">h", frame[:2])[0]
                self.proxy.seen.append((api_key, frame))
                if self.proxy.cut:
                    continue
                if api_key == PRODUCE and self.proxy.hold_produce:
                    self.blocked = True
                    self.proxy.held.append(frame)
                if not self.blocked:
                    self.broker.sendall(struct.pack(">i", size) + frame)
        except OSError:
            self.close()

    def _responses(self) -> None:
        try:
            while chunk := self.broker.recv(65536):
                if not self.proxy.cut:
                    self.client.sendall(chunk)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        for s in (self.client, self.broker):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class KafkaProxy:
    """A TCP proxy in front of a broker that the broker advertises, so every client connection goes through it."""

    def __init__(self, port: int, upstream: tuple[str, int]) -> None:
        self.port, self.upstream = port, upstream
        self.seen: list[tuple[int, bytes]] = []     # (api key, request frame) of every request, in order
        self.held: list[bytes] = []
        self.hold_produce = False
        self.cut = False
        self.links: list[_Link] = []
        self._listener: socket.socket | None = None
        self.listen()

    def listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.links.append(_Link(self, client))

    def requests_for(self, api_key: int, needle: bytes) -> int:
        return sum(1 for k, frame in list(self.seen) if k == api_key and needle in frame)

    def cut_off(self) -> None:
        """The broker is gone for the clients: new connections refused, open ones silent (nothing forwarded)."""
        self.cut = True
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def heal(self) -> None:
        self.cut, self.hold_produce = False, False
        links, self.links = self.links, []
        for link in links:
            link.close()                            # clients reconnect on fresh connections
        if self._listener is None:
            self.listen()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for link in self.links:
            link.close()


@pytest.fixture(scope="module")
def proxied_broker(log_dir: Path) -> Iterator[tuple[str, KafkaProxy]]:
    broker_port, proxy_port = free_port(), free_port()
    proxy = KafkaProxy(proxy_port, ("127.0.0.1", broker_port))
    with open(log_dir / "broker-proxied.log", "ab") as out:
        proc = subprocess.Popen([broker_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{broker_port}",
                                 "--advertised-listener-url", f"tcp://127.0.0.1:{proxy_port}",
                                 "--storage-engine", "memory://tansu/"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        assert wait_for_port("127.0.0.1", broker_port, 20), "the proxied broker did not start"
        yield f"127.0.0.1:{proxy_port}", proxy
    finally:
        proxy.close()
        proc.terminate()
        proc.wait(10)


def _config(bootstrap: str, tmp_path: Path, **sections: dict) -> tuple[dict, Path]:
    from gateway.config import parse_config
    from gateway.kafka.admin import ensure_topics, wanted_topics

    cfg = make_config(bootstrap, {"hold": {"topic": "hold.requests", "timeout_ms": 20000}}, **sections)
    parsed = parse_config(cfg)
    ensure_topics(parsed, wanted_topics(parsed))
    return cfg, write_config(tmp_path / "g.toml", cfg)


def _readyz_by_worker(gw: GunicornGateway, timeout_s: float = 10) -> dict[str, tuple[int, dict]]:
    seen: dict[str, tuple[int, dict]] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < gw.workers and time.monotonic() < deadline:
        r = requests.get(gw.url + "/readyz", headers={"Connection": "close"}, timeout=10)
        seen[r.headers["X-Gateway-Worker"]] = (r.status_code, r.json())
    return seen


def test_a_worker_without_a_reply_partition_is_not_ready_and_workers_leave_the_group_at_a_stop(
        proxied_broker, tmp_path, log_dir):
    """2 workers, 1 reply partition: the group gives one worker nothing; that worker says so in the log and
    /readyz answers 503 for it (once reply.startup_wait_ms has passed), 200 for the other. At the stop, the
    workers leave the group (a LeaveGroup request for the reply group reaches the broker)."""
    bootstrap, proxy = proxied_broker
    # leave_group_on_stop: the tests' default is off (the embedded broker mishandles a LeaveGroup during a
    # rebalance); here no rebalance runs at the stop, and leaving is what is checked
    cfg, path = _config(bootstrap, tmp_path, reply={"partitions": 1, "startup_wait_ms": 3000,
                                                     "leave_group_on_stop": True})
    group = cfg["reply"]["group_id"].encode()
    gw = GunicornGateway(path, bootstrap, log_dir, workers=2)
    try:
        gw.wait_ready(90, workers=1)

        def one_ready_one_not() -> bool:
            states = sorted((status, body["owned_partitions"]) for status, body in _readyz_by_worker(gw).values())
            return states == [(200, [0]), (503, [])] and "owns NO reply partition" in gw.log()

        wait_until(one_ready_one_not, 90, 0.2, "one worker ready with partition 0, the other not ready and logged")
        assert proxy.requests_for(LEAVE_GROUP, group) == 0
        # a member that joined and got nothing is settled, not stuck: the watchdog (which nudges after 3x the
        # session timeout) must not make it rejoin, or every nudge rebalances the whole group, again and again
        joins = proxy.requests_for(JOIN_GROUP, group)
        time.sleep(4 * cfg["kafka"]["session_timeout_ms"] / 1000)   # an observation window, not a synchronisation
        assert proxy.requests_for(JOIN_GROUP, group) == joins, "the settled group was made to rejoin"
        assert one_ready_one_not()
    finally:
        code = gw.stop()
    assert code == 0
    assert proxy.requests_for(LEAVE_GROUP, group) >= 1, "no worker left the reply group at the stop"


def test_requests_the_broker_had_not_acknowledged_fail_at_once_when_it_goes_away(proxied_broker, tmp_path, log_dir):
    """The request's record has left the worker (the proxy holds the Produce), then the broker becomes
    unreachable: the client gets 503 broker_unavailable within seconds, not after the producer's delivery timeout
    (20 s here) or the service's deadline (20 s)."""
    bootstrap, proxy = proxied_broker
    _, path = _config(bootstrap, tmp_path, kafka={"request_timeout_ms": 10000})
    gw = GunicornGateway(path, bootstrap, log_dir, workers=1)
    result: dict[str, requests.Response] = {}
    try:
        gw.wait_ready(60)
        token = b"token-%d" % time.monotonic_ns()
        proxy.hold_produce = True
        client = threading.Thread(target=lambda: result.update(r=requests.post(
            gw.url + "/hold/x", data=b'{"token": "%s"}' % token, headers={"Content-Type": "application/json"},
            timeout=60)))
        client.start()
        wait_until(lambda: any(token in frame for frame in proxy.held) or not client.is_alive(), 15, 0.02,
                   "the request's Produce held")
        assert "r" not in result, f"answered before its record reached the broker: {result['r'].text}"
        cut_at = time.monotonic()
        proxy.cut_off()
        client.join(60)
        answered_in = time.monotonic() - cut_at
        r = result["r"]
        assert r.status_code == 503 and r.json()["code"] == "broker_unavailable", r.text
        assert r.headers["Content-Type"] == "application/problem+json"
        assert answered_in < 8, f"answered {answered_in:.1f}s after the broker went away"
    finally:
        gw.stop()              # while the broker is away: the worker does not wait for it to say goodbye
        proxy.heal()


def test_workers_mint_on_and_read_only_reply_mint_partitions_of_those_they_own(proxied_broker, tmp_path, log_dir):
    """reply.mint_partitions = 1 of 8 reply partitions, 2 workers: each worker owns 4 and mints on, and reads, 1
    of them (a fetch reads fewer partitions); every request is answered, each worker's from a partition it owns."""
    from tests.support.harness import ServiceProcess

    bootstrap, _ = proxied_broker
    _, path = _config(bootstrap, tmp_path, reply={"partitions": 8, "mint_partitions": 1})
    svc = ServiceProcess("examples.echo", bootstrap, log_dir, ECHO_TOPIC="hold.requests",
                         SERVICE_GROUP_ID="mint-echo")
    gw = GunicornGateway(path, bootstrap, log_dir, workers=2)
    try:
        gw.wait_ready(90)

        def settled() -> dict[str, dict]:
            bodies = {w: body for w, (status, body) in _readyz_by_worker(gw).items() if status == 200}
            ok = len(bodies) == 2 and all(len(b["owned_partitions"]) == 4 and len(b["minting_partitions"]) == 1
                                          and b["read_partitions"] == b["minting_partitions"]
                                          and set(b["minting_partitions"]) <= set(b["owned_partitions"])
                                          for b in bodies.values())
            return bodies if ok else {}

        bodies = wait_until(settled, 90, 0.2, "each worker owning 4 partitions, minting on and reading 1")
        assert len({p for b in bodies.values() for p in b["owned_partitions"]}) == 8
        wait_until(lambda: requests.get(gw.url + "/hold/ping", timeout=10).status_code == 200, 60, 0.2,
                   "the echo service answering")
        statuses = [requests.get(gw.url + f"/hold/{i}", headers={"Connection": "close"}, timeout=30).status_code
                    for i in range(40)]
        assert statuses == [200] * 40
        assert settled(), "minting or reading spread beyond reply.mint_partitions"
    finally:
        gw.stop()
        svc.stop()
