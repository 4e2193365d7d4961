"""The soak's arithmetic (:mod:`bench.soak_stats`): its verdict rests on these, not on a broker.

The soak itself (``python -m bench.soak``) runs for minutes against a real broker and is not
part of the suite; what it concludes from what it read is held here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bench.soak import schedule
from bench.soak_stats import (
    account,
    duplicated_keys,
    growth,
    lag_by_partition,
    near,
    parse_status,
    process_sample,
    warmup_seconds,
)

STATUS = """Name:\tpython
State:\tS (sleeping)
VmPeak:\t  912340 kB
VmHWM:\t  301234 kB
VmRSS:\t  287612 kB
RssAnon:\t  250000 kB
Threads:\t17
SigQ:\t0/95735
"""


def keys(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def test_status_gives_rss_and_threads() -> None:
    assert parse_status(STATUS) == {"rss_kb": 287612, "threads": 17}


def test_a_zombie_status_has_no_rss() -> None:
    assert parse_status("Name:\tpython\nState:\tZ (zombie)\nThreads:\t1\n") == {"threads": 1}


def test_this_process_is_sampled_and_a_gone_one_is_none() -> None:
    sample = process_sample(os.getpid())
    assert sample is not None
    assert sample["rss_mb"] > 10 and sample["fds"] >= 3 and sample["threads"] >= 1
    assert process_sample(os.getpid(), proc=Path("/nonexistent")) is None


def test_lag_is_end_minus_committed_and_all_of_it_before_a_commit() -> None:
    assert lag_by_partition({0: 90, 1: None, 2: 50}, {0: 100, 1: 7, 2: 40}) == {0: 10, 1: 7, 2: 0}


def test_every_input_answered_once_passes() -> None:
    acc = account(keys(0, 1, 2, 3), keys(0, 1, 2), keys(3), malformed=keys(3))
    assert acc.ok and acc.answered_once == 4 and acc.unaccounted == 0
    assert acc.duplicated_keys == acc.duplicate_records == 0
    assert acc.malformed_inputs == 1 and acc.malformed_predicted == acc.valid_dead_lettered == 0


def test_an_input_without_an_answer_fails() -> None:
    acc = account(keys(0, 1, 2, 3), keys(0, 2), keys(3), malformed=keys(3))
    assert not acc.ok and acc.unaccounted == 1 and acc.answered_once == 3


def test_duplicates_are_counted_not_failed() -> None:
    acc = account(keys(0, 1, 2), keys(0, 0, 0, 1, 2, 2), keys(), malformed=keys())
    assert acc.ok
    assert acc.duplicated_keys == 2 and acc.duplicate_records == 3 and acc.answered_once == 1
    assert duplicated_keys(keys(0, 1, 2), [keys(0, 0, 1), keys(2, 1)]).tolist() == [0, 1]


def test_outputs_of_unknown_inputs_fail_and_misrouting_is_counted() -> None:
    acc = account(keys(0, 1, 2), keys(0, 1, 2, 9), keys(0), malformed=keys(1))
    assert not acc.ok and acc.unknown == 1
    assert acc.both == 1 and acc.malformed_predicted == 1 and acc.valid_dead_lettered == 1


def test_input_retries_count_once() -> None:
    acc = account(keys(0, 0, 1), keys(0, 1), keys(), malformed=keys())
    assert acc.ok and acc.inputs == 2 and acc.input_duplicates == 1


def test_nothing_at_all_is_vacuously_fine() -> None:
    assert account(keys(), keys(), keys(), keys()).ok


def test_growth_compares_the_first_and_last_minute_after_warmup() -> None:
    points = [(float(t), 100.0) for t in range(0, 300, 5)]  # warm-up: ignored
    points += [(float(t), 200.0 + (t - 300) / 100) for t in range(300, 1800, 5)]
    g = growth(points, warmup_s=300)
    # medians of 300-355 s and of the last 60 s (1735-1795 s)
    assert g["start"] == pytest.approx(200.275)
    assert g["end"] == pytest.approx(214.65)
    assert g["growth_pct"] == pytest.approx((214.65 - 200.275) / 200.275 * 100)
    assert g["min"] == 200.0 and g["slope_per_h"] == pytest.approx(36.0)


def test_a_flat_series_grows_by_nothing() -> None:
    g = growth([(float(t), 42.0) for t in range(0, 600, 5)], warmup_s=60)
    assert g["growth_pct"] == 0.0 and g["min"] == g["max"] == 42.0


def test_no_samples_after_warmup_gives_no_figures() -> None:
    assert growth([(1.0, 5.0)], warmup_s=60)["growth_pct"] is None


def test_warmup_is_at_most_a_third_of_a_short_run() -> None:
    assert warmup_seconds(30, 5) == 300
    assert warmup_seconds(3, 5) == 60


def test_duplicates_near_a_kill() -> None:
    assert near(np.array([100.0, 130.0, 400.0, 96.0]), [99.0], within_s=60) == 3


def test_promotions_and_restarts_never_coincide_by_default() -> None:
    events = schedule(1800, promote_every=120, restart_every=600)
    assert [t for t, kind in events if kind == "restart"] == [600, 1200]
    promotions = [t for t, kind in events if kind == "promote"]
    assert len(promotions) == 15 and promotions[0] == 60
    assert not {600, 1200} & set(promotions)
