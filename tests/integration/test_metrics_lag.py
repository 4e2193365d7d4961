"""Consumer lag measured against a real broker: what the lag gauge will show per partition."""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka import TopicPartition

from forestream.edge.connection import KafkaConnection
from forestream.edge.factory import TopicSpec, ensure_topics, make_consumer, make_producer
from forestream.edge.kafka_python import KafkaPythonGroupConsumer
from forestream.worker.metrics import WorkerMetrics


def test_lag_per_partition_falls_to_zero_as_records_are_consumed(
    kafka_bootstrap: str, topic_name: Callable[[str], str]
) -> None:
    topic = topic_name("in")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 2)])
    producer = make_producer(kafka_bootstrap)
    try:
        for i in range(7):
            producer.send(topic, value=b"{}", partition=0 if i < 5 else 1)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)

    consumer = make_consumer(kafka_bootstrap)
    edge = KafkaPythonGroupConsumer(consumer, KafkaConnection(kafka_bootstrap))
    try:
        assert edge.lag(timeout_s=5.0) == {}  # nothing assigned yet
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        assert edge.lag(timeout_s=5.0) == {0: 5, 1: 2}

        consumed = 0
        deadline = time.monotonic() + 30
        while consumed < 7:
            assert time.monotonic() < deadline, f"consumed only {consumed} of 7 records"
            consumed += sum(len(b) for b in consumer.poll(timeout_ms=200).values())
        lag = edge.lag(timeout_s=5.0)
        assert lag == {0: 0, 1: 0}

        metrics = WorkerMetrics()
        metrics.set_lag(lag)
        assert (
            metrics.registry.get_sample_value("forestream_consumer_lag_records", {"partition": "1"})
            == 0
        )
    finally:
        consumer.close()
