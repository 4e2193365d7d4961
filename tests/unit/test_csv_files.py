"""The trainer and the producer refuse a bad ``--data`` file with the same single line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from forestream.errors import UserError
from forestream.wire.csv_files import read_csv_file


def _write(content: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "data.csv"
        path.write_bytes(content)
        return path

    return make


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "absent.csv", r"data file .*absent\.csv does not exist"),
        (lambda d: d, r"data file .* is not a file"),
        (_write(b""), r"data\.csv is not a readable CSV file: No columns to parse"),
        (_write(b"a,b\n1,2\n3,4,5,6\n"), r"data\.csv is not a readable CSV file: Error tokenizing"),
        (_write(b"\xff\xfe\x00a,b\n\x81,\x82\n"), r"data\.csv is not a readable CSV file"),
        (_write(b"a,b\n"), r"data\.csv has a header but no data rows"),
    ],
    ids=["missing", "directory", "empty", "ragged", "not-utf8", "header-only"],
)
def test_bad_files_are_one_line_user_errors(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    with pytest.raises(UserError, match=message) as caught:
        read_csv_file(make(tmp_path))
    assert "\n" not in str(caught.value)


def test_a_good_file_gives_string_columns_and_its_exact_bytes(tmp_path: Path) -> None:
    content = b"1,x\n2.5,y\n3,z\n"
    path = _write(content)(tmp_path)
    frame, raw = read_csv_file(path)
    assert raw == content
    assert list(frame.columns) == ["1", "x"]
    assert frame["1"].tolist() == [2.5, 3.0]
