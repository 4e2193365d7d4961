"""Replay serves a model only after the live worker's checks: verified, then warmed up."""

from __future__ import annotations

from pathlib import Path

import pytest

from forestream.errors import UserError
from forestream.registry.local import LocalModelStore
from forestream.registry.metadata import ModelMetadata
from forestream.registry.signing import installed_sklearn_version
from forestream.wire.schema import ReferenceStats
from forestream.worker.replay import ReplaySettings, load_model
from tests.signing_support import session_signer
from tests.worker_support import fit_pipeline, make_frame, schema_for


def _save(
    store: LocalModelStore,
    classes: list[str],
    *,
    signed: bool = True,
    sklearn_version: str | None = None,
) -> str:
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
        sklearn_version=sklearn_version or installed_sklearn_version(),
    )
    return store.save(
        "m", pipeline, metadata, {}, signer=session_signer() if signed else None
    ).version


def test_replay_loads_a_servable_model(tmp_path: Path) -> None:
    store = LocalModelStore(tmp_path)
    classes = [str(c) for c in fit_pipeline(make_frame(150, seed=9), trees=3).classes_]
    version = _save(store, classes)
    model = load_model(ReplaySettings(model_store=tmp_path, model_name="m"), version)
    assert (model.version, model.classes) == (version, classes)


def test_replay_refuses_a_model_whose_class_order_would_mislabel(tmp_path: Path) -> None:
    store = LocalModelStore(tmp_path)
    classes = [str(c) for c in fit_pipeline(make_frame(150, seed=9), trees=3).classes_]
    version = _save(store, list(reversed(classes)))
    with pytest.raises(UserError, match=r"m v1 cannot be served: .*differ from the metadata"):
        load_model(ReplaySettings(model_store=tmp_path, model_name="m"), version)


def test_replay_verifies_signatures_and_the_sklearn_version_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay's loader is the registry's: the session's FORESTREAM_VERIFY_KEY_FILE applies."""
    store = LocalModelStore(tmp_path)
    classes = [str(c) for c in fit_pipeline(make_frame(150, seed=9), trees=3).classes_]
    settings = ReplaySettings(model_store=tmp_path, model_name="m")
    unsigned = _save(store, classes, signed=False)
    with pytest.raises(UserError, match="not signed"):
        load_model(settings, unsigned)
    old = _save(store, classes, sklearn_version="0.1.0")
    with pytest.raises(UserError, match=r"scikit-learn 0\.1\.0, this process has"):
        load_model(settings, old)
    monkeypatch.setenv("FORESTREAM_ALLOW_UNSIGNED", "true")
    monkeypatch.setenv("FORESTREAM_ALLOW_VERSION_MISMATCH", "true")
    settings = ReplaySettings(model_store=tmp_path, model_name="m")  # settings read env once
    assert load_model(settings, unsigned).version == unsigned
    assert load_model(settings, old).version == old


def test_replay_takes_the_trust_flags_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--allow-unsigned`` and ``--allow-version-mismatch`` reach the loader as flags, which
    override their env twins (both set to refuse here)."""
    from forestream.runtime.settings import load_settings

    monkeypatch.setenv("FORESTREAM_ALLOW_UNSIGNED", "false")
    monkeypatch.setenv("FORESTREAM_ALLOW_VERSION_MISMATCH", "false")
    store = LocalModelStore(tmp_path)
    classes = [str(c) for c in fit_pipeline(make_frame(150, seed=9), trees=3).classes_]
    unsigned = _save(store, classes, signed=False)
    old = _save(store, classes, sklearn_version="0.1.0")
    lenient = load_settings(
        ReplaySettings,
        model_store=tmp_path,
        model_name="m",
        allow_unsigned=True,
        allow_version_mismatch=True,
    )
    assert load_model(lenient, unsigned).version == unsigned
    assert load_model(lenient, old).version == old
