"""When the records taken go out as a batch: full, at ``--max-wait-ms``, or (adaptive) as soon
as the input has run dry while the batch is still small.

A fixed window makes every record at a trickle wait for it: at 1,000 rec/s a batch of ~20
records sat out its 20 ms, most of its p99. Records that are not there yet do not fill a batch
by being waited for, so once a poll comes back with fewer records than it asked for (the
client had nothing more fetched) a small batch goes out at once. Under load polls come back
full or the batch is already large, and the window behaves as before: ``--max-batch`` and
``--max-wait-ms`` still bound every batch. Pure, with its clock injected (unit-tested with a
fake one); the loop tells it what each poll returned and asks whether to close.
"""

from __future__ import annotations

import time

from forestream.runtime.deadline import Clock, Deadline

SMALL_DIVISOR = 10
""""Small": at most ``max_batch // SMALL_DIVISOR`` records (at least 1). A drained poll with a
larger batch in hand means the input runs near capacity: there, waiting out the window keeps
batches large (a fixed cost per batch), as a fixed window did."""


class BatchWindow:
    """The micro-batch window of one loop, counted from when the loop last found nothing
    waiting: records that arrived while a batch was scored have waited since."""

    def __init__(
        self,
        max_batch: int,
        max_wait_s: float,
        adaptive: bool = True,
        clock: Clock = time.monotonic,
    ) -> None:
        self.max_wait_s = max_wait_s
        self.adaptive = adaptive
        self.small = max(max_batch // SMALL_DIVISOR, 1)
        self.clock = clock
        self._next = Deadline.after(max_wait_s, clock)
        self.due: Deadline | None = None
        """When the records taken go out, full or not; None while none are taken."""
        self.drained = False
        """The last poll returned fewer records than it asked for: nothing more was fetched."""

    def polled(self, asked: int, got: int, pending: int) -> None:
        """After each poll: ``got`` of ``asked`` records, ``pending`` now in hand."""
        self.drained = got < asked
        if pending and self.due is None:
            self.due = self._next

    def closes(self, pending: int, full: bool) -> bool:
        """Whether the ``pending`` records taken go out now (the loop is not held)."""
        if not pending:
            return False
        if full or (self.due is not None and self.due.expired()):
            return True
        return self.adaptive and self.drained and pending <= self.small

    def restart(self) -> None:
        """Nothing is waiting (a batch went out, or none was taken): the window of the next
        records runs from now."""
        self._next = Deadline.after(self.max_wait_s, self.clock)
        self.due = None

    def wait_s(self, idle_s: float) -> float:
        """How long the next poll may wait for records: until the batch is due, else
        ``idle_s``. Never 0 with nothing in hand, so an early close does not spin the loop."""
        return self.due.remaining() if self.due is not None else idle_s
