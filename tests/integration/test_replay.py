"""``forestream replay`` against a real broker: bounded, group-less, same batch path as live.

One module-wide scenario: 10k records with known timestamps, scored live by a worker with v1;
then replays by offset and by time, with v1 and v2, and one interrupted and resumed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.registry.local import LocalModelStore
from forestream.wire.messages import Prediction
from tests.kafka_helpers import read_topic
from tests.worker_support import (
    make_frame,
    publish_promotion,
    row_json,
    save_model,
    worker_command,
    worker_env,
)

pytestmark = pytest.mark.usefixtures("kafka_client")  # every test on both clients

RECORDS = 10_000
PARTITIONS = 4
BASE_MS = 1_700_000_000_000
STEP_MS = 10
KEEP_FOREVER = {"retention.ms": "-1"}
"""The records' times are in 2023: under the broker's default 7-day retention its next check
(every 5 minutes) deletes them all, mid-module (replays then read nothing)."""
MODEL = "replayed"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Scenario:
    bootstrap: str
    topics: dict[str, str]
    store: Path
    group: str
    live: dict[bytes, Prediction]


def _forestream(*args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forestream", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=worker_env(),
        cwd=ROOT,
    )


def _by_key(records: list[Any]) -> dict[bytes, Prediction]:
    return {r.key: Prediction.model_validate_json(r.value) for r in records}


@pytest.fixture(scope="module")
def scenario(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    run = str(int(time.time() * 1000))
    topics = {k: f"test.replay.{run}.{k}" for k in ("in", "out", "dlq", "models")}
    store = tmp_path_factory.mktemp("replay-store")
    _, v1 = save_model(store, MODEL, make_frame(300, seed=1), trees=10)
    save_model(store, MODEL, make_frame(300, seed=2), trees=12)  # v2, promoted below...
    LocalModelStore(store).promote(MODEL, v1.version)  # ...then v1 again: live serves v1
    ensure_topics(kafka_bootstrap, [TopicSpec(topics["in"], PARTITIONS, KEEP_FOREVER)])
    publish_promotion(kafka_bootstrap, topics["models"], v1)

    frame = make_frame(RECORDS, seed=9)
    producer = make_producer(kafka_bootstrap)
    for i, (_, row) in enumerate(frame.iterrows()):
        producer.send(
            topics["in"],
            key=f"k{i}".encode(),
            value=row_json(row),
            timestamp_ms=BASE_MS + i * STEP_MS,
        )
    producer.flush(timeout=60)
    producer.close()

    group = f"live-{run}"
    command = worker_command(
        kafka_bootstrap, topics, store, MODEL, group, "--max-records", str(RECORDS)
    )
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=240, env=worker_env(), cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    live = _by_key(read_topic(kafka_bootstrap, topics["out"], expected=RECORDS, timeout_s=60))
    assert len(live) == RECORDS
    yield Scenario(kafka_bootstrap, topics, store, group, live)


@pytest.fixture
def fresh_output(scenario: Scenario, kafka_client: str) -> Callable[[str], str]:
    """Output topic names of this test on this client, checked absent from the broker.

    The scenario is shared by both clients' runs of a test. When the output names were too,
    the second run read the first run's records beside its own (each record twice), and its
    interrupted replay was sent SIGINT as soon as it started (the first run's output was
    already there), while Python was still importing: killed by the signal, exit -2.
    """

    def make(suffix: str) -> str:
        name = f"{scenario.topics['in']}.{kafka_client}.{suffix}"
        admin = KafkaAdminClient(bootstrap_servers=scenario.bootstrap)
        try:
            assert name not in admin.list_topics(), f"output topic {name!r} already exists"
        finally:
            admin.close()
        return name

    return make


def _replay(s: Scenario, output: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return _forestream(
        "replay",
        "--bootstrap-servers", s.bootstrap,
        "--input-topic", s.topics["in"],
        "--output-topic", output,
        "--store", str(s.store),
        "--name", MODEL,
        "--checkpoint", str(s.store / f"{output}.checkpoint.json"),
        *flags,
    )  # fmt: skip


def _committed(s: Scenario) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=s.bootstrap)
    try:
        offsets = admin.list_group_offsets(s.group)[s.group]
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()}


def test_replay_with_the_live_version_reproduces_the_live_predictions(
    scenario: Scenario, fresh_output: Callable[[str], str]
) -> None:
    before = _committed(scenario)
    output = fresh_output("replay-v1")
    done = _replay(scenario, output, "--model-version", "v1")
    assert done.returncode == 0, done.stderr
    assert f"replayed {RECORDS} records with v1" in done.stdout
    replayed = _by_key(read_topic(scenario.bootstrap, output, expected=RECORDS, settle_s=1))
    assert replayed.keys() == scenario.live.keys()
    for key, prediction in replayed.items():
        live = scenario.live[key]
        assert (prediction.prediction, prediction.probabilities, prediction.source) == (
            live.prediction,
            live.probabilities,
            live.source,
        )
    assert _committed(scenario) == before, "replay must never touch the live group's offsets"


def test_replay_with_v2_rescores_everything_with_v2(
    scenario: Scenario, fresh_output: Callable[[str], str]
) -> None:
    output = fresh_output("replay-v2")
    done = _replay(scenario, output, "--model-version", "v2")
    assert done.returncode == 0, done.stderr
    replayed = _by_key(read_topic(scenario.bootstrap, output, expected=RECORDS, settle_s=1))
    assert len(replayed) == RECORDS
    assert {p.model_version for p in replayed.values()} == {"v2"}


def test_replay_by_time_picks_exactly_the_records_inside(
    scenario: Scenario, fresh_output: Callable[[str], str]
) -> None:
    first, end = 2_000, 5_000
    output = fresh_output("replay-time")
    done = _replay(
        scenario,
        output,
        "--from-time", str(BASE_MS + first * STEP_MS),
        # ISO 8601 for the end, to exercise both forms
        "--to-time", time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.gmtime((BASE_MS + end * STEP_MS) / 1000)
        ) + f".{(BASE_MS + end * STEP_MS) % 1000:03d}Z",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # the replay's own count tells a record read twice from a topic written twice
    assert f"replayed {end - first} records" in done.stdout, done.stdout
    records = read_topic(scenario.bootstrap, output, expected=end - first, settle_s=2)
    assert sorted(int(r.key[1:]) for r in records) == list(range(first, end))


def test_replay_refuses_the_live_topic_without_into_live(scenario: Scenario) -> None:
    done = _replay(scenario, "forestream.predictions")
    assert done.returncode == 2
    assert "--into-live" in done.stderr
    assert "Traceback" not in done.stderr


def test_interrupted_replay_resumes_where_it_stopped(
    scenario: Scenario, fresh_output: Callable[[str], str]
) -> None:
    output = fresh_output("replay-resume")
    checkpoint = scenario.store / f"{output}.resume.json"
    command = [
        sys.executable, "-m", "forestream", "replay",
        "--bootstrap-servers", scenario.bootstrap,
        "--input-topic", scenario.topics["in"],
        "--output-topic", output,
        "--store", str(scenario.store), "--name", MODEL,
        "--max-batch", "50",
        "--checkpoint", str(checkpoint),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env()
    )
    try:
        read_topic(scenario.bootstrap, output, expected=1, timeout_s=120)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode == 0:
        pytest.fail("the replay finished before it could be interrupted; use a smaller batch")
    assert proc.returncode == 130, stderr
    print(f"stopped {stopped_in:.2f}s after SIGINT")
    assert stopped_in < 10, f"the replay took {stopped_in:.1f}s to stop after SIGINT"
    assert f"forestream replay --resume {checkpoint}" in stderr
    left = sum(end - nxt for nxt, end in json.loads(checkpoint.read_text())["ranges"].values())
    assert 0 < left < RECORDS

    done = _forestream(
        "replay", "--resume", str(checkpoint), "--bootstrap-servers", scenario.bootstrap
    )
    assert done.returncode == 0, done.stderr
    records = read_topic(scenario.bootstrap, output, expected=RECORDS, settle_s=2)
    keys = [r.key for r in records]
    assert set(keys) == scenario.live.keys(), "every record is scored across the two runs"
    print(f"records scored twice across the interruption: {len(keys) - len(set(keys))}")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--from-offset", "9:10"], "--from-offset: topic {in!r} has no partition 9; its "
         "partitions are [0, 1, 2, 3]"),
        (["--to-offset", "0:10,7:20"], "--to-offset: topic {in!r} has no partition 7"),
        (["--partitions", "0", "--from-offset", "1:5"], "partition 1 is not replayed"),
        (["--from-offset", "10", "--to-offset", "5"], "the range is inverted"),
        (["--from-offset", "0:10,1:3", "--to-offset", "0:20,1:2"], "partition 1: 3 > 2"),
        (["--from-time", "2030-01-01T00:00:00Z", "--to-time", "2020-01-01T00:00:00Z"],
         "is after --to-time"),
        (["--from-time", "99999999999999999999"], "--from-time '99999999999999999999': out of "
         "range"),
        (["--dlq-topic", "{in}"], "--dlq-topic {in!r} is the input topic"),
    ],
)  # fmt: skip
def test_replay_refuses_impossible_ranges_and_topics(
    scenario: Scenario, fresh_output: Callable[[str], str], flags: list[str], message: str
) -> None:
    output = fresh_output("replay-refused")
    done = _replay(scenario, output, *(f.format(**scenario.topics) for f in flags))
    assert done.returncode == 2, done.stdout + done.stderr
    assert message.format(**scenario.topics) in done.stderr
    assert "Traceback" not in done.stderr
    assert "replayed" not in done.stdout


def test_replay_refuses_to_write_into_its_input_topic(scenario: Scenario) -> None:
    done = _replay(scenario, scenario.topics["in"], "--to-offset", "1")
    assert done.returncode == 2
    assert f"--output-topic {scenario.topics['in']!r} is the input topic" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_empty_time_window_is_a_valid_empty_replay(
    scenario: Scenario, fresh_output: Callable[[str], str]
) -> None:
    output = fresh_output("replay-empty")
    done = _replay(
        scenario, output, "--from-time", str(BASE_MS - 5_000), "--to-time", str(BASE_MS - 1)
    )
    assert done.returncode == 0, done.stderr
    assert "replayed 0 records" in done.stdout
