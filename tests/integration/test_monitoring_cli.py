"""`forestream monitor --once` as a user runs it, against reports on the real broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.wire.messages import DriftReport, FeatureDrift, VersionAccuracy

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


def test_once_shows_the_newest_report_of_each_worker(
    kafka_bootstrap: str, topic_name: Callable[[str], str]
) -> None:
    topic = topic_name("monitoring")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=2)])
    now = int(time.time() * 1000)
    producer = make_producer(kafka_bootstrap)
    for r in (report("w-0", now - 2_000, 1_111), report("w-0", now, 2_222, "v2")):
        producer.send(topic, key=r.worker_id.encode(), value=r.model_dump_json().encode())
    newest_w1 = report("w-1", now, 3_333)
    producer.send(topic, key=b"w-1", value=newest_w1.model_dump_json().encode())
    producer.send(topic, key=b"w-9", value=b"{not a report")
    producer.flush(30)
    producer.close()

    out = run("monitor", "--once", "--monitoring-topic", topic)

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
    assert "1 malformed reports skipped" in text


def test_once_on_a_missing_topic_is_a_one_line_user_error(
    kafka_bootstrap: str, topic_name: Callable[[str], str]
) -> None:
    topic = topic_name("nobody-published")
    out = run("monitor", "--once", "--monitoring-topic", topic)
    assert out.returncode == 2
    assert out.stderr.startswith("error: monitoring topic")
    assert "Traceback" not in out.stderr
