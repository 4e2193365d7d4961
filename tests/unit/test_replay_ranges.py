"""Replay's range arithmetic and flag parsing: pure, no broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.errors import UserError
from worker.replay import (
    Checkpoint,
    bounded_range,
    parse_offsets,
    parse_partitions,
    parse_time_ms,
)


def test_offsets_for_all_or_each_partition() -> None:
    assert parse_offsets("100", "--from-offset") == 100
    assert parse_offsets("0:5, 3:7", "--from-offset") == {0: 5, 3: 7}


@pytest.mark.parametrize("bad", ["", "x", "-1", "0:", "0:-3", "a:1", "1:2:3"])
def test_bad_offsets_are_one_clear_error(bad: str) -> None:
    with pytest.raises(UserError, match="--to-offset"):
        parse_offsets(bad, "--to-offset")


def test_times_iso_or_epoch_ms() -> None:
    assert parse_time_ms("1764064800000", "--from-time") == 1764064800000
    assert parse_time_ms("2025-11-25T10:00:00Z", "--from-time") == 1764064800000
    assert parse_time_ms("2025-11-25T10:00:00", "--from-time") == 1764064800000  # naive = UTC
    assert parse_time_ms("2025-11-25T11:00:00+01:00", "--from-time") == 1764064800000
    with pytest.raises(UserError, match="--to-time 'yesterday'"):
        parse_time_ms("yesterday", "--to-time")


def test_partitions_must_exist() -> None:
    assert parse_partitions(None, [2, 0, 1], "t") == [0, 1, 2]
    assert parse_partitions("2,0", [0, 1, 2], "t") == [0, 2]
    with pytest.raises(UserError, match=r"has partitions \[0, 1\]"):
        parse_partitions("5", [0, 1], "t")
    with pytest.raises(UserError, match="expected numbers"):
        parse_partitions("one", [0, 1], "t")


def test_ranges_are_clipped_to_what_the_topic_holds() -> None:
    beginning = {0: 10, 1: 0}
    end = {0: 50, 1: 20}
    assert bounded_range([0, 1], beginning, end, None, None) == {0: (10, 50), 1: (0, 20)}
    assert bounded_range([0, 1], beginning, end, 5, 30) == {0: (10, 30), 1: (5, 20)}
    assert bounded_range([0, 1], beginning, end, {1: 15}, {0: 12}) == {0: (10, 12), 1: (15, 20)}
    # a start past the stop is an empty range, never a negative one
    assert bounded_range([0], beginning, end, 40, 30) == {0: (40, 40)}


def test_checkpoint_round_trip_and_resume_text(tmp_path: Path) -> None:
    state = Checkpoint("in", "out", "out.dlq", "/models", "m", "v2", {0: (5, 9), 3: (7, 7)})
    path = tmp_path / "cp.json"
    state.save(path)
    loaded = Checkpoint.load(path)
    assert loaded == state
    assert loaded.remaining() == 4
    assert loaded.offsets_text() == "0:5,3:7"


def test_a_missing_or_foreign_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no checkpoint file"):
        Checkpoint.load(tmp_path / "nope.json")
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(UserError, match="not a replay checkpoint"):
        Checkpoint.load(other)
