"""The micro-batch window (worker/window.py), driven by a fake clock the way the loop drives it:
poll (asked, got), close or not, restart once nothing is waiting."""

from __future__ import annotations

import pytest

from forestream.worker.window import BatchWindow
from tests.memory_edge import FakeClock

IDLE_S = 0.2
MAX_WAIT_S = 0.020


def window(adaptive: bool = True, max_batch: int = 1000) -> tuple[BatchWindow, FakeClock]:
    clock = FakeClock()
    return BatchWindow(max_batch, MAX_WAIT_S, adaptive, clock), clock


def test_drained_poll_with_a_small_batch_closes_at_once() -> None:
    w, _ = window()
    w.polled(asked=1000, got=7, pending=7)
    assert w.closes(pending=7, full=False)


def test_fixed_window_waits_for_its_limit_even_when_drained() -> None:
    w, clock = window(adaptive=False)
    w.polled(asked=1000, got=7, pending=7)
    assert not w.closes(pending=7, full=False)
    assert w.wait_s(IDLE_S) == pytest.approx(MAX_WAIT_S)
    clock.advance(MAX_WAIT_S)
    assert w.closes(pending=7, full=False)


def test_full_polls_wait_up_to_the_limit() -> None:
    """Under load a poll brings all it asked for: more is there, the batch keeps filling."""
    w, clock = window()
    w.polled(asked=1000, got=400, pending=400)  # the earlier poll: 400 at once...
    w.polled(asked=600, got=600, pending=1000)  # ...then the rest: full by size
    assert w.closes(pending=1000, full=True)
    w.restart()
    w.polled(asked=1000, got=1000 - 1, pending=999)  # drained, but not small: near capacity
    assert not w.closes(pending=999, full=False)
    w.polled(asked=1, got=1, pending=1000)
    assert w.closes(pending=1000, full=True)
    w.restart()
    w.polled(asked=1000, got=50, pending=50)
    w.polled(asked=950, got=950, pending=1000)
    assert w.closes(pending=1000, full=True)
    assert clock.now == 1000.0  # all of it without the clock moving: size closed them


def test_a_batch_near_capacity_waits_while_polls_come_back_full() -> None:
    w, clock = window(max_batch=1000)
    w.polled(asked=1000, got=60, pending=60)  # a full poll of a smaller ask is not drained
    w.polled(asked=940, got=940 - 800, pending=200)  # drained with 200 > 100: not small
    assert not w.closes(pending=200, full=False)
    clock.advance(MAX_WAIT_S / 2)
    assert not w.closes(pending=200, full=False)
    assert w.wait_s(IDLE_S) == pytest.approx(MAX_WAIT_S / 2)


def test_max_wait_bounds_every_batch_whatever_the_polls() -> None:
    w, clock = window()
    w.polled(asked=1000, got=150, pending=150)  # not small
    for _ in range(3):  # full polls of a shrinking ask, the clock moving
        clock.advance(MAX_WAIT_S / 4)
        w.polled(asked=10, got=10, pending=160)
        assert not w.closes(pending=160, full=False)
    clock.advance(MAX_WAIT_S / 4)
    assert w.wait_s(IDLE_S) == 0.0
    assert w.closes(pending=160, full=False)


def test_the_window_runs_from_when_nothing_was_waiting() -> None:
    """Records that arrived while a batch was scored have waited since it went out."""
    w, clock = window(adaptive=False)
    w.restart()  # a batch went out
    clock.advance(0.015)  # scored and sent meanwhile
    w.polled(asked=1000, got=3, pending=3)
    assert w.wait_s(IDLE_S) == pytest.approx(MAX_WAIT_S - 0.015)


def test_no_busy_spin_after_an_early_close() -> None:
    """Once a batch went out early, the next poll waits for records (the idle timeout), and a
    poll that finds none neither closes anything nor shortens that wait."""
    w, clock = window()
    w.polled(asked=1000, got=2, pending=2)
    assert w.closes(pending=2, full=False)
    w.restart()
    assert w.wait_s(IDLE_S) == IDLE_S
    clock.advance(IDLE_S)
    w.polled(asked=1000, got=0, pending=0)
    assert not w.closes(pending=0, full=False)
    w.restart()
    assert w.wait_s(IDLE_S) == IDLE_S


def trickle(adaptive: bool, fetch_every_s: float = 0.005, per_fetch: int = 5) -> tuple[float, int]:
    """The loop over 1 s of fetches of ``per_fetch`` records every ``fetch_every_s``, each poll
    waiting as the window says: (the longest a record waited for its batch, polls made)."""
    w, clock = window(adaptive)
    pending: list[float] = []
    waits: list[float] = []
    polls = 0
    next_fetch, end = clock.now + fetch_every_s, clock.now + 1.0
    while clock.now < end:
        polls += 1
        asked, timeout = 1000 - len(pending), w.wait_s(IDLE_S)
        if next_fetch <= clock.now + timeout:  # the poll returns with the fetch
            clock.now = max(clock.now, next_fetch)
            pending += [next_fetch] * per_fetch
            next_fetch += fetch_every_s
            got = per_fetch
        else:
            clock.advance(timeout)
            got = 0
        w.polled(asked, got, len(pending))
        if w.closes(len(pending), full=len(pending) >= 1000):
            waits += [clock.now - arrived for arrived in pending]
            pending = []
            w.restart()
        elif not pending:
            w.restart()
    return max(waits), polls


def test_a_trickle_goes_out_poll_by_poll() -> None:
    """1,000 rec/s in fetches of 5 every 5 ms: adaptive, each batch leaves with the poll that
    brought it; fixed, records wait up to the window for the fetches after them."""
    adaptive_wait, adaptive_polls = trickle(adaptive=True)
    fixed_wait, _ = trickle(adaptive=False)
    assert adaptive_wait == 0.0
    assert fixed_wait == pytest.approx(MAX_WAIT_S - 0.005)  # the first fetch, 5 ms in
    assert adaptive_polls <= 201  # one poll per fetch: waiting, not spinning


def test_small_means_a_tenth_of_max_batch_and_at_least_one() -> None:
    assert BatchWindow(1000, MAX_WAIT_S).small == 100
    assert BatchWindow(5, MAX_WAIT_S).small == 1
    w, _ = window(max_batch=5)
    w.polled(asked=5, got=1, pending=1)
    assert w.closes(pending=1, full=False)
    w.polled(asked=4, got=1, pending=2)
    assert not w.closes(pending=2, full=False)
