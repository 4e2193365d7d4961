"""The group-less reader (:class:`forestream.edge.interface.PartitionReader`) against a real
broker, on
both clients: every offset asked for is handed out exactly once, whatever seeks came before.

Replay, the model follower, the labels reader, the monitor and the demo all read through it,
so a record handed out twice here is a prediction written twice there.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer, partition_reader
from forestream.edge.interface import InputRecord, PartitionReader, TopicPartition
from tests.kafka_helpers import on_client
from tests.waiting import wait_until

PARTITIONS = 4
PER_PARTITION = 2_500
BASE_MS = 1_700_000_000_000
STEP_MS = 10


def _fill(bootstrap: str, topic: str) -> None:
    """Record i of partition p has timestamp BASE_MS + i * STEP_MS and key p:i."""
    # 2023 times: kept forever, or the broker's 7-day retention deletes them at its next check
    ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS, {"retention.ms": "-1"})])
    producer = make_producer(bootstrap)
    for i in range(PER_PARTITION):
        for p in range(PARTITIONS):
            producer.send(
                topic,
                key=f"{p}:{i}".encode(),
                value=b"x" * 200,
                partition=p,
                timestamp_ms=BASE_MS + i * STEP_MS,
            )
    producer.flush(timeout=60)
    producer.close()


def _reader(bootstrap: str, kafka_client: str, client_id: str) -> PartitionReader:
    """On the client under test, and checked to be."""
    reader = partition_reader(on_client(bootstrap, kafka_client), client_id=client_id)
    expected = "ConfluentReader" if kafka_client == "confluent" else "KafkaPythonReader"
    assert type(reader).__name__ == expected
    return reader


def _read_until(
    reader: PartitionReader,
    done: Callable[[list[InputRecord]], bool],
    what: str,
    timeout_s: float = 30.0,
    max_records: int = 500,
) -> list[InputRecord]:
    records: list[InputRecord] = []
    deadline = time.monotonic() + timeout_s
    while not done(records):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: read {len(records)} records in {timeout_s:.0f}s")
        records.extend(reader.poll_batch(max_records, 0.2))
    return records


def _offsets(records: list[InputRecord]) -> Counter[tuple[int, int]]:
    return Counter((r.partition, r.offset) for r in records)


def test_a_replay_by_time_reads_each_record_once_twenty_times_over(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_client: str
) -> None:
    """What replay does: offsets for the start time, assign, seek each partition, read to the
    end time; twenty fresh readers in a row, each reading the window exactly once."""
    topic = topic_name("in")
    _fill(kafka_bootstrap, topic)
    first, end = 700, 1_900
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    for run in range(20):
        reader = _reader(kafka_bootstrap, kafka_client, f"test-reader-{run}")
        try:
            start = reader.offsets_for_times(tps, BASE_MS + first * STEP_MS)
            stop = reader.offsets_for_times(tps, BASE_MS + end * STEP_MS)
            assert start == {tp: first for tp in tps}, f"run {run}: start {start}"
            assert stop == {tp: end for tp in tps}, f"run {run}: stop {stop}"
            reader.assign(tps)
            for tp in tps:
                reader.seek(tp, first)
            records = _read_until(
                reader,
                lambda rs, r=reader: all(r.position(tp) >= end for tp in tps),
                f"run {run}",
            )
            inside = [r for r in records if r.offset < end]
            counts = _offsets(inside)
            twice = sorted(k for k, n in counts.items() if n > 1)
            assert not twice, f"run {run}: {len(twice)} offsets handed out twice, e.g. {twice[:5]}"
            assert sorted(counts) == [(p, o) for p in range(PARTITIONS) for o in range(first, end)]
            assert {r.key for r in inside} == {
                f"{p}:{i}".encode() for p in range(PARTITIONS) for i in range(first, end)
            }
        finally:
            reader.close()
        assert getattr(reader, "stale_dropped", 0) == 0, f"run {run}: stale records came back"


def test_seeks_after_reading_drop_what_was_fetched_for_the_old_position(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_client: str
) -> None:
    """The client prefetches far ahead of what it hands out: after a seek back or forward,
    the next records start exactly at the seek, never with leftovers of the old position."""
    topic = topic_name("in")
    _fill(kafka_bootstrap, topic)
    tp = TopicPartition(topic, 1)
    reader = _reader(kafka_bootstrap, kafka_client, "test-reader-seeks")
    try:
        reader.assign([tp])
        reader.seek_to_beginning([tp])
        assert reader.position(tp) == 0
        head = _read_until(reader, lambda rs: len(rs) >= 1_000, "from the beginning", 30, 100)
        assert [r.offset for r in head] == list(range(len(head)))
        for target in (100, 2_000, 5, 2_499):
            reader.seek(tp, target)
            assert reader.position(tp) == target
            want = min(50, PER_PARTITION - target)
            got = _read_until(reader, lambda rs, w=want: len(rs) >= w, f"after seek {target}")
            assert [r.offset for r in got][:want] == list(range(target, target + want)), (
                f"after a seek to {target}: {[r.offset for r in got][:10]}"
            )
        reader.seek_to_end([tp])
        assert reader.position(tp) == PER_PARTITION
        assert reader.poll_batch(100, 0.5) == []
    finally:
        reader.close()
    assert getattr(reader, "stale_dropped", 0) == 0


def test_assigning_more_partitions_keeps_the_positions_of_those_already_read(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_client: str
) -> None:
    """The demo and the labels reader widen their assignment as topics appear."""
    topic = topic_name("in")
    _fill(kafka_bootstrap, topic)
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    reader = _reader(kafka_bootstrap, kafka_client, "test-reader-widen")
    try:
        reader.assign([p0])
        reader.seek(p0, 2_000)
        first = _read_until(reader, lambda rs: len(rs) >= 100, "partition 0", 30, 100)
        reader.assign([p0, p1])
        reader.seek_to_end([p1])
        rest = _read_until(
            reader, lambda rs: reader.position(p0) >= PER_PARTITION, "the rest of partition 0"
        )
        assert [r.offset for r in first + rest] == list(range(2_000, PER_PARTITION))
        assert {r.partition for r in rest} == {0}, "partition 1 was sought to its end"
        assert reader.position(p1) == PER_PARTITION
    finally:
        reader.close()


def test_offsets_metadata_and_pause(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_client: str
) -> None:
    topic = topic_name("in")
    _fill(kafka_bootstrap, topic)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    reader = _reader(kafka_bootstrap, kafka_client, "test-reader-meta")
    try:
        assert topic in reader.topics()
        assert reader.partitions(topic) == set(range(PARTITIONS))
        assert reader.partitions(topic_name("absent")) == set()
        assert reader.beginning_offsets(tps) == {tp: 0 for tp in tps}
        assert reader.end_offsets(tps) == {tp: PER_PARTITION for tp in tps}
        past = BASE_MS + PER_PARTITION * STEP_MS + 1
        assert reader.offsets_for_times(tps, past) == {tp: None for tp in tps}
        reader.assign(tps)
        reader.seek_to_beginning(tps)
        reader.pause(tps[1:])
        records = _read_until(
            reader, lambda rs: reader.position(tps[0]) >= PER_PARTITION, "partition 0"
        )
        assert {r.partition for r in records} == {0}, "paused partitions were read"
        assert len(records) == PER_PARTITION
    finally:
        reader.close()


def _ten_records_in_a_transaction(
    bootstrap: str, topic_name: Callable[[str], str]
) -> TopicPartition:
    """A one-partition topic holding offsets 0-9 and the commit marker at 10 (written through
    librdkafka, an outside producer)."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    topic = topic_name("tx")
    ensure_topics(bootstrap, [TopicSpec(topic, 1)])
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"{topic}-tx"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, b"x", f"k{i}".encode())
    producer.commit_transaction(30)
    tp = TopicPartition(topic, 0)
    # the coordinator writes the commit marker after it answers: await it, or the last stable
    # offset can still be 0 (seen on a loaded machine)
    reader = _reader(bootstrap, "kafka-python", "test-reader-marker-written")
    try:
        wait_until(
            lambda: reader.end_offsets([tp])[tp] == 11,
            "the commit marker at offset 10 (end offset 11)",
            seen=lambda: reader.end_offsets([tp]),
        )
    finally:
        reader.close()
    return tp


def test_position_steps_over_transaction_markers(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_client: str
) -> None:
    """A committed transaction ends with a marker no record carries: the position still
    reaches the end offset, so a replay whose range ends on a marker finishes."""
    tp = _ten_records_in_a_transaction(kafka_bootstrap, topic_name)
    reader = _reader(kafka_bootstrap, kafka_client, "test-reader-tx")
    try:
        end = reader.end_offsets([tp])[tp]
        assert end == 11, "ten records and the commit marker"
        reader.assign([tp])
        reader.seek(tp, 0)
        records = _read_until(reader, lambda rs: reader.position(tp) >= end, "to the marker")
        assert [r.offset for r in records] == list(range(10))
    finally:
        reader.close()


def test_position_steps_over_a_marker_sought_to_directly(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_client: str
) -> None:
    """A replay resumed just before a commit marker has no record left to read: its position
    must still reach the end (else the replay never finishes); and a seek back after that
    must not keep the position of the marker."""
    tp = _ten_records_in_a_transaction(kafka_bootstrap, topic_name)
    reader = _reader(kafka_bootstrap, kafka_client, "test-reader-marker")
    try:
        end = reader.end_offsets([tp])[tp]
        assert end == 11, "ten records and the commit marker"
        reader.assign([tp])
        reader.seek(tp, 10)
        records = _read_until(reader, lambda rs: reader.position(tp) >= end, "past the marker")
        assert records == []
        reader.seek(tp, 5)
        assert reader.position(tp) == 5
        records = _read_until(reader, lambda rs: reader.position(tp) >= end, "to the marker")
        assert [r.offset for r in records] == list(range(5, 10))
    finally:
        reader.close()
