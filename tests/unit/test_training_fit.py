"""The pipeline: chunked (progress-reporting) fit, holdout metrics, and scoring worker frames."""

from __future__ import annotations

import numpy as np
import pandas as pd

from forestream.training.fit import ForestParams, build_pipeline, evaluate, fit, split
from forestream.training.quality import assess, prepare

NUMERIC = ["x1", "x2"]
CATEGORICAL = ["colour"]


def data(n: int = 240, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "colour": rng.choice(["red", "green", "blue"], n),
        }
    )
    score = frame["x1"] + (frame["colour"] == "red") * 1.5
    frame["y"] = np.where(score > 0.8, "hi", np.where(score < -0.5, "lo", "mid"))
    frame.loc[::9, "x2"] = np.nan
    frame.loc[::11, "colour"] = None
    return prepare(frame, assess(frame, "y"))


def test_chunked_fit_grows_the_same_forest_as_one_fit() -> None:
    features, labels = data()
    params = ForestParams(trees=13, seed=3)
    seen: list[tuple[int, int]] = []
    chunked = fit(
        build_pipeline(NUMERIC, CATEGORICAL, params),
        features,
        labels,
        lambda d, t: seen.append((d, t)),
    )
    whole = build_pipeline(NUMERIC, CATEGORICAL, params).fit(features, labels)
    assert [d for d, _ in seen] == sorted({d for d, _ in seen}) and seen[-1] == (13, 13)
    assert len(chunked.named_steps["rf"].estimators_) == 13
    assert not chunked.named_steps["rf"].warm_start
    np.testing.assert_array_equal(chunked.predict_proba(features), whole.predict_proba(features))


def test_holdout_metrics_and_baseline() -> None:
    features, labels = data()
    params = ForestParams(trees=15, seed=1, test_size=0.25)
    x_train, x_test, y_train, y_test = split(features, labels, params)
    assert len(y_test) == 60
    # stratified: class proportions agree on both sides within one row per class
    for label, count in labels.value_counts().items():
        assert abs((y_test == label).sum() - count * 0.25) <= 1
    pipeline = fit(build_pipeline(NUMERIC, CATEGORICAL, params), x_train, y_train)
    metrics = evaluate(pipeline, x_test, y_test, y_train)
    majority = y_train.value_counts().idxmax()
    assert metrics["baseline_class"] == majority
    assert metrics["baseline_accuracy"] == (y_test == majority).mean()
    assert metrics["accuracy"] > metrics["baseline_accuracy"]
    matrix = np.array(metrics["confusion_matrix"]["matrix"])
    assert matrix.sum() == 60 and np.trace(matrix) / 60 == metrics["accuracy"]
    assert set(metrics["per_class"]) == {"hi", "lo", "mid"}
    assert sum(c["support"] for c in metrics["per_class"].values()) == 60


def test_scores_a_frame_shaped_like_the_workers_with_unseen_and_missing_values() -> None:
    features, labels = data()
    pipeline = fit(build_pipeline(NUMERIC, CATEGORICAL, ForestParams(trees=10)), features, labels)
    live = pd.DataFrame(
        {
            "x1": pd.Series([0.1, np.nan], dtype=np.float64),
            "x2": pd.Series([np.nan, 2.0], dtype=np.float64),
            "colour": pd.Series(["purple", np.nan], dtype=object),
        }
    )
    proba = pipeline.predict_proba(live)
    assert proba.shape == (2, 3)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert list(pipeline.classes_) == ["hi", "lo", "mid"]
