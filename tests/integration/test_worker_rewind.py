"""A batch whose outputs are never acknowledged is read again, not skipped.

The client keeps a partition's fetch position across a rebalance that hands the partition back
to the same member, so "just don't commit" would let the next batch's commit jump over the
dropped one. These tests drive the worker's revocation path against the real broker with a
producer that cannot deliver (its ``max_request_size`` is smaller than any prediction), and
check what is offered for commit and what the consumer delivers next.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from forestream.edge.connection import KafkaConnection
from forestream.edge.factory import TopicSpec, ensure_topics, make_consumer, make_producer
from forestream.edge.interface import Outgoing
from forestream.edge.kafka_python import KafkaPythonGroupConsumer, KafkaPythonProducer
from forestream.worker.models import ActiveModel, ModelFollower
from forestream.worker.processing import AckedPublisher
from forestream.worker.settings import WorkerSettings
from tests.worker_support import make_frame, row_json, save_model

RECORDS = 12


def _poll_records(consumer: KafkaConsumer, expected: int, timeout_s: float = 30.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(got)} of {expected} records polled within {timeout_s}s")
        for batch in consumer.poll(timeout_ms=200).values():
            got.extend(batch)
    return got


@pytest.fixture
def held_batch(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> Iterator[tuple[object, KafkaConsumer, TopicPartition]]:
    """A worker holding one polled batch, whose producer can deliver nothing."""
    from forestream.worker.loop import Worker

    source = topic_name("in")
    ensure_topics(kafka_bootstrap, [TopicSpec(source, 1), TopicSpec(topic_name("out"), 1)])
    frame = make_frame(RECORDS, seed=21)
    producer = make_producer(kafka_bootstrap)
    for i in range(RECORDS):
        producer.send(source, key=f"k{i}".encode(), value=row_json(frame.iloc[i]))
    producer.flush(timeout=30)
    producer.close()

    pipeline, metadata = save_model(tmp_path / "store", "rewind", make_frame(200, seed=2))
    settings = WorkerSettings(
        bootstrap_servers=kafka_bootstrap,
        input_topic=source,
        output_topic=topic_name("out"),
        dlq_topic=topic_name("dlq"),
        group=topic_name("group"),
        session_timeout_ms=6000,  # revocation may publish for half of it: 3 s
    )
    worker = Worker(settings, ModelFollower(kafka_bootstrap, "unused", "rewind", loader=None))
    worker.serving.model = ActiveModel(
        metadata.version, metadata.artifact_sha256, pipeline, metadata
    )
    consumer = make_consumer(kafka_bootstrap, group_id=settings.group, max_poll_records=RECORDS)
    consumer.subscribe([source])
    conn = KafkaConnection(kafka_bootstrap)
    undeliverable = make_producer(kafka_bootstrap, max_request_size=64)
    # the worker's own engine (and publisher, given up on past the shutdown grace) on these
    worker.open_delivery(
        KafkaPythonGroupConsumer(consumer, conn, settings.group),
        KafkaPythonProducer(undeliverable, conn),
    )
    worker.cycle.take(_poll_records(consumer, RECORDS))
    try:
        yield worker, consumer, TopicPartition(source, 0)
    finally:
        undeliverable.close(timeout=5)
        consumer.close(autocommit=False)


def test_an_abandoned_batch_is_not_committed_and_is_delivered_again(held_batch) -> None:
    worker, consumer, tp = held_batch
    assert consumer.position(tp) == RECORDS

    started = time.monotonic()
    offered = worker.membership.on_revoking([tp])
    waited = time.monotonic() - started

    assert offered == {}, f"offsets offered for commit without acknowledged outputs: {offered}"
    assert 2.5 <= waited < 20, f"publishing gave up after {waited:.1f}s, expected about 3s"
    assert consumer.position(tp) == 0
    again = _poll_records(consumer, RECORDS)
    assert [r.offset for r in again] == list(range(RECORDS))


def test_a_publisher_gives_up_on_an_undeliverable_record_only_when_told(
    kafka_bootstrap: str, topic_name: Callable[[str], str]
) -> None:
    topic = topic_name("out")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1)])
    producer = make_producer(kafka_bootstrap, max_request_size=256)
    try:
        publisher = AckedPublisher(KafkaPythonProducer(producer, KafkaConnection(kafka_bootstrap)))
        assert publisher.publish([Outgoing(topic, b"k", b"small")])
        deadline = time.monotonic() + 1.5
        too_big = Outgoing(topic, b"k", b"x" * 1024)
        assert not publisher.publish([too_big], give_up=lambda: time.monotonic() > deadline)
        assert time.monotonic() - deadline < 10
    finally:
        producer.close(timeout=5)
