"""The data-quality report: what it finds, what it drops, and what it refuses to train on."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from forestream.training.quality import (
    as_category_strings,
    assess,
    fatal_problem,
    infer_kind,
    looks_continuous,
    prepare,
    target_strings,
)


def frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "colour": rng.choice(["red", "green"], n),
            "flag": rng.choice([True, False], n),
            "count": rng.integers(0, 5, n),
            "label": rng.choice(["a", "b", "c"], n),
        }
    )
    out.loc[::7, "x"] = np.nan
    return out


def test_kinds_missing_shares_and_class_counts() -> None:
    data = frame()
    report = assess(data, "label")
    by_name = {c.name: c for c in report.column_quality}
    assert by_name["x"].kind == "numeric"
    assert by_name["count"].kind == "numeric"
    assert by_name["colour"].kind == "categorical"
    assert by_name["flag"].kind == "categorical"
    assert by_name["label"].status == "target"
    assert by_name["x"].missing_share == round(data["x"].isna().mean(), 6) > 0
    assert report.class_counts == {k: int(v) for k, v in data["label"].value_counts().items()}
    assert [c.name for c in report.features] == ["x", "colour", "flag", "count"]
    assert fatal_problem(report, list(data.columns)) is None


def test_constant_and_all_missing_columns_are_dropped_with_a_warning() -> None:
    data = frame().assign(const=7.0, empty=np.nan, const_text="same")
    report = assess(data, "label")
    dropped = {c.name: c.reason for c in report.column_quality if c.status == "dropped"}
    assert dropped == {"const": "constant", "empty": "all values missing", "const_text": "constant"}
    assert sum("dropped" in w for w in report.warnings) == 3
    features, _ = prepare(data, report)
    assert list(features.columns) == ["x", "colour", "flag", "count"]


def test_rows_without_target_are_dropped_and_counted() -> None:
    data = frame()
    data.loc[[1, 2, 3], "label"] = None
    report = assess(data, "label")
    assert report.target_missing_rows == 3
    assert sum(report.class_counts.values()) == len(data) - 3
    features, labels = prepare(data, report)
    assert len(features) == len(labels) == len(data) - 3
    assert labels.notna().all()


def test_duplicates_are_counted() -> None:
    data = frame()
    doubled = pd.concat([data, data.iloc[:5]], ignore_index=True)
    assert assess(doubled, "label").duplicate_rows == 5 + assess(data, "label").duplicate_rows


def test_a_copy_of_the_target_is_flagged_as_leakage() -> None:
    data = frame().assign(answer=lambda d: d["label"])
    report = assess(data, "label")
    assert [(s.feature, s.reason) for s in report.leakage] == [("answer", "equals the target")]
    assert any("suspected leakage" in w and "answer" in w for w in report.warnings)


def test_a_numeric_feature_that_separates_the_classes_is_flagged() -> None:
    data = frame()
    data["score"] = data["label"].map({"a": 1.0, "b": 5.0, "c": 9.0}) + np.linspace(0, 0.5, 60)
    suspects = {s.feature: s for s in assess(data, "label").leakage}
    assert set(suspects) == {"score"}
    assert suspects["score"].accuracy >= 0.98


def test_numeric_target_equal_to_a_feature_is_flagged() -> None:
    data = frame().assign(y=lambda d: d["count"])
    suspects = {s.feature: s.reason for s in assess(data, "y").leakage}
    assert suspects == {"count": "equals the target"}


def test_identifier_columns_are_warned_about_not_called_leakage() -> None:
    data = frame().assign(row_id=[f"id-{i}" for i in range(60)])
    report = assess(data, "label")
    assert report.leakage == []
    assert any("row_id" in w and "identifier" in w for w in report.warnings)


def test_excluded_columns_are_not_features() -> None:
    report = assess(frame(), "label", drop=("colour",))
    assert "colour" not in [c.name for c in report.features]


def test_fatal_target_absent_lists_the_columns() -> None:
    data = frame()
    problem = fatal_problem(assess(data, "species"), list(data.columns))
    assert problem is not None
    assert "'species' not found" in problem and "x, colour, flag, count, label" in problem


def test_fatal_single_class() -> None:
    data = frame().assign(label="only")
    problem = fatal_problem(assess(data, "label"), list(data.columns))
    assert problem is not None and "at least two classes, found 1" in problem


def test_fatal_class_with_one_row() -> None:
    data = frame()
    data.loc[0, "label"] = "rare"
    problem = fatal_problem(assess(data, "label"), list(data.columns))
    assert problem is not None and "stratified split" in problem and "'rare' (1)" in problem


def test_fatal_test_set_too_small_for_all_classes() -> None:
    data = frame(n=12)
    data["label"] = ["a", "b", "c", "d"] * 3
    problem = fatal_problem(assess(data, "label"), list(data.columns), test_size=0.1)
    assert problem is not None and "cannot hold all 4 classes" in problem


def test_fatal_no_usable_feature() -> None:
    data = pd.DataFrame({"const": [1.0] * 10, "empty": [np.nan] * 10, "y": ["a", "b"] * 5})
    problem = fatal_problem(assess(data, "y"), list(data.columns))
    assert problem is not None and "no usable feature" in problem


@given(st.lists(st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=4)), min_size=1))
def test_category_strings_are_strings_or_nan(values: list[object]) -> None:
    out = as_category_strings(pd.Series(values, dtype=object))
    assert out.dtype == object
    for raw, got in zip(values, out, strict=True):
        if raw is None:
            assert isinstance(got, float) and np.isnan(got)
        else:
            assert got == str(raw)


@given(st.lists(st.one_of(st.none(), st.integers(-1000, 1000)), min_size=1))
def test_integer_labels_stay_integers_even_when_nan_made_them_float(
    values: list[int | None],
) -> None:
    series = pd.Series(values, dtype="float64")
    labels = target_strings(series)
    assert list(labels) == [str(v) for v in values if v is not None]


def test_infer_kind_of_pandas_string_dtype() -> None:
    assert infer_kind(pd.Series(["a", "b"], dtype="string")) == "categorical"
    assert infer_kind(pd.Series([1, 2], dtype="int64")) == "numeric"


cells = st.one_of(st.none(), st.sampled_from(["a", "b", "c"]))
numbers = st.one_of(st.none(), st.floats(-100, 100, allow_nan=False))


@given(
    st.integers(0, 30).flatmap(
        lambda n: st.tuples(
            st.lists(numbers, min_size=n, max_size=n),
            st.lists(cells, min_size=n, max_size=n),
            st.lists(
                st.one_of(st.none(), st.sampled_from(["x", "y", "z"])), min_size=n, max_size=n
            ),
        )
    ),
    st.floats(0.1, 0.5),
)
def test_any_frame_is_either_refused_in_one_line_or_prepared_for_fitting(
    columns: tuple[list[float | None], list[str | None], list[str | None]], test_size: float
) -> None:
    num, cat, label = columns
    data = pd.DataFrame(
        {"num": pd.Series(num, dtype="float64"), "cat": pd.Series(cat, dtype=object), "y": label}
    )
    report = assess(data, "y")
    problem = fatal_problem(report, list(data.columns), test_size)
    if problem is not None:
        assert problem and "\n" not in problem
        return
    features, labels = prepare(data, report)
    assert len(features) == len(labels) == len(data) - report.target_missing_rows
    assert all(isinstance(v, str) for v in labels)
    for column in report.features:
        expected = np.float64 if column.kind == "numeric" else object
        assert features[column.name].dtype == expected
    assert min(report.class_counts.values()) >= 2


def test_a_continuous_target_is_refused_in_one_line_without_sklearn_warnings() -> None:
    rng = np.random.default_rng(1)
    data = pd.DataFrame({"x": rng.normal(size=200), "y": rng.normal(size=200)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's "y could represent a regression" would raise
        report = assess(data, "y")
    problem = fatal_problem(report, list(data.columns))
    assert problem == (
        "target 'y' has 200 distinct values in 200 rows: it looks continuous; "
        "forestream trains classifiers"
    )


@pytest.mark.parametrize(
    ("counts", "continuous"),
    [
        ({f"c{i}": 1 for i in range(21)} | {"big": 19}, True),  # 22 distinct in 40 rows
        ({f"c{i}": 2 for i in range(21)}, False),  # 21 distinct in 42 rows: exactly half
        ({f"c{i}": 1 for i in range(20)}, False),  # all distinct, but only 20 classes
        ({f"c{i}": 1 for i in range(21)}, True),
    ],
)
def test_continuous_means_many_distinct_values_and_most_rows_distinct(
    counts: dict[str, int], continuous: bool
) -> None:
    assert looks_continuous(counts) is continuous


def test_scarce_classes_are_listed_truncated_and_without_sklearn_warnings() -> None:
    rng = np.random.default_rng(2)
    labels = [f"r{i:02d}" for i in range(30)] + ["a"] * 100  # 31 classes in 130 rows
    data = pd.DataFrame({"x": rng.normal(size=130), "label": labels})
    problem = fatal_problem(assess(data, "label"), list(data.columns))
    assert problem is not None and problem.startswith("too few rows for a stratified split")
    assert "'r00' (1)" in problem and "'r09' (1)" in problem and "'r10'" not in problem
    assert problem.endswith("and 20 more classes")
    # 20 classes in 30 rows: not "continuous", but the leakage probe's tree sees more classes
    # than half its rows; its sklearn warning is about our probe, not the user's fit
    few = pd.DataFrame(
        {"x": rng.normal(size=30), "label": [f"c{i}" for i in range(10)] * 2 + list("abcdefghij")}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = assess(few, "label")
    assert "'a' (1)" in (fatal_problem(report, list(few.columns)) or "")
