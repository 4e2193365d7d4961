"""Where a keyed record lands, computed without a client, as kafka-python (and the Java client,
and librdkafka's ``murmur2_random``) put it: the registry reads that partition before writing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from forestream.wire.partitioning import murmur2, partition_for_key


@given(st.binary(max_size=64))
def test_murmur2_is_kafka_pythons(data: bytes) -> None:
    assert murmur2(data) == kafka_python_murmur2(data)


@given(st.binary(min_size=1, max_size=32), st.integers(min_value=1, max_value=64))
def test_a_key_goes_where_kafka_pythons_default_partitioner_sends_it(
    key: bytes, partitions: int
) -> None:
    assert partition_for_key(key, partitions) == (kafka_python_murmur2(key) & 0x7FFFFFFF) % (
        partitions
    )


def test_java_client_reference_values() -> None:
    """From the Java client's own tests (``UtilsTest.testMurmur2``), as signed 32-bit ints."""
    expected = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, signed in expected.items():
        assert murmur2(data) == signed & 0xFFFFFFFF, data
