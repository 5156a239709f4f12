"""Reply-partition ownership and reply-key minting.

A service may answer by partition (``kafka_replyPartition``) or by key alone (then Kafka's default partitioner
places the reply). Either way the reply must land on a partition that the waiting worker reads, so for each owned
partition we mint a key whose default-partitioner hash, ``(murmur2(key) & 0x7fffffff) % n`` as Java's clients
compute it, is that partition. Keys route, they do not authenticate (the correlation id does), so one key per
partition is minted once and reused.
"""
from __future__ import annotations

import itertools
from typing import Iterable


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``) as Java's signed 32-bit int.

    kafka-python's implementation, imported on first use rather than at module import: kafka must only be imported
    after gevent patched, and this module is imported with the app (in gunicorn's master too)."""
    from kafka.partitioner.default import murmur2 as kafka_murmur2

    h = kafka_murmur2(data)     # the unsigned form
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for *key*."""
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


def mint_reply_key(partition: int, num_partitions: int, prefix: bytes = b"gw-reply-") -> bytes:
    """The first key ``prefix + <partition> + '-' + <i>`` that hashes onto *partition*.

    Expected tries: ``num_partitions``; done once per partition and cached by :class:`ReplyRouter`.
    """
    if not 0 <= partition < num_partitions:
        raise ValueError(f"partition {partition} outside 0..{num_partitions - 1}")
    base = prefix + str(partition).encode() + b"-"
    for i in itertools.count():
        key = base + str(i).encode()
        if partition_for_key(key, num_partitions) == partition:
            return key
    raise AssertionError("unreachable")


class ReplyRouter:
    """Which reply partitions this worker may mint NEW reply keys for, and the key for each.

    The group assignment sets ``owned``; during a rebalance the last assignment stays in use (the reply reader
    keeps reading every partition that still has requests pending, so minting on it stays safe) and new requests
    are not held up for the rebalance's duration.
    """

    def __init__(self, num_partitions: int) -> None:
        self.num_partitions = num_partitions
        self._keys: dict[int, bytes] = {}
        self._owned: tuple[int, ...] = ()
        self._rr = itertools.count()

    @property
    def owned(self) -> tuple[int, ...]:
        return self._owned

    def set_owned(self, partitions: Iterable[int]) -> None:
        owned = tuple(sorted(p for p in partitions if 0 <= p < self.num_partitions))
        for p in owned:
            if p not in self._keys:
                self._keys[p] = mint_reply_key(p, self.num_partitions)
        self._owned = owned

    def resize(self, num_partitions: int) -> None:
        """The reply topic has another partition count than keys were minted for (re-created by hand, or
        auto-created by a broker with its default count): mint for the real count from now on."""
        self.num_partitions = num_partitions
        self._keys = {}
        self.set_owned(p for p in self._owned if p < num_partitions)

    def next(self) -> tuple[int, bytes] | None:
        """A (partition, reply key) pair, round-robin over owned partitions; None when this worker owns none."""
        owned = self._owned
        if not owned:
            return None
        p = owned[next(self._rr) % len(owned)]
        return p, self._keys[p]
