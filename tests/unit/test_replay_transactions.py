"""Replay's exactly-once run on the worker's :class:`Transactions`, without a broker.

The run's reader and producers are swapped for the in-memory edge (:mod:`tests.memory_edge`):
what is tested is how a replay commits, and how it settles an unknown outcome (a new producer,
a new reader after the first settle, the checkpoint moved to the group's committed offsets).
The same runs against a real broker are in tests/integration/test_replay_exactly_once.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from forestream.edge.interface import InputRecord, TopicPartition
from forestream.worker.delivery import Transactions
from forestream.worker.replay import Checkpoint, ReplaySettings
from forestream.worker.replay.run import _Run
from tests.memory_edge import (
    FakeClock,
    MemoryBroker,
    MemoryConsumer,
    MemoryTransactionalProducer,
    score_each,
)

TP0 = TopicPartition("in", 0)
TP1 = TopicPartition("in", 1)


def _run(tmp_path: Path, outcomes: list[str]) -> tuple[_Run, MemoryBroker, FakeClock, list[Any]]:
    broker = MemoryBroker()
    broker.append(TP0, 3)
    broker.append(TP1, 3)
    clock = FakeClock()
    checkpoint = Checkpoint(
        input_topic="in",
        output_topic="out",
        dlq_topic="out.dlq",
        model_store="/models",
        model_name="m",
        model_version="v1",
        ranges={0: (0, 3), 1: (0, 3)},
        guarantee="exactly-once",
        group="forestream-replay-test",
        transactional_id="forestream-replay-test",
    )
    run = _Run(
        ReplaySettings(bootstrap_servers="127.0.0.1:1"),
        checkpoint,
        None,
        tmp_path / "ck.json",
        None,
    )
    readers: list[MemoryConsumer] = []

    def reader() -> MemoryConsumer:
        readers.append(MemoryConsumer(broker, []))
        return readers[-1]

    def producer() -> MemoryTransactionalProducer:
        return MemoryTransactionalProducer(broker, clock, outcomes, readers[-1])

    run.reader = run.consumer = cast(Any, reader())
    run.transactions = Transactions(producer, clock, warn=run._warn)
    run._group_offsets_reader = reader  # type: ignore[method-assign]
    run._score = score_each  # type: ignore[method-assign]
    run.todo = {0: TP0, 1: TP1}
    run.consumer.assign([TP0, TP1])
    return run, broker, clock, readers


def _poll(run: _Run) -> list[InputRecord]:
    assert run.consumer is not None
    return list(run.consumer.poll_batch(100, 0))


def test_a_replay_settles_at_start_then_commits_in_one_transaction(tmp_path: Path) -> None:
    run, broker, _clock, readers = _run(tmp_path, [])
    assert run.unsettled and run._ready_for_transactions()
    assert not run.unsettled and len(readers) == 1, "the first settle keeps its reader"
    assert run._commit_in_transaction(_poll(run))
    assert broker.committed == {TP0: 3, TP1: 3} and len(broker.published) == 6
    assert run.checkpoint.ranges == {0: (3, 3), 1: (3, 3)} and run.scored == 6


def test_an_unknown_outcome_is_settled_from_the_committed_offsets(tmp_path: Path) -> None:
    run, broker, clock, readers = _run(tmp_path, ["unknown-committed"])
    assert run._ready_for_transactions()
    assert not run._commit_in_transaction(_poll(run))
    assert run.unsettled and run.checkpoint.ranges == {0: (0, 3), 1: (0, 3)}
    assert not run._ready_for_transactions(), "the failure's backoff first"
    clock.advance(1.0)
    assert run._ready_for_transactions()
    assert len(readers) == 2 and readers[0].closed, "every settle after the first: new reader"
    assert run.checkpoint.ranges == {0: (3, 3), 1: (3, 3)}, "it had committed: not redone"
    assert _poll(run) == [] and len(broker.published) == 6


def test_an_aborted_transaction_is_read_again_from_the_checkpoint(tmp_path: Path) -> None:
    run, broker, clock, _readers = _run(tmp_path, ["abort"])
    assert run._ready_for_transactions()
    assert not run._commit_in_transaction(_poll(run))
    assert not run.unsettled and broker.published == []
    clock.advance(1.0)
    assert run._ready_for_transactions()
    assert run._commit_in_transaction(_poll(run))
    assert broker.committed == {TP0: 3, TP1: 3} and len(broker.published) == 6
