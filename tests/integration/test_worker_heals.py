"""A worker whose librdkafka group consumer has known no broker past the bound rebuilds it and
rejoins the group, losing no input (librdkafka#5301).

The broker is frozen (SIGSTOP) for longer than a short bound (``--rebuild-after-s 5``): its
connections stay open but nothing answers, so the client's statistics show every broker
silent, as a client that lost its brokers for good would. The freeze comes in a lull of the
paced stream, once what was sent is scored: a batch awaiting its acknowledgements holds the
loop in the producer's wait (a client of its own), and the rebuild is decided between polls.
Then the broker is thawed, the stream goes on, and every input sent before, during and after
must have an output: at least once (duplicates allowed, from the partitions handled as lost),
or exactly once under ``--guarantee exactly-once`` (read ``read_committed``).

The model follower's and the labels reader's clients are watched alike and rebuilt on their
own. librdkafka only: kafka-python keeps no statistics and is never rebuilt for this. A private
broker: freezing the session's would stall the other tests' clients.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from forestream.edge.factory import TopicSpec, ensure_topics
from forestream.worker.assignment_log import log_events
from tests.feeding import PacedFeeder, cycling
from tests.kafka_helpers import read_topic, source_of
from tests.waiting import wait_until
from tests.worker_support import (
    WorkerGroup,
    make_frame,
    publish_promotion,
    row_json,
    save_model,
    worker_command,
)

PARTITIONS = 3
RATE = 200
BEFORE = 400
"""Records of the stream before the freeze (two seconds of it)."""
DURING = 200
"""Records sent while the broker is frozen, acknowledged once it is back."""
AFTER = 400
BOUND_S = 5
CLIENTS = {"group_consumer", "model_follower", "labels_reader"}
"""The worker's librdkafka clients watched for a broker loss, each rebuilt on its own."""


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """(address, pid) of a broker only this module's tests use (one start for both guarantees:
    each freezes and thaws it, on topics of its own); thawed and stopped whatever happens."""
    from forestream.local import kafka as local_kafka

    data_dir = tmp_path_factory.mktemp("heal") / "kafka"
    info = local_kafka.start(data_dir)
    try:
        yield info.address, info.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(info.pid, signal.SIGCONT)
        local_kafka.stop(data_dir)


SHOWN = ("no_broker_s", "partitions_lost")


def rebuilt_clients(log: Path) -> set[str]:
    return {str(e["client"]) for e in log_events(log, "kafka_client_rebuilt")}


def rebuilds_counted(log: Path) -> float:
    """``forestream_kafka_client_rebuilds_total`` of the worker, every client."""
    [serving] = log_events(log, "metrics_serving")
    url = f"http://127.0.0.1:{serving['port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    prefix = "forestream_kafka_client_rebuilds_total{"
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(prefix))


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
@pytest.mark.parametrize("kafka_client", ["confluent"], indirect=True)
def test_a_consumer_without_brokers_past_the_bound_is_rebuilt_and_loses_nothing(
    private_broker: tuple[str, int], tmp_path: Path, kafka_client: str, guarantee: str
) -> None:
    """Under exactly-once the outputs are read ``read_committed``: not one duplicate either."""
    bootstrap, broker_pid = private_broker
    topics = {k: f"heal.{guarantee}.{k}" for k in ("in", "out", "dlq", "models")}
    ensure_topics(
        bootstrap,
        [TopicSpec(topics[k], PARTITIONS) for k in ("in", "out", "dlq")],
    )
    frame = make_frame(300, seed=21)
    _pipeline, metadata = save_model(tmp_path / "store", "heal", frame)
    publish_promotion(bootstrap, topics["models"], metadata)
    values = cycling([row_json(row) for _, row in frame.iterrows()])

    command = worker_command(
        bootstrap, topics, tmp_path / "store", "heal", f"heal-group-{guarantee}",
        "--max-batch", "50", "--rebuild-after-s", str(BOUND_S), "--guarantee", guarantee,
        "--transactional-id", f"heal-{guarantee}",
        "--follow-labels",  # its labels reader is one of the clients watched (off by default)
        "--metrics-port", "0",
    )  # fmt: skip
    group = WorkerGroup(command, tmp_path)
    log = tmp_path / "worker-0.log"
    feeders: list[PacedFeeder] = []
    try:
        group.start(1)
        group.wait_balanced(PARTITIONS, timeout_s=60)
        before = PacedFeeder(bootstrap, topics["in"], values, RATE, limit=BEFORE).start()
        feeders.append(before)
        before.finish(timeout_s=30)
        read_topic(bootstrap, topics["out"], expected=BEFORE, timeout_s=30)  # a lull

        during = PacedFeeder(  # built now: kafka-python bootstraps while it is built
            bootstrap,
            topics["in"],
            lambda i: values(BEFORE + i),
            RATE,
            limit=DURING,
            reconnect_backoff_max_ms=250,
        )
        feeders.append(during)
        os.killpg(broker_pid, signal.SIGSTOP)
        try:
            wait_until(
                lambda: rebuilt_clients(log) >= CLIENTS,
                f"kafka_client_rebuilt of {sorted(CLIENTS)} while the broker is frozen",
                timeout_s=40,
                seen=lambda: log_events(log, "kafka_client_rebuilt"),
            )
            during.start()  # buffered by its producer until the broker answers
        finally:
            os.killpg(broker_pid, signal.SIGCONT)
        during.finish(timeout_s=60)
        after = PacedFeeder(
            bootstrap, topics["in"], lambda i: values(BEFORE + DURING + i), RATE, limit=AFTER
        ).start()
        feeders.append(after)
        after.finish(timeout_s=60)
        sent = BEFORE + DURING + AFTER
        assert [f.acked for f in feeders] == [BEFORE, DURING, AFTER]

        inputs = read_topic(bootstrap, topics["in"], expected=sent, timeout_s=30)
        expected = {(r.partition, r.offset) for r in inputs}

        def covered(outputs: list) -> bool:
            return expected <= {source_of(r) for r in outputs}

        try:
            predictions = read_topic(bootstrap, topics["out"], until=covered, timeout_s=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{group.membership_log()}") from None
        assert group.live() == [0], log.read_text()[-3000:]
        counted = rebuilds_counted(log)
    finally:
        for feeder in feeders:
            feeder.abandon()
        group.kill_all()

    rebuilt = log_events(log, "kafka_client_rebuilt")
    first = next(e for e in rebuilt if e["client"] == "group_consumer")
    print(
        f"\nrebuilds: {Counter(e['client'] for e in rebuilt)} (metric {counted:.0f}); "
        f"the consumer's first: {json.dumps({k: first.get(k) for k in SHOWN})}"
    )
    assert all(e["no_broker_s"] >= BOUND_S for e in rebuilt), rebuilt
    assert first["partitions_lost"], first  # what it owned was handed back as lost
    assert counted == len(rebuilt)
    sources = Counter(source_of(r) for r in predictions)
    duplicates = sum(sources.values()) - len(sources)
    print(f"inputs {len(expected)}, predictions {sum(sources.values())}, duplicates {duplicates}")
    assert not expected - set(sources)
    if guarantee == "exactly-once":
        assert duplicates == 0, f"{duplicates} inputs scored more than once"
    assert "Traceback" not in log.read_text()
