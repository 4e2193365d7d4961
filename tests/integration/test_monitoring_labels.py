"""The label consumer against the real broker: labels read from Kafka join to predictions."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.worker.evaluation import LabelConsumer, OnlineEvaluator
from tests.kafka_helpers import on_client
from tests.waiting import wait_until

CLASSES = ["adelie", "chinstrap", "gentoo"]


def send_labels(bootstrap: str, topic: str, keys: list[bytes], labels: list[str]) -> None:
    producer = make_producer(bootstrap)
    try:
        for key, label in zip(keys, labels, strict=True):
            producer.send(topic, key=key, value=json.dumps({"label": label}).encode())
        producer.send(topic, key=b"junk", value=b"not json")  # counted, never joined
        producer.send(topic, key=None, value=b'{"label": "adelie"}')
        producer.flush(30)
    finally:
        producer.close()


def test_labels_from_the_topic_give_the_offline_accuracy(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_client: str
) -> None:
    topic = topic_name("labels")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=3)])
    rng = np.random.default_rng(7)
    n = 600
    keys = [f"rec-{i}".encode() for i in range(n)]
    predictions = rng.choice(CLASSES, n)
    labels = np.where(rng.random(n) < 0.75, predictions, rng.choice(CLASSES, n))

    evaluator = OnlineEvaluator()
    # half the labels are on the topic before the predictions exist (they wait as pending)
    send_labels(kafka_bootstrap, topic, keys[: n // 2], labels[: n // 2].tolist())
    consumer = LabelConsumer(
        on_client(kafka_bootstrap, kafka_client), topic, evaluator, start_at="earliest"
    ).start()
    try:
        wait_until(lambda: consumer.labels_read == n // 2, "the first half of the labels")
        evaluator.add_predictions(keys, predictions, "v1")
        send_labels(kafka_bootstrap, topic, keys[n // 2 :], labels[n // 2 :].tolist())
        wait_until(lambda: evaluator.labels_joined == n, f"{n} joined labels")
    finally:
        consumer.stop()

    assert consumer.malformed == 4  # two junk records per send_labels call
    assert evaluator.accuracy("v1") == pytest.approx(accuracy_score(labels, predictions))
    assert evaluator.macro_f1("v1") == pytest.approx(f1_score(labels, predictions, average="macro"))


def test_starting_at_latest_skips_labels_already_on_the_topic(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_client: str
) -> None:
    topic = topic_name("labels")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic)])
    send_labels(kafka_bootstrap, topic, [b"old"], ["adelie"])
    evaluator = OnlineEvaluator()
    evaluator.add_predictions([b"old", b"new"], ["adelie", "gentoo"], "v1")
    consumer = LabelConsumer(on_client(kafka_bootstrap, kafka_client), topic, evaluator).start()
    try:
        assert consumer.ready.wait(30), "label consumer never got its partitions"
        send_labels(kafka_bootstrap, topic, [b"new"], ["chinstrap"])
        wait_until(lambda: evaluator.labels_joined >= 1, "the new label")
        time.sleep(0.3)  # room for a wrongly replayed old label to show up
    finally:
        consumer.stop()
    assert evaluator.pairs("v1") == [("chinstrap", "gentoo")]
    assert evaluator.pending_predictions == 1  # "old" is still waiting for a label
