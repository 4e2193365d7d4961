"""``forestream evaluate`` against the real broker: two instances in one group share the
partitions, and the counts they publish sum to exactly what an offline join of the same topics
gives; every label is consumed once by the fleet; bad input is counted, never fatal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.exit_codes import USER_ERROR
from forestream.wire.messages import EvaluationCounts, Prediction, SourceRef
from forestream.wire.partitioning import partition_for_key
from forestream.worker.assignment_log import log_events
from forestream.worker.evaluator.counts import merge, window_start
from tests.kafka_helpers import read_topic
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
CLASSES = ["adelie", "chinstrap", "gentoo"]
WINDOW_MS = 60_000


def evaluate_command(bootstrap: str, topics: dict[str, str], group: str) -> list[str]:
    return [
        sys.executable, "-m", "forestream.cli", "evaluate",
        "--bootstrap-servers", bootstrap,
        "--output-topic", topics["predictions"],
        "--labels-topic", topics["labels"],
        "--monitoring-topic", topics["monitoring"],
        "--group", group,
        "--window-s", str(WINDOW_MS // 1000),
        "--publish-interval-s", "0.5",
        "--log-format", "json",
    ]  # fmt: skip


def prediction_value(key: int, version: str, predicted: str, event_ms: int) -> bytes:
    probabilities = {c: (0.8 if c == predicted else 0.1) for c in CLASSES}
    return (
        Prediction(
            prediction=predicted,
            probabilities=probabilities,
            model_version=version,
            source=SourceRef(topic="in", partition=0, offset=key),
            event_time=event_ms,
            scored_at=event_ms,
        )
        .model_dump_json()
        .encode()
    )


class Sender:
    """Records keyed and partitioned as a worker writes them (key = the input's key, on the
    key's partition), with the timestamps given."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = make_producer(bootstrap)

    def __call__(self, topic: str, key: bytes | None, value: bytes, ts: int) -> None:
        partition = partition_for_key(key, PARTITIONS) if key is not None else 0
        self.producer.send(topic, key=key, value=value, partition=partition, timestamp_ms=ts)

    def flush(self) -> None:
        self.producer.flush(30)

    def close(self) -> None:
        self.producer.close()


def send_predictions(send: Sender, topic: str, base_ms: int) -> None:
    for i in range(400):
        version = "v1" if i % 3 else "v2"
        predicted = CLASSES[(i * 7) % 3]
        value = prediction_value(i, version, predicted, base_ms + i)
        send(topic, f"k{i}".encode(), value, base_ms + i)
    send.flush()


def send_labels(send: Sender, topic: str, base_ms: int, keys: range) -> None:
    """Labels for ``keys`` across three windows of arrival."""
    for i in keys:
        label = CLASSES[(i * 5) % 3] if i % 4 else CLASSES[(i * 7) % 3]
        ts = base_ms + (i % 3) * WINDOW_MS + 1_000
        send(topic, f"k{i}".encode(), json.dumps({"label": label}).encode(), ts)
    send.flush()


def produce(bootstrap: str, topics: dict[str, str], base_ms: int) -> None:
    """Predictions, then the labels: most joinable, some for keys never predicted, some bad."""
    send = Sender(bootstrap)
    try:
        for i in range(400):
            version = "v1" if i % 3 else "v2"
            predicted = CLASSES[(i * 7) % 3]
            send(
                topics["predictions"],
                f"k{i}".encode(),
                prediction_value(i, version, predicted, base_ms + i),
                base_ms + i,
            )
        send(topics["predictions"], b"k-bad", b"not json", base_ms)
        send(topics["predictions"], None, prediction_value(0, "v1", "adelie", base_ms), base_ms)
        send.flush()
        send_labels(send, topics["labels"], base_ms, range(300))
        for i in range(1000, 1010):  # never predicted: they wait, never counted
            send(topics["labels"], f"k{i}".encode(), b'{"label": "adelie"}', base_ms)
        send(topics["labels"], b"k300", b"not json", base_ms)
        send(topics["labels"], b"k301", b'{"label": 1.5}', base_ms)
        send(topics["labels"], None, b'{"label": "adelie"}', base_ms)
        send(topics["labels"], b"k302", b'{"label": "zebra"}', base_ms)  # no class of v1/v2
        send.flush()
    finally:
        send.close()


def offline_counts(
    bootstrap: str, topics: dict[str, str]
) -> dict[tuple[str, int], dict[str, dict[str, int]]]:
    """The join computed from the topics themselves: newest prediction per key, each label
    once, windows by the label's timestamp, labels naming no class of the version left out."""
    predictions: dict[bytes, dict[str, Any]] = {}
    for r in read_topic(bootstrap, topics["predictions"]):
        try:
            predictions[r.key] = json.loads(r.value)
        except ValueError:
            continue
    out: dict[tuple[str, int], dict[str, dict[str, int]]] = {}
    for r in read_topic(bootstrap, topics["labels"]):
        try:
            label = json.loads(r.value)["label"]
        except (ValueError, TypeError, KeyError):
            continue
        held = predictions.pop(r.key, None) if r.key is not None else None
        if held is None or not isinstance(label, str) or label not in held["probabilities"]:
            continue
        row = out.setdefault((held["model_version"], window_start(r.timestamp, WINDOW_MS)), {})
        row.setdefault(label, {})
        row[label][held["prediction"]] = row[label].get(held["prediction"], 0) + 1
    return out


def published(bootstrap: str, topic: str) -> list[EvaluationCounts]:
    return [EvaluationCounts.model_validate_json(r.value) for r in read_topic(bootstrap, topic)]


def events_of(logs: list[Path]) -> str:
    """What each evaluator logged last, for a failed wait's message."""
    lines = []
    for i, path in enumerate(logs):
        lines.append(f"evaluator {i}:")
        if path.exists():
            lines += [f"  {line[:300]}" for line in path.read_text().splitlines()[-15:]]
    return "\n".join(lines)


def owned_now(path: Path) -> list[int]:
    changes = log_events(path, "evaluator_assigned", "evaluator_revoked")
    return list(changes[-1]["owned"]) if changes else []


def test_two_evaluators_publish_counts_that_sum_to_the_offline_join(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path, kafka_client: str
) -> None:
    """On either client (``kafka_client`` sets it for the evaluator processes)."""
    two_evaluators_sum_to_the_offline_join(kafka_bootstrap, topic_name, tmp_path)


def test_exactly_once_evaluators_publish_the_same_exact_counts(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    """Counts and offsets in one transaction per publish: read with read_committed (the
    helpers' reader), the sum is the offline join as well."""
    two_evaluators_sum_to_the_offline_join(
        kafka_bootstrap, topic_name, tmp_path, "--guarantee", "exactly-once"
    )


def two_evaluators_sum_to_the_offline_join(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path, *flags: str
) -> None:
    topics = {role: topic_name(role) for role in ("predictions", "labels", "monitoring")}
    ensure_topics(
        kafka_bootstrap,
        [
            TopicSpec(topics["predictions"], PARTITIONS),
            TopicSpec(topics["labels"], PARTITIONS),
            TopicSpec(topics["monitoring"], 1),
        ],
    )
    command = [*evaluate_command(kafka_bootstrap, topics, topic_name("group")), *flags]
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"evaluator-{i}.log" for i in range(2)]
    try:
        for path in logs:
            with path.open("wb") as sink:
                procs.append(
                    subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
                )

        def balanced() -> bool:
            for proc, path in zip(procs, logs, strict=True):
                if proc.poll() is not None:
                    raise AssertionError(f"evaluator exited {proc.returncode}:\n{path.read_text()}")
            owned = [owned_now(path) for path in logs]
            return all(owned) and sorted(owned[0] + owned[1]) == list(range(PARTITIONS))

        wait_until(
            balanced,
            "two evaluators sharing the 4 partitions",
            40,
            seen=lambda: events_of(logs),
        )
        produce(kafka_bootstrap, topics, base_ms=int(time.time() * 1000) - 600_000)
        expected = offline_counts(kafka_bootstrap, topics)
        total = sum(n for cell in expected.values() for row in cell.values() for n in row.values())
        assert total == 300  # k0..k299 labelled; k302 named "zebra", no class of its version

        def labelled() -> int:
            return sum(r.labelled for r in published(kafka_bootstrap, topics["monitoring"]))

        wait_until(
            lambda: labelled() >= total,
            f"{total} labelled pairs published",
            30,
            seen=lambda: f"{labelled()} pairs\n{events_of(logs)}",
        )
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, path in zip(procs, logs, strict=True):
            assert proc.wait(timeout=30) == 0, path.read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    records = published(kafka_bootstrap, topics["monitoring"])
    assert merge(records) == expected
    assert {r.evaluator_id for r in records} and len({r.evaluator_id for r in records}) == 2
    guarantee = flags[flags.index("--guarantee") + 1] if "--guarantee" in flags else None
    for path in logs:
        (started,) = log_events(path, "evaluator_started")
        assert started["guarantee"] == (guarantee or "at-least-once")
        assert started["shadow_topic"] is None  # no shadow topic: no shadow comparison, said once
        assert len(log_events(path, "evaluator_without_shadow")) == 1
        assert not log_events(path, "evaluator_transaction_aborted")
    stopped = [log_events(path, "evaluator_stopped")[-1] for path in logs]

    def total_of(field: str, reason: str | None = None) -> int:
        return sum(s[field] if reason is None else s[field].get(reason, 0) for s in stopped)

    # a rebalance while records flow (kafka-python's eager protocol revokes every partition)
    # may read predictions again from the oldest waiting one; at-least-once commits the labels
    # read before they move, exactly-once reads again all since its last transaction
    if guarantee is None:  # each label once, fleet-wide
        assert total_of("labels_read") == 300 + 10 + 4
        assert total_of("bad_labels", "malformed") == 2
        assert total_of("bad_labels", "no_key") == 1
        assert total_of("rejected", "unknown_class") == 1
    else:
        assert total_of("labels_read") >= 300 + 10 + 4
        assert total_of("bad_labels", "malformed") >= 2
        assert total_of("rejected", "unknown_class") >= 1
    assert total_of("bad_predictions", "malformed") >= 1
    assert total_of("bad_predictions", "no_key") >= 1


def test_topics_not_co_partitioned_end_the_start_in_one_line(
    kafka_bootstrap: str, topic_name: Callable[[str], str]
) -> None:
    topics = {role: topic_name(role) for role in ("predictions", "labels", "monitoring")}
    ensure_topics(
        kafka_bootstrap,
        [TopicSpec(topics["predictions"], 4), TopicSpec(topics["labels"], 2)],
    )
    done = subprocess.run(
        evaluate_command(kafka_bootstrap, topics, topic_name("group")),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == USER_ERROR, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "has 4 partitions" in lines[0] and "has 2" in lines[0], lines[0]


def test_a_partition_moving_mid_stream_is_read_again_from_its_oldest_waiting_prediction(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    """One evaluator joins half the labels; a second joins the group and the partitions are
    shared (taken away and given back, on kafka-python's eager rebalance); the predictions
    still waiting are read again from the committed offsets, so the rest of the labels join."""
    topics = {role: topic_name(role) for role in ("predictions", "labels", "monitoring")}
    ensure_topics(
        kafka_bootstrap,
        [TopicSpec(topics[r], PARTITIONS if r != "monitoring" else 1) for r in topics],
    )
    command = evaluate_command(kafka_bootstrap, topics, topic_name("group"))
    env = {**os.environ, "FORESTREAM_SUMMARY_INTERVAL_S": "0.5"}
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"evaluator-{i}.log" for i in range(2)]
    base_ms = int(time.time() * 1000) - 600_000
    send = Sender(kafka_bootstrap)

    def start(i: int) -> None:
        with logs[i].open("wb") as sink:
            procs.append(
                subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            )

    def labelled() -> int:
        return sum(r.labelled for r in published(kafka_bootstrap, topics["monitoring"]))

    def read_predictions() -> int:
        summaries = log_events(logs[0], "evaluator_summary")
        return summaries[-1]["predictions_read"] if summaries else 0

    try:
        start(0)
        wait_until(
            lambda: owned_now(logs[0]) == list(range(PARTITIONS)),
            "evaluator 0 owns all",
            seen=lambda: events_of(logs),
        )
        send_predictions(send, topics["predictions"], base_ms)
        wait_until(
            lambda: read_predictions() >= 400, "400 predictions read", seen=lambda: events_of(logs)
        )
        send_labels(send, topics["labels"], base_ms, range(200))
        wait_until(lambda: labelled() >= 200, "200 pairs published", seen=lambda: events_of(logs))
        start(1)

        def balanced() -> bool:
            owned = [owned_now(path) for path in logs]
            return all(owned) and sorted(owned[0] + owned[1]) == list(range(PARTITIONS))

        wait_until(
            balanced, "two evaluators sharing the partitions", 40, seen=lambda: events_of(logs)
        )
        send_labels(send, topics["labels"], base_ms, range(200, 300))
        wait_until(
            lambda: labelled() >= 300,
            "300 pairs published",
            seen=lambda: f"{labelled()} pairs\n{events_of(logs)}",
        )
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, path in zip(procs, logs, strict=True):
            assert proc.wait(timeout=30) == 0, path.read_text()[-3000:]
    finally:
        send.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    records = published(kafka_bootstrap, topics["monitoring"])
    assert merge(records) == offline_counts(kafka_bootstrap, topics)
    stopped = [log_events(path, "evaluator_stopped")[-1] for path in logs]
    assert sum(s["labels_read"] for s in stopped) == 300  # each label once, across the move
