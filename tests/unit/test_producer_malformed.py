"""Each deliberately bad record has exactly the defect its reason code names.

Checked with plain ``json`` (the worker's decoder belongs to the worker), property by property.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forestream.producer.malformed import (
    MALFORMED_KINDS,
    MAX_VALUE_BYTES,
    MalformedMixer,
    malformed_value,
    possible_kinds,
)
from forestream.wire.headers import ReasonCode

ROW = {"x1": 1.5, "x2": -3, "colour": "red", "x3": 0.0}
REQUIRED = ["x1", "x2", "colour", "x3"]
NUMERIC = ["x1", "x2", "x3"]


def make(kind: str, pick: int = 0) -> bytes:
    return malformed_value(kind, ROW, REQUIRED, NUMERIC, pick=pick)


def test_not_json_is_a_truncated_object() -> None:
    value = make(ReasonCode.NOT_JSON)
    assert value.startswith(b"{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(value)


def test_not_object_is_valid_json_list() -> None:
    assert isinstance(json.loads(make(ReasonCode.NOT_OBJECT)), list)


@pytest.mark.parametrize("pick", range(4))
def test_missing_feature_drops_one_required_feature(pick: int) -> None:
    decoded = json.loads(make(ReasonCode.MISSING_FEATURE, pick))
    assert isinstance(decoded, dict)
    assert len(set(REQUIRED) - set(decoded)) == 1


@pytest.mark.parametrize("pick", range(3))
def test_wrong_type_puts_a_string_in_a_numeric_feature(pick: int) -> None:
    decoded = json.loads(make(ReasonCode.WRONG_TYPE, pick))
    assert set(decoded) == set(ROW)
    spoilt = [n for n in NUMERIC if isinstance(decoded[n], str)]
    assert len(spoilt) == 1


def test_not_finite_is_a_nan_literal_in_a_numeric_feature() -> None:
    value = make(ReasonCode.NOT_FINITE)
    assert b"NaN" in value
    decoded = json.loads(value)
    assert set(decoded) == set(ROW)
    assert sum(1 for n in NUMERIC if math.isnan(decoded[n])) == 1


def test_too_large_is_a_valid_object_over_one_mib() -> None:
    value = make(ReasonCode.TOO_LARGE)
    assert len(value) > MAX_VALUE_BYTES
    decoded = json.loads(value)
    assert {k: decoded[k] for k in ROW} == ROW


def test_empty_is_empty() -> None:
    assert make(ReasonCode.EMPTY) == b""


def test_kinds_are_reason_codes() -> None:
    assert set(MALFORMED_KINDS) <= set(ReasonCode.ALL)


def test_no_numeric_feature_means_no_numeric_defects() -> None:
    kinds = possible_kinds(["colour"], [])
    assert ReasonCode.WRONG_TYPE not in kinds and ReasonCode.NOT_FINITE not in kinds
    assert ReasonCode.MISSING_FEATURE in kinds


@given(st.floats(min_value=0.01, max_value=0.95), st.integers(min_value=50, max_value=400))
def test_mixer_share_is_exact_and_kinds_take_turns(share: float, slots: int) -> None:
    mixer = MalformedMixer(share, REQUIRED, NUMERIC, seed=1)
    bad = [mixer.make(ROW)[0] for _ in range(slots) if mixer.next_is_malformed()]
    assert abs(len(bad) - share * slots) <= 1
    counts = Counter(bad)
    assert max(counts.values(), default=0) - min(counts.values(), default=0) <= 1
    assert bad[: len(MALFORMED_KINDS)] == list(MALFORMED_KINDS)[: len(bad)]


def test_mixer_rejects_share_of_one() -> None:
    with pytest.raises(ValueError):
        MalformedMixer(1.0, REQUIRED, NUMERIC)
