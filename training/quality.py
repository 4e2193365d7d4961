"""Data-quality checks run before every fit: what the data scientist must see, and what stops us.

Pure functions over a pandas frame. :func:`assess` never raises: it describes the data (types,
missing values, dropped columns, duplicates, class balance, suspected leakage).
:func:`fatal_problem` then says, in one line, why training cannot go on, or returns ``None``.
:func:`prepare` turns the raw frame into the feature frame and string target the fit uses, with
the same column kinds the report shows, so report and model cannot disagree.
"""

from __future__ import annotations

import math
import warnings as py_warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

Kind = Literal["numeric", "categorical"]

LEAKAGE_ACCURACY = 0.98
"""A single feature predicting the target this well on its own is almost surely a leak."""
LEAKAGE_SAMPLE = 20_000
"""Rows used to test one numeric feature for leakage: plenty to see a leak, cheap on big data."""
IDENTIFIER_SHARE = 0.5
"""A categorical with more distinct values than this share of rows looks like an identifier."""
MIN_ROWS_PER_CLASS = 2
"""Stratified splitting puts each class on both sides, so it needs at least two rows of it."""
CONTINUOUS_MIN_DISTINCT = 20
CONTINUOUS_SHARE = 0.5
"""A target with more than ``CONTINUOUS_MIN_DISTINCT`` distinct values, and distinct values for
more than ``CONTINUOUS_SHARE`` of its rows, is a measurement (regression), not a set of classes."""
LISTED_CLASSES = 10
"""At most this many classes are named in a one-line error; the rest are counted."""


@dataclass
class ColumnQuality:
    """One input column as the trainer sees it."""

    name: str
    kind: Kind
    dtype: str
    missing_share: float
    distinct: int
    status: Literal["used", "dropped", "target"] = "used"
    reason: str | None = None

    def identifier_like(self, rows: int) -> bool:
        """A categorical with a value for (almost) every row: an id, not a feature."""
        return self.kind == "categorical" and self.distinct > IDENTIFIER_SHARE * rows


@dataclass
class LeakageSuspect:
    """A feature that, alone, predicts the target (almost) perfectly."""

    feature: str
    accuracy: float
    reason: str


@dataclass
class QualityReport:
    """What the data looked like before fitting; saved beside the model as JSON."""

    rows: int
    columns: int
    target: str
    column_quality: list[ColumnQuality]
    duplicate_rows: int
    target_missing_rows: int
    class_counts: dict[str, int]
    leakage: list[LeakageSuspect] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def features(self) -> list[ColumnQuality]:
        return [c for c in self.column_quality if c.status == "used"]

    @property
    def majority_share(self) -> float:
        total = sum(self.class_counts.values())
        return max(self.class_counts.values()) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def looks_continuous(class_counts: dict[str, int]) -> bool:
    """Too many distinct target values for the rows to be classes: a regression target."""
    distinct, labelled = len(class_counts), sum(class_counts.values())
    return distinct > CONTINUOUS_MIN_DISTINCT and distinct > CONTINUOUS_SHARE * labelled


def infer_kind(series: pd.Series) -> Kind:
    """Numbers are numeric; strings, objects and booleans are categories (sent as JSON strings)."""
    if pd.api.types.is_bool_dtype(series):
        return "categorical"
    if pd.api.types.is_numeric_dtype(series):
        return "numeric"
    return "categorical"


def as_category_strings(series: pd.Series) -> pd.Series:
    """Categorical values as ``str`` in an object column, missing as NaN: what the worker builds."""
    out = series.astype(object)
    present = out.notna()
    out[present] = out[present].map(str)
    out[~present] = np.nan
    return out.astype(object)


def target_strings(series: pd.Series) -> pd.Series:
    """Class labels as strings; integral floats (ints made float by NaNs) lose their ``.0``."""
    present = series.dropna()
    if pd.api.types.is_float_dtype(series) and bool(np.all(np.mod(present, 1) == 0)):
        return present.astype(np.int64).astype(str).astype(object)
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return present.map(str).astype(object)
    return present.astype(str).astype(object)


def single_feature_accuracy(feature: pd.Series, target: pd.Series, kind: Kind) -> float:
    """Accuracy of predicting the target from this feature alone, in sample.

    Categorical: the majority class per value (missing is a value too: it can leak as well).
    Numeric: a small decision tree (two leaves per class) on up to ``LEAKAGE_SAMPLE`` rows, so
    "thresholds on this one number sort the classes" is found, yet noise cannot be memorised.
    """
    if len(target) == 0:
        return 0.0
    if kind == "categorical":
        groups = feature.astype(object).where(feature.notna(), "\0missing")
        table = pd.crosstab(groups, target)
        return float(table.max(axis=1).sum() / len(target))
    from sklearn.tree import DecisionTreeClassifier

    values = feature.astype(np.float64)
    if len(values) > LEAKAGE_SAMPLE:
        values = values.sample(LEAKAGE_SAMPLE, random_state=0)
    labels = target.loc[values.index]
    leaves = max(2, 2 * labels.nunique())
    tree = DecisionTreeClassifier(max_leaf_nodes=leaves, random_state=0)
    column = values.to_numpy().reshape(-1, 1)
    with py_warnings.catch_warnings():
        # "more unique classes than 50% of samples": about this internal probe's sample, not
        # the user's fit; class scarcity and continuous targets are judged by fatal_problem
        py_warnings.filterwarnings(
            "ignore", message="The number of unique classes", category=UserWarning
        )
        tree.fit(column, labels)
    return float(tree.score(column, labels))


def _leakage(
    frame: pd.DataFrame, target: pd.Series, usable: list[ColumnQuality]
) -> list[LeakageSuspect]:
    suspects: list[LeakageSuspect] = []
    baseline = target.value_counts(normalize=True).max()
    for column in usable:
        feature = frame.loc[target.index, column.name]
        as_text = feature.map(str) if column.kind == "categorical" else target_like(feature)
        if as_text is not None and bool((as_text == target).all()):
            suspects.append(LeakageSuspect(column.name, 1.0, "equals the target"))
            continue
        if column.identifier_like(len(frame)):
            continue  # one value per row "predicts" anything; reported as identifier-like instead
        accuracy = single_feature_accuracy(feature, target, column.kind)
        if accuracy >= LEAKAGE_ACCURACY and accuracy > baseline:
            suspects.append(
                LeakageSuspect(
                    column.name,
                    round(accuracy, 4),
                    f"predicts the target alone with accuracy {accuracy:.3f}",
                )
            )
    return suspects


def target_like(feature: pd.Series) -> pd.Series | None:
    """A numeric feature rendered the way :func:`target_strings` renders labels, if complete."""
    if feature.isna().any():
        return None
    return target_strings(feature)


def assess(frame: pd.DataFrame, target: str, drop: tuple[str, ...] = ()) -> QualityReport:
    """Describe ``frame`` for training on ``target``; the caller checks :func:`fatal_problem`.

    ``drop`` names columns the user excluded (identifiers, known leaks).
    """
    rows = len(frame)
    columns: list[ColumnQuality] = []
    warnings: list[str] = []
    for name in frame.columns:
        series = frame[name]
        missing = float(series.isna().mean()) if rows else 0.0
        column = ColumnQuality(
            name=str(name),
            kind=infer_kind(series),
            dtype=str(series.dtype),
            missing_share=round(missing, 6),
            distinct=int(series.nunique(dropna=True)),
        )
        if name == target:
            column.status = "target"
        elif name in drop:
            column.status, column.reason = "dropped", "excluded by --drop"
        elif rows and missing == 1.0:
            column.status, column.reason = "dropped", "all values missing"
        elif column.distinct <= 1:
            column.status, column.reason = "dropped", "constant"
        columns.append(column)
        if column.status == "dropped" and column.reason != "excluded by --drop":
            warnings.append(f"column {name!r} dropped: {column.reason}")

    report = QualityReport(
        rows=rows,
        columns=len(frame.columns),
        target=target,
        column_quality=columns,
        duplicate_rows=int(frame.duplicated().sum()) if rows else 0,
        target_missing_rows=0,
        class_counts={},
        warnings=warnings,
    )
    if target not in frame.columns:
        return report

    labels = target_strings(frame[target])
    report.target_missing_rows = rows - len(labels)
    counts = labels.value_counts()
    report.class_counts = {str(k): int(v) for k, v in counts.items()}
    if report.target_missing_rows:
        warnings.append(f"{report.target_missing_rows} rows without a target value dropped")
    if report.duplicate_rows:
        warnings.append(f"{report.duplicate_rows} duplicate rows (kept)")
    for column in report.features:
        if column.identifier_like(rows):
            warnings.append(
                f"column {column.name!r} looks like an identifier "
                f"({column.distinct} distinct values in {rows} rows); consider --drop"
            )
    if len(counts) >= 2 and report.features and not looks_continuous(report.class_counts):
        report.leakage = _leakage(frame, labels, report.features)
        warnings.extend(
            f"suspected leakage: {s.feature!r} {s.reason}; consider --drop" for s in report.leakage
        )
    return report


def fatal_problem(report: QualityReport, columns: list[str], test_size: float = 0.2) -> str | None:
    """The one-line reason training cannot proceed, or ``None`` when it can."""
    if report.target not in columns:
        return f"target column {report.target!r} not found; columns are: {', '.join(columns)}"
    counts = report.class_counts
    if len(counts) < 2:
        seen = ", ".join(repr(c) for c in counts) or "none"
        return f"target {report.target!r} needs at least two classes, found {len(counts)} ({seen})"
    labelled = sum(counts.values())
    if looks_continuous(counts):
        return (
            f"target {report.target!r} has {len(counts)} distinct values in {labelled} rows: "
            "it looks continuous; forestream trains classifiers"
        )
    scarce = sorted((c, n) for c, n in counts.items() if n < MIN_ROWS_PER_CLASS)
    if scarce:
        listed = ", ".join(f"{c!r} ({n})" for c, n in scarce[:LISTED_CLASSES])
        if len(scarce) > LISTED_CLASSES:
            listed += f" and {len(scarce) - LISTED_CLASSES} more classes"
        return (
            f"too few rows for a stratified split: need at least {MIN_ROWS_PER_CLASS} per class, "
            f"got {listed}"
        )
    test_rows = math.ceil(test_size * labelled)
    if test_rows < len(counts) or labelled - test_rows < len(counts):
        return (
            f"too few rows for a stratified split: {labelled} labelled rows with test size "
            f"{test_size} cannot hold all {len(counts)} classes on both sides"
        )
    if not report.features:
        return "no usable feature left (every other column is constant, empty or dropped)"
    return None


def prepare(frame: pd.DataFrame, report: QualityReport) -> tuple[pd.DataFrame, pd.Series]:
    """Feature frame (float64 numerics, string categoricals) and string labels, target-less rows
    dropped, columns in the report's order."""
    labels = target_strings(frame[report.target])
    data: dict[str, pd.Series] = {}
    for column in report.features:
        series = frame.loc[labels.index, column.name]
        if column.kind == "numeric":
            data[column.name] = series.astype(np.float64)
        else:
            data[column.name] = as_category_strings(series)
    features = pd.DataFrame(data, index=labels.index).reset_index(drop=True)
    return features, labels.reset_index(drop=True)
