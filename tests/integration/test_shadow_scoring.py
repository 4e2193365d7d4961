"""Shadow scoring end to end: one worker serves v1 while ``models shadow v2`` is announced with
a share of 0.5; ``models shadow --stop`` ends it.

The output topic must hold exactly what a run without a shadow would (every key once, v1's
labels); the shadow topic v2's predictions for exactly the keys the share picks, in the
prediction wire format, each carrying v1's prediction for the same record (``served``). One
client (kafka-python): the shadow path is the worker's own, the edge contract is tested
elsewhere. Batches are kept 400 ms apart (``--max-wait-ms``) so the shadow thread is never busy:
a skip here would be a bug, not load.

Then ``forestream evaluate`` joins labels for those keys with the shadow topic: its published
``ShadowCounts`` must equal the counts computed here from the shadow topic and the labels.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.fleet.counts import ShadowTotals
from forestream.wire.messages import Prediction, ShadowCounts
from forestream.worker.decoding import decode_batch
from forestream.worker.evaluator.counts import merge_shadow
from forestream.worker.scoring import score_frame
from forestream.worker.shadow import selects
from tests.kafka_helpers import read_topic
from tests.waiting import wait_until
from tests.worker_support import (
    WorkerGroup,
    log_events,
    make_frame,
    publish_promotion,
    row_json,
    save_model,
    wait_for_event,
    worker_command,
    worker_env,
)

ROOT = Path(__file__).resolve().parents[2]
NAME = "shadowed"
N, MORE = 200, 40
SHARE = 0.5


def _labels(pipeline: Any, metadata: Any, values: list[bytes]) -> list[str]:
    """What the served path computes for these inputs (sklearn's own trees)."""
    decoded = decode_batch(values, metadata.feature_schema)
    assert not decoded.rejects
    return list(score_frame(pipeline, decoded.frame, [str(c) for c in metadata.classes]).labels)


def _produce(bootstrap: str, topic: str, rows: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(bootstrap)
    for key, value in rows:
        producer.send(topic, key=key, value=value)
    producer.flush(timeout=30)
    producer.close()


def test_shadow_scores_its_share_beside_the_served_version(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    store, frame = tmp_path / "store", make_frame(300)
    v1_pipeline, v1 = save_model(store, NAME, frame, trees=5)
    v2_pipeline, v2 = save_model(store, NAME, frame.sample(frac=1.0, random_state=1), trees=3)
    topics = {k: topic_name(k) for k in ("in", "out", "dlq", "models", "labels")}
    shadow_topic = topic_name("shadow")
    ensure_topics(kafka_bootstrap, [TopicSpec(topics["in"], 1)])
    publish_promotion(kafka_bootstrap, topics["models"], v1)
    where = ["--name", NAME, "--store", str(store), "--models-topic", topics["models"]]

    def cli(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "forestream.cli", "models", "shadow", *args, *where],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=worker_env(),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    cli(v2.version)
    command = worker_command(kafka_bootstrap, topics, store, NAME, topic_name("g"))
    group = WorkerGroup(command, tmp_path)
    group.start(1, "--shadow-topic", shadow_topic, "--shadow-share", str(SHARE),
                "--max-wait-ms", "400")  # fmt: skip
    log, proc = group.log_paths[0], group.procs[0]
    try:
        wait_for_event(log, "shadow_in_use", proc, 60)
        rows = [(f"s-{i}".encode(), row_json(r)) for i, (_, r) in enumerate(frame.iterrows())]
        first = rows[:N]
        _produce(kafka_bootstrap, topics["in"], first)
        chosen = {key for key, _ in first if selects(key, SHARE)}
        assert 0 < len(chosen) < N

        out = read_topic(kafka_bootstrap, topics["out"], expected=N, timeout_s=30)
        served = {r.key: Prediction.model_validate_json(r.value) for r in out}
        assert len(out) == len(served) == N, "every key exactly once on the output topic"
        v1_labels = dict(
            zip([k for k, _ in first], _labels(v1_pipeline, v1, [v for _, v in first]), strict=True)
        )
        assert {k: p.prediction for k, p in served.items()} == v1_labels
        assert {p.model_version for p in served.values()} == {v1.version}

        shadowed = read_topic(kafka_bootstrap, shadow_topic, expected=len(chosen), timeout_s=30)
        shadow = {r.key: Prediction.model_validate_json(r.value) for r in shadowed}
        assert set(shadow) == chosen and len(shadowed) == len(chosen), log_events(
            log, "shadow_batch_skipped"
        )
        assert {p.model_version for p in shadow.values()} == {v2.version}
        values = dict(first)
        keys = sorted(chosen)
        v2_labels = _labels(v2_pipeline, v2, [values[k] for k in keys])
        assert [shadow[k].prediction for k in keys] == v2_labels
        for key in keys:  # joinable with the served prediction: the same source record
            assert shadow[key].source == served[key].source
            assert shadow[key].event_time == served[key].event_time
            assert shadow[key].served is not None  # and it carries that prediction
            assert shadow[key].served.model_dump() == {  # type: ignore[union-attr]
                "version": v1.version,
                "prediction": v1_labels[key],
            }

        cli("--stop")
        wait_for_event(log, "shadow_stopped", proc, 30)
        later = rows[N : N + MORE]
        _produce(kafka_bootstrap, topics["in"], later)
        read_topic(kafka_bootstrap, topics["out"], expected=N + MORE, timeout_s=30)
        group.stop(0)  # its shadow producer closed: whatever it sent is on the topic now
        assert len(read_topic(kafka_bootstrap, shadow_topic, timeout_s=30)) == len(chosen)
        assert not log_events(log, "shadow_batch_skipped")
        evaluate_shadow(kafka_bootstrap, topics, shadow_topic, topic_name, tmp_path, first, v2)
    finally:
        group.kill_all()


def evaluate_shadow(
    bootstrap: str,
    topics: dict[str, str],
    shadow_topic: str,
    topic_name: Callable[[str], str],
    tmp_path: Path,
    first: list[tuple[bytes, bytes]],
    candidate: Any,
) -> None:
    """Label every first key (classes in turn: some right, some wrong for either version), run
    one evaluator, and compare its ShadowCounts with the join computed from the topics."""
    classes = [str(c) for c in candidate.classes]
    _produce(bootstrap, topics["labels"], [
        (key, json.dumps({"label": classes[i % len(classes)]}).encode())
        for i, (key, _) in enumerate(first)
    ])  # fmt: skip
    monitoring = topic_name("monitoring")
    ensure_topics(bootstrap, [TopicSpec(monitoring, 1)])
    shadows = {r.key: Prediction.model_validate_json(r.value) for r in read_topic(
        bootstrap, shadow_topic)}  # fmt: skip
    expected, shadowed = ShadowTotals(), len(shadows)
    for r in read_topic(bootstrap, topics["labels"]):
        held = shadows.pop(r.key, None)
        if held is None or held.served is None:
            continue
        label = json.loads(r.value)["label"]
        row = expected.candidate.setdefault(label, {})
        row[held.prediction] = row.get(held.prediction, 0) + 1
        row = expected.served.setdefault(label, {})
        row[held.served.prediction] = row.get(held.served.prediction, 0) + 1
        expected.labelled += 1
        expected.agreed += held.prediction == held.served.prediction
    assert expected.labelled == shadowed > 0  # every shadowed key is labelled

    log = tmp_path / "evaluator.log"
    command = [
        sys.executable, "-m", "forestream.cli", "evaluate",
        "--bootstrap-servers", bootstrap,
        "--output-topic", topics["out"],
        "--labels-topic", topics["labels"],
        "--shadow-topic", shadow_topic,
        "--monitoring-topic", monitoring,
        "--group", topic_name("evaluators"),
        "--publish-interval-s", "0.5",
        "--log-format", "json",
    ]  # fmt: skip

    def published() -> list[ShadowCounts]:
        return [
            ShadowCounts.model_validate_json(r.value)
            for r in read_topic(bootstrap, monitoring)
            if b'"kind":"shadow_counts"' in r.value
        ]

    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_until(
            lambda: sum(r.labelled for r in published()) >= expected.labelled,
            f"{expected.labelled} labelled shadow records published",
            30,
            seen=lambda: log.read_text()[-3000:],
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = published()
    served_version = next(iter(r.served_version for r in records))
    merged = merge_shadow(records)
    assert merged == {(candidate.version, served_version): expected}
    assert merged[candidate.version, served_version].agreement == pytest.approx(
        expected.agreed / expected.labelled
    )
