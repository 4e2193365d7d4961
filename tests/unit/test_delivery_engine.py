"""The delivery engine's state machine, per guarantee, without a broker.

An in-memory edge (:mod:`tests.memory_edge`) and a fake clock drive the paths a real broker
shows only by accident: a commit rejected by a rebalance, a commit timing out then held and
retried, an asynchronous commit never confirmed, a batch never acknowledged and rewound, a
transaction aborted, an outcome unknown and settled by resync. The same strategies run
against the real broker in tests/integration (test_worker_delivery, test_exactly_once, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from forestream.edge.interface import TopicPartition
from forestream.errors import CommitRejected, TransientKafkaError
from forestream.runtime.deadline import Deadline
from forestream.worker.cycle import BatchCycle
from forestream.worker.delivery import (
    DeliveryEngine,
    Ledger,
    PipelinedAtLeastOnce,
    SerialAtLeastOnce,
    StopBudget,
    Transactional,
    Transactions,
)
from forestream.worker.delivery.at_least_once import (
    ASYNC_COMMIT_PATIENCE_S,
    HELD_RETRY_MAX_S,
    REJECTED_RETRY_S,
)
from forestream.worker.processing import AckedPublisher, ProcessedBatch
from tests.memory_edge import (
    FakeClock,
    MemoryBroker,
    MemoryConsumer,
    MemoryProducer,
    MemoryTransactionalProducer,
    score_each,
)

TP0 = TopicPartition("in", 0)
TP1 = TopicPartition("in", 1)


@dataclass
class Rig:
    """One engine on the in-memory edge, with what it delivered."""

    clock: FakeClock
    broker: MemoryBroker
    consumer: MemoryConsumer
    ledger: Ledger
    engine: DeliveryEngine
    producer: MemoryProducer | None = None
    built: list[MemoryTransactionalProducer] = field(default_factory=list)
    delivered: list[ProcessedBatch] = field(default_factory=list)

    def take(self) -> None:
        self.ledger.cycle.take(self.consumer.poll_batch(100, 0))

    def turn(self) -> bool:
        """One loop turn without a new batch: what the loop does between polls."""
        return self.engine.between_polls()


def _rig(kind: str, records: int = 3, outcomes: list[str] | None = None) -> Rig:
    clock = FakeClock()
    broker = MemoryBroker()
    broker.append(TP0, records)
    broker.append(TP1, records)
    consumer = MemoryConsumer(broker, [TP0, TP1])
    delivered: list[ProcessedBatch] = []
    ledger = Ledger(
        consumer,
        BatchCycle(),
        score_each,
        delivered.append,
        StopBudget(clock=clock),
        clock=clock,
        sleep=clock.sleep,
    )
    built: list[MemoryTransactionalProducer] = []
    producer: MemoryProducer | None = None
    if kind == "transactional":
        script = outcomes if outcomes is not None else []

        def build() -> MemoryTransactionalProducer:
            built.append(MemoryTransactionalProducer(broker, clock, script, consumer))
            return built[-1]

        transactions = Transactions(build, clock)
        transactions.open()
        guarantee: Any = Transactional(ledger, transactions, "out")
    else:
        producer = MemoryProducer(broker, clock)
        publisher = AckedPublisher(producer, give_up=ledger.stop.past_grace)
        strategy = {"serial": SerialAtLeastOnce, "pipelined": PipelinedAtLeastOnce}[kind]
        guarantee = strategy(ledger, publisher)
    engine = DeliveryEngine(ledger, guarantee)
    return Rig(clock, broker, consumer, ledger, engine, producer, built, delivered)


# -- Deadline ----------------------------------------------------------------------------------


def test_a_deadline_counts_down_on_its_own_clock() -> None:
    clock = FakeClock()
    deadline = Deadline.after(2.0, clock)
    assert deadline.remaining() == 2.0 and not deadline.expired()
    clock.advance(1.5)
    assert deadline.remaining() == pytest.approx(0.5)
    clock.advance(1.0)
    assert deadline.expired() and deadline.remaining() == 0.0
    assert Deadline.passed(clock).expired()


def test_a_stop_budget_bounds_what_is_left_and_ends() -> None:
    clock = FakeClock()
    stop = StopBudget(grace_s=10.0, clock=clock)
    assert stop.left_s() is None and not stop.past_grace()
    stop.start()
    clock.advance(8.0)
    assert stop.left_s() == 3.0  # at least a short try
    assert stop.left_s(at_least=1.0) == pytest.approx(2.0)
    clock.advance(2.5)
    assert stop.past_grace()


# -- at-least-once, serial ---------------------------------------------------------------------


def test_serial_commits_a_batch_once_its_outputs_are_acknowledged() -> None:
    rig = _rig("serial")
    rig.take()
    rig.engine.finish()
    assert rig.broker.committed == {TP0: 3, TP1: 3}
    assert len(rig.broker.published) == 6 and rig.delivered[0].records_in == 6
    assert not rig.ledger.cycle.holding and not rig.turn()


def test_serial_holds_a_commit_that_timed_out_and_retries_it_with_backoff() -> None:
    rig = _rig("serial")
    rig.consumer.commit_errors = [TransientKafkaError("timed out")] * 3
    rig.take()
    rig.engine.finish()
    assert rig.broker.committed == {}
    assert rig.turn(), "offsets acknowledged but uncommitted: the loop holds"
    assert rig.consumer.paused() == {TP0, TP1}
    assert len(rig.consumer.commits) == 0
    rig.clock.advance(0.1)
    assert rig.turn()  # the retry failed (second error): backoff doubled
    assert rig.turn() and len(rig.consumer.commit_errors) == 1, "no try within the backoff"
    guarantee = cast(SerialAtLeastOnce, rig.engine.guarantee)
    assert guarantee.backoff_s == 0.2
    rig.clock.advance(0.2)
    assert rig.turn()  # third error
    assert guarantee.backoff_s == 0.4
    rig.clock.advance(0.4)
    assert not rig.turn(), "the commit went through: resumed"
    assert rig.broker.committed == {TP0: 3, TP1: 3}
    assert rig.consumer.paused() == set()
    assert guarantee.backoff_s == 0.1


def test_serial_backoff_between_held_retries_is_capped() -> None:
    rig = _rig("serial")
    rig.consumer.commit_errors = [TransientKafkaError("away")] * 20
    rig.take()
    rig.engine.finish()
    guarantee = cast(SerialAtLeastOnce, rig.engine.guarantee)
    for _ in range(10):
        rig.clock.advance(HELD_RETRY_MAX_S)
        rig.turn()
    assert guarantee.backoff_s == HELD_RETRY_MAX_S and guarantee.failing


def test_serial_commit_rejected_by_a_rebalance_forgets_the_offsets() -> None:
    rig = _rig("serial")
    rig.consumer.commit_errors = [CommitRejected("generation moved on")]
    rig.take()
    rig.engine.finish()
    assert not rig.ledger.cycle.holding, "the new owner re-reads them: duplicates, no gap"
    assert rig.broker.committed == {}
    assert not rig.turn(), "nothing left to retry: no hold"
    assert rig.consumer.paused() == set()


def test_a_batch_never_acknowledged_is_rewound_and_read_again() -> None:
    rig = _rig("serial")
    assert rig.producer is not None
    rig.producer.mode = "failed"
    rig.take()
    limit = Deadline.after(3.0, rig.clock)

    def give_up() -> bool:  # a revocation, bounded in time (each look costs a second)
        rig.clock.advance(1.0)
        return limit.expired()

    rig.engine.finish(give_up=give_up)
    assert rig.ledger.cycle.to_commit() == {}, "nothing offered for commit"
    assert rig.ledger.cycle.in_hand == 0
    assert sorted(rig.consumer.seeks) == [(TP0, 0), (TP1, 0)]
    again = rig.consumer.poll_batch(100, 0)
    assert [(r.partition, r.offset) for r in again] == [(p, o) for p in (0, 1) for o in range(3)]
    assert rig.broker.committed == {} and not rig.delivered


def test_serial_wind_up_commits_held_offsets_within_the_stop_budget() -> None:
    rig = _rig("serial")
    rig.consumer.commit_errors = [TransientKafkaError("slow")]
    rig.take()
    rig.engine.finish()
    assert rig.ledger.cycle.holding
    rig.ledger.stop.start()
    rig.engine.wind_up()
    assert rig.broker.committed == {TP0: 3, TP1: 3}


def test_past_the_grace_wind_up_tries_once_and_leaves_the_rest() -> None:
    rig = _rig("serial")
    rig.consumer.commit_errors = [TransientKafkaError("away")] * 5
    rig.take()
    rig.engine.finish()
    rig.ledger.stop.fatal = True
    before = len(rig.consumer.commit_errors)
    rig.engine.wind_up()
    # one short try, no retries with backoff: the broker is away and the stop is late
    assert before - len(rig.consumer.commit_errors) == 1
    assert rig.ledger.cycle.holding, "left uncommitted: re-read by the next owner"


# -- at-least-once, pipelined ------------------------------------------------------------------


def test_pipelined_keeps_the_batch_out_and_commits_without_waiting() -> None:
    rig = _rig("pipelined")
    assert rig.producer is not None
    rig.producer.mode = "in_flight"
    rig.take()
    rig.engine.finish()
    assert rig.engine.busy and rig.broker.committed == {}
    assert not rig.turn()  # acks not in yet: still out
    rig.producer.deliver_all()
    assert not rig.turn()  # settled, then its offsets sent asynchronously
    assert rig.consumer.async_sent == [{TP0: 3, TP1: 3}]
    rig.consumer.answer_async()
    assert not rig.turn()
    assert not rig.ledger.cycle.holding and rig.broker.committed == {TP0: 3, TP1: 3}
    assert len(rig.delivered) == 1


def test_pipelined_shows_the_batch_out_to_the_observers_after_sending_the_next() -> None:
    """Observers only report: the batch acknowledged while the next one was scored is shown to
    them once that one is sent, not between its scoring and its send."""
    rig = _rig("pipelined")
    published_when_delivered: list[int] = []

    def delivered(batch: ProcessedBatch) -> None:
        published_when_delivered.append(len(rig.broker.published))
        rig.delivered.append(batch)

    rig.ledger.delivered = delivered
    rig.take()
    rig.engine.finish()  # out, acknowledged at once (the producer's default mode)
    assert rig.delivered == [] and len(rig.broker.published) == 6
    rig.broker.append(TP0, 2)
    rig.take()
    rig.engine.finish()
    assert published_when_delivered == [8]  # the first batch's report came after the second
    assert rig.ledger.cycle.acknowledged == {TP0: 3, TP1: 3}
    rig.engine.finish(serial=True)
    assert published_when_delivered == [8, 8] and rig.ledger.cycle.in_hand == 0


def test_pipelined_commit_rejected_keeps_partitions_still_ours_and_waits() -> None:
    rig = _rig("pipelined")
    rig.take()
    rig.engine.finish(serial=True)
    rig.turn()
    rig.consumer.revoke([TP1])  # an incremental rebalance left us TP0
    rig.consumer.answer_async(CommitRejected("rebalanced"))
    assert not rig.turn()
    assert rig.ledger.cycle.to_commit() == {TP0: 3}
    assert rig.consumer.async_sent == [], "not sent again before the rejoin settles"
    rig.clock.advance(REJECTED_RETRY_S)
    rig.turn()
    assert rig.consumer.async_sent == [{TP0: 3}]


def test_pipelined_commit_never_confirmed_is_held_and_retried_synchronously() -> None:
    rig = _rig("pipelined")
    rig.take()
    rig.engine.finish(serial=True)
    rig.turn()
    assert rig.consumer.async_sent
    rig.clock.advance(ASYNC_COMMIT_PATIENCE_S + 0.1)
    assert rig.turn(), "unconfirmed past its patience: held"
    assert rig.consumer.paused() == {TP0, TP1}
    rig.clock.advance(0.1)
    assert not rig.turn()
    assert rig.consumer.commits == [{TP0: 3, TP1: 3}]
    rig.consumer.answer_async(TransientKafkaError("late"))  # the old one fails late: no matter
    assert not rig.turn() and not rig.ledger.cycle.holding


def test_a_late_async_success_still_counts() -> None:
    rig = _rig("pipelined")
    rig.take()
    rig.engine.finish(serial=True)
    rig.turn()
    rig.clock.advance(ASYNC_COMMIT_PATIENCE_S + 0.1)
    rig.consumer.commit_errors = [TransientKafkaError("away")]
    assert rig.turn()
    rig.consumer.answer_async()  # the timed-out commit succeeded after all
    assert not rig.turn(), "nothing left to hold"


# -- exactly-once ------------------------------------------------------------------------------


def test_a_transaction_commits_outputs_and_offsets_together() -> None:
    rig = _rig("transactional")
    rig.take()
    rig.engine.finish()
    assert rig.broker.committed == {TP0: 3, TP1: 3}
    assert len(rig.broker.published) == 6
    assert not rig.ledger.cycle.holding and len(rig.delivered) == 1
    assert not rig.turn()


def test_an_aborted_transaction_is_read_again_after_a_backoff() -> None:
    rig = _rig("transactional", outcomes=["abort"])
    rig.take()
    rig.engine.finish()
    assert rig.broker.committed == {} and rig.broker.published == []
    assert sorted(rig.consumer.seeks) == [(TP0, 0), (TP1, 0)]
    assert rig.turn(), "held for the backoff after a failure"
    rig.clock.advance(0.2)
    assert not rig.turn()
    rig.take()
    rig.engine.finish()
    assert rig.broker.committed == {TP0: 3, TP1: 3}
    assert len(rig.broker.published) == 6, "nothing of the aborted one counts"


@pytest.mark.parametrize(
    ("outcome", "resume_at"),
    [("unknown-committed", 3), ("unknown-lost", 0)],
)
def test_an_unknown_outcome_is_settled_by_a_new_producer_and_resync(
    outcome: str, resume_at: int
) -> None:
    rig = _rig("transactional", outcomes=[outcome])
    rig.take()
    rig.engine.finish()
    assert len(rig.built) == 2, "a successor producer settles what its predecessor left open"
    assert rig.built[0].closed
    assert sorted(rig.consumer.seeks) == [(TP0, resume_at), (TP1, resume_at)]
    assert not rig.delivered
    rig.clock.advance(1.0)
    assert not rig.turn()
    rig.take()
    rig.engine.finish()
    assert rig.broker.committed == {TP0: 3, TP1: 3}
    assert len(rig.broker.published) == 6, "each record counted once, whichever way it went"


def test_a_settle_that_fails_holds_and_is_retried() -> None:
    rig = _rig("transactional", outcomes=["unknown-committed"])
    rig.consumer.committed_errors = [TransientKafkaError("coordinator away")]
    rig.take()
    rig.engine.finish()
    guarantee = cast(Transactional, rig.engine.guarantee)
    assert guarantee.resync == {TP0: 0, TP1: 0}
    assert rig.turn() and rig.consumer.paused() == {TP0, TP1}
    rig.take()
    assert rig.ledger.cycle.pending == []  # paused: nothing read while unsettled
    rig.engine.finish()  # nothing is committed while unsettled
    assert len(rig.built) == 2
    rig.clock.advance(1.0)
    assert not rig.turn(), "settled on the retry: resumed"
    assert len(rig.built) == 3 and guarantee.resync == {}
    assert sorted(rig.consumer.seeks)[-2:] == [(TP0, 3), (TP1, 3)]


def test_a_released_partition_needs_no_settling() -> None:
    rig = _rig("transactional", outcomes=["unknown-lost"])
    rig.consumer.committed_errors = [TransientKafkaError("away")]
    rig.take()
    rig.engine.finish()
    guarantee = cast(Transactional, rig.engine.guarantee)
    rig.consumer.revoke([TP0, TP1])
    rig.engine.release([TP0, TP1], lost=True)
    assert guarantee.resync == {}
    rig.clock.advance(1.0)
    assert not rig.turn()


def test_a_transaction_is_not_started_once_the_rebalance_gave_up() -> None:
    rig = _rig("transactional")
    rig.take()
    rig.engine.finish(give_up=lambda: True)
    assert rig.broker.published == [] and rig.ledger.cycle.pending
