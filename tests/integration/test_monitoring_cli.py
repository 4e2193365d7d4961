"""`forestream monitor --once` as a user runs it, against reports on the real broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.wire.messages import (
    Decision,
    DriftReport,
    EvaluationCounts,
    FeatureDrift,
    ModelEvent,
    ServingRef,
    ShadowCounts,
    ShadowEvent,
    VersionAccuracy,
    shadow_key,
)

pytestmark = pytest.mark.usefixtures("kafka_client")  # every test on both clients

CLI = [sys.executable, "-m", "forestream"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, env=os.environ.copy()
    )


def report(worker: str, at: int, records_in: int, version: str = "v1") -> DriftReport:
    return DriftReport(
        model_name="penguins",
        model_version=version,
        worker_id=worker,
        window=10_000,
        window_records=min(records_in, 10_000),
        at=at,
        features={
            "bill_length_mm": FeatureDrift(
                psi=0.91, missing_share=0.0, unseen_share=0.0, drifting=True
            ),
            "island": FeatureDrift(psi=0.03, missing_share=0.01, unseen_share=0.02, drifting=False),
        },
        throughput=123.0,
        records_in=records_in,
        predicted=records_in - 7,
        dead_lettered={"not_json": 5, "missing_feature": 2},
        latency_p50_ms=4.2,
        latency_p99_ms=31.5,
        online={version: VersionAccuracy(labelled=400, accuracy=0.9425, macro_f1=0.9312)},
    )


def fleet_records(now: int) -> list[tuple[bytes, bytes]]:
    """Two evaluators' deltas for served v2 (one window each), and one shadow delta of v3."""
    counts = [
        EvaluationCounts(
            evaluator_id=ident, model_version="v2", window_start=now - now % 60_000,
            window_s=60.0, labelled=sum(sum(r.values()) for r in confusion.values()),
            confusion=confusion, at=now,
        )
        for ident, confusion in (
            ("e-0", {"adelie": {"adelie": 30, "gentoo": 2}}),
            ("e-1", {"gentoo": {"gentoo": 17, "adelie": 1}}),
        )
    ]  # fmt: skip
    shadow = ShadowCounts(
        evaluator_id="e-0", candidate_version="v3", served_version="v2",
        window_start=now - now % 60_000, window_s=60.0, labelled=40, agreed=36,
        candidate_confusion={"adelie": {"adelie": 39, "gentoo": 1}},
        served_confusion={"adelie": {"adelie": 38, "gentoo": 2}}, at=now,
    )  # fmt: skip
    return [(b"v2/0", c.model_dump_json().encode()) for c in counts] + [
        (b"v3/shadow/v2/0", shadow.model_dump_json().encode())
    ]


def models_records(now: int) -> list[tuple[bytes, bytes]]:
    """v2 promoted by a rule over v1, then v3 announced as its shadow."""
    ref = ServingRef(version="v2", sha256="0" * 64)
    promoted = ModelEvent(
        kind="promoted", name="penguins", version="v2", sha256="0" * 64,
        created_at="2026-12-05T00:00:00Z", serving=ref, at=now,
        decision=Decision(
            by="host-1-evaluator", rule="labelled>=40 and agreement>=0.9",
            evidence={"labelled": 41, "agreement": 0.951},
        ),
    )  # fmt: skip
    shadow = ShadowEvent(name="penguins", shadow=ServingRef(version="v3", sha256="1" * 64), at=now)
    return [
        (b"penguins", promoted.model_dump_json().encode()),
        (shadow_key("penguins").encode(), shadow.model_dump_json().encode()),
    ]


def test_once_shows_the_newest_report_of_each_worker_and_the_fleet(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    topic, models = topic_name("monitoring"), topic_name("models")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=2), TopicSpec(models, 1)])
    now = int(time.time() * 1000)
    producer = make_producer(kafka_bootstrap)
    for key, value in fleet_records(now):
        producer.send(topic, key=key, value=value)
    for key, value in models_records(now):
        producer.send(models, key=key, value=value)
    for r in (report("w-0", now - 2_000, 1_111), report("w-0", now, 2_222, "v2")):
        producer.send(topic, key=r.worker_id.encode(), value=r.model_dump_json().encode())
    newest_w1 = report("w-1", now, 3_333)
    producer.send(topic, key=b"w-1", value=newest_w1.model_dump_json().encode())
    producer.send(topic, key=b"w-9", value=b"{not a report")
    producer.flush(30)
    producer.close()

    out = run(
        "monitor", "--once", "--monitoring-topic", topic, "--models-topic", models,
        "--name", "penguins", "--store", str(tmp_path / "no-store"),
    )  # fmt: skip

    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "w-0" in text and "w-1" in text and "w-9" not in text
    assert "2,222" in text and "3,333" in text
    assert "1,111" not in text  # w-0's older report was replaced
    assert "penguins@v2" in text and "penguins@v1" in text
    assert "bill_length_mm 0.91!" in text  # drifting feature first, flagged
    assert "not_json 5" in text and "missing_feature 2" in text
    assert "4.2" in text and "31.5" in text
    assert "acc 0.943" in text and "F1 0.931" in text
    assert "2 workers" in text
    assert "1 malformed reports skipped" in text  # the evaluators' counts are not reports
    # the fleet: served v2 summed over both evaluators (47 of 50), shadow v3 on the same records
    fleet = text[text.index("fleet — model penguins") :]
    v2 = next(line for line in fleet.splitlines() if "│ v2 " in line)
    assert "served" in v2 and "50" in v2 and "0.940" in v2, v2
    v3 = next(line for line in fleet.splitlines() if "│ v3 " in line)
    assert "shadow" in v3 and "40" in v3 and "0.975 (served 0.950)" in v3 and "0.900" in v3, v3
    assert "v2 promoted by rule `labelled>=40 and agreement>=0.9`" in fleet
    assert "labelled 41, agreement 0.951" in fleet


def test_once_on_a_missing_topic_is_a_one_line_user_error(
    kafka_bootstrap: str, topic_name: Callable[[str], str]
) -> None:
    topic = topic_name("nobody-published")
    out = run("monitor", "--once", "--monitoring-topic", topic)
    assert out.returncode == 2
    assert out.stderr.startswith("error: monitoring topic")
    assert "Traceback" not in out.stderr
