"""The batch cycle's rules, driven without a broker: failing acks, revocations mid-batch,
lost partitions, rejected commits and shutdown."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forestream.edge.interface import ConsumedRecord, TopicPartition
from forestream.worker.cycle import BatchCycle, first_offsets, next_offsets

A = TopicPartition("in", 0)
B = TopicPartition("in", 1)


def records(tp: TopicPartition, offsets: range) -> list[ConsumedRecord]:
    return [ConsumedRecord(tp.topic, tp.partition, o, 0, None, b"{}") for o in offsets]


def test_an_acknowledged_batch_offers_the_offsets_after_it() -> None:
    cycle = BatchCycle()
    cycle.take(records(A, range(0, 5)) + records(B, range(10, 12)))
    cycle.start_batch()
    assert cycle.acknowledge() == {A: 5, B: 12}
    assert cycle.holding
    assert cycle.to_commit() == {A: 5, B: 12}
    cycle.committed({A: 5, B: 12})
    assert not cycle.holding


def test_a_batch_whose_acks_failed_offers_nothing_and_says_where_to_read_again() -> None:
    cycle = BatchCycle()
    cycle.take(records(A, range(3, 8)) + records(B, range(0, 2)))
    cycle.start_batch()
    assert cycle.abandon() == {A: 3, B: 0}
    assert cycle.to_commit() == {}
    assert cycle.out is None


def test_offsets_held_from_an_earlier_batch_survive_a_later_failure() -> None:
    cycle = BatchCycle()
    cycle.take(records(A, range(0, 5)))
    cycle.start_batch()
    cycle.acknowledge()  # commit failed: still held
    cycle.take(records(A, range(5, 9)))
    cycle.start_batch()
    assert cycle.abandon() == {A: 5}
    assert cycle.to_commit() == {A: 5}


def test_a_commit_forgets_only_what_it_covered() -> None:
    cycle = BatchCycle()
    cycle.take(records(A, range(0, 5)))
    cycle.start_batch()
    offered = cycle.acknowledge()
    cycle.take(records(A, range(5, 7)))
    cycle.start_batch()
    cycle.acknowledge()  # acknowledged further while the first commit was in flight
    cycle.committed(offered)
    assert cycle.to_commit() == {A: 7}


def test_a_revoked_partition_is_forgotten_and_its_records_kept_for_the_revocation() -> None:
    cycle = BatchCycle()
    cycle.take(records(A, range(0, 2)))
    cycle.start_batch()
    cycle.acknowledge()
    cycle.take(records(A, range(2, 4)) + records(B, range(0, 3)))
    cycle.release([A], lost=False)  # the revocation path published what it could first
    assert cycle.to_commit() == {}
    assert len(cycle.pending) == 5


def test_records_of_a_lost_partition_are_dropped_unprocessed() -> None:
    cycle = BatchCycle()
    cycle.take(records(A, range(0, 2)) + records(B, range(0, 3)))
    cycle.release([A], lost=True)
    assert [(r.partition, r.offset) for r in cycle.pending] == [(1, 0), (1, 1), (1, 2)]


def test_a_rejected_commit_drops_every_held_offset() -> None:
    cycle = BatchCycle()
    cycle.take(records(A, range(0, 2)) + records(B, range(0, 2)))
    cycle.start_batch()
    cycle.acknowledge()
    cycle.commit_rejected()
    assert not cycle.holding


def test_a_rejected_commit_keeps_the_offsets_of_partitions_still_ours() -> None:
    """An incremental rebalance took A and left B: B's offsets are committed again later."""
    cycle = BatchCycle()
    cycle.take(records(A, range(0, 2)) + records(B, range(0, 3)))
    cycle.start_batch()
    cycle.acknowledge()
    cycle.commit_rejected(still_ours=[B])
    assert cycle.to_commit() == {B: 3}


def test_one_batch_out_at_a_time() -> None:
    cycle = BatchCycle()
    cycle.take(records(A, range(0, 2)))
    cycle.start_batch()
    with pytest.raises(RuntimeError):
        cycle.start_batch()
    cycle.abandon()
    with pytest.raises(RuntimeError):
        cycle.acknowledge()


def test_shutdown_drops_what_was_never_published() -> None:
    cycle = BatchCycle()
    cycle.take(records(A, range(0, 4)))
    assert cycle.drop_pending() == 4
    assert cycle.pending == []
    assert cycle.to_commit() == {}


def test_first_and_next_offsets_per_partition() -> None:
    batch = records(A, range(4, 9)) + records(B, range(0, 1))
    assert first_offsets(batch) == {A: 4, B: 0}
    assert next_offsets(batch) == {A: 9, B: 1}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.booleans(), st.booleans()), max_size=40))
def test_no_commit_ever_skips_a_record_whose_outputs_were_not_acknowledged(
    steps: list[tuple[int, bool, bool]],
) -> None:
    """A consumer of one partition read in order; each step polls ``n`` records, sends them
    out, and the outputs are acknowledged or not, then a commit succeeds or not. Whatever
    happens, every committed offset has every record before it acknowledged at least once."""
    cycle = BatchCycle()
    position = 0
    acknowledged: set[int] = set()
    committed = 0
    for n, acked, commit_ok in steps:
        cycle.take(records(A, range(position, position + n)))
        position += n
        batch = cycle.start_batch()
        if acked:
            cycle.acknowledge()
            acknowledged.update(r.offset for r in batch)
        else:
            position = cycle.abandon().get(A, position)  # the consumer seeks back
        if commit_ok and cycle.holding:
            offsets = cycle.to_commit()
            cycle.committed(offsets)
            assert offsets[A] >= committed
            committed = offsets[A]
            assert set(range(committed)) <= acknowledged


def test_a_failed_batch_also_rewinds_the_batch_scored_ahead_of_its_acks() -> None:
    """Pipelined: batch 2 was taken (and scored) while batch 1 was out. Batch 1's acks fail:
    both are read again, batch 2 from its first offset where batch 1 did not cover it."""
    cycle = BatchCycle()
    cycle.take(records(A, range(0, 4)))
    cycle.start_batch()
    cycle.take(records(A, range(4, 6)) + records(B, range(7, 9)))
    assert cycle.abandon() == {A: 0, B: 7}
    assert cycle.pending == []
    assert cycle.out is None
    assert not cycle.holding


def test_a_commit_confirmed_late_forgets_only_what_it_covered() -> None:
    """An asynchronous commit of batch 1 confirms after batch 2 was acknowledged: batch 2's
    offsets stay held for the next commit."""
    cycle = BatchCycle()
    cycle.take(records(A, range(0, 3)))
    cycle.start_batch()
    first = dict(cycle.acknowledge())
    cycle.take(records(A, range(3, 5)))
    cycle.start_batch()
    cycle.acknowledge()
    cycle.committed(first)
    assert cycle.to_commit() == {A: 5}


def test_abandon_with_nothing_out_rewinds_what_was_taken() -> None:
    """Scoring failed before anything went out (an unexpected error): the taken records are
    read again."""
    cycle = BatchCycle()
    cycle.take(records(B, range(2, 5)))
    assert cycle.abandon() == {B: 2}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 6), st.booleans(), st.sampled_from(["none", "sent", "ok"])),
        max_size=40,
    )
)
def test_pipelined_commits_never_skip_an_unacknowledged_record(
    steps: list[tuple[int, bool, str]],
) -> None:
    """The worker's pipelined order on one partition: take batch N+1 while batch N is out,
    then settle N (acknowledged or not), send N+1; commits are sent asynchronously and
    confirmed (or lost) later, out of step with the batches. Every offset ever confirmed
    has every record before it acknowledged, and confirmed offsets never go backwards."""
    cycle = BatchCycle()
    position = 0
    acknowledged: set[int] = set()
    committed = 0
    in_flight_commit: dict[TopicPartition, int] | None = None
    for n, acked, commit in steps:
        cycle.take(records(A, range(position, position + n)))  # N+1, scored ahead
        position += n
        if cycle.out is not None:  # settle N
            out = list(cycle.out)
            if acked:
                cycle.acknowledge()
                acknowledged.update(r.offset for r in out)
            else:
                position = cycle.abandon().get(A, position)  # seek back: N and N+1 again
        if cycle.pending and cycle.out is None:
            cycle.start_batch()  # N+1 goes out
        if commit == "sent" and in_flight_commit is None and cycle.holding:
            in_flight_commit = cycle.to_commit()
        elif commit == "ok" and in_flight_commit is not None:
            cycle.committed(in_flight_commit)
            assert in_flight_commit[A] >= committed
            committed = in_flight_commit[A]
            assert set(range(committed)) <= acknowledged
            in_flight_commit = None


def test_a_partition_lost_while_its_batch_is_out_is_not_committed_by_us() -> None:
    """Pipelined, the loop polls (and so may be told of a lost partition) while a batch is
    out: when that batch is acknowledged, only the partitions still ours are offered."""
    cycle = BatchCycle()
    cycle.take(records(A, range(0, 3)) + records(B, range(0, 2)))
    cycle.start_batch()
    cycle.release([B], lost=True)
    assert cycle.acknowledge() == {A: 3}
    assert cycle.to_commit() == {A: 3}
    cycle.take(records(B, range(5, 6)))  # B is ours again later: counted afresh
    cycle.start_batch()
    assert cycle.acknowledge() == {B: 6}
