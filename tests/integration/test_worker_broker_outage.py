"""A broker that goes away for a while must not kill the worker, nor lose a record.

Runs on its own broker (not the session one, which other tests use at the same time), stops it
under a running worker, starts it again on the same port and checks the worker carries on.
The worker runs the serial cycle (``--no-pipeline``): the pipelined one, the default, meets a
broker lost and back in test_broker_restart, so between them both shapes do.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from tests.kafka_helpers import read_topic
from tests.worker_support import (
    make_frame,
    publish_promotion,
    row_json,
    save_model,
    worker_command,
    worker_env,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Path]:
    """Data dir of a broker only this test uses; stopped whatever happens."""
    from forestream.local import kafka as local_kafka

    data_dir = tmp_path / "kafka"
    local_kafka.start(data_dir)
    try:
        yield data_dir
    finally:
        local_kafka.stop(data_dir)


def produce(bootstrap: str, topic: str, keys: list[bytes], values: list[bytes]) -> None:
    producer = make_producer(bootstrap)
    try:
        for key, value in zip(keys, values, strict=True):
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=60)
    finally:
        producer.close()


def test_worker_survives_a_broker_restart(private_broker: Path, tmp_path: Path) -> None:
    from forestream.local import kafka as local_kafka

    info = local_kafka.status(private_broker)
    assert info is not None
    bootstrap = info.address
    topics = {k: f"outage.{k}" for k in ("in", "out", "dlq", "models")}
    ensure_topics(bootstrap, [TopicSpec(topics["in"], 2)])
    frame = make_frame(300, seed=11)
    _pipeline, metadata = save_model(tmp_path / "store", "outage", frame)
    publish_promotion(bootstrap, topics["models"], metadata)
    keys = [f"k{i}".encode() for i in range(len(frame))]
    values = [row_json(row) for _, row in frame.iterrows()]

    log_path = tmp_path / "worker.log"
    command = worker_command(
        bootstrap, topics, tmp_path / "store", "outage", "outage-group", "--max-batch", "50",
        "--no-pipeline",
    )  # fmt: skip
    with log_path.open("wb") as sink:
        worker = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=worker_env(), cwd=ROOT
        )
    try:
        produce(bootstrap, topics["in"], keys[:150], values[:150])
        read_topic(bootstrap, topics["out"], expected=150, timeout_s=90)

        local_kafka.stop(private_broker)
        time.sleep(3)  # the worker keeps polling, committing and reconnecting meanwhile
        assert worker.poll() is None, f"worker died with the broker:\n{log_path.read_text()}"
        restarted = local_kafka.start(private_broker)
        assert restarted.address == bootstrap

        produce(bootstrap, topics["in"], keys[150:], values[150:])
        predictions = read_topic(
            bootstrap,
            topics["out"],
            until=lambda got: {r.key for r in got} >= set(keys),
            timeout_s=150,
        )
        assert {r.key for r in predictions} == set(keys)
        assert worker.poll() is None, log_path.read_text()

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=10)
