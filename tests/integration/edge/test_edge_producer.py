"""The acknowledging producer (:class:`forestream.edge.interface.AckingProducer`) against a real
broker,
on both clients: a keyed record lands on the same partition whichever client sent it; one
record is appended at a known offset (the registry); a record over the client's own size limit
stops a send there (``produce``); the oversize producer gets a large compressible record in.

The worker keys each output by its input's key, so with the input's partitioner (murmur2, what
kafka-python and the Java client use) an output partition holds the outputs of one input
partition, hence of one worker at a time. librdkafka's default partitioner (CRC32) spread them
over every output partition: during a promotion the two workers' outputs interleaved there
(the rollback-under-load test saw v1 v2 v1 v2 v1 on one partition).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest
from kafka.partitioner.default import murmur2

from forestream.edge.factory import TopicSpec, acking_producer, ensure_topics
from forestream.edge.interface import Outgoing
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


def test_append_returns_the_offset_on_the_partition_asked_for(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_client: str
) -> None:
    """The registry's write: one record, acknowledged, and where it landed."""
    topic = topic_name("log")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 2)])
    producer = acking_producer(on_client(kafka_bootstrap, kafka_client), client_id="test-append")
    try:
        offsets = [producer.append(Outgoing(topic, b"k", b"%d" % i), 1, 30) for i in range(3)]
        first = producer.append(Outgoing(topic, b"k", b"other"), 0, 30)
    finally:
        producer.close(5)
    assert offsets == [0, 1, 2] and first == 0
    records = read_topic(kafka_bootstrap, topic, expected=4, settle_s=0.5)
    assert sorted((r.partition, r.offset, r.value) for r in records) == [
        (0, 0, b"other"), (1, 0, b"0"), (1, 1, b"1"), (1, 2, b"2"),
    ]  # fmt: skip


def test_a_record_over_the_clients_limit_stops_the_send_there(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_client: str
) -> None:
    """The records before it are handed over and acknowledged; it and those after are not."""
    topic = topic_name("big")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1)])
    conn = on_client(kafka_bootstrap, kafka_client)
    producer = acking_producer(conn, client_id="test-limit", compression="none")
    huge = secrets.token_bytes(2 * 1024 * 1024)  # incompressible, over both clients' 1 MB
    records = [
        Outgoing(topic, b"a", b"1"),
        Outgoing(topic, b"b", huge),
        Outgoing(topic, b"c", b"3"),
    ]
    try:
        delivery = producer.send(records)
        assert producer.flush(30)
        assert delivery.settled()
    finally:
        producer.close(5)
    assert delivery.handed_over() == 1
    assert delivery.unacknowledged() == [1, 2]
    assert delivery.error() is not None


def test_the_oversize_producer_gets_a_compressible_large_record_through(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_client: str
) -> None:
    """``produce``'s too_large test records: 1.1 MB of JSON, gzip under the broker's limit."""
    from forestream.producer.sending import make_oversize_producer

    topic = topic_name("oversize")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1)])
    value = b'{"comment": "' + b"x" * 1_100_000 + b'"}'
    producer = make_oversize_producer(on_client(kafka_bootstrap, kafka_client))
    try:
        delivery = producer.send([Outgoing(topic, b"big", value)])
        assert producer.flush(30)
    finally:
        producer.close(5)
    assert delivery.unacknowledged() == [], delivery.error()
    (record,) = read_topic(kafka_bootstrap, topic, expected=1, settle_s=0.5)
    assert record.value == value


def test_awaiting_a_send_ends_once_its_records_are_acknowledged(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_client: str
) -> None:
    """The loop awaits one batch's acks at a time: an earlier send with later ones in flight
    (librdkafka polls), and the latest one (librdkafka flushes, so ``linger.ms`` is not waited
    out); each ends with all of its records acknowledged."""
    topic = topic_name("acks")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, PARTITIONS)])
    producer = acking_producer(on_client(kafka_bootstrap, kafka_client), client_id="test-acks")
    try:
        earlier = producer.send([Outgoing(topic, b"e%d" % i, b"{}") for i in range(50)])
        latest = producer.send([Outgoing(topic, b"l%d" % i, b"{}") for i in range(50)])
        assert producer.await_delivery(earlier, 30)
        assert earlier.unacknowledged() == [], earlier.error()
        assert producer.await_delivery(latest, 30)
        assert latest.unacknowledged() == [], latest.error()
        again = producer.send([Outgoing(topic, b"a", b"{}")])
        assert producer.await_delivery(again, 30) and again.unacknowledged() == []
    finally:
        producer.close(5)
    assert len(read_topic(kafka_bootstrap, topic, expected=101, settle_s=0.5)) == 101
