"""A group member's partitions coming and going (:class:`forestream.edge.interface.
RebalanceHandler`) against a real broker, on both clients.

A second member joining takes partitions through the callbacks: the first member is told which
it is about to lose (librdkafka's cooperative protocol revokes only those; kafka-python's eager
one revokes everything and assigns again), commits what it asks to before they go, and hears
that they are released, not lost. Each member then owns its share, once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from forestream.edge.factory import TopicSpec, ensure_topics, group_consumer, make_producer
from forestream.edge.interface import GroupConsumer, InputRecord, TopicPartition
from tests.kafka_helpers import on_client
from tests.waiting import wait_until

PARTITIONS = 4
PER_PARTITION = 50


class Recorder:
    """What a member's handler heard, in order; asks to commit what it read of a partition
    when that partition is being revoked."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owned: set[TopicPartition] = set()
        self.events: list[tuple[str, frozenset[TopicPartition], bool]] = []
        self.read_up_to: dict[TopicPartition, int] = {}
        self.committed: list[dict[TopicPartition, int]] = []

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        with self.lock:
            self.owned.update(partitions)
            self.events.append(("assigned", frozenset(partitions), False))

    def on_revoking(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        with self.lock:
            self.events.append(("revoking", frozenset(partitions), False))
            return {tp: self.read_up_to[tp] for tp in partitions if tp in self.read_up_to}

    def revocation_commit_timeout_s(self) -> float:
        return 10.0

    def on_committed(self, offsets: dict[TopicPartition, int]) -> None:
        with self.lock:
            self.committed.append(dict(offsets))

    def on_released(self, partitions: list[TopicPartition], lost: bool) -> None:
        with self.lock:
            self.owned.difference_update(partitions)
            self.events.append(("released", frozenset(partitions), lost))

    def snapshot(self) -> set[TopicPartition]:
        with self.lock:
            return set(self.owned)


class Member:
    """One group member polled on its own thread (a rebalance needs every member polling);
    ``halt`` it before using its consumer from the test's thread."""

    def __init__(self, bootstrap: str, client: str, group: str, topic: str, name: str) -> None:
        self.handler = Recorder()
        self.consumer: GroupConsumer = group_consumer(
            on_client(bootstrap, client),
            group=group,
            client_id=name,
            max_poll_records=100,
            session_timeout_ms=10_000,
        )
        self.consumer.subscribe(topic, self.handler)
        self.records: list[InputRecord] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.consumer.maintain()  # once per loop turn, as the worker does
                batch = self.consumer.poll_batch(100, 0.1)
                with self.handler.lock:
                    for r in batch:
                        tp = TopicPartition(r.topic, r.partition)
                        self.handler.read_up_to[tp] = r.offset + 1
                self.records.extend(batch)
        except BaseException as exc:
            self.error = exc

    def owns(self) -> set[TopicPartition]:
        if self.error is not None:
            raise AssertionError(f"the member's poll failed: {self.error!r}")
        return self.handler.snapshot()

    def halt(self) -> None:
        """Stop polling, so this thread may use the consumer (a member is used from one
        thread at a time: librdkafka's adapter serves commits and callbacks inside its poll)."""
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the member's poll did not return within 30 s"

    def close(self) -> None:
        self.halt()
        self.consumer.close(5)


@pytest.fixture
def topic(kafka_bootstrap: str, topic_name: Callable[[str], str]) -> str:
    name = topic_name("in")
    ensure_topics(kafka_bootstrap, [TopicSpec(name, PARTITIONS)])
    producer = make_producer(kafka_bootstrap)
    for p in range(PARTITIONS):
        for i in range(PER_PARTITION):
            producer.send(name, key=f"{p}:{i}".encode(), value=b"v", partition=p)
    producer.flush(timeout=30)
    producer.close()
    return name


@pytest.fixture
def members(kafka_bootstrap: str, kafka_client: str, topic: str) -> Iterator[list[Member]]:
    started: list[Member] = []
    yield started
    for member in started:
        member.close()


def test_a_joining_member_takes_partitions_through_the_callbacks(
    kafka_bootstrap: str,
    kafka_client: str,
    topic: str,
    topic_name: Callable[[str], str],
    members: list[Member],
) -> None:
    group = topic_name("group")
    every = {TopicPartition(topic, p) for p in range(PARTITIONS)}
    first = Member(kafka_bootstrap, kafka_client, group, topic, "first")
    members.append(first)
    wait_until(lambda: first.owns() == every, "the first member owning every partition", 60)
    wait_until(lambda: len(first.records) == PARTITIONS * PER_PARTITION, "every record read")

    second = Member(kafka_bootstrap, kafka_client, group, topic, "second")
    members.append(second)

    def balanced() -> bool:
        a, b = first.owns(), second.owns()
        return bool(a) and bool(b) and not a & b and a | b == every

    wait_until(
        balanced,
        "both members owning a share",
        60,
        seen=lambda: (first.handler.events, second.handler.events),
    )
    moved = second.owns()
    revoked = set().union(*(p for e, p, _ in first.handler.events if e == "revoking"))
    released = [(p, lost) for e, p, lost in first.handler.events if e == "released"]
    assert moved <= revoked, f"{moved} moved without a revocation: {first.handler.events}"
    assert moved <= set().union(*(p for p, _ in released)), first.handler.events
    assert not any(lost for _, lost in released), "an orderly join lost partitions"
    if kafka_client == "confluent":  # cooperative: only what moves is revoked
        assert revoked == moved, first.handler.events
    # what the first member asked to commit on revocation is the group's, and the newcomer
    # starts after it: nothing of the moved partitions is read again
    first.halt()
    committed = first.consumer.committed(sorted(moved), timeout_s=10)
    assert committed == dict.fromkeys(moved, PER_PARTITION), committed
    assert not second.records, [(r.partition, r.offset) for r in second.records[:5]]
