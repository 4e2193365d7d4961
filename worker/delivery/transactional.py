"""Exactly-once: a batch's outputs and its input next-offsets commit in one transaction.

:class:`Transactions` is the part the worker and ``forestream replay`` share: one
transactional producer, a batch committed through it with one of three outcomes, the backoff
after a failure, and the settle after an unknown outcome (a new producer with the same
transactional id completes or aborts what its predecessor left open; then the caller re-reads
from the group's committed offsets, whichever way it went). Only the consumers differ (a group
member, an assign-only reader), so what to ask them is passed in. :class:`Transactional` is the
worker's guarantee built on it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from forestream.edge.interface import Outgoing, TopicPartition, TransactionalProducer
from forestream.errors import TransactionAborted, TransientKafkaError
from forestream.runtime.deadline import Clock, Deadline
from forestream.runtime.logs import RateLimited
from forestream.worker.cycle import next_offsets
from forestream.worker.delivery.engine import LATE_COMMIT_TIMEOUT_S, Ledger
from forestream.worker.transactions import (
    TXN_TIMEOUT_S,
    replace_producer,
    retry_backoff_s,
    transact,
)

log = structlog.get_logger("forestream.worker")

Committed = dict[TopicPartition, int | None]


class Outcome(enum.Enum):
    COMMITTED = "committed"
    ABORTED = "aborted"
    """Nothing of it counts: read the batch again from its first offsets."""
    UNKNOWN = "unknown"
    """It may have committed: :meth:`Transactions.settle`, then read from the committed offsets."""


class Transactions:
    """One transactional producer and its failures, for whichever consumer reads the input."""

    def __init__(
        self,
        build: Callable[[], TransactionalProducer],
        clock: Clock,
        logger: Any = log,
        warn: RateLimited | None = None,
    ) -> None:
        self.build = build
        self.clock = clock
        self.log = logger
        self.warn = warn or RateLimited(10.0)
        self.producer: TransactionalProducer | None = None
        self.failures = 0
        """Failed transactions (or settles) in a row."""
        self.retry = Deadline.passed(clock)
        """No transaction (or settle) before then: a failure's backoff."""

    def open(self) -> None:
        """Build the producer at start: it fences (and settles) an earlier one's transaction."""
        self.producer = self.build()

    def ready(self) -> bool:
        """Past the backoff of the last failure."""
        return self.retry.expired()

    def commit(
        self,
        outgoing: Sequence[Outgoing],
        offsets: dict[TopicPartition, int],
        group_metadata: Callable[[], object],
        *,
        timeout_s: Callable[[], float],
        topic: str,
        still_owned: Callable[[], bool] = lambda: True,
    ) -> Outcome:
        """Send ``outgoing`` and commit it with ``offsets`` in one transaction. A fatal error
        (fenced, an ACL) is raised; ``timeout_s`` is asked once the producer is there."""
        try:
            if self.producer is None:  # the last one was given up: its successor settles it
                self.producer = replace_producer(None, self.build)
            transact(
                self.producer,
                outgoing,
                offsets,
                group_metadata,
                timeout_s=timeout_s(),
                topic=topic,
                still_owned=still_owned,
            )
        except TransactionAborted as exc:
            self.failed("transaction_aborted", exc)
            return Outcome.ABORTED
        except TransientKafkaError as exc:
            self.failed("transaction_outcome_unknown", exc)
            return Outcome.UNKNOWN
        self.failures = 0
        return Outcome.COMMITTED

    def settle(self, ask_committed: Callable[[], Committed]) -> Committed | None:
        """Replace the producer (its successor completes or aborts the transaction left open),
        then ask the group's committed offsets: where to read again from. None when either
        failed (retried after the backoff)."""
        old, self.producer = self.producer, None
        try:
            self.producer = replace_producer(old, self.build)
            return ask_committed()
        except TransientKafkaError as exc:
            self.failed("transaction_settle_failed", exc)
            return None

    def failed(self, event: str, exc: Exception) -> None:
        """A transaction (or settling one) failed: retry after a backoff, not in a spin."""
        self.failures += 1
        if self.warn.ready():
            self.log.warning(
                event,
                error=str(exc)[:300],
                failures_in_a_row=self.failures,
                suppressed=self.warn.take_suppressed(),
            )
        self.retry = Deadline.after(retry_backoff_s(self.failures), self.clock)

    def close(self, timeout_s: float) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.close(timeout_s)


class Transactional:
    """The worker's exactly-once guarantee: one transaction per batch.

    Aborted (a send or the commit failed, the group moved on): nothing of it counts, and the
    batch is read again from its first offsets. Outcome unknown (a timeout): the loop holds
    until a new producer has settled it and the partitions are sought to the committed
    offsets, whichever way it went.
    """

    resumed_event = "transactions_resumed"

    def __init__(self, ledger: Ledger, transactions: Transactions, output_topic: str) -> None:
        self.ledger = ledger
        self.transactions = transactions
        self.output_topic = output_topic
        self.resync: dict[TopicPartition, int] = {}
        """Partitions whose last transaction's outcome is unknown, with the first offset of what
        it held. Nothing is read until they are sought to the group's committed offsets."""

    def busy(self) -> bool:
        return False

    def between_polls(self) -> bool:
        """Hold while an earlier transaction's outcome is unknown, or after a failed one until
        its backoff has passed."""
        self.ledger.commit_results()  # none of ours: the revocation's, if any
        if self.resync and self.transactions.ready():
            self._settle()
        return bool(self.resync) or not self.transactions.ready()

    def finish(self, give_up: Callable[[], bool] | None = None, serial: bool = False) -> None:
        """Score the records taken and commit their outputs and offsets in one transaction."""
        ledger, cycle = self.ledger, self.ledger.cycle
        if not cycle.pending or self.resync or (give_up is not None and give_up()):
            return
        consumer = ledger.consumer
        scored = ledger.score(cycle.pending)
        offsets = next_offsets(cycle.start_batch())
        try:
            outcome = self.transactions.commit(
                scored.outgoing,
                offsets,
                consumer.group_metadata,
                timeout_s=lambda: min(ledger.stop.left_s() or TXN_TIMEOUT_S, TXN_TIMEOUT_S),
                topic=self.output_topic,
                # lost meanwhile (a rebalance): not ours to commit
                still_owned=lambda: offsets.keys() <= consumer.assignment(),
            )
        except BaseException:
            ledger.rewind()
            raise
        if outcome is Outcome.ABORTED:
            ledger.rewind()
            return
        if outcome is Outcome.UNKNOWN:
            for tp, first in cycle.abandon().items():
                self.resync.setdefault(tp, first)
            self._settle()
            return
        cycle.committed(cycle.acknowledge())  # both at once: they were one transaction
        ledger.delivered(scored)

    def wind_up(self) -> None:
        self.finish(serial=True)  # nothing is ever held uncommitted

    def release(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:  # the next owner reads from the committed offsets
            self.resync.pop(tp, None)

    def _settle(self) -> None:
        """Settle the unknown outcome, then read the partitions again from what the group
        committed (nothing committed: the transaction did not commit either, so its first
        offset)."""
        consumer = self.ledger.consumer

        def ask() -> Committed:
            owned = consumer.assignment()
            mine = [tp for tp in self.resync if tp in owned]
            return consumer.committed(mine, timeout_s=LATE_COMMIT_TIMEOUT_S)

        committed = self.transactions.settle(ask)
        if committed is None:
            return
        self.ledger.cycle.abandon()  # whatever was read meanwhile: read again from there
        resume = {tp: self.resync[tp] if o is None else o for tp, o in committed.items()}
        for tp, offset in resume.items():
            consumer.seek(tp, offset)
        log.info(
            "transaction_settled",
            partitions=sorted(f"{tp.topic}-{tp.partition}@{o}" for tp, o in resume.items()),
        )
        self.resync.clear()
