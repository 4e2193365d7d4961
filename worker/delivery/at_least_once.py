"""At-least-once: a batch's offsets are committed only once all its outputs are acknowledged.

Serial: publish, await the acks, commit (one short try; past it the offsets are held and
retried between polls). Pipelined: the batch published before is settled only once the next
one is scored, so its acknowledgements arrive meanwhile, and commits are sent without waiting
(:meth:`GroupConsumer.commit_async`). Either way a crash before the commit means the batch is
read again: duplicates, never gaps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from forestream.edge.interface import TopicPartition
from forestream.errors import CommitRejected, TransientKafkaError
from forestream.runtime.deadline import Deadline
from forestream.worker.delivery.engine import LATE_COMMIT_TIMEOUT_S, Ledger

if TYPE_CHECKING:
    from forestream.worker.processing import AckedPublisher, ProcessedBatch, Publication

log = structlog.get_logger("forestream.worker")

COMMIT_TIMEOUT_S = 10.0
BATCH_COMMIT_TIMEOUT_S = 2.0
"""One commit try after a batch (milliseconds when healthy). Past it the offsets are held and
retried between polls: blocking in long tries while the coordinator is away kept the loop from
polling, and polls are what complete a rejoin once it is back."""
ASYNC_COMMIT_PATIENCE_S = 10.0
"""How long an asynchronous commit may go unconfirmed before the loop holds and retries it.
Not the 2 s of a blocking try: during a group join the coordinator answers a commit only once
every member has rejoined (a heartbeat interval, ~3 s), and holding then paused the partitions
that the rebalance was leaving alone."""
REJECTED_RETRY_S = 0.5
"""After a commit rejected by a rebalance, when the offsets still ours are committed again."""
HELD_RETRY_FIRST_S = 0.1
HELD_RETRY_MAX_S = 1.0
COMMIT_BACKOFF_MAX_S = 10.0


@dataclass(slots=True)
class InFlight:
    """The batch out (``cycle.out``): published, its acknowledgements not yet awaited."""

    processed: ProcessedBatch
    publication: Publication


class SerialAtLeastOnce:
    """Publish, await the acks, commit; a commit that fails holds the loop until it succeeds."""

    resumed_event = "commit_resumed"
    pipelined = False

    def __init__(self, ledger: Ledger, publisher: AckedPublisher) -> None:
        self.ledger = ledger
        self.publisher = publisher
        self.out: InFlight | None = None
        self.failing = False
        """A commit failed: hold (commit synchronously, with backoff) until one succeeds."""
        self.retry = ledger.after(0)
        """When the held offsets are tried again."""
        self.backoff_s = HELD_RETRY_FIRST_S

    def busy(self) -> bool:
        return self.out is not None

    def between_polls(self) -> bool:
        """Retry held offsets here, synchronously, with backoff. Meanwhile the loop takes no
        new batch and fetches nothing but keeps polling, which is what completes a rejoin;
        what a lost partition makes the next owner redo stays bounded."""
        cycle = self.ledger.cycle
        self._take_commit_results()
        if self.out is not None and self.publisher.settled(self.out.publication):
            self._settle_out()
        if self.failing:
            if cycle.holding and self.retry.expired():
                if self.commit_held(attempts=1, timeout_s=BATCH_COMMIT_TIMEOUT_S):
                    self.failing = False
                else:
                    self.backoff_s = min(self.backoff_s * 2, HELD_RETRY_MAX_S)
                    self.retry = self.ledger.after(self.backoff_s)
            if not cycle.holding:
                self.failing = False
        else:
            self._commit_in_background()
        if not self.failing:
            self.backoff_s = HELD_RETRY_FIRST_S
        return self.failing

    def finish(self, give_up: Callable[[], bool] | None = None, serial: bool = False) -> None:
        """Score the records taken and publish them. Pipelined, the batch published before is
        settled only once this one is scored, and this one stays out on return (the observers
        see the one settled here after this one's send). A batch not acknowledged is rewound
        with whatever was taken after it."""
        serial = serial or give_up is not None or not self.pipelined
        cycle = self.ledger.cycle
        unreported: list[ProcessedBatch] = []
        try:
            if serial and not self._settle_out(give_up):
                return
            if not cycle.pending:
                return
            scored = self.ledger.score(cycle.pending)
            if not self._settle_out(give_up, unreported):
                return
            cycle.start_batch()
            self.out = InFlight(scored, self.publisher.send(scored.outgoing))
            if serial and not self._settle_out(give_up):
                return
        except BaseException:
            self._rewind()
            raise
        finally:
            # the batch acknowledged above is shown to the observers only now that this one
            # is sent: they report (drift, metrics: ~2.5 ms a batch of 10-40 records,
            # measured) and held every scored batch back from its send as long
            for processed in unreported:
                self.ledger.delivered(processed)
        unpipelined = give_up is None and not self.pipelined
        if unpipelined and not self.commit_held(attempts=1, timeout_s=BATCH_COMMIT_TIMEOUT_S):
            self.hold_for_retry()

    def wind_up(self) -> None:
        self.finish(serial=True)
        stop = self.ledger.stop
        if stop.past_grace():  # the broker is away: one short try, then go
            self.commit_held(attempts=1, timeout_s=LATE_COMMIT_TIMEOUT_S)
        else:  # within what is left of the orderly budget, so close() still fits the grace
            self.commit_held(attempts=3, stop_bounded=True)

    def release(self, partitions: Iterable[TopicPartition]) -> None:
        """Nothing of its own: the cycle forgot their offsets."""

    # -- acknowledgements ----------------------------------------------------------------------

    def _settle_out(
        self,
        give_up: Callable[[], bool] | None = None,
        unreported: list[ProcessedBatch] | None = None,
    ) -> bool:
        """Await the acknowledgements of the batch out; True when there is none (any more).
        Once acknowledged it counts as delivered at once, or is added to ``unreported`` for
        the caller to report after its send."""
        flight, self.out = self.out, None
        if flight is None:
            return True
        if not self.publisher.complete(flight.publication, give_up=give_up):
            self._rewind()  # not committed, and read again (at-least-once)
            return False
        self.ledger.cycle.acknowledge()
        if unreported is None:
            self.ledger.delivered(flight.processed)
        else:
            unreported.append(flight.processed)
        return True

    def _rewind(self) -> None:
        self.out = None
        self.ledger.rewind()

    # -- commits -------------------------------------------------------------------------------

    def commit_held(
        self,
        attempts: int = 5,
        timeout_s: float = COMMIT_TIMEOUT_S,
        stop_bounded: bool = False,
    ) -> bool:
        """Commit every acknowledged-but-uncommitted offset; what fails is kept for next time.

        Held offsets are merged into the next commit, so a commit lost to a broker blip is
        retried with the next batch (or at shutdown) rather than forgotten. ``stop_bounded``:
        what is left of the stop budget bounds all attempts together, each at least a short one.
        """
        ledger, cycle = self.ledger, self.ledger.cycle
        deadline = ledger.stop.deadline if stop_bounded else None
        backoff = 0.2
        for attempt in range(attempts):
            if not cycle.holding:
                return True
            if deadline is not None:
                if attempt > 0 and deadline.expired():
                    break
                timeout_s = min(timeout_s, max(deadline.remaining(), LATE_COMMIT_TIMEOUT_S))
            offsets = cycle.to_commit()
            try:
                ledger.consumer.commit(offsets, timeout_s)
            except CommitRejected as exc:
                # the group moved on without us: the new owner re-reads these (duplicates)
                log.warning("commit_rejected_after_rebalance", error=str(exc))
                cycle.commit_rejected()
                return False
            except TransientKafkaError as exc:
                if ledger.warn["commit"].ready():
                    log.warning(
                        "commit_failed_retrying",
                        error=str(exc),
                        attempt=attempt + 1,
                        suppressed=ledger.warn["commit"].take_suppressed(),
                    )
                if attempt + 1 < attempts:
                    ledger.sleep(backoff)
                    backoff = min(backoff * 2, COMMIT_BACKOFF_MAX_S)
                continue
            cycle.committed(offsets)
            return True
        if ledger.warn["deferred"].ready():
            log.error(
                "commit_deferred",
                partitions=len(cycle.acknowledged),
                suppressed=ledger.warn["deferred"].take_suppressed(),
            )
        return False

    def hold_for_retry(self) -> None:
        """A commit failed: the loop holds and retries it (:meth:`between_polls`)."""
        self.failing = True
        self.retry = self.ledger.after(self.backoff_s)

    def _take_commit_results(self) -> None:
        """Serial commits are synchronous, but one that timed out may land later."""
        self.ledger.commit_results()

    def _commit_in_background(self) -> None:
        """Serial commits are made by :meth:`finish`."""


class PipelinedAtLeastOnce(SerialAtLeastOnce):
    """Score the next batch while the last one's acks arrive; commit without waiting."""

    pipelined = True

    def __init__(self, ledger: Ledger, publisher: AckedPublisher) -> None:
        super().__init__(ledger, publisher)
        self.sent: tuple[dict[TopicPartition, int], Deadline] | None = None
        """The asynchronous commit in flight (one at a time) and its patience's deadline."""
        self.commit_again = ledger.after(0)
        """No asynchronous commit before then (one was just rejected by a rebalance)."""

    def _commit_in_background(self) -> None:
        """Commit what is acknowledged without waiting; one commit in flight at a time, and
        one not confirmed in time counts as failed (the hold then retries synchronously)."""
        ledger, cycle = self.ledger, self.ledger.cycle
        if self.sent is not None:
            _offsets, patience = self.sent
            if patience.expired():
                self.sent = None
                self._commit_failed(
                    TransientKafkaError(
                        f"commit not confirmed within {ASYNC_COMMIT_PATIENCE_S:.0f}s"
                    )
                )
            return
        if not cycle.holding or not self.commit_again.expired():
            return
        offsets = cycle.to_commit()
        try:
            ledger.consumer.commit_async(offsets)
        except (CommitRejected, TransientKafkaError) as exc:
            self._commit_failed(exc)
            return
        self.sent = (offsets, ledger.after(ASYNC_COMMIT_PATIENCE_S))

    def release(self, partitions: Iterable[TopicPartition]) -> None:
        """An asynchronous commit in flight for a partition gone is no longer awaited: its
        report may never come (from a client abandoned for a new one, say), and a late one is
        still taken by the ledger."""
        if self.sent is not None and not self.sent[0].keys().isdisjoint(set(partitions)):
            self.sent = None

    def _take_commit_results(self) -> None:
        """What became of the asynchronous commits (a late one that had timed out still
        counts when it succeeded: only exactly those offsets are forgotten)."""
        for offsets, error in self.ledger.commit_results():
            current = self.sent is not None and self.sent[0] == offsets
            if current:
                self.sent = None
            if error is not None and current:
                self._commit_failed(error)

    def _commit_failed(self, error: Exception) -> None:
        if isinstance(error, CommitRejected):
            # the group moved on without us: the new owner re-reads these (duplicates)
            log.warning("commit_rejected_after_rebalance", error=str(error))
            self.ledger.cycle.commit_rejected(still_ours=self.ledger.consumer.assignment())
            self.commit_again = self.ledger.after(REJECTED_RETRY_S)
            return
        if not isinstance(error, TransientKafkaError):
            raise error  # classified fatal (an ACL, say)
        if self.ledger.warn["commit"].ready():
            log.warning(
                "commit_failed_retrying",
                error=str(error),
                suppressed=self.ledger.warn["commit"].take_suppressed(),
            )
        self.hold_for_retry()
