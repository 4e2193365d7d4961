"""What happens to a partition's join state when the group moves partitions: the evaluator's
rebalance half, a mixin of :class:`forestream.worker.evaluator.service.Evaluator` (kept apart so
the loop's module stays about the loop).

At-least-once: a revoked partition is published and committed, then *parked*; given straight
back in the same rebalance (kafka-python's eager protocol revokes every partition) it resumes
with what waits, else it is dropped once the poll that ran the rebalance returns.
Exactly-once: everything since the last transaction is dropped and read again
(:meth:`PartitionMoves._rewind_all`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import structlog

from forestream.worker.evaluator.join import PartitionJoin
from forestream.worker.evaluator.totals import prefixed

if TYPE_CHECKING:
    import threading
    from collections import Counter

    from forestream.edge.interface import Outgoing, TopicPartition, TransactionalProducer
    from forestream.worker.evaluator.counts import CountsBuffer, ShadowCountsBuffer
    from forestream.worker.evaluator.settings import EvaluatorSettings

log = structlog.get_logger("forestream.evaluator")


class _Parked(NamedTuple):
    join: PartitionJoin
    shadow_join: PartitionJoin | None
    label_pos: int | None
    prediction_pos: int | None
    shadow_pos: int | None


class PartitionMoves:
    """The rebalance callbacks' state changes; the attributes are the evaluator's."""

    s: EvaluatorSettings
    txn: TransactionalProducer | None
    shadow_topic: str | None
    buffer: CountsBuffer
    shadow_buffer: ShadowCountsBuffer
    joins: dict[int, PartitionJoin]
    shadow_joins: dict[int, PartitionJoin]
    label_pos: dict[int, int]
    prediction_pos: dict[int, int]
    shadow_pos: dict[int, int]
    parked: dict[int, _Parked]
    seek_due: set[int]
    labels_due: set[int]
    outbox: list[Outgoing]
    joined: int
    shadow_joined: int
    evicted: Counter[str]
    rejected: Counter[str]
    _lock: threading.RLock

    def publish(self) -> bool:
        raise NotImplementedError

    def offsets(self, partitions: set[int]) -> dict[TopicPartition, int]:
        raise NotImplementedError

    def assigned(self, partitions: list[TopicPartition]) -> None:
        with self._lock:
            back = {tp.partition for tp in partitions} & set(self.parked)
            for p in back:
                self._unpark(p)
            self.seek_due.update(tp.partition for tp in partitions if tp.partition not in back)
            if self.txn is not None:
                # what was read since the last transaction is gone (``_rewind_all``), but a
                # partition revoked and given straight back (kafka-python's eager rebalance
                # revokes all) keeps the group consumer's position: read its labels again from
                # the committed offset too, or the pairs they made are lost
                self.labels_due.update(tp.partition for tp in partitions)
            for tp in partitions:
                if tp.partition not in self.joins:
                    self._add_joins(tp.partition)
            owned = sorted(self.joins)
        log.info(
            "evaluator_assigned", partitions=sorted(tp.partition for tp in partitions), owned=owned
        )

    def _add_joins(self, partition: int) -> None:
        max_wait_ms = int(self.s.evaluator_max_wait_s * 1000)
        pending = self.s.evaluator_max_pending
        self.joins[partition] = PartitionJoin(self.buffer, pending, max_wait_ms)
        if self.shadow_topic is not None:
            self.shadow_joins[partition] = PartitionJoin(self.shadow_buffer, pending, max_wait_ms)

    def revoking(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        numbers = {tp.partition for tp in partitions}
        with self._lock:
            if self.txn is not None:
                self._rewind_all(numbers)
                offsets: dict[TopicPartition, int] = {}
            else:
                # published and committed: labels at the position read, predictions at the
                # oldest waiting. Kept aside, not dropped: a partition given straight back
                # (kafka-python's eager rebalance revokes every partition) resumes with what
                # waits, or the labels read before their predictions would be lost while the
                # group's position went on past them; one that moved is dropped after the poll
                offsets = self.offsets(numbers) if self.publish() else {}
                self._park(numbers)
            owned = sorted(self.joins)
        log.info("evaluator_revoked", partitions=sorted(numbers), owned=owned)
        return offsets

    def released(self, partitions: list[TopicPartition], lost: bool = False) -> None:
        """After a revocation (both clients release what they revoked at once) a parked
        partition stays parked: given straight back it resumes, else the loop drops it once
        the poll that ran the rebalance returns (:meth:`_drop_parked`). Dropping it here undid
        the parking on every revocation (test_shadow_scoring lost 200 labels read before their
        predictions). A partition lost (nothing committed) goes at once."""
        with self._lock:
            if self.txn is not None:
                self._rewind_all({tp.partition for tp in partitions})
            else:
                numbers = {tp.partition for tp in partitions}
                self._drop(numbers)
                if lost:
                    for p in numbers & set(self.parked):
                        self._unpark(p)
                        self._drop({p})

    def _park(self, numbers: set[int]) -> None:
        for p in numbers:
            if p in self.joins:
                self.parked[p] = _Parked(
                    self.joins.pop(p),
                    self.shadow_joins.pop(p, None),
                    self.label_pos.pop(p, None),
                    self.prediction_pos.pop(p, None),
                    self.shadow_pos.pop(p, None),
                )

    def _unpark(self, p: int) -> None:
        held = self.parked.pop(p)
        self.joins[p] = held.join
        if held.shadow_join is not None:
            self.shadow_joins[p] = held.shadow_join
        for positions, offset in (
            (self.label_pos, held.label_pos),
            (self.prediction_pos, held.prediction_pos),
            (self.shadow_pos, held.shadow_pos),
        ):
            if offset is not None:
                positions[p] = offset

    def _drop_parked(self) -> None:
        """Partitions revoked and not given back by the time the poll returned: moved."""
        for p in list(self.parked):
            self._unpark(p)
            self._drop({p})

    def _rewind_all(self, leaving: set[int]) -> None:
        """Exactly-once, partitions going: nothing since the last transaction counts. A
        transaction here would run on the client's rebalance path (kafka-python: its IO loop,
        which the transaction itself needs), so the counts not yet committed are dropped, for
        every partition (they are mixed in the buffer), and the partitions kept are read again
        from the group's committed offsets, both topics."""
        kept = set(self.joins) - leaving
        self.buffer.cells = {}
        self.shadow_buffer.cells = {}
        self.outbox = []
        self._drop(set(self.joins))
        for p in kept:
            self._add_joins(p)
        self.seek_due |= kept
        self.labels_due |= kept

    def _drop(self, numbers: set[int]) -> None:
        for p in numbers:
            join = self.joins.pop(p, None)
            if join is not None:  # keep the process totals across a move
                self.joined += join.joined
                self.evicted.update(join.evicted)
                self.rejected.update(join.rejected)
            self.label_pos.pop(p, None)
            self.prediction_pos.pop(p, None)
            shadow = self.shadow_joins.pop(p, None)
            if shadow is not None:
                self.shadow_joined += shadow.joined
                self.evicted.update(prefixed(shadow.evicted))
                self.rejected.update(prefixed(shadow.rejected))
            self.shadow_pos.pop(p, None)
