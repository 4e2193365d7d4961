"""Acceptance of ``forestream worker`` against a real broker: every input accounted for.

Worker processes are real ``forestream worker`` subprocesses in one consumer group on a
4-partition input topic, serving a model saved and promoted through the model store and
announced on the models topic, the same way production does it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.wire import headers
from forestream.wire.messages import Prediction
from tests.feeding import PacedFeeder, listed
from tests.kafka_helpers import read_topic
from tests.worker_support import (
    CATEGORICAL,
    NUMERIC,
    WorkerGroup,
    log_events,
    make_frame,
    malformed_records,
    owned_partitions,
    publish_promotion,
    row_json,
    save_model,
    worker_command,
)

pytestmark = pytest.mark.usefixtures("kafka_client")  # every test on both clients

PARTITIONS = 4
MODEL = "acceptance"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    """(store, pipeline, metadata): one small saved and promoted model for the whole module."""
    store = tmp_path_factory.mktemp("store")
    pipeline, metadata = save_model(store, MODEL, make_frame(300, seed=1), trees=15)
    return store, pipeline, metadata


@pytest.fixture
def workers_for(
    kafka_bootstrap: str,
    topic_name: Callable[[str], str],
    trained: tuple[Path, Any, Any],
    tmp_path: Path,
) -> Iterator[Callable[..., tuple[WorkerGroup, dict[str, str]]]]:
    """Factory: fresh topics, the model promoted on them, and ``count`` workers in one group."""
    started: list[WorkerGroup] = []

    def start(count: int, *extra: str, wait: bool = True) -> tuple[WorkerGroup, dict[str, str]]:
        store, _pipeline, metadata = trained
        topics = {k: topic_name(k) for k in ("in", "out", "dlq", "models")}
        ensure_topics(kafka_bootstrap, [TopicSpec(topics["in"], PARTITIONS)])
        publish_promotion(kafka_bootstrap, topics["models"], metadata)
        command = worker_command(
            kafka_bootstrap, topics, store, MODEL, topic_name("group"), "--max-batch", "50", *extra
        )
        workers = WorkerGroup(command, tmp_path)
        started.append(workers)
        workers.start(count)
        if wait:
            workers.wait_balanced(PARTITIONS)
        return workers, topics

    try:
        yield start
    finally:
        for workers in started:
            workers.kill_all()


def valid_inputs(n: int, seed: int) -> tuple[list[bytes], pd.DataFrame]:
    frame = make_frame(n, seed=seed).reset_index(drop=True)
    return [f"valid-{seed}-{i}".encode() for i in range(n)], frame


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    producer = make_producer(bootstrap, max_request_size=4 * 1024 * 1024)
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()


def feeder(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes, bytes | None]],
    rate_per_s: int,
    **kw: Any,
) -> PacedFeeder:
    """``records`` offered at ``rate_per_s`` in a background thread, so workers are killed or
    stopped while input is still arriving (``finish_on_exit=False``: the rest is not sent)."""
    return PacedFeeder(
        bootstrap,
        topic,
        listed(records),
        rate_per_s,
        limit=len(records),
        max_request_size=4 * 1024 * 1024,
        **kw,
    )


def http_get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read().decode()


def offline(pipeline: Any, frame: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """What the same pipeline predicts for these rows outside Kafka."""
    features = frame[NUMERIC + CATEGORICAL]
    return [str(p) for p in pipeline.predict(features)], pipeline.predict_proba(features)


def header(record: ConsumerRecord, name: str) -> str:
    return dict(record.headers)[name].decode()


def test_two_workers_account_for_every_input(
    kafka_bootstrap: str,
    trained: tuple[Path, Any, Any],
    workers_for: Callable[..., tuple[WorkerGroup, dict[str, str]]],
) -> None:
    _store, pipeline, metadata = trained
    workers, topics = workers_for(2)
    keys, frame = valid_inputs(400, seed=7)
    bad = malformed_records()
    bad_keys = [f"bad-{i}".encode() for i in range(len(bad))]
    records = [(k, row_json(row)) for k, (_, row) in zip(keys, frame.iterrows(), strict=True)]
    records += [(k, value) for k, (value, _code) in zip(bad_keys, bad, strict=True)]
    produce(kafka_bootstrap, topics["in"], records)

    dlq = read_topic(kafka_bootstrap, topics["dlq"], expected=len(bad), settle_s=3.0)
    predictions = read_topic(
        kafka_bootstrap,
        topics["out"],
        until=lambda got: {r.key for r in got} >= set(keys),
        timeout_s=90,
    )

    assert len(dlq) == len(bad)
    expected_dlq = {k: (v, code) for k, (v, code) in zip(bad_keys, bad, strict=True)}
    for record in dlq:
        value, code = expected_dlq[record.key]
        assert header(record, headers.ERROR) == code, header(record, headers.ERROR_DETAIL)
        assert record.value == value, "a dead letter must carry the original bytes"
        assert header(record, headers.SOURCE_TOPIC) == topics["in"]
        assert header(record, headers.MODEL_VERSION) == metadata.version
        assert int(header(record, headers.SOURCE_OFFSET)) >= 0
        assert record.partition == int(header(record, headers.SOURCE_PARTITION)), (
            "a dead letter lands on its input's partition (same key, the Java partitioner)"
        )
    assert Counter(header(r, headers.ERROR) for r in dlq) == Counter(c for _, c in bad)

    labels, probabilities = offline(pipeline, frame)
    row_of = {k: i for i, k in enumerate(keys)}
    assert {r.key for r in predictions} <= set(keys), "a malformed record was predicted"
    for record in predictions:
        prediction = Prediction.model_validate_json(record.value)
        i = row_of[record.key]
        assert prediction.prediction == labels[i]
        assert prediction.model_version == metadata.version
        assert prediction.source.topic == topics["in"]
        assert record.partition == prediction.source.partition, (
            "a prediction lands on its input's partition (same key, the Java partitioner)"
        )
        got = [prediction.probabilities[c] for c in metadata.classes]
        assert np.allclose(got, probabilities[i])
    print(f"predictions: {len(predictions)} for {len(keys)} valid inputs")
    scorers = [p for p in workers.log_paths if log_events(p, "partitions_assigned")]
    assert len(scorers) == 2


@pytest.mark.parametrize("pipelining", ["default", "flipped"])
def test_survivor_takes_over_after_sigkill(
    kafka_bootstrap: str,
    workers_for: Callable[..., tuple[WorkerGroup, dict[str, str]]],
    kafka_client: str,
    pipelining: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both shapes of the batch cycle lose nothing: pipelined (the default) on librdkafka and
    serial ("flipped") on kafka-python in every run; the other two only with ``--clients all``
    (tests/conftest.py COVERED_ELSEWHERE): each shape is the same code on either client, whose
    commits (awaited or not) the edge suite tests on both."""
    if pipelining == "flipped":
        monkeypatch.setenv("FORESTREAM_PIPELINE", "false")
    workers, topics = workers_for(2)
    keys, frame = valid_inputs(600, seed=8)
    records = [(k, row_json(row)) for k, (_, row) in zip(keys, frame.iterrows(), strict=True)]
    with feeder(kafka_bootstrap, topics["in"], records, 800):
        read_topic(kafka_bootstrap, topics["out"], expected=60, timeout_s=60)
        victim = workers.procs[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)

    predictions = read_topic(
        kafka_bootstrap,
        topics["out"],
        until=lambda got: {r.key for r in got} >= set(keys),
        timeout_s=120,
    )
    counts = Counter(r.key for r in predictions)
    duplicates = sum(n - 1 for n in counts.values())
    print(f"predictions: {len(predictions)} for {len(keys)} inputs, duplicates: {duplicates}")
    assert set(counts) == set(keys)
    assert workers.procs[1].poll() is None, "the survivor must still be running"
    assert len(owned_partitions(workers.log_paths[1])) == PARTITIONS
    pipelined = pipelining == "default"
    started = log_events(workers.log_paths[1], "worker_started")
    assert started and started[0]["pipelined"] is pipelined, started[:1]


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_sigterm_exits_zero_with_offsets_committed_after_last_scored(
    kafka_bootstrap: str,
    workers_for: Callable[..., tuple[WorkerGroup, dict[str, str]]],
    guarantee: str,
) -> None:
    """Exactly-once too: the last transaction is committed (or not begun) before the exit,
    and what is readable (read_committed) ends exactly at the committed offsets."""
    workers, topics = workers_for(1, "--metrics-port", "0", "--guarantee", guarantee)
    keys, frame = valid_inputs(3000, seed=9)
    bad = malformed_records()
    records: list[tuple[bytes, bytes | None]] = []
    for i, (key, (_, row)) in enumerate(zip(keys, frame.iterrows(), strict=True)):
        records.append((key, row_json(row)))
        if i % 50 == 0:
            records.append((b"bad", bad[(i // 50) % len(bad)][0]))
    with feeder(kafka_bootstrap, topics["in"], records, 2000, finish_on_exit=False):
        read_topic(kafka_bootstrap, topics["out"], expected=300, timeout_s=60)
        [serving] = log_events(workers.log_paths[0], "metrics_serving")
        ready = json.loads(http_get(serving["port"], "/readyz"))
        assert ready["status"] == "ready" and len(ready["partitions"]) == PARTITIONS, ready
        assert "forestream" in http_get(serving["port"], "/metrics")
        worker = workers.procs[0]
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("worker did not exit within 60s of SIGTERM") from None
    log = workers.log_paths[0].read_text()
    assert code == 0, log
    assert log_events(workers.log_paths[0], "worker_final_summary"), log

    last_scored: dict[int, int] = {}
    outputs = read_topic(kafka_bootstrap, topics["out"]) + read_topic(
        kafka_bootstrap, topics["dlq"]
    )
    for record in outputs:
        if record.topic == topics["out"]:
            source = json.loads(record.value)["source"]
            partition, offset = source["partition"], source["offset"]
        else:
            partition = int(header(record, headers.SOURCE_PARTITION))
            offset = int(header(record, headers.SOURCE_OFFSET))
        last_scored[partition] = max(last_scored.get(partition, -1), offset)

    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=workers.command[workers.command.index("--group") + 1],
        enable_auto_commit=False,
    )
    try:
        committed = {
            p: consumer.committed(TopicPartition(topics["in"], p)) for p in range(PARTITIONS)
        }
        ends = consumer.end_offsets([TopicPartition(topics["in"], p) for p in range(PARTITIONS)])
    finally:
        consumer.close(autocommit=False)
    expected = {p: (last_scored[p] + 1 if p in last_scored else None) for p in range(PARTITIONS)}
    print(f"committed {committed}, input end offsets {ends}")
    assert committed == expected


def test_processes_flag_runs_a_supervised_group_that_stops_cleanly(
    kafka_bootstrap: str,
    workers_for: Callable[..., tuple[WorkerGroup, dict[str, str]]],
) -> None:
    """``--processes 2``: one command, two children in the group, one SIGTERM stops both."""
    workers, topics = workers_for(1, "--processes", "2", wait=False)
    keys, frame = valid_inputs(200, seed=10)
    records = [(k, row_json(row)) for k, (_, row) in zip(keys, frame.iterrows(), strict=True)]
    produce(kafka_bootstrap, topics["in"], records)
    read_topic(
        kafka_bootstrap,
        topics["out"],
        until=lambda got: {r.key for r in got} >= set(keys),
        timeout_s=90,
    )

    supervisor = workers.procs[0]
    supervisor.send_signal(signal.SIGTERM)
    try:
        code = supervisor.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("supervisor did not exit within 60s of SIGTERM") from None
    children_log = workers.log_paths[0]  # the children inherit the supervisor's stderr
    assert code == 0, children_log.read_text()
    assert len(log_events(children_log, "worker_started")) == 2
    assert len(log_events(children_log, "worker_final_summary")) == 2


def test_rebalance_publishes_and_commits_the_batch_in_hand(
    kafka_bootstrap: str,
    workers_for: Callable[..., tuple[WorkerGroup, dict[str, str]]],
) -> None:
    """A worker holding an open batch when a second one joins finishes it, commits it, and
    hands over: the newcomer starts after it, so nothing is scored twice."""
    # the batch would stay open for 60 s (a fixed window: an adaptive one closes a drained
    # small batch at once): only the rebalance can close it in this test
    workers, topics = workers_for(
        1, "--max-wait-ms", "60000", "--max-batch", "100000", "--no-adaptive-window"
    )
    keys, frame = valid_inputs(200, seed=12)
    records = [(k, row_json(row)) for k, (_, row) in zip(keys, frame.iterrows(), strict=True)]
    produce(kafka_bootstrap, topics["in"], records)
    time.sleep(2)  # let the first worker take the records into its open batch

    workers.start(1)
    workers.wait_balanced(PARTITIONS)
    predictions = read_topic(
        kafka_bootstrap,
        topics["out"],
        until=lambda got: {r.key for r in got} >= set(keys),
        timeout_s=50,
        settle_s=3.0,
    )
    revoked = log_events(workers.log_paths[0], "partitions_revoked")
    # (a start-up rebalance may revoke and re-assign the same partitions before any record:
    # the one that matters is the newcomer's, with the 200 records held)
    assert any(e["pending"] > 0 for e in revoked), f"no revocation found a batch in hand: {revoked}"
    counts = Counter(r.key for r in predictions)
    assert set(counts) == set(keys)
    assert max(counts.values()) == 1, f"{len(predictions) - len(keys)} scored twice"
    assert not log_events(workers.log_paths[0], "commit_on_revocation_failed")
