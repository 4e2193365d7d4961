"""The acknowledging producer (:class:`contracts.edge.AckingProducer`) against a real broker,
on both clients: a keyed record lands on the same partition whichever client sent it.

The worker keys each output by its input's key, so with the input's partitioner (murmur2, what
kafka-python and the Java client use) an output partition holds the outputs of one input
partition, hence of one worker at a time. librdkafka's default partitioner (CRC32) spread them
over every output partition: during a promotion the two workers' outputs interleaved there
(the rollback-under-load test saw v1 v2 v1 v2 v1 on one partition).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kafka.partitioner.default import murmur2

from contracts.edge import Outgoing
from contracts.kafka_io import TopicSpec, acking_producer, ensure_topics
from tests.kafka_helpers import on_client, read_topic

pytestmark = pytest.mark.usefixtures("kafka_client")  # every test on both clients

PARTITIONS = 4


def test_keyed_records_land_on_the_partition_kafka_python_would_pick(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_client: str
) -> None:
    topic = topic_name("out")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, PARTITIONS)])
    keys = [f"key-{i}".encode() for i in range(400)]
    producer = acking_producer(on_client(kafka_bootstrap, kafka_client), client_id="test-keys")
    try:
        delivery = producer.send([Outgoing(topic, key, b"{}") for key in keys])
        assert producer.flush(30), "records still in flight after 30 s"
        assert delivery.unacknowledged() == [], delivery.error()
    finally:
        producer.close(5)
    records = read_topic(kafka_bootstrap, topic, expected=len(keys), settle_s=0.5)
    placed = {r.key: r.partition for r in records}
    expected = {key: (murmur2(key) & 0x7FFFFFFF) % PARTITIONS for key in keys}
    wrong = sorted(k for k in keys if placed.get(k) != expected[k])
    assert not wrong, f"{len(wrong)} of {len(keys)} keys on another partition, e.g. {wrong[:3]}"
