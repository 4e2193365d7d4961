"""The local broker is real: kafka-python round-trips through it, and an outside client agrees;
topic creation and inspection (the admin edge) behave alike on both clients."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from forestream.edge.connection import KafkaConnection
from forestream.edge.factory import (
    TopicSpec,
    ensure_topics,
    make_producer,
    topic_admin,
    topic_partitions,
)
from forestream.edge.interface import CreationRefused, TopicRequest
from forestream.errors import UserError
from tests.kafka_helpers import on_client, read_topic


def test_produce_and_consume_round_trip(kafka_bootstrap: str, topic_name) -> None:
    topic = topic_name()
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=3)])
    producer = make_producer(kafka_bootstrap)
    for i in range(30):
        producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    producer.flush(timeout=30)
    producer.close()

    records = read_topic(kafka_bootstrap, topic, expected=30, settle_s=0.5)
    assert sorted(r.value for r in records) == sorted(f"v{i}".encode() for i in range(30))
    assert {r.partition for r in records} <= {0, 1, 2}
    # same key always lands in the same partition
    by_key = {}
    for r in records:
        assert by_key.setdefault(r.key, r.partition) == r.partition


@pytest.mark.usefixtures("kafka_client")
def test_ensure_topics_is_idempotent_and_keeps_partitions(
    kafka_bootstrap: str, topic_name, kafka_client: str
) -> None:
    topic = topic_name()
    conn = on_client(kafka_bootstrap, kafka_client)
    ensure_topics(conn, [TopicSpec(topic, partitions=4)])
    ensure_topics(conn, [TopicSpec(topic, partitions=1)])
    assert topic_partitions(conn, [topic, topic_name("absent")]) == {topic: 4}
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        assert consumer.partitions_for_topic(topic) == {0, 1, 2, 3}
    finally:
        consumer.close()


@pytest.mark.usefixtures("kafka_client")
def test_topic_admin_asks_without_creating_and_says_why_creation_was_refused(
    kafka_bootstrap: str, topic_name, kafka_client: str
) -> None:
    """This broker auto-creates topics on metadata requests that allow it: asking about a topic
    must never create it. A creation the broker refuses is one line naming its reason."""
    conn = on_client(kafka_bootstrap, kafka_client)
    absent = topic_name("absent")
    admin = topic_admin(conn)
    try:
        assert admin.brokers() == 1
        assert admin.partition_counts([absent]) == {}
        assert admin.may_describe(absent)
        assert absent not in admin.topics()
        with pytest.raises(CreationRefused, match=r"(?i)replication"):
            admin.create_topics([TopicRequest(absent, 1, 3, {})], timeout_s=10)
    finally:
        admin.close()
    with pytest.raises(
        UserError, match=f"the broker refused to create {absent}: .*(?i:replication)"
    ):
        ensure_topics(
            KafkaConnection(kafka_bootstrap, kafka_client=conn.kafka_client, replication_factor=3),
            [TopicSpec(absent, 1)],
        )
    assert absent not in set(topic_partitions(conn, [absent]))


KCAT = shutil.which("kcat") or shutil.which("kafkacat")


def test_kcat_interop_both_ways(kafka_bootstrap: str, topic_name) -> None:
    """An independent client (librdkafka) reads what we write and writes what we read."""
    assert KCAT, "kcat is not installed: `make test` installs it (Debian package kcat)"
    ours, theirs = topic_name("ours"), topic_name("theirs")
    ensure_topics(kafka_bootstrap, [TopicSpec(ours), TopicSpec(theirs)])

    producer = make_producer(kafka_bootstrap)
    for i in range(5):
        producer.send(ours, key=f"k{i}".encode(), value=f'{{"n": {i}}}'.encode())
    producer.flush(timeout=30)
    producer.close()
    out = subprocess.run(
        [KCAT, "-b", kafka_bootstrap, "-C", "-t", ours, "-o", "beginning", "-e", "-q",
         "-f", "%k=%s\\n"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert sorted(out.stdout.splitlines()) == [f'k{i}={{"n": {i}}}' for i in range(5)]

    lines = "".join(f"x{i}:payload-{i}\n" for i in range(7))
    subprocess.run(
        [KCAT, "-b", kafka_bootstrap, "-P", "-t", theirs, "-K", ":"],
        input=lines, text=True, timeout=60, check=True,
    )  # fmt: skip
    records = read_topic(kafka_bootstrap, theirs, expected=7)
    assert sorted((r.key, r.value) for r in records) == [
        (f"x{i}".encode(), f"payload-{i}".encode()) for i in range(7)
    ]
