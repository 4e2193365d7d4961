"""The batch decoder/validator: total over arbitrary bytes, one reason code per bad record."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.headers import ReasonCode
from contracts.schema import CategoricalFeature, FeatureSchema, NumericFeature
from worker.decoding import decode_batch

SCHEMA = FeatureSchema(
    features=[
        NumericFeature(name="age"),
        NumericFeature(name="income", missing_seen=True),
        CategoricalFeature(name="color", categories=["red", "blue"]),
        CategoricalFeature(name="city", categories=["oslo"], missing_seen=True),
    ]
)
GOOD = {"age": 30, "income": 1.5, "color": "red", "city": "oslo"}


def record(**changes: object) -> bytes:
    row = {**GOOD, **changes}
    return json.dumps({k: v for k, v in row.items() if v is not ...}).encode()


def only_code(value: bytes | None, **kwargs: int) -> str | None:
    decoded = decode_batch([value], SCHEMA, **kwargs)
    assert len(decoded.rejects) + len(decoded.valid_indexes) == 1
    return decoded.rejects[0].code if decoded.rejects else None


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, ReasonCode.EMPTY),
        (b"", ReasonCode.EMPTY),
        (b"\xff\xfe{}", ReasonCode.NOT_JSON),
        (b"{not json", ReasonCode.NOT_JSON),
        (b'{"age": 1} trailing', ReasonCode.NOT_JSON),
        (b"[1, 2]", ReasonCode.NOT_OBJECT),
        (b'"a string"', ReasonCode.NOT_OBJECT),
        (b"42", ReasonCode.NOT_OBJECT),
        (b"null", ReasonCode.NOT_OBJECT),
        (record(age=...), ReasonCode.MISSING_FEATURE),
        (record(age=None), ReasonCode.MISSING_FEATURE),
        (record(color=...), ReasonCode.MISSING_FEATURE),
        (record(color=None), ReasonCode.MISSING_FEATURE),
        (record(age="30"), ReasonCode.WRONG_TYPE),
        (record(age=True), ReasonCode.WRONG_TYPE),
        (record(age=[1]), ReasonCode.WRONG_TYPE),
        (record(age={"v": 1}), ReasonCode.WRONG_TYPE),
        (record(color=1), ReasonCode.WRONG_TYPE),
        (record(color=False), ReasonCode.WRONG_TYPE),
        (record(age=float("nan")), ReasonCode.NOT_FINITE),
        (record(age=float("inf")), ReasonCode.NOT_FINITE),
        (record(income=float("-inf")), ReasonCode.NOT_FINITE),
        (b'{"age": 1e999, "income": 1, "color": "red", "city": "oslo"}', ReasonCode.NOT_FINITE),
        (
            b'{"age": 1' + b"0" * 400 + b', "income": 1, "color": "red", "city": "oslo"}',
            ReasonCode.NOT_FINITE,
        ),
        # allowed: missing where training saw missing values, unseen category, extra key
        (record(income=...), None),
        (record(income=None), None),
        (record(city=None), None),
        (record(color="green"), None),
        (record(extra="x"), None),
        (record(age=0), None),
        (record(color=""), None),
    ],
)
def test_reason_codes(value: bytes | None, code: str | None) -> None:
    assert only_code(value) == code


def test_too_large_is_checked_before_parsing() -> None:
    value = record(color="r" * 200)
    assert only_code(value, max_record_bytes=100) == ReasonCode.TOO_LARGE
    assert only_code(value, max_record_bytes=len(value)) is None


def test_frame_has_schema_order_dtypes_and_nan_for_missing() -> None:
    values = [
        json.dumps({"city": None, "color": "blue", "age": 2, "income": None, "x": 1}).encode(),
        b"garbage",
        record(color="green", city=...),
    ]
    decoded = decode_batch(values, SCHEMA)
    assert decoded.valid_indexes == [0, 2]
    assert [r.index for r in decoded.rejects] == [1]
    frame = decoded.frame
    assert list(frame.columns) == SCHEMA.names
    assert frame["age"].dtype == np.float64
    assert frame["income"].dtype == np.float64
    assert frame["color"].dtype == object
    assert frame["city"].dtype == object
    assert frame["age"].tolist() == [2.0, 30.0]
    assert np.isnan(frame["income"].iloc[0])
    assert pd.isna(frame["city"]).tolist() == [True, True]
    assert frame["color"].tolist() == ["blue", "green"]
    assert decoded.unknown_categories == 1  # "green"; missing city is not "unknown"
    assert decoded.extra_keys == 1


def test_first_problem_wins_and_every_record_is_accounted_for() -> None:
    values = [record(age="x", color=1), record(), None, record(age=None, income="y")]
    decoded = decode_batch(values, SCHEMA)
    codes = {r.index: r.code for r in decoded.rejects}
    assert codes == {
        0: ReasonCode.WRONG_TYPE,
        2: ReasonCode.EMPTY,
        3: ReasonCode.MISSING_FEATURE,
    }
    assert decoded.valid_indexes == [1]
    assert "age" in decoded.rejects[0].detail


def test_empty_batch_gives_typed_empty_frame() -> None:
    decoded = decode_batch([], SCHEMA)
    assert decoded.frame.shape == (0, 4)
    assert list(decoded.frame.columns) == SCHEMA.names
    assert decoded.frame["age"].dtype == np.float64


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
records = st.fixed_dictionaries(
    {},
    optional={name: json_values | st.sampled_from(["red", "oslo", 1.5]) for name in SCHEMA.names},
).map(lambda d: json.dumps(d).encode())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.none() | st.binary(max_size=64) | records, max_size=20))
def test_arbitrary_bytes_never_raise_and_partition_the_batch(values: list[bytes | None]) -> None:
    decoded = decode_batch(values, SCHEMA, max_record_bytes=48)
    rejected = [r.index for r in decoded.rejects]
    assert sorted(rejected + decoded.valid_indexes) == list(range(len(values)))
    assert len(decoded.frame) == len(decoded.valid_indexes)
    assert all(r.code in ReasonCode.ALL for r in decoded.rejects)
    # valid rows respect the schema: finite numbers, strings or NaN only where allowed
    assert np.isfinite(decoded.frame["age"]).all()
    assert not np.isinf(decoded.frame["income"]).any()
    assert decoded.frame["color"].map(lambda v: type(v) is str).all()
    assert decoded.frame["city"].map(lambda v: type(v) is str or pd.isna(v)).all()
