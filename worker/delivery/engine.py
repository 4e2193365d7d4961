"""The delivery engine: what a group member does with a batch between its poll and its commit.

The worker's loop only polls, hands the records to the engine and calls :meth:`finish`; the
guarantee (at-least-once serial, at-least-once pipelined, exactly-once) is a strategy object
that owns its commits, its holds and retries, and the settling of a transaction whose outcome
is unknown. Everything they share (the consumer, the :class:`~forestream.worker.cycle.BatchCycle`,
scoring, the stop budget, rewinding) is the :class:`Ledger`; the engine itself pauses the
partitions while the guarantee holds and resumes them after. No clock is read here but the
injected one, so unit tests drive every path with an in-memory edge and a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog

from forestream.edge.interface import (
    GroupConsumer,
    InputRecord,
    TopicPartition,
)
from forestream.runtime.deadline import Clock, Deadline
from forestream.runtime.logs import RateLimited
from forestream.worker.cycle import BatchCycle

if TYPE_CHECKING:  # replay imports this module on its light path (`--help` stays fast)
    from forestream.worker.processing import ProcessedBatch

log = structlog.get_logger("forestream.worker")

SHUTDOWN_GRACE_S = 10.0
"""After SIGTERM, how long a batch in hand may wait for the broker before it is left
uncommitted (to be re-read by the next owner) so that the worker exits."""
LATE_COMMIT_TIMEOUT_S = 3.0
"""The shortest try at anything once the orderly budget has run out."""


class StopBudget:
    """When a stop was asked for and what is left of its orderly budget: how long a batch in
    hand may still wait for the broker (a fatal error means it never will be)."""

    def __init__(self, grace_s: float = SHUTDOWN_GRACE_S, clock: Clock = time.monotonic) -> None:
        self.grace_s = grace_s
        self.clock = clock
        self.deadline: Deadline | None = None
        """The orderly budget's end; None until a stop is asked for."""
        self.fatal = False

    def start(self) -> None:
        if self.deadline is None:
            self.deadline = Deadline.after(self.grace_s, self.clock)

    def past_grace(self) -> bool:
        return self.fatal or (self.deadline is not None and self.deadline.expired())

    def left_s(self, at_least: float = LATE_COMMIT_TIMEOUT_S) -> float | None:
        """What is left of the budget, at least ``at_least``; None when no stop was asked for."""
        if self.deadline is None:
            return None
        return max(self.deadline.remaining(), at_least)


@dataclass
class Ledger:
    """What every guarantee works on: the consumer, the cycle, scoring and accounting."""

    consumer: GroupConsumer
    cycle: BatchCycle
    score: Callable[[list[InputRecord]], ProcessedBatch]
    """Validate and score with the model active now."""
    delivered: Callable[[ProcessedBatch], None]
    """A batch's outputs all count (acknowledged, or committed in a transaction)."""
    stop: StopBudget
    clock: Clock = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    warn: dict[str, RateLimited] = field(
        default_factory=lambda: {name: RateLimited(10.0) for name in ("commit", "deferred")}
    )

    def after(self, seconds: float) -> Deadline:
        return Deadline.after(seconds, self.clock)

    def commit_results(self) -> list[tuple[dict[TopicPartition, int], Exception | None]]:
        """Drain what became of commits sent earlier; each that landed is forgotten by the
        cycle (a synchronous commit that timed out may still land later, and librdkafka's
        adapter keeps every report until asked). Drained every turn, whatever the guarantee."""
        results = self.consumer.commit_results()
        for offsets, error in results:
            if error is None:
                self.cycle.committed(offsets)
        return results

    def rewind(self) -> None:
        """Make the batch out, whose outputs were not all acknowledged, and the records taken
        after it be read again.

        Seeking back to their first offsets (local state, safe from a rebalance callback)
        makes the client discard what it fetched beyond them; a partition no longer ours is
        re-read by its new owner from the committed offset.
        """
        records = self.cycle.in_hand
        first = self.cycle.abandon()
        owned = self.consumer.assignment()
        for tp, offset in first.items():
            if tp in owned:
                self.consumer.seek(tp, offset)
        if records:
            log.warning(
                "batch_left_unacknowledged_rewound",
                records=records,
                partitions=sorted(f"{tp.topic}-{tp.partition}@{o}" for tp, o in first.items()),
            )


class Guarantee(Protocol):
    """A delivery guarantee: how a batch's outputs and its input offsets come to count."""

    resumed_event: str
    """The log event when a hold ends."""

    def busy(self) -> bool:
        """A batch is out, its acknowledgements awaited: the loop polls briefly."""
        ...

    def between_polls(self) -> bool:
        """Take what came back (acks, commit results), retry what is held, settle what is
        unknown; True while the loop must hold (no new batch, partitions paused)."""
        ...

    def finish(self, give_up: Callable[[], bool] | None = None, serial: bool = False) -> None:
        """Score and deliver the records taken. ``serial``: nothing stays out on return;
        ``give_up`` (a rebalance): neither, and committing is left to the caller."""
        ...

    def wind_up(self) -> None:
        """The loop has ended: deliver what is in hand and commit what is held, within the
        stop budget."""
        ...

    def release(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions no longer ours (after the cycle forgot them)."""
        ...


class DeliveryEngine:
    """One guarantee driven by the loop; holds pause the partitions, polling goes on (polls are
    what complete a rejoin while the coordinator moves)."""

    def __init__(self, ledger: Ledger, guarantee: Guarantee) -> None:
        self.ledger = ledger
        self.guarantee = guarantee
        self._held_since: float | None = None

    @property
    def busy(self) -> bool:
        return self.guarantee.busy()

    def between_polls(self) -> bool:
        """True while held: the partitions are paused until the guarantee lets go."""
        consumer, clock = self.ledger.consumer, self.ledger.clock
        if self.guarantee.between_polls():
            if self._held_since is None:
                self._held_since = clock()
            consumer.pause(consumer.assignment())
            return True
        if self._held_since is not None:
            log.info(self.guarantee.resumed_event, held_s=round(clock() - self._held_since, 2))
            self._held_since = None
        if paused := consumer.paused():
            consumer.resume(paused)
        return False

    def finish(self, give_up: Callable[[], bool] | None = None, serial: bool = False) -> None:
        self.guarantee.finish(give_up, serial)

    def wind_up(self) -> None:
        self.guarantee.wind_up()

    def release(self, partitions: list[TopicPartition], lost: bool) -> None:
        self.ledger.cycle.release(partitions, lost=lost)
        self.guarantee.release(partitions)
