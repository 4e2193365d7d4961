"""The topic admin of the Kafka edge (:class:`forestream.edge.interface.TopicAdmin`) against a
real broker, on both clients: creation is idempotent and keeps partitions, asking never creates,
and a refused creation says why. (Moved from test_broker.py.)"""

from __future__ import annotations

import pytest

from forestream.edge.connection import KafkaConnection
from forestream.edge.factory import TopicSpec, ensure_topics, topic_admin, topic_partitions
from forestream.edge.interface import TopicRequest
from forestream.errors import CreationRefused, UserError
from tests.kafka_helpers import on_client


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
