"""A tiny trained pipeline and its input records, shared by the worker's unit and integration tests.

Mirrors what the trainer produces (ColumnTransformer with imputers + one-hot, then a small
RandomForest) without depending on the trainer package.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contracts.schema import CategoricalFeature, FeatureSchema, NumericFeature

NUMERIC = ["x1", "x2", "x3"]
CATEGORICAL = ["color", "shape"]
COLORS = ["red", "green", "blue"]
SHAPES = ["circle", "square"]


def make_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """Features with some NaNs in x2 and shape (so those may be missing), and a 3-class target."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(0, 1, n),
            "x2": rng.normal(5, 2, n),
            "x3": rng.uniform(-1, 1, n),
            "color": pd.Series(rng.choice(COLORS, n), dtype=object),
            "shape": pd.Series(rng.choice(SHAPES, n), dtype=object),
        }
    )
    score = frame["x1"] + (frame["color"] == "red") * 1.5 - frame["x3"]
    frame["target"] = np.where(score > 1, "high", np.where(score < -0.5, "low", "mid"))
    frame.loc[rng.random(n) < 0.1, "x2"] = np.nan
    frame.loc[rng.random(n) < 0.1, "shape"] = np.nan
    return frame


def fit_pipeline(frame: pd.DataFrame, trees: int = 10) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    pre = ColumnTransformer(
        [
            ("num", SimpleImputer(strategy="median"), NUMERIC),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                CATEGORICAL,
            ),
        ]
    )
    pipeline = Pipeline(
        [("pre", pre), ("rf", RandomForestClassifier(n_estimators=trees, random_state=0))]
    )
    pipeline.fit(frame[NUMERIC + CATEGORICAL], frame["target"])
    return pipeline


def schema_for(frame: pd.DataFrame) -> FeatureSchema:
    features: list[NumericFeature | CategoricalFeature] = [
        NumericFeature(name=c, missing_seen=bool(frame[c].isna().any())) for c in NUMERIC
    ]
    features += [
        CategoricalFeature(
            name=c,
            categories=sorted(frame[c].dropna().unique().tolist()),
            missing_seen=bool(frame[c].isna().any()),
        )
        for c in CATEGORICAL
    ]
    return FeatureSchema(features=features)


def row_json(row: pd.Series) -> bytes:
    """One input record: missing values are left out, as a CSV-to-JSON producer would."""
    out: dict[str, Any] = {}
    for name in NUMERIC + CATEGORICAL:
        value = row[name]
        if isinstance(value, float) and math.isnan(value):
            continue
        out[name] = float(value) if name in NUMERIC else str(value)
    return json.dumps(out).encode()


# -- integration: a promoted model in a real store, worker processes, bad records ----------------


def save_model(store: Path, name: str, frame: pd.DataFrame, trees: int = 10) -> tuple[Any, Any]:
    """Fit, save through ModelStore and promote: returns (pipeline, saved ModelMetadata)."""
    import sklearn

    from contracts.model_store import ModelMetadata, ModelStore
    from contracts.schema import ReferenceStats

    pipeline = fit_pipeline(frame, trees=trees)
    metadata = ModelMetadata(
        name=name,
        created_at="2026-01-01T00:00:00+00:00",
        target="target",
        classes=[str(c) for c in pipeline.classes_],
        feature_schema=schema_for(frame),
        reference=ReferenceStats(features={}),
        metrics={},
        data_sha256="0" * 64,
        data_rows=len(frame),
        sklearn_version=sklearn.__version__,
    )
    model_store = ModelStore(store)
    saved = model_store.save(name, pipeline, metadata, {})
    model_store.promote(name, saved.version)
    return pipeline, saved


def publish_promotion(bootstrap: str, models_topic: str, metadata: Any) -> None:
    """What ``forestream models promote`` announces, through the trainer's own publisher."""
    from contracts.wire import ServingRef
    from training.publish import model_event, publish_event

    serving = ServingRef(
        version=metadata.version, sha256=metadata.artifact_sha256, signature=metadata.signature
    )
    publish_event(bootstrap, models_topic, model_event("promoted", metadata, serving))


MAX_RECORD_BYTES = 2000
"""Workers in the integration tests run with this limit, so ``too_large`` needs no 1 MiB record."""


def malformed_records() -> list[tuple[bytes | None, str]]:
    """(value, expected reason code): every code the decoder can produce, some twice.

    Relies on the schema of :func:`make_frame`: x1, x3 and color never missing; x2 and shape
    sometimes missing (so leaving those out is valid, not a reject).
    """
    good = {"x1": 0.5, "x2": 1.0, "x3": 0.1, "color": "red", "shape": "circle"}

    def with_(**changes: Any) -> bytes:
        row = {**good, **changes}
        return json.dumps({k: v for k, v in row.items() if v is not _DROP}).encode()

    return [
        (None, "empty"),
        (b"", "empty"),
        (with_(pad="x" * (MAX_RECORD_BYTES + 10)), "too_large"),
        (b"\xff\xfe not utf-8", "not_json"),
        (b'{"x1": 1,', "not_json"),
        (b"[1, 2, 3]", "not_object"),
        (b'"just a string"', "not_object"),
        (with_(x1=_DROP), "missing_feature"),
        (with_(color=None), "missing_feature"),
        (with_(x1="1.5"), "wrong_type"),
        (with_(x3=True), "wrong_type"),
        (with_(color=3), "wrong_type"),
        (b'{"x1": NaN, "x2": 1.0, "x3": 0.1, "color": "red"}', "not_finite"),
        (b'{"x1": 1e999, "x2": 1.0, "x3": 0.1, "color": "red"}', "not_finite"),
    ]


_DROP = object()


def worker_command(
    bootstrap: str,
    topics: dict[str, str],
    store: Path,
    name: str,
    group: str,
    *extra: str,
) -> list[str]:
    """The command line of one ``forestream worker`` process for the integration tests."""
    return [
        sys.executable, "-m", "forestream.cli", "worker",
        "--bootstrap-servers", bootstrap,
        "--input-topic", topics["in"],
        "--output-topic", topics["out"],
        "--dlq-topic", topics["dlq"],
        "--models-topic", topics["models"],
        "--labels-topic", topics.get("labels", topics["in"] + ".labels"),
        "--monitoring-topic", topics.get("monitoring", topics["in"] + ".monitoring"),
        "--store", str(store),
        "--name", name,
        "--group", group,
        "--log-format", "json",
        *extra,
    ]  # fmt: skip


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FORESTREAM_SIGNING_KEY"}
    env["FORESTREAM_MAX_RECORD_BYTES"] = str(MAX_RECORD_BYTES)
    env["FORESTREAM_SUMMARY_INTERVAL_S"] = "2"
    return env


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of one worker's stderr with this ``event`` name."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            out.append(entry)
    return out
