"""Replay's range arithmetic and flag parsing: pure, no broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forestream.errors import UserError
from forestream.worker.replay import (
    MAX_TIME_MS,
    Checkpoint,
    RangeFlags,
    bounded_range,
    check_offset_partitions,
    parse_offsets,
    parse_partitions,
    parse_range,
    parse_time_ms,
)


def test_offsets_for_all_or_each_partition() -> None:
    assert parse_offsets("100", "--from-offset") == 100
    assert parse_offsets("0:5, 3:7", "--from-offset") == {0: 5, 3: 7}


@pytest.mark.parametrize("bad", ["", "x", "-1", "0:", "0:-3", "a:1", "1:2:3", "²"])
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


def test_a_partition_given_twice_is_ambiguous() -> None:
    with pytest.raises(UserError, match="--from-offset '0:5,0:7': partition 0 is given twice"):
        parse_offsets("0:5,0:7", "--from-offset")


@given(st.dictionaries(st.integers(0, 10_000), st.integers(0, 2**63 - 1), min_size=1))
def test_per_partition_offsets_round_trip(offsets: dict[int, int]) -> None:
    spec = ",".join(f"{p}:{o}" for p, o in offsets.items())
    assert parse_offsets(spec, "--from-offset") == offsets


@given(st.text(max_size=30))
def test_any_offset_text_parses_or_is_a_user_error(text: str) -> None:
    try:
        parsed = parse_offsets(text, "--to-offset")
    except UserError as exc:
        assert str(exc).startswith("--to-offset ")
        return
    values = parsed.values() if isinstance(parsed, dict) else [parsed]
    assert all(v >= 0 for v in values)


def test_time_bounds_are_the_epoch_and_the_end_of_year_9999() -> None:
    assert parse_time_ms("0", "--from-time") == 0
    assert parse_time_ms("1970-01-01T00:00:00Z", "--from-time") == 0
    assert parse_time_ms(str(MAX_TIME_MS), "--to-time") == MAX_TIME_MS
    assert parse_time_ms("9999-12-31T23:59:59.999Z", "--to-time") == MAX_TIME_MS
    assert parse_time_ms("2025-11-25T10:00:00.001Z", "--to-time") == 1764064800001


@pytest.mark.parametrize(
    "bad",
    [
        "99999999999999999999",  # was struct.error in the ListOffsets request
        str(MAX_TIME_MS + 1),
        "-1",
        "-5000",
        "1969-12-31T23:59:59.999Z",
        "0001-01-01T00:00:00",
        "9999-12-31T23:59:59-01:00",  # year 10000 in UTC
    ],
)
def test_times_out_of_range_name_the_flag(bad: str) -> None:
    with pytest.raises(UserError, match=r"^--from-time .*out of range"):
        parse_time_ms(bad, "--from-time")


@given(st.integers(0, MAX_TIME_MS))
def test_epoch_ms_and_its_iso_form_parse_to_the_same_instant(ms: int) -> None:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    iso = moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"
    assert parse_time_ms(str(ms), "--from-time") == ms
    assert parse_time_ms(iso, "--from-time") == ms


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_TIME_MS + 1)))
def test_any_epoch_ms_out_of_range_is_a_user_error(ms: int) -> None:
    with pytest.raises(UserError, match="--to-time"):
        parse_time_ms(str(ms), "--to-time")


@given(st.text(max_size=40))
def test_any_time_text_parses_in_range_or_is_a_user_error(text: str) -> None:
    try:
        ms = parse_time_ms(text, "--to-time")
    except UserError as exc:
        assert str(exc).startswith("--to-time ")
        return
    assert 0 <= ms <= MAX_TIME_MS


@pytest.mark.parametrize(
    ("start", "stop", "where"),
    [
        ("10", "5", "10 > 5"),
        ("0:10", "5", "partition 0: 10 > 5"),
        ("10", "1:5", "partition 1: 10 > 5"),
        ("0:1,1:10", "1:5,2:0", "partition 1: 10 > 5"),
    ],
)
def test_an_inverted_offset_range_is_a_user_error(start: str, stop: str, where: str) -> None:
    with pytest.raises(UserError, match=rf"--from-offset .*\({where}\): the range is inverted"):
        parse_range(start, stop, None, None)


def test_offset_ranges_that_are_empty_or_name_different_partitions_are_fine() -> None:
    assert parse_range("5", "5", None, None) == RangeFlags(from_offset=5, to_offset=5)
    # each end names a different partition: nothing to compare, nothing inverted
    assert parse_range("0:10", "1:5", None, None) == RangeFlags({0: 10}, {1: 5})
    assert parse_range("7", None, None, None) == RangeFlags(from_offset=7)


@given(st.integers(0, 2**63), st.integers(0, 2**63))
def test_offsets_are_inverted_exactly_when_from_is_past_to(start: int, stop: int) -> None:
    if start > stop:
        with pytest.raises(UserError, match="inverted"):
            parse_range(str(start), str(stop), None, None)
    else:
        assert parse_range(str(start), str(stop), None, None) == RangeFlags(start, stop)


def test_an_inverted_time_range_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--from-time '2030-01-01T00:00:00Z' is after --to-time"):
        parse_range(None, None, "2030-01-01T00:00:00Z", "2020-01-01T00:00:00Z")
    # an empty window is a valid (empty) range
    assert parse_range(None, None, "1000", "1000") == RangeFlags(from_ms=1000, to_ms=1000)
    assert parse_range(None, None, "1000", None) == RangeFlags(from_ms=1000)


def test_offsets_and_times_do_not_mix() -> None:
    with pytest.raises(UserError, match="not both"):
        parse_range("0", None, None, "1000")


def test_per_partition_offsets_must_name_partitions_that_are_replayed() -> None:
    check_offset_partitions(9, "--from-offset", [0, 1, 2, 3], [0, 1, 2, 3], "t")  # any N is fine
    check_offset_partitions({3: 1}, "--from-offset", [0, 1, 2, 3], [0, 1, 2, 3], "t")
    listed = r"--from-offset: topic 't' has no partition 9; its partitions are \[0, 1, 2, 3\]"
    with pytest.raises(UserError, match=listed):
        check_offset_partitions({9: 10}, "--from-offset", [0, 1, 2, 3], [0, 1, 2, 3], "t")
    with pytest.raises(UserError, match="--to-offset: topic 't' has no partition 4, 7"):
        check_offset_partitions({0: 1, 4: 1, 7: 1}, "--to-offset", [0, 1], [0, 1], "t")
    with pytest.raises(UserError, match=r"--to-offset: partition 1 is not replayed"):
        check_offset_partitions({1: 5}, "--to-offset", [0, 1], [0], "t")


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


def test_a_new_replay_refuses_to_overwrite_an_unfinished_checkpoint(tmp_path: Path) -> None:
    from forestream.worker.replay import refuse_unfinished

    path = tmp_path / "replay.json"
    refuse_unfinished(path)  # none yet: fine
    Checkpoint("in", "out", "out.dlq", "/models", "m", "v2", {0: (5, 9), 1: (7, 7)}).save(path)
    with pytest.raises(UserError, match=r"4 records left.*--resume"):
        refuse_unfinished(path)
    Checkpoint("in", "out", "out.dlq", "/models", "m", "v2", {0: (9, 9)}).save(path)
    refuse_unfinished(path)  # finished: a new replay may take the file over
    path.write_text("not json")
    with pytest.raises(UserError, match="not a replay checkpoint"):
        refuse_unfinished(path)
