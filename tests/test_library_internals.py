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
