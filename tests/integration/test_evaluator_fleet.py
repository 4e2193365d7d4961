"""The closed loop's acceptance on a real broker: 3 exactly-once workers that read no labels
and 2 exactly-once evaluators on 6 partitions, under a labelled stream; one evaluator is
killed (SIGKILL) mid-stream, after its first transaction, and replaced; the last third of
the stream is sent once the replacement has partitions, so that it counts pairs too.

The counts the fleet committed (``read_committed``) sum to exactly the confusion matrices of an
offline join of the predictions and labels topics: nothing lost, nothing counted twice across
the kill. The workers read no label (``labels_read`` 0 in their final summary); the
evaluators read each at least once, and again only the tail a restart or a rebalance reads
from the committed offsets (the figures are printed).

Labels follow their predictions, as in a deployment (an outcome is known after the
prediction): the labeller reads the predictions topic and answers each a moment later. A label
read *before* its prediction waits, and is lost if its partition moves then (docs/evaluator.md,
"Delivery"): a known limit that this test does not exercise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from forestream.edge.factory import TopicSpec, ensure_topics, make_consumer, make_producer
from forestream.wire.messages import EvaluationCounts
from forestream.worker.assignment_log import log_events
from forestream.worker.evaluator.counts import merge, window_start
from tests.feeding import PacedFeeder, listed
from tests.integration.test_evaluator import evaluate_command, events_of, owned_now
from tests.kafka_helpers import read_topic
from tests.waiting import wait_until
from tests.worker_support import (
    ROOT,
    WorkerGroup,
    make_frame,
    publish_promotion,
    row_json,
    save_model,
    worker_command,
)

PARTITIONS = 6
INPUTS = 360
RATE_PER_S = 40
"""The first 240 inputs take 6 s: the kill lands mid-stream, after the victim's first
transaction (~2 s in), and the rest goes on while the group notices the death (6 s)."""
LABEL_LAG_S = 0.5
"""A label is sent this long after its prediction is seen (committed) on the predictions topic."""
WINDOW_MS = 60_000
EVALUATOR_ENV = {
    "FORESTREAM_SESSION_TIMEOUT_MS": "6000",  # the broker's minimum: the dead one leaves soon
    "FORESTREAM_TRANSACTION_TIMEOUT_MS": "3000",  # its open transaction is aborted soon
    "FORESTREAM_SUMMARY_INTERVAL_S": "0.5",
}


def stream() -> tuple[list[tuple[bytes, bytes | None]], dict[bytes, str]]:
    """Inputs and the label of each: the row's true class, but a wrong one every 5th (so the
    confusion matrices have off-diagonal cells whatever the model predicts)."""
    frame = make_frame(INPUTS, seed=26).reset_index(drop=True)
    classes = sorted(set(frame["target"]))
    records: list[tuple[bytes, bytes | None]] = []
    labels: dict[bytes, str] = {}
    for i, (_, row) in enumerate(frame.iterrows()):
        key = f"fleet-{i}".encode()
        records.append((key, row_json(row)))
        truth = str(row["target"])
        labels[key] = classes[(classes.index(truth) + 1) % 3] if i % 5 == 0 else truth
    return records, labels


class Labeller:
    """Reads the predictions topic (``read_committed``) and sends each prediction's label to
    the same partition number of the labels topic, ``LABEL_LAG_S`` after it was seen."""

    def __init__(self, bootstrap: str, topics: dict[str, str], labels: dict[bytes, str]) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.labels = labels
        self.sent: Counter[bytes] = Counter()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labeller", daemon=True)

    def __enter__(self) -> Labeller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def done(self) -> bool:
        if self.error is not None:
            raise AssertionError(f"the labeller failed: {self.error!r}")
        return len(self.sent) >= len(self.labels)

    def _run(self) -> None:
        from kafka import TopicPartition

        consumer = make_consumer(self.bootstrap, group_id=None)
        producer = make_producer(self.bootstrap)
        due: list[tuple[float, int, bytes]] = []
        try:
            tps = [TopicPartition(self.topics["out"], p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self._stop.is_set() and len(self.sent) < len(self.labels):
                for batch in consumer.poll(timeout_ms=100).values():
                    for r in batch:
                        due.append((time.monotonic() + LABEL_LAG_S, r.partition, r.key))
                now = time.monotonic()
                while due and due[0][0] <= now:
                    _, partition, key = due.pop(0)
                    value = json.dumps({"label": self.labels[key]}).encode()
                    producer.send(self.topics["labels"], key=key, value=value, partition=partition)
                    self.sent[key] += 1
                producer.flush(30)
        except BaseException as exc:  # surfaced by done()
            self.error = exc
        finally:
            consumer.close()
            producer.close()


def committed_counts(bootstrap: str, topic: str) -> list[EvaluationCounts]:
    """The count records committed so far (``read_committed``: the project's reader)."""
    return [
        EvaluationCounts.model_validate_json(r.value)
        for r in read_topic(bootstrap, topic)
        if json.loads(r.value).get("kind") == "evaluation_counts"
    ]


def offline_join(
    bootstrap: str, topics: dict[str, str]
) -> tuple[dict[tuple[str, int], dict[str, dict[str, int]]], Counter[bytes]]:
    """The confusion matrices from the two topics themselves, and how often each key was
    predicted (exactly-once workers: once)."""
    predictions = read_topic(bootstrap, topics["out"])
    predicted = Counter(r.key for r in predictions)
    by_key = {r.key: json.loads(r.value) for r in predictions}
    out: dict[tuple[str, int], dict[str, dict[str, int]]] = {}
    for r in read_topic(bootstrap, topics["labels"]):
        held = by_key.pop(r.key, None)
        assert held is not None, f"label of {r.key!r}: labelled twice or never predicted"
        row = out.setdefault((held["model_version"], window_start(r.timestamp, WINDOW_MS)), {})
        label = json.loads(r.value)["label"]
        row.setdefault(label, Counter())[held["prediction"]] += 1
    return {cell: {t: dict(c) for t, c in rows.items()} for cell, rows in out.items()}, predicted


class Evaluators:
    """``forestream evaluate`` subprocesses, each logging JSON to its own file."""

    def __init__(self, command: list[str], logs: Path) -> None:
        self.command = command
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.paths: list[Path] = []

    def start(self) -> int:
        path = self.logs / f"evaluator-{len(self.procs)}.log"
        with path.open("wb") as sink:
            self.procs.append(
                subprocess.Popen(
                    self.command,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **EVALUATOR_ENV},
                    cwd=ROOT,
                )
            )
        self.paths.append(path)
        return len(self.procs) - 1

    def ident(self, i: int) -> str:
        started = wait_until(
            lambda: log_events(self.paths[i], "evaluator_started"),
            f"evaluator {i} started",
            seen=lambda: events_of(self.paths),
        )
        return str(started[0]["evaluator_id"])

    def balanced(self, live: list[int]) -> bool:
        for i in live:
            if self.procs[i].poll() is not None:
                raise AssertionError(
                    f"evaluator {i} exited {self.procs[i].returncode}:\n{events_of(self.paths)}"
                )
        owned = [owned_now(self.paths[i]) for i in live]
        return all(owned) and sorted(p for o in owned for p in o) == list(range(PARTITIONS))

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def fleet_topics(
    kafka_bootstrap: str, topic_name: Callable[[str], str]
) -> Iterator[dict[str, str]]:
    topics = {k: topic_name(k) for k in ("in", "out", "dlq", "models", "labels", "counts")}
    ensure_topics(
        kafka_bootstrap,
        [TopicSpec(topics[k], PARTITIONS) for k in ("in", "out", "labels")]
        + [TopicSpec(topics["counts"], 1)],
    )
    yield topics


def test_fleet_counts_equal_the_offline_join_across_an_evaluator_kill(
    kafka_bootstrap: str,
    topic_name: Callable[[str], str],
    fleet_topics: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topics = fleet_topics
    # sklearn's trees: compiling the forest in three workers at once costs ~10 s here
    monkeypatch.setenv("FORESTREAM_FOREST_ENGINE", "sklearn")
    (tmp_path / "store").mkdir()
    # the workers' drift reports go to a topic of their own: the counts topic holds counts only
    worker_topics = {k: v for k, v in topics.items() if k != "counts"}
    workers = WorkerGroup(
        worker_command(
            kafka_bootstrap, worker_topics, tmp_path / "store", "fleet", topic_name("workers"),
            "--guarantee", "exactly-once", "--no-follow-labels", "--max-batch", "50",
        ),
        tmp_path,
    )  # fmt: skip
    evaluators = Evaluators(
        [
            *evaluate_command(
                kafka_bootstrap,
                {"predictions": topics["out"], "labels": topics["labels"],
                 "monitoring": topics["counts"]},
                topic_name("evaluators"),
            ),
            "--guarantee", "exactly-once",
        ],
        tmp_path,
    )  # fmt: skip
    records, labels = stream()
    try:
        evaluators.start()
        evaluators.start()
        for i in range(3):
            workers.start(1, "--transactional-id", f"{topics['in']}-tx-{i}")
        # trained and promoted while the processes start: the workers wait for the promotion
        _pipeline, metadata = save_model(
            tmp_path / "store", "fleet", make_frame(300, seed=4), trees=5
        )
        publish_promotion(kafka_bootstrap, topics["models"], metadata)
        workers.wait_balanced(PARTITIONS)
        wait_until(
            lambda: evaluators.balanced([0, 1]),
            "two evaluators sharing the 6 partitions",
            60,
            seen=lambda: events_of(evaluators.paths),
        )
        victim = evaluators.ident(0)

        def victim_committed() -> bool:
            counts = committed_counts(kafka_bootstrap, topics["counts"])
            return any(c.evaluator_id == victim and c.labelled for c in counts)

        first, rest = records[: INPUTS * 2 // 3], records[INPUTS * 2 // 3 :]
        with Labeller(kafka_bootstrap, topics, labels) as labeller:
            with PacedFeeder(
                kafka_bootstrap, topics["in"], listed(first), RATE_PER_S, limit=len(first)
            ) as feeder:
                wait_until(
                    victim_committed,
                    "a transaction of evaluator 0 with counts in it, committed",
                    30,
                    interval_s=0.3,
                    seen=lambda: events_of(evaluators.paths),
                )
                assert feeder.sent < len(first), "the stream ended before the kill: slow it down"
                evaluators.procs[0].send_signal(signal.SIGKILL)
                evaluators.procs[0].wait(timeout=10)
                killed_at = feeder.sent
                evaluators.start()
            # the rest once the replacement has partitions, so that it counts some pairs too
            wait_until(
                lambda: evaluators.balanced([1, 2]),
                "the survivor and the replacement sharing the 6 partitions",
                60,
                seen=lambda: events_of(evaluators.paths),
            )
            with PacedFeeder(
                kafka_bootstrap, topics["in"], listed(rest), RATE_PER_S * 3, limit=len(rest)
            ):
                pass  # on exit: every record sent and acknowledged
            wait_until(
                labeller.done,
                f"{len(labels)} labels sent",
                60,
                seen=lambda: f"{len(labeller.sent)} sent\n{workers.membership_log()}",
            )

        def labelled() -> int:
            return sum(c.labelled for c in committed_counts(kafka_bootstrap, topics["counts"]))

        wait_until(
            lambda: labelled() >= INPUTS,
            f"{INPUTS} pairs counted in committed records",
            60,
            interval_s=0.5,
            seen=lambda: f"{labelled()} pairs\n{events_of(evaluators.paths)}",
        )
        for i in (1, 2):
            evaluators.procs[i].send_signal(signal.SIGTERM)
        for i in range(3):
            workers.procs[i].send_signal(signal.SIGTERM)
        for i in (1, 2):
            assert evaluators.procs[i].wait(timeout=30) == 0, events_of(evaluators.paths)
        for i in range(3):
            assert workers.procs[i].wait(timeout=30) == 0, workers.log_paths[i].read_text()[-3000:]
    finally:
        workers.kill_all()
        evaluators.kill_all()

    expected, predicted = offline_join(kafka_bootstrap, topics)
    assert set(predicted.values()) == {1} and len(predicted) == INPUTS  # exactly-once workers
    counts = committed_counts(kafka_bootstrap, topics["counts"])
    assert merge(counts) == expected  # each label counted once, across the kill
    assert sum(c.labelled for c in counts) == INPUTS
    wrong = sum(n for cell in expected.values() for t, row in cell.items()
                for p, n in row.items() if t != p)  # fmt: skip
    assert 0 < wrong < INPUTS  # a non-trivial confusion: the test could tell cells apart
    replacement = evaluators.ident(2)
    assert {c.evaluator_id for c in counts} == {victim, evaluators.ident(1), replacement}

    # label traffic: the workers read none; the evaluators each label once, plus the tail
    # read again from the committed offsets after the kill and the rebalances
    for path in workers.log_paths:
        (final,) = log_events(path, "worker_final_summary")
        assert final["labels_read"] == 0, final
        assert not log_events(path, "labels_following")
    stopped = [log_events(evaluators.paths[i], "evaluator_stopped")[-1] for i in (1, 2)]
    # what the killed one read is known from below only: its last summary, or what it counted
    summaries = log_events(evaluators.paths[0], "evaluator_summary")
    victim_counted = sum(c.labelled for c in counts if c.evaluator_id == victim)
    victim_read = max([victim_counted, *(s["labels_read"] for s in summaries[-1:])])
    fleet_read = victim_read + sum(s["labels_read"] for s in stopped)
    print(
        f"\nkilled after {killed_at} inputs sent; labels {INPUTS}; read by the workers 0, by "
        f"the evaluators {fleet_read} (killed one >= {victim_read}, survivor "
        f"{stopped[0]['labels_read']}, replacement {stopped[1]['labels_read']}); "
        f"{wrong} of {INPUTS} pairs off the diagonal"
    )
    assert fleet_read >= INPUTS
    survivors_read = fleet_read - victim_read
    assert survivors_read < INPUTS * 3 // 2, "labels read again far beyond a restart's tail"
