"""CSV loading, user mistakes as one-line errors, and how records get their keys."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from forestream.errors import UserError
from forestream.producer.malformed import MalformedMixer
from forestream.producer.sending import expected_total, record_stream
from forestream.producer.sources import load_csv, parse_shifts

CSV = "id,x,colour,label\n10,1.5,red,yes\n11,,blue,no\n12,3,green,yes\n"


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(CSV)
    return path


def test_target_dropped_and_key_column_used(csv_file: Path) -> None:
    source = load_csv(csv_file, target="label", drop=[], key_column="id")
    assert source.keys == ["10", "11", "12"]
    assert source.rows[1] == {"x": None, "colour": "blue"}
    assert source.numeric == ["x"]
    assert source.complete == ["colour"]


def test_absent_target_is_fine_but_absent_drop_is_not(csv_file: Path) -> None:
    assert "id" in load_csv(csv_file, target="nope", drop=[], key_column=None).rows[0]
    with pytest.raises(UserError, match="no column 'nope'"):
        load_csv(csv_file, target=None, drop=["nope"], key_column=None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable CSV"),
        (b"a,b\n", "no data rows"),
        (b'a,b\n"1,2\n', "not a readable CSV"),
    ],
)
def test_bad_files_are_user_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_csv(path, None, [], None)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_csv(tmp_path / "nope.csv", None, [], None)


def test_shift_without_model_uses_the_column_std(csv_file: Path) -> None:
    source = load_csv(csv_file, "label", [], "id")
    source.shift({"x": 2.0})
    assert source.rows[0]["x"] == pytest.approx(1.5 + 2 * 1.0606601717798212)
    assert source.rows[1]["x"] is None
    with pytest.raises(UserError):
        source.shift({"colour": 1.0})


def test_parse_shifts() -> None:
    assert parse_shifts(["a=1.5", " b = -2"]) == {"a": 1.5, "b": -2.0}
    for bad in ["a", "=1", "a=x", "a=nan", "a=inf", "a=-inf"]:
        with pytest.raises(UserError):
            parse_shifts([bad])


def test_loop_restarts_the_file(csv_file: Path) -> None:
    source = load_csv(csv_file, "label", [], "id")
    keys = [k for k, _ in itertools.islice(source.stream(loop=True), 7)]
    assert keys == ["10", "11", "12", "10", "11", "12", "10"]


def test_sequential_keys_and_every_row_sent_once_with_bad_records_added() -> None:
    rows = [(None, {"x": float(i), "y": "a"}) for i in range(20)]
    mixer = MalformedMixer(0.2, ["x", "y"], ["x"], seed=0)
    out = list(record_stream(rows, "run1", mixer))
    assert [r.key for r in out] == [f"run1-{n}".encode() for n in range(len(out))]
    good = [json.loads(r.value) for r in out if r.malformed is None]
    assert [g["x"] for g in good] == [float(i) for i in range(20)]
    assert abs((len(out) - len(good)) - 0.2 * len(out)) <= 1


def test_key_column_keys_pass_through() -> None:
    out = list(record_stream([("k1", {"x": 1}), ("k2", {"x": 2})], "run"))
    assert [r.key for r in out] == [b"k1", b"k2"]
    assert [json.loads(r.value) for r in out] == [{"x": 1}, {"x": 2}]


@pytest.mark.parametrize(("rows", "share"), [(0, 0.3), (1, 0.5), (20, 0.0), (37, 0.1), (100, 0.9)])
def test_expected_total_counts_exactly_what_the_stream_makes(rows: int, share: float) -> None:
    mixer = MalformedMixer(share, ["x"], ["x"], seed=0) if share else None
    made = list(record_stream(((None, {"x": 1.0}) for _ in range(rows)), "r", mixer))
    assert expected_total(rows, share) == len(made)
    assert sum(1 for r in made if r.malformed is None) == rows
    assert expected_total(None, share) is None
