"""Replay serves a model only after the live worker's checks: verified, then warmed up."""

from __future__ import annotations

from pathlib import Path

import pytest

from forestream.errors import UserError
from forestream.registry.store import ModelMetadata, ModelStore
from forestream.wire.schema import ReferenceStats
from forestream.worker.replay import ReplaySettings, load_model
from tests.worker_support import fit_pipeline, make_frame, schema_for


def _save(store: ModelStore, classes: list[str]) -> str:
    frame = make_frame(150, seed=9)
    pipeline = fit_pipeline(frame, trees=3)
    metadata = ModelMetadata(
        name="m",
        created_at="2026-11-25T00:00:00+00:00",
        target="target",
        classes=classes,
        feature_schema=schema_for(frame),
        reference=ReferenceStats(features={}),
        metrics={},
        data_sha256="0" * 64,
        data_rows=150,
        sklearn_version="1.x",
    )
    return store.save("m", pipeline, metadata, {}).version


def test_replay_loads_a_servable_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    classes = [str(c) for c in fit_pipeline(make_frame(150, seed=9), trees=3).classes_]
    version = _save(store, classes)
    model = load_model(ReplaySettings(model_store=tmp_path, model_name="m"), version)
    assert (model.version, model.classes) == (version, classes)


def test_replay_refuses_a_model_whose_class_order_would_mislabel(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    classes = [str(c) for c in fit_pipeline(make_frame(150, seed=9), trees=3).classes_]
    version = _save(store, list(reversed(classes)))
    with pytest.raises(UserError, match=r"m v1 cannot be served: .*differ from the metadata"):
        load_model(ReplaySettings(model_store=tmp_path, model_name="m"), version)
