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

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``) as a signed 32-bit int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    n4 = length & ~3
    for i in range(0, n4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[n4 + 2] << 16
    if rest >= 2:
        h ^= data[n4 + 1] << 8
    if rest >= 1:
        h ^= data[n4]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
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
