"""The group member of the Kafka edge (:class:`forestream.edge.interface.GroupConsumer`) against a
real
broker, on both clients: commits report back with exactly the offsets sent, and records that
arrive while a commit is awaited are handed out later, in order, none twice and none skipped.

librdkafka's adapter awaits a commit by reading on (its report comes through the same queue as
the records), so this is where a record could go missing between the commit and the next poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from forestream.edge.factory import TopicSpec, ensure_topics, group_consumer, make_producer
from forestream.edge.interface import (
    WORKER_FETCH_PARTITION_BYTES,
    GroupConsumer,
    InputRecord,
    TopicPartition,
)
from tests.kafka_helpers import on_client

RECORDS = 3_000


class Membership:
    """What the consumer told its :class:`~forestream.edge.interface.RebalanceHandler`."""

    def __init__(self) -> None:
        self.assigned: set[TopicPartition] = set()
        self.committed: list[dict[TopicPartition, int]] = []

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        self.assigned.update(partitions)

    def on_revoking(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {}

    def revocation_commit_timeout_s(self) -> float:
        return 5.0

    def on_committed(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(offsets)

    def on_released(self, partitions: list[TopicPartition], lost: bool) -> None:
        self.assigned.difference_update(partitions)


def subscribed(
    bootstrap: str,
    client: str,
    topic_name: Callable[[str], str],
    records: int,
    max_poll_records: int,
    membership: Membership,
) -> tuple[GroupConsumer, str]:
    """A group member of a new one-partition topic that holds ``records`` keyed records."""
    topic = topic_name("in")
    ensure_topics(bootstrap, [TopicSpec(topic, 1)])
    producer = make_producer(bootstrap, linger_ms=20)
    for i in range(records):
        producer.send(topic, key=str(i).encode(), value=b"v" * 100)
    producer.flush(timeout=60)
    producer.close()
    consumer = group_consumer(
        on_client(bootstrap, client),
        group=topic_name("group"),
        client_id="edge-test",
        max_poll_records=max_poll_records,
        session_timeout_ms=10_000,
    )
    consumer.subscribe(topic, membership)
    return consumer, topic


@pytest.fixture
def member(
    kafka_bootstrap: str, kafka_client: str, topic_name: Callable[[str], str]
) -> Iterator[tuple[GroupConsumer, Membership, str]]:
    membership = Membership()
    consumer, topic = subscribed(
        kafka_bootstrap, kafka_client, topic_name, RECORDS, 100, membership
    )
    try:
        yield consumer, membership, topic
    finally:
        consumer.close(5)


def _poll(consumer: GroupConsumer, want: int, timeout_s: float = 30.0) -> list[InputRecord]:
    got: list[InputRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want:
        assert time.monotonic() < deadline, f"only {len(got)} of {want} records in {timeout_s}s"
        consumer.maintain()  # as every product loop does: kafka-python's stalled-join workaround
        got.extend(consumer.poll_batch(min(100, want - len(got)), 0.2))
    return got


def test_records_read_while_a_commit_is_awaited_are_handed_out_in_order(
    member: tuple[GroupConsumer, Membership, str],
) -> None:
    consumer, _membership, topic = member
    first = _poll(consumer, 100)
    tp = TopicPartition(topic, 0)
    consumer.commit({tp: first[-1].offset + 1}, timeout_s=10)
    # librdkafka had the rest of the topic prefetched: reading on for the commit's report
    # took records past the ones handed out, which must still come next, once each
    rest = _poll(consumer, RECORDS - len(first))
    offsets = [r.offset for r in first + rest]
    assert offsets == list(range(RECORDS)), "records skipped, repeated or out of order"
    assert consumer.committed([tp], timeout_s=10) == {tp: 100}


def test_asynchronous_commits_report_the_offsets_sent(
    member: tuple[GroupConsumer, Membership, str],
) -> None:
    """Read on and commit as the worker does: one commit in flight at a time (kafka-python
    refuses more than its in-flight limit), each reported with exactly its offsets (on
    librdkafka the reports are served while reading)."""
    consumer, _membership, topic = member
    tp = TopicPartition(topic, 0)
    sent: list[dict[TopicPartition, int]] = []
    reported: list[tuple[dict[TopicPartition, int], Exception | None]] = []
    seen = 0
    deadline = time.monotonic() + 60
    while seen < RECORDS or len(reported) < len(sent) or sent[-1] != {tp: RECORDS}:
        assert time.monotonic() < deadline, f"{seen} records read, {len(reported)} of {sent}"
        consumer.maintain()
        records = consumer.poll_batch(200, 0.05)
        seen += len(records)
        reported.extend(consumer.commit_results())
        if seen and len(reported) == len(sent) and (not sent or sent[-1] != {tp: seen}):
            consumer.commit_async({tp: seen})  # one partition, read from offset 0
            sent.append({tp: seen})
    assert [offsets for offsets, _error in reported] == sent
    assert [error for _offsets, error in reported] == [None] * len(sent)
    assert len(sent) > 1, "the records came in one read: nothing was tested"
    assert consumer.committed([tp], timeout_s=10) == {tp: RECORDS}


def test_a_consumer_committing_after_every_batch_reads_on_in_order_with_bounded_memory(
    kafka_bootstrap: str, kafka_client: str, topic_name: Callable[[str], str]
) -> None:
    """The unpipelined worker's pattern over more records than librdkafka prefetches: each
    commit's wait reads ahead, so the adapter pauses fetching while it holds many records; none
    is lost or repeated, and what it holds stays bounded."""
    from forestream.edge.confluent import consumer as confluent_consumer

    records = 60_000
    consumer, topic = subscribed(
        kafka_bootstrap, kafka_client, topic_name, records, 1000, Membership()
    )
    tp = TopicPartition(topic, 0)
    offsets: list[int] = []
    held = 0
    try:
        deadline = time.monotonic() + 120
        while len(offsets) < records:
            assert time.monotonic() < deadline, f"{len(offsets)} of {records} read in 120s"
            consumer.maintain()  # as the worker's loop does before every poll
            batch = consumer.poll_batch(1000, 0.2)
            if batch:
                offsets.extend(r.offset for r in batch)
                consumer.commit({tp: batch[-1].offset + 1}, timeout_s=10)
            held = max(held, len(getattr(consumer, "_stash", ())))
    finally:
        consumer.close(5)
    assert offsets == list(range(records)), "records skipped, repeated or out of order"
    assert held <= confluent_consumer._STASH_HIGH + 10_000, f"{held} records held at once"


def test_a_record_larger_than_a_partition_fetch_comes_whole_between_small_ones(
    kafka_bootstrap: str, kafka_client: str, topic_name: Callable[[str], str]
) -> None:
    """Workers ask for 256 KB per partition per fetch (less peak RSS); a valid record up to
    the worker's 1 MB limit must still arrive, whole and in order, not stall the partition."""
    topic = topic_name("in")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1)])
    values = [b"a" * 100, b"b" * (2 * WORKER_FETCH_PARTITION_BYTES + 7), b"c" * 100]
    producer = make_producer(kafka_bootstrap)
    for i, value in enumerate(values):
        producer.send(topic, key=str(i).encode(), value=value).get(timeout=30)
    producer.close()
    consumer = group_consumer(
        on_client(kafka_bootstrap, kafka_client),
        group=topic_name("group"),
        client_id="edge-test",
        max_poll_records=100,
        session_timeout_ms=10_000,
    )
    try:
        consumer.subscribe(topic, Membership())
        got = _poll(consumer, len(values))
    finally:
        consumer.close(5)
    assert [(r.offset, r.value) for r in got] == list(enumerate(values))
