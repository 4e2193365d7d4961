"""Monitoring through a real ``forestream worker``: drift flags and online accuracy in its reports.

One worker, one model trained by the real trainer CLI (so its metadata carries the drift
reference), three phases on one stream: records drawn from the training data (no drift flag;
late labels give the offline accuracy), then the same rows with one feature shifted by two
standard deviations (that feature, and only that one, is flagged).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.edge.interface import KAFKA_CLIENTS
from forestream.fleet.drift import FleetDrift, VersionDrift, store_metadata
from forestream.wire.messages import DriftReport
from tests.kafka_helpers import read_topic
from tests.waiting import wait_until
from tests.worker_support import (
    CATEGORICAL,
    NUMERIC,
    log_events,
    make_frame,
    row_json,
    wait_for_event,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL = "monitored"
WINDOW = 2000
SHIFTED = "x1"


def _run(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "forestream.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"forestream {args[0]} failed:\n{done.stdout}\n{done.stderr}"


def _send(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(bootstrap)
    try:
        for key, value in items:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=60)
    finally:
        producer.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Stream:
    def __init__(
        self, bootstrap: str, topics: dict[str, str], training: pd.DataFrame, metrics_port: int
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.training = training
        self.metrics_port = metrics_port
        self.sent = 0

    def gauge(self, name: str, **labels: str) -> float | None:
        """One sample of the worker's /metrics, ``None`` when the series is absent."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}")
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return None

    def send_rows(self, prefix: str, rows: pd.DataFrame) -> list[bytes]:
        """Feature records keyed ``prefix-i``; returns the keys."""
        keys = [f"{prefix}-{i}".encode() for i in range(len(rows))]
        values = [row_json(row) for _, row in rows.iterrows()]
        _send(self.bootstrap, self.topics["in"], list(zip(keys, values, strict=True)))
        self.sent += len(rows)
        return keys

    def report(self, condition: Callable[[DriftReport], bool], what: str) -> DriftReport:
        """The first report on the monitoring topic that satisfies ``condition``."""
        found: list[DriftReport] = []

        def seen(records: list) -> bool:
            found[:] = [
                r
                for r in (DriftReport.model_validate_json(rec.value) for rec in records)
                if condition(r)
            ]
            return bool(found)

        try:
            read_topic(self.bootstrap, self.topics["monitoring"], until=seen, timeout_s=60)
        except AssertionError as exc:
            raise AssertionError(f"no monitoring report with {what}: {exc}") from None
        return found[0]


@pytest.fixture(scope="module", params=KAFKA_CLIENTS)
def stream(
    request: pytest.FixtureRequest, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stream, Path, Path]]:
    """A trained + promoted model and one running worker with a 2,000-record drift window,
    once per Kafka client (the worker's group consumer, producer and labels reader)."""
    work = tmp_path_factory.mktemp("monitoring")
    run = uuid.uuid4().hex[:8]
    topics = {
        k: f"test.monitoring.{run}.{k}"
        for k in ("in", "out", "dlq", "models", "labels", "monitoring")
    }
    ensure_topics(kafka_bootstrap, [TopicSpec(topics["in"], 2), TopicSpec(topics["labels"], 2)])
    training = make_frame(3000, seed=7)
    csv = work / "train.csv"
    training.to_csv(csv, index=False)
    store = work / "store"
    _run(
        "train", "--data", str(csv), "--target", "target", "--trees", "10",
        "--name", MODEL, "--store", str(store), "--promote",
        "--bootstrap-servers", kafka_bootstrap, "--models-topic", topics["models"],
    )  # fmt: skip
    log_path = work / "worker.log"
    metrics_port = _free_port()
    env = {
        "FORESTREAM_LABELS_TOPIC": topics["labels"],
        "FORESTREAM_FOLLOW_LABELS": "true",  # this worker's own online accuracy (off by default)
        "FORESTREAM_MONITORING_TOPIC": topics["monitoring"],
        "FORESTREAM_KAFKA_CLIENT": str(request.param),
    }
    command = [
        sys.executable, "-m", "forestream.cli", "worker",
        "--bootstrap-servers", kafka_bootstrap,
        "--input-topic", topics["in"], "--output-topic", topics["out"],
        "--dlq-topic", topics["dlq"], "--models-topic", topics["models"],
        "--store", str(store), "--name", MODEL, "--group", f"monitoring-{run}",
        "--drift-window", str(WINDOW), "--report-interval-s", "1",
        "--max-batch", "200", "--log-format", "json", "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    with log_path.open("wb") as sink:
        proc = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=os.environ | env,
            cwd=ROOT,
        )
    try:
        wait_for_event(log_path, "partitions_assigned", proc, 60)
        wait_for_event(log_path, "labels_following", proc, 30)
        yield Stream(kafka_bootstrap, topics, training, metrics_port), store, log_path
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _sample(training: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return training.iloc[rng.integers(0, len(training), n)].reset_index(drop=True)


def test_training_distribution_raises_no_flag_and_labels_give_offline_accuracy(
    stream: tuple[Stream, Path, Path],
) -> None:
    s, store, _log = stream
    rows = _sample(s.training, WINDOW, seed=1)
    keys = s.send_rows("same", rows)
    read_topic(s.bootstrap, s.topics["out"], expected=s.sent, timeout_s=90)
    _send(
        s.bootstrap,
        s.topics["labels"],
        [(k, json.dumps({"label": t}).encode()) for k, t in zip(keys, rows["target"], strict=True)],
    )

    report = s.report(
        lambda r: "v1" in r.online and r.online["v1"].labelled == len(rows),
        f"{len(rows)} labelled predictions of v1",
    )
    assert report.records_in == s.sent and report.predicted == s.sent
    assert report.window_records >= WINDOW
    assert set(report.features) == set(NUMERIC + CATEGORICAL)
    assert not [f for f, d in report.features.items() if d.drifting], report.features

    from forestream.registry.local import LocalModelStore

    pipeline, _metadata = LocalModelStore(store).load_verified(MODEL, "v1")
    offline = float(np.mean(pipeline.predict(rows[NUMERIC + CATEGORICAL]) == rows["target"]))
    assert report.online["v1"].accuracy == pytest.approx(offline, abs=1e-12)
    assert report.latency_p50_ms is not None and report.latency_p99_ms is not None
    # the same figures on the Prometheus endpoint (set with each report)
    assert s.gauge("forestream_online_labelled", version="v1") == len(rows)
    assert s.gauge("forestream_online_accuracy", version="v1") == pytest.approx(offline)
    assert s.gauge("forestream_feature_drifting", feature=SHIFTED) == 0.0
    # fleet drift counts: every record scored is in exactly one window, bin and class count
    assert report.fleet_window_s == 60.0
    assert sum(w.records for w in report.windows) == report.predicted
    assert {w.model_version for w in report.windows} == {"v1"}
    for w in report.windows:
        assert sum(w.predicted.values()) == w.records, w
        assert set(w.features) == set(NUMERIC + CATEGORICAL)
        assert all(sum(counts) == w.records for counts in w.features.values()), w
    fleet = _fleet(store, report)
    assert fleet.records == s.sent and fleet.drifting_features == [], fleet.features
    assert fleet.prediction is not None and not fleet.prediction.drifting, fleet.prediction


def _fleet(store: Path, report: DriftReport) -> VersionDrift:
    """v1's fleet drift from one report, its reference read from the store by version."""
    from forestream.registry.local import LocalModelStore

    merged = FleetDrift(store_metadata(LocalModelStore(store), MODEL))
    merged.add(report)
    return merged.drift("v1")


def test_one_feature_shifted_by_two_std_is_flagged_alone(
    stream: tuple[Stream, Path, Path],
) -> None:
    s, store, log_path = stream
    rows = _sample(s.training, WINDOW, seed=2)
    rows[SHIFTED] = rows[SHIFTED] + 2 * s.training[SHIFTED].std()
    s.send_rows("shifted", rows)
    sent = s.sent
    report = s.report(
        lambda r: r.records_in >= sent and any(d.drifting for d in r.features.values()),
        "a drift flag after the shifted records",
    )
    flagged = {f for f, d in report.features.items() if d.drifting}
    assert flagged == {SHIFTED}, report.features
    others = max(d.psi for f, d in report.features.items() if f != SHIFTED)
    assert report.features[SHIFTED].psi > 10 * others, report.features
    wait_until(lambda: log_events(log_path, "drift_detected"), "a drift_detected log line", 10)
    assert [e["feature"] for e in log_events(log_path, "drift_detected")] == [SHIFTED]
    assert s.gauge("forestream_feature_drifting", feature=SHIFTED) == 1.0
    assert s.gauge("forestream_feature_drifting", feature="x2") == 0.0
    # the window counts hold both phases: half shifted is still a flag on that feature alone
    fleet = _fleet(store, report)
    assert fleet.records == report.predicted and fleet.drifting_features == [SHIFTED]
