"""The rate schedule, driven by a fake clock: anchored, no drift, no catch-up burst."""

from __future__ import annotations

import pytest

from forestream.producer.pacing import RateSchedule


def simulate(schedule: RateSchedule, until: float, send_cost: float) -> list[float]:
    """Send as the schedule allows on a virtual clock; each send takes ``send_cost`` s."""
    now, times = schedule.start, []
    while now < until:
        wait = schedule.wait_s(now)
        now += wait
        if now >= until:
            break
        times.append(now)
        schedule.mark_sent()
        now += send_cost
    return times


def test_unpaced_never_waits() -> None:
    schedule = RateSchedule(rate=0, start=10.0)
    schedule.mark_sent(1000)
    assert schedule.wait_s(10.0) == 0.0


def test_record_n_is_due_at_start_plus_n_over_rate() -> None:
    schedule = RateSchedule(rate=100, start=5.0)
    assert schedule.wait_s(5.0) == 0.0
    schedule.mark_sent()
    assert schedule.wait_s(5.0) == pytest.approx(0.01)
    assert schedule.wait_s(5.004) == pytest.approx(0.006)
    assert schedule.wait_s(5.02) == 0.0


@pytest.mark.parametrize("send_cost", [0.0, 0.0003, 0.0009])
def test_ten_seconds_at_1000_per_second_is_10000_records(send_cost: float) -> None:
    times = simulate(RateSchedule(rate=1000, start=0.0), until=10.0, send_cost=send_cost)
    assert len(times) == pytest.approx(10_000, abs=1)


def test_late_wakeups_are_made_up_without_drift() -> None:
    schedule = RateSchedule(rate=100, start=0.0)
    now = 0.0
    for _ in range(1000):
        now += schedule.wait_s(now) + 0.003  # every sleep overshoots by 3 ms
        schedule.mark_sent()
    # sleep-per-record would be 3 s late after 1000 records; the anchored schedule is not
    assert now == pytest.approx(10.0, abs=0.01)


def test_a_long_stall_restarts_the_schedule_instead_of_bursting() -> None:
    schedule = RateSchedule(rate=100, start=0.0, max_lag_s=1.0)
    schedule.mark_sent()
    assert schedule.wait_s(30.0) == 0.0  # stalled for 30 s
    schedule.mark_sent()
    assert schedule.wait_s(30.0) == pytest.approx(0.01)
