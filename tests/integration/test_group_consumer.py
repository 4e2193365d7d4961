"""The group member of the Kafka edge (:class:`contracts.edge.GroupConsumer`) against a real
broker, on both clients: commits report back with exactly the offsets sent, and records that
arrive while a commit is awaited are handed out later, in order, none twice and none skipped.

librdkafka's adapter awaits a commit by reading on (its report comes through the same queue as
the records), so this is where a record could go missing between the commit and the next poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from contracts.edge import GroupConsumer, InputRecord, TopicPartition
from contracts.kafka_io import TopicSpec, ensure_topics, group_consumer, make_producer
from tests.kafka_helpers import on_client

RECORDS = 3_000


class Membership:
    """What the consumer told its :class:`~contracts.edge.RebalanceHandler`."""

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


@pytest.fixture
def member(
    kafka_bootstrap: str, kafka_client: str, topic_name: Callable[[str], str]
) -> Iterator[tuple[GroupConsumer, Membership, str]]:
    topic = topic_name("in")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1)])
    producer = make_producer(kafka_bootstrap)
    for i in range(RECORDS):
        producer.send(topic, key=str(i).encode(), value=b"v" * 100)
    producer.flush(timeout=30)
    producer.close()
    consumer = group_consumer(
        on_client(kafka_bootstrap, kafka_client),
        group=topic_name("group"),
        client_id="edge-test",
        max_poll_records=100,
        session_timeout_ms=10_000,
    )
    membership = Membership()
    consumer.subscribe(topic, membership)
    try:
        yield consumer, membership, topic
    finally:
        consumer.close(5)


def _poll(consumer: GroupConsumer, want: int, timeout_s: float = 30.0) -> list[InputRecord]:
    got: list[InputRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want:
        assert time.monotonic() < deadline, f"only {len(got)} of {want} records in {timeout_s}s"
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
    consumer, _membership, topic = member
    tp = TopicPartition(topic, 0)
    sent: list[dict[TopicPartition, int]] = []
    reported: list[tuple[dict[TopicPartition, int], Exception | None]] = []
    seen = 0
    while seen < RECORDS:
        records = _poll(consumer, min(500, RECORDS - seen))
        seen += len(records)
        offsets = {tp: records[-1].offset + 1}
        consumer.commit_async(offsets)
        sent.append(offsets)
        reported.extend(consumer.commit_results())
    deadline = time.monotonic() + 30
    while len(reported) < len(sent):
        assert time.monotonic() < deadline, f"{len(reported)} of {len(sent)} commits reported"
        consumer.poll_batch(100, 0.1)  # reports are served while reading
        reported.extend(consumer.commit_results())
    assert [offsets for offsets, _error in reported] == sent
    assert [error for _offsets, error in reported] == [None] * len(sent)
    assert consumer.committed([tp], timeout_s=10) == {tp: RECORDS}
