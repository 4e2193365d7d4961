"""The model itself: preprocessing + RandomForest in one Pipeline, a stratified split, metrics.

The pipeline takes the raw feature frame (float64 numerics, string categoricals with NaN for
missing), so the worker hands it exactly what it decoded, no feature code of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

ProgressCallback = Callable[[int, int], None]
"""Called with (trees grown so far, total trees) while the forest grows."""

PROGRESS_CHUNKS = 10
"""The forest grows in this many warm-start steps, so a long fit can report progress."""


@dataclass(frozen=True)
class ForestParams:
    trees: int = 100
    max_depth: int | None = None
    seed: int = 0
    test_size: float = 0.2


def build_pipeline(numeric: list[str], categorical: list[str], params: ForestParams) -> Any:
    """Median-imputed numerics, most-frequent-imputed one-hot categoricals, then the forest."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        transformers.append(("num", SimpleImputer(strategy="median"), numeric))
    if categorical:
        transformers.append(
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                categorical,
            )
        )
    forest = RandomForestClassifier(
        n_estimators=params.trees, max_depth=params.max_depth, random_state=params.seed
    )
    return Pipeline([("pre", ColumnTransformer(transformers)), ("rf", forest)])


def split(
    features: pd.DataFrame, labels: pd.Series, params: ForestParams
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """Seeded stratified split: every class on both sides, in its training proportion."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=params.test_size, random_state=params.seed, stratify=labels
    )
    return x_train, x_test, y_train, y_test


def fit(
    pipeline: Any,
    features: pd.DataFrame,
    labels: pd.Series,
    on_progress: ProgressCallback | None = None,
) -> Any:
    """Fit the preprocessing once, then grow the forest in warm-start chunks to report progress.

    RandomForest has no per-tree callback; growing it in steps with ``warm_start`` gives the same
    trees as one fit (the seeded RNG is advanced past the existing trees) and a real progress.
    """
    pre, forest = pipeline.named_steps["pre"], pipeline.named_steps["rf"]
    total = forest.n_estimators
    transformed = pre.fit_transform(features, labels)
    step = max(1, -(-total // PROGRESS_CHUNKS))
    forest.set_params(warm_start=True)
    grown = 0
    if on_progress is not None:
        on_progress(0, total)
    while grown < total:
        grown = min(total, grown + step)
        forest.set_params(n_estimators=grown)
        forest.fit(transformed, labels)
        if on_progress is not None:
            on_progress(grown, total)
    forest.set_params(warm_start=False)  # the artifact should look like an ordinary fit
    return pipeline


def evaluate(
    pipeline: Any, x_test: pd.DataFrame, y_test: pd.Series, y_train: pd.Series
) -> dict[str, Any]:
    """Holdout metrics, with the majority-class baseline beside them for perspective."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    classes = [str(c) for c in pipeline.classes_]
    predicted = pipeline.predict(x_test)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_test, predicted, labels=classes, zero_division=0
    )
    majority = str(y_train.value_counts().idxmax())
    baseline = float(np.mean(np.asarray(y_test) == majority))
    return {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "macro_f1": float(f1_score(y_test, predicted, average="macro", zero_division=0)),
        "baseline_accuracy": baseline,
        "baseline_class": majority,
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": {
            "labels": classes,
            "matrix": confusion_matrix(y_test, predicted, labels=classes).tolist(),
        },
        "train_rows": len(y_train),
        "test_rows": len(y_test),
    }


def holdout_prediction_shares(metrics: dict[str, Any]) -> dict[str, float]:
    """Share of each class among the holdout's predictions (the confusion matrix's column
    sums): what fleet prediction drift compares live predicted-class shares with."""
    matrix = metrics["confusion_matrix"]
    predicted = np.asarray(matrix["matrix"], dtype=np.float64).sum(axis=0)
    total = max(float(predicted.sum()), 1.0)
    return {str(c): float(n / total) for c, n in zip(matrix["labels"], predicted, strict=True)}
