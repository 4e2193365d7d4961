"""The edge interface in memory, and a clock that moves only when told: for unit tests of the
delivery engine's state machine without a broker.

Not a Kafka stand-in for integration tests (those talk to a real broker): these implement our
own protocols (:mod:`forestream.edge.interface`) with the few behaviours the engine relies on
(positions, seeks, pauses, committed offsets, acknowledgements, transactions), plus scripted
outcomes (a commit timing out or rejected, a send not acknowledged, a transaction aborted or
its outcome unknown) that a real broker gives only by accident.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from forestream.edge.interface import (
    ConsumedRecord,
    InputRecord,
    Outgoing,
    RebalanceHandler,
    TopicPartition,
)
from forestream.worker.processing import ProcessedBatch


def score_each(records: list[InputRecord]) -> ProcessedBatch:
    """One prediction per record: nothing of the model matters to the delivery engine."""
    return ProcessedBatch(
        outgoing=[Outgoing("out", r.key, r.value) for r in records],
        records_in=len(records),
        predicted=len(records),
        dead_lettered=Counter(),
        scored=cast(Any, None),
    )


class FakeClock:
    """Monotonic seconds that advance only through :meth:`sleep` or :meth:`advance`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)

    advance = sleep


@dataclass
class MemoryBroker:
    """What the cluster holds: the input log, committed offsets, what counts as published."""

    log: dict[TopicPartition, list[InputRecord]] = field(default_factory=dict)
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    published: list[Outgoing] = field(default_factory=list)
    """Acknowledged sends, and the records of committed transactions."""

    def append(self, tp: TopicPartition, count: int) -> None:
        records = self.log.setdefault(tp, [])
        for _ in range(count):
            offset = len(records)
            records.append(
                ConsumedRecord(tp.topic, tp.partition, offset, 0, b"k%d" % offset, b"v%d" % offset)
            )


class MemoryConsumer:
    """A :class:`~forestream.edge.interface.GroupConsumer` over a :class:`MemoryBroker`.

    ``commit_errors``: what the next synchronous commits raise, in order (None: it works).
    Asynchronous commits stay in ``async_sent`` until :meth:`answer_async`."""

    def __init__(self, broker: MemoryBroker, assigned: Iterable[TopicPartition]) -> None:
        self.broker = broker
        self._assignment = set(assigned)
        self.positions = {tp: broker.committed.get(tp, 0) for tp in self._assignment}
        self._paused: set[TopicPartition] = set()
        self.commit_errors: list[Exception | None] = []
        self.committed_errors: list[Exception | None] = []
        self.async_sent: list[dict[TopicPartition, int]] = []
        self._async_done: list[tuple[dict[TopicPartition, int], Exception | None]] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.generation = 1
        self.closed = False
        self.no_broker_s: float | None = None
        """What :meth:`broker_loss_s` answers: set it to stand for a client past its bound."""

    # -- reading -------------------------------------------------------------------------------

    def subscribe(self, topic: str, handler: RebalanceHandler) -> None:
        self.handler = handler

    def poll_batch(self, max_records: int, timeout_s: float) -> Sequence[InputRecord]:
        out: list[InputRecord] = []
        for tp in sorted(self._assignment - self._paused):
            records = self.broker.log.get(tp, [])
            while self.positions[tp] < len(records) and len(out) < max_records:
                out.append(records[self.positions[tp]])
                self.positions[tp] += 1
        return out

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))
        self.positions[partition] = offset

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused |= set(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused -= set(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)

    def assignment_snapshot(self) -> list[TopicPartition]:
        return list(self._assignment)

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        """As an assign-only reader (a replay's :class:`GroupOffsetsReader`) is told to."""
        self._assignment = set(partitions)
        for tp in partitions:
            self.positions.setdefault(tp, self.broker.committed.get(tp, 0))

    def position(self, partition: TopicPartition) -> int:
        return self.positions[partition]

    def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        """The group took them away (the engine is told separately, as adapters do)."""
        self._assignment -= set(partitions)
        self.generation += 1

    # -- committing ----------------------------------------------------------------------------

    def commit(self, offsets: dict[TopicPartition, int], timeout_s: float) -> None:
        error = self.commit_errors.pop(0) if self.commit_errors else None
        if error is not None:
            raise error
        self.commits.append(dict(offsets))
        self.broker.committed.update(offsets)

    def commit_async(self, offsets: dict[TopicPartition, int]) -> None:
        self.async_sent.append(dict(offsets))

    def answer_async(self, error: Exception | None = None) -> None:
        """The coordinator answers the oldest asynchronous commit."""
        offsets = self.async_sent.pop(0)
        if error is None:
            self.commits.append(offsets)
            self.broker.committed.update(offsets)
        self._async_done.append((offsets, error))

    def commit_results(self) -> list[tuple[dict[TopicPartition, int], Exception | None]]:
        done, self._async_done = self._async_done, []
        return done

    def committed(
        self, partitions: Sequence[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, int | None]:
        error = self.committed_errors.pop(0) if self.committed_errors else None
        if error is not None:
            raise error
        return {tp: self.broker.committed.get(tp) for tp in partitions}

    def group_metadata(self) -> object:
        return ("group", self.generation)

    def lag(self, timeout_s: float) -> dict[int, int] | None:
        return None

    def maintain(self) -> None:
        pass

    def broker_loss_s(self) -> float | None:
        return self.no_broker_s

    def abandon(self, timeout_s: float) -> list[TopicPartition]:
        lost = sorted(self._assignment)
        self._assignment.clear()
        self.handler.on_released(lost, lost=True)
        self.closed = True
        return lost

    def close(self, timeout_s: float = 0.0) -> None:
        self.closed = True


@dataclass
class MemoryDelivery:
    """The fate of one send: acknowledged, failed, or still in flight."""

    count: int
    state: str = "acked"
    """``acked``, ``failed`` or ``in_flight``."""

    def unacknowledged(self) -> list[int]:
        return [] if self.state == "acked" else list(range(self.count))

    def error(self) -> BaseException | None:
        return RuntimeError("not acknowledged") if self.state == "failed" else None

    def settled(self) -> bool:
        return self.state != "in_flight"

    def handed_over(self) -> int:
        return self.count


class MemoryProducer:
    """An :class:`~forestream.edge.interface.AckingProducer`: ``mode`` says what becomes of
    each send (``acked``, ``failed``, or ``in_flight`` until :meth:`deliver_all`)."""

    def __init__(self, broker: MemoryBroker, clock: FakeClock, mode: str = "acked") -> None:
        self.broker = broker
        self.clock = clock
        self.mode = mode
        self.in_flight: list[tuple[MemoryDelivery, list[Outgoing]]] = []

    def send(self, records: Sequence[Outgoing]) -> MemoryDelivery:
        delivery = MemoryDelivery(len(records), self.mode)
        if self.mode == "acked":
            self.broker.published.extend(records)
        elif self.mode == "in_flight":
            self.in_flight.append((delivery, list(records)))
        return delivery

    def deliver_all(self) -> None:
        for delivery, records in self.in_flight:
            delivery.state = "acked"
            self.broker.published.extend(records)
        self.in_flight = []

    def await_delivery(self, delivery: MemoryDelivery, timeout_s: float) -> bool:
        if not delivery.settled():
            self.clock.sleep(timeout_s)
        return delivery.settled()

    def flush(self, timeout_s: float) -> bool:
        return not self.in_flight

    def fatal(self, exc: BaseException, topic: str | None = None) -> Exception | None:
        return None

    def append(self, record: Outgoing, partition: int | None, timeout_s: float) -> int:
        self.broker.published.append(record)
        return len(self.broker.published) - 1

    def close(self, timeout_s: float) -> None:
        pass


class MemoryTransactionalProducer(MemoryProducer):
    """A :class:`~forestream.edge.interface.TransactionalProducer`. ``outcomes``: what the next
    commits do, in order: ``"commit"``, ``"abort"`` (raise TransactionAborted),
    ``"unknown-committed"`` / ``"unknown-lost"`` (raise TransientKafkaError after committing, or
    without). Shared by a producer and its successors, as a transactional id is."""

    def __init__(
        self,
        broker: MemoryBroker,
        clock: FakeClock,
        outcomes: list[str],
        consumer: MemoryConsumer,
    ) -> None:
        super().__init__(broker, clock)
        self.outcomes = outcomes
        self.consumer = consumer
        self.open: list[Outgoing] | None = None
        self.closed = False

    def begin(self) -> None:
        self.open = []

    def send(self, records: Sequence[Outgoing]) -> MemoryDelivery:
        assert self.open is not None, "send outside a transaction"
        self.open.extend(records)
        return MemoryDelivery(len(records))

    def commit_transaction(
        self, offsets: dict[TopicPartition, int], group_metadata: object, timeout_s: float
    ) -> None:
        from forestream.errors import TransactionAborted, TransientKafkaError

        outcome = self.outcomes.pop(0) if self.outcomes else "commit"
        records, self.open = self.open or [], None
        if outcome in ("commit", "unknown-committed"):
            self.broker.published.extend(records)
            self.broker.committed.update(offsets)
        if outcome == "abort":
            raise TransactionAborted("aborted by the coordinator")
        if outcome.startswith("unknown"):
            raise TransientKafkaError("commit timed out")

    def abort(self, timeout_s: float) -> bool:
        self.open = None
        return True

    def close(self, timeout_s: float) -> None:
        self.closed = True
