"""``forestream train`` without the CLI: CSV → quality report → fit → versioned artifact.

Every fatal input problem is found before anything is written to the store, so a failed run
never leaves a version behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from forestream.errors import UserError
from forestream.registry.metadata import ModelMetadata, check_name
from forestream.registry.signing import Signer
from forestream.registry.store import ModelStore
from forestream.training.fit import (
    ForestParams,
    ProgressCallback,
    build_pipeline,
    evaluate,
    fit,
    holdout_prediction_shares,
    split,
)
from forestream.training.quality import QualityReport, assess, fatal_problem, prepare
from forestream.training.schema_build import build_reference, build_schema
from forestream.wire.csv_files import read_csv_file

MAX_SEED = 2**32 - 1
"""numpy's (and so sklearn's) ``random_state`` range is 0 .. 2**32 - 1."""


@dataclass(frozen=True)
class TrainRequest:
    data: Path
    target: str
    name: str
    params: ForestParams = field(default_factory=ForestParams)
    drop: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainOutcome:
    metadata: ModelMetadata
    report: QualityReport


def check_params(params: ForestParams) -> None:
    """Flag values sklearn would reject with a traceback, rejected here with one line."""
    if params.trees < 1:
        raise UserError(f"--trees must be at least 1, got {params.trees}")
    if params.max_depth is not None and params.max_depth < 1:
        raise UserError(f"--max-depth must be at least 1, got {params.max_depth}")
    if not 0.0 < params.test_size < 1.0:
        raise UserError(f"--test-size must be between 0 and 1 (exclusive), got {params.test_size}")
    if not 0 <= params.seed <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED}, got {params.seed}")


def read_training_csv(path: Path) -> tuple[pd.DataFrame, str]:
    """The CSV as a frame, and the sha256 of its bytes (recorded so a model names its data)."""
    frame, raw = read_csv_file(path)
    return frame, hashlib.sha256(raw).hexdigest()


def run_training(
    request: TrainRequest,
    store: ModelStore,
    *,
    signer: Signer | None = None,
    on_report: Callable[[QualityReport], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> TrainOutcome:
    """Train one version and save it; raises UserError (store untouched) on fatal input."""
    check_params(request.params)
    check_name(request.name)  # before the data is read and its report printed
    store.check_writable()  # before a long fit; writes nothing
    frame, data_sha256 = read_training_csv(request.data)
    unknown_drops = [c for c in request.drop if c not in frame.columns]
    if unknown_drops:
        raise UserError(
            f"--drop names unknown column(s) {', '.join(map(repr, unknown_drops))}; "
            f"columns are: {', '.join(map(str, frame.columns))}"
        )
    if request.target in request.drop:
        raise UserError(f"--drop cannot exclude the target column {request.target!r}")
    report = assess(frame, request.target, request.drop)
    problem = fatal_problem(report, [str(c) for c in frame.columns], request.params.test_size)
    if problem is not None:
        raise UserError(problem)
    store.prepare(request.name)  # an unusable store fails now, not after the report and fit
    if on_report is not None:
        on_report(report)

    features, labels = prepare(frame, report)
    kinds = {c.name: c.kind for c in report.features}
    numeric = [n for n, k in kinds.items() if k == "numeric"]
    categorical = [n for n, k in kinds.items() if k == "categorical"]
    pipeline = build_pipeline(numeric, categorical, request.params)
    x_train, x_test, y_train, y_test = split(features, labels, request.params)
    fit(pipeline, x_train, y_train, on_progress)
    metrics = evaluate(pipeline, x_test, y_test, y_train)

    import sklearn

    metadata = ModelMetadata(
        name=request.name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        target=request.target,
        classes=[str(c) for c in pipeline.classes_],
        feature_schema=build_schema(features, kinds),
        reference=build_reference(features, kinds),
        metrics=metrics,
        holdout_prediction_shares=holdout_prediction_shares(metrics),
        data_sha256=data_sha256,
        data_rows=len(frame),
        sklearn_version=sklearn.__version__,
        params={
            "trees": request.params.trees,
            "max_depth": request.params.max_depth,
            "seed": request.params.seed,
            "test_size": request.params.test_size,
            "drop": list(request.drop),
            "data_file": request.data.name,
        },
    )
    saved = store.save(request.name, pipeline, metadata, report.to_dict(), signer=signer)
    return TrainOutcome(saved, report)
