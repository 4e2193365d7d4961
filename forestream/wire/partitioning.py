"""Which partition a keyed record lands on: the Java client's rule, in pure Python.

kafka-python's default partitioner and librdkafka's ``murmur2_random`` (what
:mod:`forestream.edge.confluent` configures) both put a key on ``murmur2(key) & 0x7fffffff``
modulo the partition count, as the Java client does. A reader that must know in advance where a
key's records are (the registry reads a model name's newest event before writing the next)
computes it here, without importing either client.
"""

from __future__ import annotations

_MASK = 0xFFFFFFFF
_M = 0x5BD1E995
_SEED = 0x9747B28C


def murmur2(data: bytes) -> int:
    """MurmurHash2 as ``org.apache.kafka.common.utils.Utils.murmur2`` computes it (unsigned)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length % 4
    if extra >= 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for_key(key: bytes, partitions: int) -> int:
    """The index (among the topic's partitions, sorted) a keyed record goes to."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
