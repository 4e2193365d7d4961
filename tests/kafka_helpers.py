"""Bounded reads from the real broker for integration tests: they fail loudly, never hang."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import cast

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from forestream.edge.connection import KafkaConnection
from forestream.edge.factory import Target, make_consumer
from forestream.edge.interface import KAFKA_CLIENTS, KafkaClient


def on_client(bootstrap: str, kafka_client: str) -> KafkaConnection:
    """The broker through ``kafka_client``, for in-process components given a connection (a
    bare address means kafka-python whatever ``FORESTREAM_KAFKA_CLIENT`` says)."""
    assert kafka_client in KAFKA_CLIENTS, kafka_client
    return KafkaConnection(bootstrap=bootstrap, kafka_client=cast(KafkaClient, kafka_client))


def read_topic(
    bootstrap: Target,
    topic: str,
    *,
    expected: int | None = None,
    until: Callable[[list[ConsumerRecord]], bool] | None = None,
    timeout_s: float = 60.0,
    settle_s: float = 0.0,
) -> list[ConsumerRecord]:
    """Read ``topic`` from the beginning (no group) until ``expected`` records or ``until`` holds.

    With neither, read until the end offsets seen at start. Fails with a clear message (how many
    records arrived) when the deadline passes. ``settle_s`` keeps reading a little longer after the
    condition holds, so a test can see unexpected extra records.
    """
    consumer = make_consumer(bootstrap, group_id=None)
    try:
        deadline = time.monotonic() + timeout_s
        partitions = None
        while not partitions:
            partitions = consumer.partitions_for_topic(topic)
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic!r} did not appear within {timeout_s:.0f}s")
            if not partitions:
                time.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps) if expected is None and until is None else None
        records: list[ConsumerRecord] = []

        def done() -> bool:
            if expected is not None:
                return len(records) >= expected
            if until is not None:
                return until(records)
            return all(consumer.position(tp) >= end[tp] for tp in tps)

        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"read {len(records)} records from {topic!r} in {timeout_s:.0f}s"
                    + (f", expected {expected}" if expected is not None else "")
                )
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        settle_end = time.monotonic() + settle_s
        while time.monotonic() < settle_end:
            for batch in consumer.poll(timeout_ms=100).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def wait_scored(
    bootstrap: Target,
    topic: str,
    version: str,
    partitions: int,
    *,
    since: int = 0,
    each: int = 20,
    timeout_s: float = 60.0,
) -> None:
    """Until each of the ``partitions`` partitions of the output ``topic`` holds ``each``
    predictions by model ``version`` of inputs keyed ``<prefix>-<i>`` with i >= ``since`` (as
    ``tests.feeding.cycling`` keys them): the stream is seen flowing through that version."""
    from forestream.wire.messages import Prediction

    counts: Counter[int] = Counter()
    read = 0

    def enough(got: list[ConsumerRecord]) -> bool:
        nonlocal read
        for r in got[read:]:
            fresh = int(r.key.rsplit(b"-", 1)[1]) >= since
            if fresh and Prediction.model_validate_json(r.value).model_version == version:
                counts[r.partition] += 1
        read = len(got)
        return len(counts) == partitions and min(counts.values()) >= each

    try:
        read_topic(bootstrap, topic, until=enough, timeout_s=timeout_s)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {version} outputs by partition {dict(counts)}") from None


def source_of(record: object) -> tuple[int, int]:
    """(partition, offset) of the input a prediction or dead letter came from: its headers,
    or the JSON ``source`` of a record written without them."""
    headers = dict(getattr(record, "headers", None) or [])
    if "forestream.source.offset" in headers:
        return (
            int(headers["forestream.source.partition"]),
            int(headers["forestream.source.offset"]),
        )
    source = json.loads(record.value)["source"]  # type: ignore[attr-defined]
    return int(source["partition"]), int(source["offset"])
