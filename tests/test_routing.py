"""The reply-key minting must agree with Kafka's default partitioner, or replies go to the wrong worker."""
from __future__ import annotations

import pytest
from kafka.partitioner.default import murmur2 as kafka_murmur2

from gateway.core.routing import ReplyRouter, mint_reply_key, murmur2, partition_for_key


@pytest.mark.parametrize("known,expected", [
    (b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829), (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107)])
def test_murmur2_java_reference_values(known, expected):
    # values from org.apache.kafka.common.utils.UtilsTest#testMurmur2
    assert murmur2(known) == expected


@pytest.mark.parametrize("n", range(1, 65))
def test_minted_key_lands_on_its_partition_for_every_count(n):
    for p in range(n):
        key = mint_reply_key(p, n)
        assert partition_for_key(key, n) == p
        assert (kafka_murmur2(key) & 0x7FFFFFFF) % n == p


def test_router_round_robins_owned_and_keeps_last_assignment():
    r = ReplyRouter(8)
    assert r.next() is None
    r.set_owned([5, 1])
    seen = {r.next()[0] for _ in range(4)}
    assert seen == {1, 5}
    p, key = r.next()
    assert partition_for_key(key, 8) == p


def test_mint_rejects_partition_out_of_range():
    with pytest.raises(ValueError):
        mint_reply_key(8, 8)


def test_router_resize_mints_for_the_new_count_and_drops_missing_partitions():
    r = ReplyRouter(16)
    r.set_owned([2, 9])
    r.resize(4)  # the reply topic came back with the broker's default count
    assert r.owned == (2,)
    p, key = r.next()
    assert p == 2 and partition_for_key(key, 4) == 2
