"""The local broker is real: kafka-python round-trips through it, and an outside client agrees.
(Topic creation and inspection on both clients: tests/integration/edge/test_topic_admin.py.)"""

from __future__ import annotations

import shutil
import subprocess

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from tests.kafka_helpers import read_topic


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
