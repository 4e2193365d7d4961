"""Horizontal scaling against a real broker: workers leave and join a group under a steady stream.

Three ``forestream worker`` processes share a 6-partition input topic while a producer thread
keeps sending; one is stopped (SIGTERM), a new one joins, the stream goes on, then all stop
cleanly. Every input key must come out as a prediction or a dead letter (duplicates are allowed,
at-least-once, and printed), and after the churn every member of the group owns partitions.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.wire import headers
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


class SteadyStream:
    """Sends records at a steady pace from a thread until stopped; remembers what it sent.

    Each record is acknowledged before the next pause, so ``sent`` only names records that are
    really in the topic.
    """

    def __init__(
        self, bootstrap: str, topic: str, per_pause: int = 20, pause_s: float = 0.1
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.per_pause = per_pause
        self.pause_s = pause_s
        self.valid_keys: list[bytes] = []
        self.bad_keys: dict[bytes, str] = {}  # key -> expected reason code
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    @property
    def sent(self) -> int:
        with self._lock:
            return len(self.valid_keys) + len(self.bad_keys)

    def _run(self) -> None:
        bad = malformed_records()
        rows = [row_json(row) for _, row in make_frame(20_000, seed=21).iterrows()]
        producer = make_producer(self.bootstrap)
        try:
            batch: list[tuple[bytes, bytes | None, str | None]] = []
            for i, row in enumerate(rows):
                if self._stop.is_set():
                    break
                if i % BAD_EVERY == BAD_EVERY - 1:
                    value, code = bad[(i // BAD_EVERY) % len(bad)]
                    batch.append((f"bad-{i}".encode(), value, code))
                else:
                    batch.append((f"ok-{i}".encode(), row, None))
                if len(batch) == self.per_pause:
                    self._send(producer, batch)
                    batch = []
                    time.sleep(self.pause_s)
            self._send(producer, batch)
        except BaseException as exc:  # surfaced by stop(), never swallowed
            self.error = exc
        finally:
            producer.close(timeout=10)

    def _send(self, producer: Any, batch: list[tuple[bytes, bytes | None, str | None]]) -> None:
        futures = [producer.send(self.topic, key=k, value=v) for k, v, _ in batch]
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=0)  # raises if the broker refused it
        with self._lock:
            for key, _value, code in batch:
                if code is None:
                    self.valid_keys.append(key)
                else:
                    self.bad_keys[key] = code

    def wait_sent(self, count: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.sent < count:
            if self.error is not None or not self._thread.is_alive():
                raise AssertionError(f"producer thread ended early: {self.error!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"sent {self.sent} of {count} records in {timeout_s:.0f}s")
            time.sleep(0.1)

    def __enter__(self) -> SteadyStream:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "producer thread did not stop"
        if self.error is not None:
            raise AssertionError(f"producer thread failed: {self.error!r}")


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

    with SteadyStream(kafka_bootstrap, topics["in"]) as stream:
        stream.wait_sent(400)
        group.stop(0)
        newcomer = group.start()
        after = group.wait_balanced(PARTITIONS)
        assert sorted(after) == [1, 2, newcomer], after
        members = group_members(kafka_bootstrap, group_id)
        assert sorted(len(parts) for parts in members) == [2, 2, 2], members
        assert sorted(p for parts in members for p in parts) == list(range(PARTITIONS)), members
        stream.wait_sent(stream.sent + 400)  # the newcomer scores live traffic too

    valid, bad = set(stream.valid_keys), dict(stream.bad_keys)
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
