"""The benchmark's data and model: synthetic numeric rows, a RandomForest, a promoted version.

The model goes through the same path as production (``ModelStore.save``, then a ``promoted``
event on a models topic), so the worker under test loads, verifies and warms it up exactly as
it would in a deployment.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from forestream.registry.metadata import ModelMetadata
from forestream.registry.signing import DEFAULT_KEYS_DIR, Signer, ensure_key_pair
from forestream.registry.store import ModelStore
from forestream.wire.messages import ServingRef

MODEL_NAME = "bench"


@dataclass(frozen=True)
class Workload:
    """Encoded input records plus the model that scores them."""

    feature_names: list[str]
    values: list[bytes]
    """One JSON object per record (the input wire format), encoded once up front."""
    pipeline: Any
    metadata: ModelMetadata


def bench_signer() -> Signer:
    """Sign like a deployment (workers verify by default): the repo's local key pair, made if
    absent, and exported for the worker processes the benchmarks start."""
    private, public = ensure_key_pair(DEFAULT_KEYS_DIR)
    os.environ.setdefault("FORESTREAM_VERIFY_KEY_FILE", str(public))
    os.environ.setdefault("FORESTREAM_SIGNING_KEY_FILE", str(private))
    return Signer.from_file(private)


def feature_names(count: int) -> list[str]:
    width = len(str(count - 1))
    return [f"f{i:0{width}d}" for i in range(count)]


def make_workload(
    records: int,
    features: int,
    trees: int,
    train_rows: int,
    store: ModelStore,
    seed: int = 0,
    promote: bool = True,
) -> Workload:
    """Train on ``train_rows`` rows and encode ``records`` more rows of the same distribution;
    ``promote=False`` only saves the version (a candidate, as :mod:`bench.shadow` needs)."""
    import pandas as pd
    from sklearn import __version__ as sklearn_version
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    from forestream.training.quality import Kind
    from forestream.training.schema_build import build_reference, build_schema

    names = feature_names(features)
    x, y = make_classification(
        n_samples=train_rows + records,
        n_features=features,
        n_informative=min(10, features),
        n_redundant=min(5, max(features - 10, 0)),
        random_state=seed,
    )
    x = np.round(x, 6)  # what a CSV export carries; keeps records a realistic ~0.5 KB
    train = pd.DataFrame(x[:train_rows], columns=names)
    labels = y[:train_rows].astype(str)
    # one core per fit/predict: the worker is benchmarked as one process on a shared machine
    model = RandomForestClassifier(n_estimators=trees, n_jobs=1, random_state=seed)
    model.fit(train, labels)

    kinds: dict[str, Kind] = dict.fromkeys(names, "numeric")
    metadata = store.save(
        MODEL_NAME,
        model,
        ModelMetadata(
            name=MODEL_NAME,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            target="label",
            classes=[str(c) for c in model.classes_],
            feature_schema=build_schema(train, kinds),  # what the trainer records
            reference=build_reference(train, kinds),
            metrics={},
            data_sha256="synthetic",
            data_rows=train_rows,
            sklearn_version=sklearn_version,
            params={"n_estimators": trees, "features": features, "seed": seed},
        ),
        {},
        signer=bench_signer(),
    )
    if promote:
        store.promote(MODEL_NAME, metadata.version)
    values = [
        json.dumps(dict(zip(names, row, strict=True)), separators=(",", ":")).encode()
        for row in x[train_rows:].tolist()
    ]
    return Workload(names, values, model, metadata)


def announce_promotion(bootstrap: str, models_topic: str, metadata: ModelMetadata) -> None:
    """Publish the ``promoted`` event workers follow, through the trainer's own publisher."""
    from forestream.training.publish import model_event, publish_event

    serving = ServingRef(
        version=metadata.version, sha256=metadata.artifact_sha256, signature=metadata.signature
    )
    publish_event(bootstrap, models_topic, model_event("promoted", metadata, serving))
