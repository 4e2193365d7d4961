"""The batch decoder/validator: total over arbitrary bytes, one reason code per bad record."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forestream.wire.headers import ReasonCode
from forestream.wire.schema import CategoricalFeature, FeatureSchema, NumericFeature
from forestream.worker.decoding import MODEL_RANGE_LIMIT, decode_batch

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
    assert (np.abs(decoded.frame["age"]) < MODEL_RANGE_LIMIT).all()  # so finite in float32
    assert not (np.abs(decoded.frame["income"]) >= MODEL_RANGE_LIMIT).any()
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


BELOW_LIMIT = float(np.nextafter(MODEL_RANGE_LIMIT, 0.0))
"""The largest float64 the model takes: float32 rounds it down to its max."""


@settings(max_examples=300, deadline=None)
@given(st.floats(-BELOW_LIMIT, BELOW_LIMIT) | st.integers(-(2**70), 2**70))
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


def digits(n: int, sign: bytes = b"") -> bytes:
    """An n-digit JSON integer, 1 followed by zeros (msgspec hands it over as a Python int)."""
    return sign + b"1" + b"0" * (n - 1)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        # finite in float64 but infinite in float32, where the forest computes: out_of_range
        (b'{"a": 1e300, "c": 2}', ReasonCode.OUT_OF_RANGE),
        (b'{"a": 3.5e38, "c": 2}', ReasonCode.OUT_OF_RANGE),
        (b'{"a": 1, "c": -3.5e38}', ReasonCode.OUT_OF_RANGE),
        (b'{"a": 1, "b": 1.7976931348623157e308, "c": 2}', ReasonCode.OUT_OF_RANGE),
        (b'{"a": ' + digits(40) + b', "c": 2}', ReasonCode.OUT_OF_RANGE),
        (b'{"a": 1, "c": ' + digits(300, b"-") + b"}", ReasonCode.OUT_OF_RANGE),
        (b'{"a": %r, "c": 2}' % MODEL_RANGE_LIMIT, ReasonCode.OUT_OF_RANGE),
        # beyond float64 stays not_finite, as it always was
        (b'{"a": ' + digits(400) + b', "c": 2}', ReasonCode.NOT_FINITE),
        (b'{"a": 1e999, "c": 3.5e38}', ReasonCode.NOT_FINITE),  # schema order: a first
        # taken: float32 rounds these to its max, a subnormal or zero
        (b'{"a": %r, "c": %r}' % (BELOW_LIMIT, -BELOW_LIMIT), None),
        (b'{"a": 3.4028235e38, "c": -3.4028235e38}', None),
        (b'{"a": ' + digits(38) + b', "c": 2}', None),
        (b'{"a": 5e-324, "c": -0.0}', None),
        (b'{"a": 1e-320, "c": 1e-400, "b": -0}', None),
        (b'{"a": 1.' + b"0" * 400 + b', "c": 2}', None),
        # duplicate keys: the last one wins, in msgspec and in the stdlib fallback alike
        (b'{"a": 1, "c": 2, "a": 1e300}', ReasonCode.OUT_OF_RANGE),
        (b'{"a": 1e300, "c": 2, "a": 1}', None),
        (b'{"a": NaN, "c": 2, "a": 1}', None),
        # several problems: the first feature in schema order names it
        (b'{"a": 1, "c": "x", "b": 1e300}', ReasonCode.OUT_OF_RANGE),
        (b'{"a": 1, "c": 1e300, "b": "x"}', ReasonCode.WRONG_TYPE),
    ],
)
def test_numbers_the_model_cannot_take_are_out_of_range(value: bytes, code: str | None) -> None:
    decoded = decode_batch([value], NUMERIC_SCHEMA)
    assert [r.code for r in decoded.rejects] == ([code] if code else [])


def test_out_of_range_names_the_feature_and_the_value() -> None:
    [reject] = decode_batch([b'{"a": 1, "c": -1e300}'], NUMERIC_SCHEMA).rejects
    assert reject.detail == "'c' is -1e+300, beyond the model's float32 range (±3.4028235e38)"


def test_the_limit_is_where_the_float32_cast_overflows() -> None:
    """Not float32's max itself: values up to half an ulp above it round down to it."""
    with np.errstate(over="ignore"):
        assert np.float32(BELOW_LIMIT) == np.finfo(np.float32).max
        assert np.isinf(np.float32(MODEL_RANGE_LIMIT))
        assert np.isinf(np.float32(-MODEL_RANGE_LIMIT))
    assert float(np.finfo(np.float32).max) < BELOW_LIMIT


def float32_verdict(number: float | int) -> str | None:
    """The oracle: what the model would do with the float64 the decoder builds."""
    try:
        as_float64 = float(number)
    except OverflowError:
        return ReasonCode.NOT_FINITE
    with np.errstate(over="ignore"):
        return None if np.isfinite(np.float32(as_float64)) else ReasonCode.OUT_OF_RANGE


@settings(max_examples=400, deadline=None)
@given(
    st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(BELOW_LIMIT / 2, 2 * MODEL_RANGE_LIMIT)
    | st.integers(-(10**400), 10**400)
    | st.integers(10**37, 10**40)
    | st.sampled_from([BELOW_LIMIT, MODEL_RANGE_LIMIT, -MODEL_RANGE_LIMIT, 5e-324, -0.0]),
    st.booleans(),
)
def test_a_number_is_taken_exactly_when_float32_can_hold_it(number: float, batch: bool) -> None:
    """Accepted numbers are those the float32 cast keeps finite; a row that is fine in a batch
    of clean rows is rejected alone and the rest of the batch is untouched."""
    value = b'{"a": 0.5, "c": ' + json.dumps(number).encode() + b"}"
    clean = b'{"a": 1, "c": 2}'
    values = [clean, value, clean] if batch else [value]
    decoded = decode_batch(values, NUMERIC_SCHEMA)
    expected = float32_verdict(number)
    assert [r.code for r in decoded.rejects] == ([expected] if expected else [])
    if batch:
        assert decoded.valid_indexes == ([0, 2] if expected else [0, 1, 2])
    with np.errstate(over="ignore"):
        assert np.isfinite(decoded.frame.to_numpy(dtype=np.float32)[:, [0, 2]]).all()


def test_the_served_forest_takes_every_number_the_decoder_accepts() -> None:
    """What the range check is for: sklearn's forest raises for a whole batch on one value
    that is infinite in float32; every value the decoder lets through, it scores."""
    import warnings

    from tests.worker_support import fit_pipeline, make_frame, schema_for

    train = make_frame(200, seed=1)
    pipeline, schema = fit_pipeline(train), schema_for(train)
    taken = [BELOW_LIMIT, -BELOW_LIMIT, 3.4028235e38, 5e-324, 1e-320, -0.0, 1e38]
    rejected = [MODEL_RANGE_LIMIT, -MODEL_RANGE_LIMIT, 3.5e38, 1e300, -1.7976931348623157e308]

    def row(x1: float) -> bytes:
        return json.dumps({"x1": x1, "x3": -x1, "color": "red"}).encode()

    decoded = decode_batch([row(x) for x in taken + rejected], schema)
    assert decoded.valid_indexes == list(range(len(taken)))
    assert {r.code for r in decoded.rejects} == {ReasonCode.OUT_OF_RANGE}
    with warnings.catch_warnings():
        # sklearn's finiteness check sums the float32 input first: x1 + x3 = max - max may
        # warn "invalid value" before its exact per-value check passes the row
        warnings.simplefilter("ignore", RuntimeWarning)
        probabilities = pipeline.predict_proba(decoded.frame)
        assert probabilities.shape == (len(taken), len(pipeline.classes_))
        for x in rejected:
            with pytest.raises(ValueError, match="too large for dtype"):
                pipeline.predict_proba(decoded.frame.iloc[:1].assign(x1=x))


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
overflowing = st.sampled_from(  # a number only the float conversion finds infinite or huge
    [
        b'{"a":1e999,"b":1,"c":1,"x":2}',
        b'{"age":-1e999,"income":1,"color":"red","city":"oslo","x":1}',
        b'{"a":1e300,"b":1,"c":1,"x":2}',
        b'{"a":1,"b":-3.5e38,"c":1}',
        b'{"age":3.5e38,"income":1,"color":"red","city":"oslo"}',
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


# -- all-numeric schemas: decoded into structs, not dicts -----------------------------------------

_NUMERIC_SCHEMA = FeatureSchema(
    features=[
        NumericFeature(name="a"),
        NumericFeature(name="b c", missing_seen=True),
        NumericFeature(name="x.y"),
    ]
)
_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.just(10**400),
)
_record = st.one_of(
    st.dictionaries(st.sampled_from(["a", "b c", "x.y", "extra"]), _values).map(
        lambda d: json.dumps(d).encode()
    ),
    st.sampled_from([b"", b"{", b"[1]", b'{"a": NaN}', b'{"a": 1e999}', b"\xff", b"null"]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_record, max_size=12))
def test_the_struct_path_decodes_as_the_dict_path_does(values: list[bytes]) -> None:
    """An all-numeric schema's batch goes through msgspec structs when every record is clean,
    else through the dict path: either way the same frame, rejects and counts."""
    from unittest import mock

    from forestream.worker import decoding

    fast = decode_batch(values, _NUMERIC_SCHEMA, max_record_bytes=200)
    with mock.patch.object(decoding, "_numeric_only", return_value=None):
        slow = decode_batch(values, _NUMERIC_SCHEMA, max_record_bytes=200)
    pd.testing.assert_frame_equal(fast.frame, slow.frame)
    assert fast.valid_indexes == slow.valid_indexes
    assert fast.rejects == slow.rejects
    assert (fast.unknown_categories, fast.extra_keys) == (slow.unknown_categories, slow.extra_keys)


def test_a_clean_numeric_batch_takes_the_struct_path() -> None:
    from forestream.worker import decoding

    schema = FeatureSchema(features=[NumericFeature(name=n, missing_seen=True) for n in "ab"])
    values = [b'{"a": 1, "b": null}', b'{"a": -3e5}']
    matrix = decoding._numeric_only(values, schema.names, 1000)
    assert matrix is not None and matrix.shape == (2, 2)
    decoded = decode_batch(values, schema)
    assert decoded.rejects == [] and decoded.extra_keys == 0
    assert decoded.frame["a"].tolist() == [1.0, -3e5]
    assert decoded.frame["b"].isna().all()
    # a name msgspec cannot take as a key: the dict path
    quoted = FeatureSchema(features=[NumericFeature(name='q"uote')])
    assert decoding._numeric_only([b'{"q\\"uote": 1}'], quoted.names, 1000) is None
    assert decode_batch([b'{"q\\"uote": 1}'], quoted).frame['q"uote'].tolist() == [1.0]
