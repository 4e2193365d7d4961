"""The batch decoder/validator: total over arbitrary bytes, one reason code per bad record."""

from __future__ import annotations

import json
from typing import Any

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


BOOLEAN_SCHEMA = FeatureSchema(
    features=[
        NumericFeature(name="age"),
        CategoricalFeature(name="member", categories=["False", "True"]),
        CategoricalFeature(name="color", categories=["red", "blue"]),
    ]
)


def test_json_booleans_are_the_categories_of_a_boolean_training_column() -> None:
    """The trainer stores a pandas bool column as the categories "True"/"False"."""
    values = [
        b'{"age": 1, "member": true, "color": "red"}',
        b'{"age": 2, "member": false, "color": "red"}',
        b'{"age": 3, "member": "True", "color": "red"}',
        b'{"age": 4, "member": true, "color": true}',  # color was never a boolean column
    ]
    decoded = decode_batch(values, BOOLEAN_SCHEMA)
    assert decoded.valid_indexes == [0, 1, 2]
    assert decoded.frame["member"].tolist() == ["True", "False", "True"]
    assert decoded.unknown_categories == 0
    assert [(r.index, r.code) for r in decoded.rejects] == [(3, ReasonCode.WRONG_TYPE)]
    assert "'color' expects a string, got boolean" in decoded.rejects[0].detail


NUMERIC_SCHEMA = FeatureSchema(
    features=[
        NumericFeature(name="a"),
        NumericFeature(name="b", missing_seen=True),
        NumericFeature(name="c"),
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**70), 2**70))
def test_numbers_decode_to_exactly_the_float_json_wrote(number: float) -> None:
    value = json.dumps({"a": number, "b": None, "c": -number}).encode()
    decoded = decode_batch([value], NUMERIC_SCHEMA)
    assert decoded.valid_indexes == [0]
    assert decoded.frame["a"].iloc[0] == float(number)
    assert decoded.frame["c"].iloc[0] == -float(number)
    assert np.isnan(decoded.frame["b"].iloc[0])


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (b'{"a": 1, "c": 2}', None),
        (b'{"a": 1, "c": 2, "b": NaN}', ReasonCode.NOT_FINITE),
        (b'{"a": -Infinity, "c": 2}', ReasonCode.NOT_FINITE),
        (b'{"a": 1e999, "c": 2}', ReasonCode.NOT_FINITE),
        (b'{"a": -1' + b"0" * 400 + b', "c": 2}', ReasonCode.NOT_FINITE),
        (b'{"a": 1, "c": "2"}', ReasonCode.WRONG_TYPE),
        (b'{"a": 1, "c": false}', ReasonCode.WRONG_TYPE),
        (b'{"a": 1}', ReasonCode.MISSING_FEATURE),
        (b'{"a": 1, "c": null, "b": "x"}', ReasonCode.WRONG_TYPE),  # schema order: b first
        (b'{"a": 1, "c": 2} {', ReasonCode.NOT_JSON),
        (b'[{"a": 1, "c": 2}]', ReasonCode.NOT_OBJECT),
    ],
)
def test_reason_codes_of_an_all_numeric_schema(value: bytes, code: str | None) -> None:
    decoded = decode_batch([value], NUMERIC_SCHEMA)
    assert [r.code for r in decoded.rejects] == ([code] if code else [])


def decode_one_by_one(values: list[bytes | None], schema: FeatureSchema) -> tuple[Any, ...]:
    """The reference: each record decoded in a batch of its own."""
    valid, codes, unknown, extra, rows = [], [], 0, 0, []
    for i, value in enumerate(values):
        alone = decode_batch([value], schema, max_record_bytes=48)
        if alone.rejects:
            codes.append((i, alone.rejects[0].code, alone.rejects[0].detail))
        else:
            valid.append(i)
            rows.append(alone.frame)
        unknown += alone.unknown_categories
        extra += alone.extra_keys
    return valid, codes, unknown, extra, rows


numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**40), 2**40)
anything_numeric = st.none() | st.floats() | st.integers() | st.booleans() | st.just("1")
numeric_records = (
    st.fixed_dictionaries(  # mostly valid, so batches take the one-matrix path
        {"a": numbers, "c": numbers}, optional={"b": st.none() | numbers, "extra": numbers}
    )
    | st.fixed_dictionaries(
        {}, optional={name: anything_numeric for name in [*NUMERIC_SCHEMA.names, "extra"]}
    )
).map(lambda d: json.dumps(d).encode())

CATEGORICAL_SCHEMA = FeatureSchema(
    features=[f for f in SCHEMA.features if isinstance(f, CategoricalFeature)]
)
overflowing = st.sampled_from(  # a number only the float conversion finds infinite
    [
        b'{"a":1e999,"b":1,"c":1,"x":2}',
        b'{"age":-1e999,"income":1,"color":"red","city":"oslo","x":1}',
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([SCHEMA, NUMERIC_SCHEMA, CATEGORICAL_SCHEMA]),
    st.lists(
        st.none() | st.binary(max_size=8) | records | numeric_records | overflowing, max_size=12
    ),
)
def test_a_batch_decodes_like_its_records_one_by_one(
    schema: FeatureSchema, values: list[bytes | None]
) -> None:
    """Batch-wide fast paths (one matrix, skipped checks) change nothing about any record."""
    decoded = decode_batch(values, schema, max_record_bytes=48)
    valid, codes, unknown, extra, rows = decode_one_by_one(values, schema)
    assert decoded.valid_indexes == valid
    assert [(r.index, r.code, r.detail) for r in decoded.rejects] == codes
    assert decoded.unknown_categories == unknown
    assert decoded.extra_keys == extra
    expected = pd.concat(rows, ignore_index=True) if rows else decoded.frame.iloc[:0]
    pd.testing.assert_frame_equal(decoded.frame, expected, check_dtype=True)
