"""The private attributes of libraries the gateway reaches into (gateway/kafka/internals.py, the lab's metric-file
reader): these fail when an upgrade removes or changes them."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway.kafka.internals import request_metadata_update, request_rejoin


@pytest.fixture
def consumer(broker: Any) -> Iterator[Any]:
    from kafka import KafkaConsumer

    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="internals-check")
    c.subscribe(["internals-check"])
    yield c
    c.close()


@pytest.mark.timeout(60)
def test_request_rejoin_reaches_the_coordinator(consumer: Any) -> None:
    coordinator = consumer._coordinator
    request_rejoin(consumer)
    assert coordinator.need_rejoin() is True


@pytest.mark.timeout(60)
def test_set_fetch_wait_changes_the_wait_the_fetcher_builds_its_next_requests_with(consumer: Any) -> None:
    import inspect

    from kafka.consumer.fetcher import Fetcher

    from gateway_sdk.clients import set_fetch_wait

    assert consumer._fetcher.config["fetch_max_wait_ms"] == 500
    set_fetch_wait(consumer, 7)
    assert consumer._fetcher.config["fetch_max_wait_ms"] == 7
    # read from that dict each time a fetch request is built (not copied once at start)
    assert "max_wait_ms=self.config['fetch_max_wait_ms']" in inspect.getsource(Fetcher)


@pytest.mark.timeout(60)
def test_request_metadata_update_marks_the_producer_metadata_stale(broker: Any) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    try:
        metadata = producer._metadata
        metadata._need_update = False
        request_metadata_update(producer)
        assert metadata._need_update is True
    finally:
        producer.close(timeout=1)


def test_prometheus_multiprocess_files_can_be_read_back(tmp_path: Any) -> None:
    """The fault lab reads per-worker gauges straight from the multiprocess files
    (``prometheus_client.mmap_dict.MmapedDict.read_all_values_from_file``, not public API)."""
    from prometheus_client.mmap_dict import MmapedDict

    path = tmp_path / "gauge_livesum_123.db"
    d = MmapedDict(str(path))
    d.write_value('["gateway_in_flight", "gateway_in_flight", {}, {}]', 3.0, 0.0)
    d.close()
    values = list(MmapedDict.read_all_values_from_file(str(path)))
    assert [(key, value) for key, value, *_ in values] == [('["gateway_in_flight", "gateway_in_flight", {}, {}]',
                                                            3.0)]


def test_the_replaced_kafka_python_write_task_is_the_one_write_first_was_written_against() -> None:
    import inspect

    from kafka.net.transport import KafkaTCPTransport

    from gateway.kafka.internals import ORIGINAL_WRITE_TO_SOCK, write_first

    write_first()
    write_first()   # idempotent: the original is kept once
    method = KafkaTCPTransport._write_to_sock
    original = method.gateway_original
    assert getattr(original, "gateway_original", None) is None
    assert inspect.getsource(original) == ORIGINAL_WRITE_TO_SOCK, \
        "kafka-python changed KafkaTCPTransport._write_to_sock: review gateway.kafka.internals.write_first"


class _Kernel:
    """The socket and the selector a transport writes through: the kernel takes at most *take* bytes per send and
    refuses (EAGAIN) every other call when *refuse* is set."""

    def __init__(self, take: int, refuse: bool) -> None:
        self.take, self.refuse, self.sent, self.calls = take, refuse, bytearray(), 0

    def send(self, data: memoryview) -> int:
        self.calls += 1
        if self.refuse and self.calls % 2 == 0:
            raise BlockingIOError
        n = min(self.take, len(data))
        self.sent += bytes(data[:n])
        return n

    def wait_write(self, sock: object) -> object:
        from kafka.net.selector import KernelEvent

        return KernelEvent("_wait_write", sock)


@pytest.mark.parametrize("take, refuse", [(1 << 20, False), (7, False), (5, True)])
def test_write_first_sends_before_waiting_and_waits_only_for_what_the_kernel_left(take: int, refuse: bool) -> None:
    from kafka.net.transport import KafkaTCPTransport

    from gateway.kafka.internals import write_first

    write_first()
    kernel = _Kernel(take, refuse)
    transport = KafkaTCPTransport(kernel, kernel)
    chunks = [b"request-one:" * 3, b"request-two", b"x" * 50]
    transport._write_buffer.extend(chunks)
    transport._writing = True
    task = transport._write_to_sock()
    waits = 0
    try:
        while True:
            event = task.send(None)          # the coroutine yields only to wait for writability
            assert event.method == "_wait_write"
            waits += 1
    except StopIteration:
        pass
    assert bytes(kernel.sent) == b"".join(chunks)
    assert transport._writing is False and not transport._write_buffer
    if refuse:
        assert waits >= 1                     # the kernel refused: wait for writability, then the rest, in order
    else:
        assert waits == 0                     # the kernel took it all (in pieces too): no turn of the selector
