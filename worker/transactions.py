"""Exactly-once steps shared by the worker's loop and ``forestream replay``.

Both commit one batch's predictions, dead letters and input next-offsets in one transaction
(:func:`transact`), and both settle a transaction whose outcome is unknown the same way
(:func:`replace_producer`, then re-read from the group's committed offsets): its successor,
created with the same transactional id, completes or aborts it before anything else is sent.
Only the consumers differ (a group member, an assign-only reader), so they are passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from forestream.edge.interface import Outgoing, TopicPartition, TransactionalProducer
from forestream.errors import TransactionAborted, TransientKafkaError

TXN_TIMEOUT_S = 10.0
"""Bound on committing one transaction (milliseconds when healthy)."""
TXN_INIT_BLOCK_MS = 5_000
"""Bound on starting a transactional producer (it settles its predecessor's open transaction
first); past it the caller retries with backoff."""
ABORT_AFTER_FATAL_S = 3.0
"""One short try to abort before a fatal error ends the command (the coordinator's timeout
aborts it otherwise)."""


def transact(
    txn: TransactionalProducer,
    outgoing: Sequence[Outgoing],
    offsets: dict[TopicPartition, int],
    group_metadata: Callable[[], object],
    *,
    timeout_s: float,
    topic: str,
    still_owned: Callable[[], bool] = lambda: True,
) -> None:
    """Send ``outgoing`` and commit it with ``offsets`` (next-offsets of the records read) in
    one transaction.

    Raises :class:`TransactionAborted` (nothing of it counts: read the batch again from its
    first offsets), :class:`TransientKafkaError` (outcome unknown: replace the producer and
    read again from the group's committed offsets) or a classified fatal error.
    ``group_metadata`` is asked for just before the commit, after ``still_owned`` (a group
    member whose partitions went meanwhile aborts instead).
    """
    txn.begin()
    delivery = txn.send(outgoing)
    if (error := delivery.error()) is not None:  # some were never handed over
        fatal = txn.fatal(error, topic)
        if fatal is not None:
            txn.abort(ABORT_AFTER_FATAL_S)
            raise fatal
        if txn.abort(timeout_s):
            raise TransactionAborted(f"send failed: {error}")
        raise TransientKafkaError(f"send failed, abort unconfirmed: {error}")
    if not still_owned():
        if txn.abort(timeout_s):
            raise TransactionAborted("partitions lost before the commit")
        raise TransientKafkaError("partitions lost, abort unconfirmed")
    txn.commit_transaction(offsets, group_metadata(), timeout_s)


def replace_producer(
    old: TransactionalProducer | None, build: Callable[[], TransactionalProducer]
) -> TransactionalProducer:
    """Drop ``old`` without waiting for it and build its successor with the same transactional
    id, which completes or aborts the transaction ``old`` left open before it returns (so the
    group's committed offsets are final once it has). Raises like ``build``, except that a
    cluster not answering is a :class:`TransientKafkaError` (retried), as it is mid-run."""
    from forestream.edge.factory import rebuilt

    if old is not None:
        old.close(0)
    return rebuilt(build)


def retry_backoff_s(failures_in_a_row: int) -> float:
    """How long to wait after a failed transaction: a cause that persists (a broker away) is
    retried with backoff, not spun on."""
    return min(0.1 * 2**failures_in_a_row, 5.0)
