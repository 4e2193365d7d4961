"""Horizontal scaling against a real broker: workers leave and join a group under a steady stream.

Three ``forestream worker`` processes share a 6-partition input topic while a producer thread
keeps sending; one is stopped (SIGTERM), a new one joins, the stream goes on, then all stop
cleanly. Every input key must come out as a prediction or a dead letter (duplicates are allowed,
at-least-once, and printed), and after the churn every member of the group owns partitions.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from forestream.edge.factory import TopicSpec, ensure_topics
from forestream.wire import headers
from tests.feeding import PacedFeeder
from tests.kafka_helpers import read_topic
from tests.worker_support import (
    WorkerGroup,
    log_events,
    make_frame,
    malformed_records,
    publish_promotion,
    row_json,
    save_model,
    worker_command,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL = "scaled"
PARTITIONS = 6
BAD_EVERY = 50
"""Every 50th record of the stream is malformed, so the DLQ side of the accounting is exercised."""


RATE_PER_S = 200
"""The steady stream's pace: 20 records every 0.1 s."""


def steady_stream(bootstrap: str, topic: str) -> tuple[PacedFeeder, dict[bytes, str]]:
    """A feeder of valid rows with every ``BAD_EVERY``-th record malformed, and the expected
    reason code of each malformed key; it stops when its block ends (``finish_on_exit=False``),
    every record it sent acknowledged."""
    bad = malformed_records()
    rows = [row_json(row) for _, row in make_frame(20_000, seed=21).iterrows()]
    codes = {
        f"bad-{i}".encode(): bad[(i // BAD_EVERY) % len(bad)][1]
        for i in range(BAD_EVERY - 1, len(rows), BAD_EVERY)
    }

    def record(i: int) -> tuple[bytes, bytes | None]:
        if i % BAD_EVERY == BAD_EVERY - 1:
            return f"bad-{i}".encode(), bad[(i // BAD_EVERY) % len(bad)][0]
        return f"ok-{i}".encode(), rows[i]

    feeder = PacedFeeder(
        bootstrap, topic, record, RATE_PER_S, limit=len(rows), finish_on_exit=False
    )
    return feeder, codes


def group_members(bootstrap: str, group: str, timeout_s: float = 30.0) -> list[list[int]]:
    """Partitions of each member of a Stable group, as the broker's coordinator describes it."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            described = admin.describe_groups([group])[group]
            if described["group_state"] == "Stable":
                return [
                    sorted(p for topic in m["member_assignment"]["assigned_partitions"]
                           for p in topic["partitions"])
                    for m in described["members"]
                ]  # fmt: skip
            if time.monotonic() > deadline:
                raise AssertionError(f"group {group} not Stable in {timeout_s:.0f}s: {described}")
            time.sleep(0.5)
    finally:
        admin.close()


@pytest.fixture
def group_for(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> Iterator[tuple[WorkerGroup, dict[str, str], str]]:
    """A promoted 15-tree model, fresh topics (6-partition input) and an empty worker group."""
    topics = {k: topic_name(k) for k in ("in", "out", "dlq", "models")}
    group_id = topic_name("group")
    store = tmp_path / "store"
    _pipeline, metadata = save_model(store, MODEL, make_frame(300, seed=20), trees=15)
    ensure_topics(kafka_bootstrap, [TopicSpec(topics["in"], PARTITIONS)])
    publish_promotion(kafka_bootstrap, topics["models"], metadata)
    command = worker_command(kafka_bootstrap, topics, store, MODEL, group_id, "--max-batch", "100")
    group = WorkerGroup(command, tmp_path)
    try:
        yield group, topics, group_id
    finally:
        group.kill_all()


def test_stop_one_start_one_under_load_accounts_for_every_input(
    kafka_bootstrap: str, group_for: tuple[WorkerGroup, dict[str, str], str]
) -> None:
    group, topics, group_id = group_for
    for _ in range(3):
        group.start()
    first = group.wait_balanced(PARTITIONS)
    assert sorted(len(parts) for parts in first.values()) == [2, 2, 2], first

    feeder, codes = steady_stream(kafka_bootstrap, topics["in"])
    with feeder as stream:
        stream.wait_acked(400)
        group.stop(0)
        newcomer = group.start()
        after = group.wait_balanced(PARTITIONS)
        assert sorted(after) == [1, 2, newcomer], after
        members = group_members(kafka_bootstrap, group_id)
        assert sorted(len(parts) for parts in members) == [2, 2, 2], members
        assert sorted(p for parts in members for p in parts) == list(range(PARTITIONS)), members
        stream.wait_acked(stream.acked + 400)  # the newcomer scores live traffic too

    # every record sent was acknowledged when the block ended
    valid = {key for key in stream.keys if key.startswith(b"ok-")}
    bad = {key: codes[key] for key in stream.keys if key.startswith(b"bad-")}
    dead_letters = read_topic(
        kafka_bootstrap, topics["dlq"], until=lambda got: {r.key for r in got} >= bad.keys()
    )
    predictions = read_topic(
        kafka_bootstrap,
        topics["out"],
        until=lambda got: {r.key for r in got} >= valid,
        timeout_s=90,
    )
    for i in group.live():
        group.stop(i)

    predicted = Counter(r.key for r in predictions)
    dead = Counter(r.key for r in dead_letters)
    duplicates = sum(n - 1 for n in predicted.values()) + sum(n - 1 for n in dead.values())
    print(
        f"sent {len(valid)} valid + {len(bad)} malformed; predictions {len(predictions)}, "
        f"dead letters {len(dead_letters)}, duplicates {duplicates}"
    )
    assert set(predicted) == valid, "a malformed record was predicted, or a stray key appeared"
    assert set(dead) == set(bad), "a valid record was dead-lettered, or a stray key appeared"
    for record in dead_letters:
        assert dict(record.headers)[headers.ERROR].decode() == bad[record.key]

    summaries = {
        i: log_events(path, "worker_final_summary")[-1] for i, path in enumerate(group.log_paths)
    }
    assert all(s["records_in"] > 0 for s in summaries.values()), summaries
