"""`forestream models promote` while two real workers score a steady stream.

Every worker must end up serving the new version, no input may lose its prediction, and each
source partition's outputs must switch version exactly once (a batch is never scored by two
versions, and no worker goes back). How long the command took and when each worker's first
new-version prediction came are printed, not asserted: this is a test, not the benchmark
(``python -m bench.promotion`` measures it at 1,500 rec/s).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from itertools import groupby
from pathlib import Path

import pytest
from kafka import TopicPartition

from forestream.edge.factory import TopicSpec, ensure_topics, make_consumer
from forestream.registry.local import PROMOTIONS
from forestream.wire.messages import Prediction
from tests.feeding import PacedFeeder, cycling
from tests.kafka_helpers import read_topic, wait_scored
from tests.waiting import wait_until
from tests.worker_support import (
    ROOT,
    WorkerGroup,
    log_events,
    make_frame,
    row_json,
    save_model,
    worker_command,
    worker_env,
)

pytestmark = pytest.mark.usefixtures("kafka_client")  # every test on both clients

NAME = "m"
PARTITIONS = 4
RATE_PER_S = 400
STEADY = 100
"""Predictions each partition shows of v1 before the promotion, and of v2 (of records sent
after every worker swapped) before the stream stops."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 and v2 (different seeds, same schema), neither promoted yet."""
    store = tmp_path_factory.mktemp("trained") / "store"
    for seed in (1, 2):
        save_model(store, NAME, make_frame(300, seed=seed), trees=10)
    (store / NAME / PROMOTIONS).unlink()
    return store


@pytest.fixture
def running(
    kafka_bootstrap: str, topic_name: Callable[[str], str], trained: Path, tmp_path: Path
) -> Iterator[tuple[dict[str, str], Path, WorkerGroup]]:
    store = Path(shutil.copytree(trained, tmp_path / "store"))
    topics = {k: topic_name(k) for k in ("in", "out", "dlq", "models", "labels", "monitoring")}
    ensure_topics(kafka_bootstrap, [TopicSpec(topics["in"], PARTITIONS)])
    command = worker_command(
        kafka_bootstrap, topics, store, NAME, topic_name("group"), "--max-wait-ms", "50"
    )
    workers = WorkerGroup(command, tmp_path)
    try:
        yield topics, store, workers
    finally:
        workers.kill_all()


def promote(bootstrap: str, topics: dict[str, str], store: Path, version: str) -> tuple[str, float]:
    """``forestream models promote``; returns its stdout and the wall time it returned at."""
    result = subprocess.run(
        [
            sys.executable, "-m", "forestream.cli", "models", "promote", version,
            "--store", str(store), "--name", NAME,
            "--bootstrap-servers", bootstrap, "--models-topic", topics["models"],
        ],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=worker_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout, time.time()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = make_consumer(bootstrap)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        return {tp.partition: end for tp, end in ends.items()}
    finally:
        consumer.close()


def test_promotion_under_a_steady_stream_loses_nothing_and_switches_once(
    kafka_bootstrap: str, running: tuple[dict[str, str], Path, WorkerGroup]
) -> None:
    topics, store, workers = running
    promote(kafka_bootstrap, topics, store, "v1")
    for _ in range(2):  # one at a time: each joins a settled group
        workers.start(1)
        owners = workers.wait_balanced(PARTITIONS)
    settled = sum(len(log_events(p, "partitions_revoked")) for p in workers.log_paths)
    rows = [row_json(row) for _, row in make_frame(500, seed=9).iterrows()]
    feeder = PacedFeeder(kafka_bootstrap, topics["in"], cycling(rows), RATE_PER_S).start()
    wait_scored(kafka_bootstrap, topics["out"], "v1", PARTITIONS, each=STEADY)

    started = time.time()
    out, returned = promote(kafka_bootstrap, topics, store, "v2")
    assert "now serving v2" in out
    wait_until(
        lambda: all(
            any(e.get("version") == "v2" for e in log_events(path, "model_swapped"))
            for path in workers.log_paths
        ),
        "every worker swapped to v2",
        45,
    )
    wait_scored(kafka_bootstrap, topics["out"], "v2", PARTITIONS, since=feeder.sent, each=STEADY)
    feeder.finish()

    ends = end_offsets(kafka_bootstrap, topics["in"])
    wanted = {(p, o) for p, end in ends.items() for o in range(end)}
    assert len(wanted) == feeder.sent

    def covered(records: list) -> bool:
        seen = set()
        for r in records:
            source = Prediction.model_validate_json(r.value).source
            seen.add((source.partition, source.offset))
        return wanted <= seen

    records = read_topic(kafka_bootstrap, topics["out"], until=covered, timeout_s=90)
    predictions = [(r, Prediction.model_validate_json(r.value)) for r in records]
    first: dict[tuple[int, int], Prediction] = {}
    for _, p in sorted(predictions, key=lambda rp: (rp[0].partition, rp[0].offset)):
        first.setdefault((p.source.partition, p.source.offset), p)
    assert wanted == set(first), f"{len(wanted - set(first))} inputs have no prediction"
    duplicates = len(predictions) - len(first)
    rebalances = sum(len(log_events(p, "partitions_revoked")) for p in workers.log_paths) - settled

    versions: dict[int, list[str]] = defaultdict(list)
    for (partition, _offset), p in sorted(first.items()):
        versions[partition].append(p.model_version)
    for partition, sequence in versions.items():
        shape = [v for v, _ in groupby(sequence)]
        assert shape == ["v1", "v2"], (
            f"source partition {partition}: versions ran {shape} "
            f"({duplicates} duplicates, {rebalances} rebalances while streaming)"
        )
    batches: dict[tuple[int, int], set[str]] = defaultdict(set)
    for _, p in predictions:
        batches[(p.source.partition, p.scored_at)].add(p.model_version)
    mixed = {batch: v for batch, v in batches.items() if len(v) > 1}
    assert not mixed, f"batches scored by two versions: {mixed}"

    firsts = {}
    for worker, partitions in owners.items():
        mine = {int(name.rsplit("-", 1)[-1]) for name in partitions}
        new = [
            r.timestamp / 1000
            for r, p in predictions
            if p.model_version == "v2" and p.source.partition in mine
        ]
        assert new, f"worker {worker} (partitions {sorted(mine)}) never served v2"
        firsts[worker] = min(new) - returned
    print(
        f"offered {RATE_PER_S} rec/s to {len(owners)} workers; `models promote v2` took "
        f"{returned - started:.2f} s; first v2 prediction after it returned, per worker: "
        + ", ".join(f"{w}: {s:+.2f} s" for w, s in sorted(firsts.items()))
        + f"; {feeder.sent} records, {duplicates} duplicates"
    )
