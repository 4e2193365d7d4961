"""Pace sends at a fixed rate against a monotonic clock, without drift.

Record ``n`` is due at ``start + n / rate``: the schedule is anchored, so a late wake-up is made
up by the next sends instead of accumulating (sleep-per-record would lose time on every send).
If the producer falls far behind (a stalled broker), the anchor moves instead of releasing a
long catch-up burst that would distort the offered load. Pure: the caller passes ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RateSchedule:
    rate: float
    """Records per second; ``<= 0`` means no pacing."""
    start: float
    """Monotonic time of record 0."""
    max_lag_s: float = 1.0
    """Furthest behind schedule we try to catch up on; beyond it the schedule restarts."""
    sent: int = 0

    def wait_s(self, now: float) -> float:
        """Seconds to wait before the next record may go (0.0 = send it now)."""
        if self.rate <= 0:
            return 0.0
        due = self.start + self.sent / self.rate
        if now - due > self.max_lag_s:
            self.start = now - self.sent / self.rate
            return 0.0
        return max(0.0, due - now)

    def mark_sent(self, n: int = 1) -> None:
        self.sent += n
