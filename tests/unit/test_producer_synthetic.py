"""Synthetic records fit the model's schema and follow its reference distribution."""

from __future__ import annotations

import math
import statistics

import pytest

from forestream.producer.synthetic import reference_std, synthetic_rows
from forestream.wire.schema import (
    CategoricalFeature,
    CategoricalReference,
    FeatureSchema,
    NumericFeature,
    NumericReference,
    ReferenceStats,
)

SCHEMA = FeatureSchema(
    features=[
        NumericFeature(name="age", min=18, max=90),
        NumericFeature(name="income", missing_seen=True),
        CategoricalFeature(name="colour", categories=["red", "green", "blue"]),
        NumericFeature(name="plain", min=-1, max=1),
    ]
)
REFERENCE = ReferenceStats(
    features={
        "age": NumericReference(edges=[30, 50], shares=[0.2, 0.5, 0.3]),
        "income": NumericReference(
            edges=[], shares=[1.0], mean=1000.0, std=100.0, missing_share=0.25
        ),
        "colour": CategoricalReference(shares={"red": 0.7, "green": 0.3, "blue": 0.0}),
    }
)


def rows(n: int = 4000, seed: int = 3, **kw: object) -> list[dict[str, object]]:
    return list(synthetic_rows(SCHEMA, REFERENCE, n, seed=seed, **kw))  # type: ignore[arg-type]


def test_every_record_matches_the_schema() -> None:
    out = rows()
    assert len(out) == 4000
    for row in out:
        assert list(row) == SCHEMA.names
        assert 18 <= row["age"] <= 90  # type: ignore[operator]
        assert -1 <= row["plain"] <= 1  # type: ignore[operator]
        assert row["colour"] in {"red", "green"}
        for name in ("age", "plain"):
            assert isinstance(row[name], float) and math.isfinite(row[name])  # type: ignore[arg-type]


def test_bins_follow_reference_shares() -> None:
    ages = [r["age"] for r in rows()]
    share_mid = sum(1 for a in ages if 30 < a <= 50) / len(ages)  # type: ignore[operator]
    assert share_mid == pytest.approx(0.5, abs=0.04)
    reds = sum(1 for r in rows() if r["colour"] == "red") / 4000
    assert reds == pytest.approx(0.7, abs=0.04)


def test_missing_only_where_training_saw_it() -> None:
    out = rows()
    assert all(r["age"] is not None and r["colour"] is not None for r in out)
    missing = sum(1 for r in out if r["income"] is None) / len(out)
    assert missing == pytest.approx(0.25, abs=0.04)


def test_seeded() -> None:
    assert rows(50, seed=7) == rows(50, seed=7)
    assert rows(50, seed=7) != rows(50, seed=8)


def test_shift_moves_a_feature_by_k_reference_stds() -> None:
    base = [r["income"] for r in rows() if r["income"] is not None]
    moved = [r["income"] for r in rows(shift={"income": 3.0}) if r["income"] is not None]
    delta = statistics.fmean(moved) - statistics.fmean(base)  # type: ignore[arg-type]
    assert delta == pytest.approx(300.0, rel=0.02)


def test_reference_std_from_bins_when_not_recorded() -> None:
    feature = SCHEMA.feature("age")
    assert isinstance(feature, NumericFeature)
    std = reference_std(feature, REFERENCE.features["age"])  # type: ignore[arg-type]
    assert 5 < std < 30
