"""A point in (monotonic) time by which something must be done, as a value.

Loops that wait for a broker compute many "by when" and "how long is left": written as
``time.monotonic()`` arithmetic each one is a chance to mix up a duration and an instant.
A :class:`Deadline` carries its clock, so the delivery engine runs under a fake clock in
unit tests and under ``time.monotonic`` in production, with the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]
"""Seconds on a monotonic scale (``time.monotonic`` unless a test injects another)."""


@dataclass(frozen=True)
class Deadline:
    """An instant on ``clock``; :meth:`remaining` never goes below zero."""

    at: float
    clock: Clock = field(default=time.monotonic, compare=False, repr=False)

    @classmethod
    def after(cls, seconds: float, clock: Clock = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock)

    @classmethod
    def passed(cls, clock: Clock = time.monotonic) -> Deadline:
        """One already expired: "nothing to wait for" without a None to test."""
        return cls(float("-inf"), clock)

    def remaining(self) -> float:
        """Seconds left, 0.0 once expired."""
        return max(self.at - self.clock(), 0.0)

    def expired(self) -> bool:
        return self.clock() >= self.at
