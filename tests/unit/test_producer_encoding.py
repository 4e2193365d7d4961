"""Rows become the input wire format: JSON numbers, null for missing, strings kept."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from forestream.producer.encoding import encode_row, frame_rows, json_value


def test_nan_becomes_null_and_numbers_stay_numbers() -> None:
    value = encode_row({"a": 1, "b": 2.5, "c": float("nan"), "d": "red", "e": None})
    assert json.loads(value) == {"a": 1, "b": 2.5, "c": None, "d": "red", "e": None}
    assert b"NaN" not in value


def test_numpy_scalars_and_infinity() -> None:
    decoded = json.loads(
        encode_row({"i": np.int64(7), "f": np.float32(0.5), "inf": np.inf, "b": np.bool_(True)})
    )
    assert decoded == {"i": 7, "f": 0.5, "inf": None, "b": True}
    assert isinstance(decoded["i"], int)


def test_pandas_missing_values() -> None:
    assert json_value(pd.NA) is None
    assert json_value(pd.NaT) is None


def test_frame_rows_keeps_types_per_column() -> None:
    frame = pd.DataFrame(
        {"n": [1, 2], "x": [0.25, np.nan], "s": ["a", None], "flag": [True, False]}
    )
    rows = frame_rows(frame)
    assert rows == [
        {"n": 1, "x": 0.25, "s": "a", "flag": True},
        {"n": 2, "x": None, "s": None, "flag": False},
    ]
    assert isinstance(rows[0]["n"], int)


cells = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**62), max_value=2**62),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)


@given(st.dictionaries(st.text(max_size=10), cells, max_size=8))
def test_any_row_encodes_to_strict_json_object(row: dict[str, object]) -> None:
    value = encode_row(row)
    decoded = json.loads(value, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert set(decoded) == set(row)
    for name, cell in row.items():
        if isinstance(cell, float) and not math.isfinite(cell):
            assert decoded[name] is None
        else:
            assert decoded[name] == cell
