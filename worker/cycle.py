"""The batch cycle as a small state machine: taken -> out (scored, published) -> acknowledged ->
committed.

Pure: no client, no clock, no threads. The worker's loop tells it what happened (records
polled, a batch acknowledged or abandoned, a commit done or rejected, partitions revoked or
lost) and carries out what it answers (which offsets to commit, where to seek back to). The
rules that make delivery at-least-once without a gap live here, where unit tests drive them
through failing acks, revocations mid-batch and shutdown without a broker:

- an offset is committed only once every output of the records before it is acknowledged;
- a batch that leaves without acknowledged outputs is read again from its first offset, and
  so is what was taken after it (the loop scores the next batch while one is out);
- offsets acknowledged but not committed are kept (and retried) until committed, rejected by
  the group, or their partition is gone;
- records of a lost partition are dropped unprocessed: the new owner re-reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from forestream.edge.interface import InputRecord, TopicPartition


def next_offsets(records: Sequence[InputRecord]) -> dict[TopicPartition, int]:
    """Per partition: the offset after the last record of the batch, i.e. what to commit or
    checkpoint once the batch is acknowledged (records of a partition arrive in offset order)."""
    return {TopicPartition(r.topic, r.partition): r.offset + 1 for r in records}


def first_offsets(records: Sequence[InputRecord]) -> dict[TopicPartition, int]:
    """Per partition: the first offset of the batch, where to read again from."""
    first: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        if r.offset < first.get(tp, r.offset + 1):
            first[tp] = r.offset
    return first


class BatchCycle:
    """What one group member holds, between its consumer and its commits."""

    def __init__(self) -> None:
        self.pending: list[InputRecord] = []
        """Taken from the consumer, not yet out as a batch."""
        self.out: list[InputRecord] | None = None
        """The batch being scored and published (not yet acknowledged)."""
        self.acknowledged: dict[TopicPartition, int] = {}
        """Next-offsets whose records' outputs are all acknowledged, not yet committed."""
        self._gone_while_out: set[TopicPartition] = set()
        """Partitions released while the batch out was in flight: not ours to commit."""

    # -- taking and scoring --------------------------------------------------------------------

    def take(self, records: Sequence[InputRecord]) -> None:
        self.pending.extend(records)

    def start_batch(self) -> list[InputRecord]:
        """Everything pending goes out as one batch."""
        if self.out is not None:
            raise RuntimeError("a batch is already out: acknowledge or abandon it first")
        batch, self.pending = self.pending, []
        self.out = batch
        self._gone_while_out = set()
        return batch

    def acknowledge(self) -> dict[TopicPartition, int]:
        """Every output of the batch out was acknowledged: its offsets may be committed."""
        batch, self.out = self._take_out(), None
        done = next_offsets(batch)
        for tp in self._gone_while_out:  # lost while out: the new owner re-reads them
            done.pop(tp, None)
        self.acknowledged.update(done)
        return done

    def abandon(self) -> dict[TopicPartition, int]:
        """The batch out (if any) left without acknowledged outputs: where to seek back to so
        that it, and whatever was taken after it (scored ahead while it was out, never
        published), is read again. The client keeps fetch positions across a rebalance that
        hands a partition back to the same member, so not committing alone would let the next
        commit skip it."""
        batch, self.out = [*(self.out or ()), *self.pending], None
        self.pending = []
        return first_offsets(batch)

    def _take_out(self) -> list[InputRecord]:
        if self.out is None:
            raise RuntimeError("no batch is out")
        return self.out

    # -- committing ----------------------------------------------------------------------------

    @property
    def in_hand(self) -> int:
        """Records taken and not yet acknowledged (out plus pending)."""
        return len(self.out or ()) + len(self.pending)

    @property
    def holding(self) -> bool:
        """Acknowledged offsets wait for a commit (the loop takes no new batch meanwhile)."""
        return bool(self.acknowledged)

    def to_commit(self) -> dict[TopicPartition, int]:
        return dict(self.acknowledged)

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Forget what was committed; a partition acknowledged further since stays held."""
        for tp, offset in offsets.items():
            if self.acknowledged.get(tp) == offset:
                del self.acknowledged[tp]

    def commit_rejected(self, still_ours: Iterable[TopicPartition] = ()) -> None:
        """The group moved on without us: the new owners re-read from the committed offsets.
        Partitions ``still_ours`` (an incremental rebalance left them to us) keep theirs, to
        be committed again under the new generation."""
        keep = set(still_ours)
        self.acknowledged = {tp: o for tp, o in self.acknowledged.items() if tp in keep}

    # -- partitions going ----------------------------------------------------------------------

    def release(self, partitions: Iterable[TopicPartition], lost: bool) -> None:
        """Partitions no longer ours: forget their offsets, and (lost: without a chance to
        finish them) their pending records. The next owner re-reads from the committed offset,
        so anything dropped here is duplicated, never lost."""
        gone = set(partitions)
        for tp in gone:
            self.acknowledged.pop(tp, None)
        if self.out is not None:
            self._gone_while_out |= gone
        if lost:
            self.pending = [
                r for r in self.pending if TopicPartition(r.topic, r.partition) not in gone
            ]

    def drop_pending(self) -> int:
        """Stopping after an unexpected error: pending records were never published, so they
        stay uncommitted and are re-read."""
        dropped, self.pending = len(self.pending), []
        return dropped
