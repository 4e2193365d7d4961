"""Model following without a broker: which promotion is wanted, and a bad model never goes live."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
from structlog.testing import capture_logs

from forestream.wire.messages import ModelEvent, ServingRef
from forestream.wire.schema import FeatureSchema
from forestream.worker.decoding import decode_batch
from forestream.worker.models import ModelFollower, reference_row, warm_up
from tests.worker_support import fit_pipeline, make_frame, schema_for


@dataclass
class Metadata:
    classes: list[str]
    feature_schema: FeatureSchema
    reference: Any = None


@cache
def trained() -> tuple[Any, Metadata]:
    frame = make_frame(200, seed=4)
    pipeline = fit_pipeline(frame)
    return pipeline, Metadata([str(c) for c in pipeline.classes_], schema_for(frame))


def event(version: str, kind: str = "promoted", name: str = "m") -> bytes:
    return (
        ModelEvent(
            kind=kind,  # type: ignore[arg-type]
            name=name,
            version=version,
            sha256=f"sha-{version}",
            created_at="2026-01-01T00:00:00Z",
            serving=ServingRef(version=version, sha256=f"sha-{version}"),
            at=0,
        )
        .model_dump_json()
        .encode()
    )


class Loader:
    """Serves the tiny pipeline for good versions; 'bad' ones load a model that cannot score."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, ref: ServingRef) -> tuple[Any, Any]:
        self.calls.append(ref.version)
        pipeline, metadata = trained()
        if ref.version.startswith("bad"):
            return object(), metadata  # no predict_proba: the warm-up must catch it
        return pipeline, metadata


def test_reference_row_passes_its_own_schema() -> None:
    _, metadata = trained()
    decoded = decode_batch([reference_row(metadata.feature_schema)], metadata.feature_schema)
    assert decoded.rejects == []


def test_follows_newest_promotion_and_keeps_old_model_when_new_one_fails() -> None:
    loader = Loader()
    follower = ModelFollower("unused:9092", "models", "m", loader)
    assert follower.current() is None

    follower._on_record(b"other-model", event("x1", name="other-model"))
    follower._on_record(b"m", b"not json")
    assert not follower._needs_load()

    follower._on_record(b"m", event("v1"))
    assert follower._needs_load()
    with capture_logs() as logs:
        assert follower._load_wanted()
    active = follower.current()
    assert active is not None and active.version == "v1"
    assert active.engine == "compiled"  # the forest passed the parity gate at load
    (in_use,) = [e for e in logs if e["event"] == "model_in_use"]
    assert in_use["engine"] == "compiled"
    assert not follower._needs_load()

    follower._on_record(b"m", event("bad2"))
    assert follower._needs_load()
    assert not follower._load_wanted()
    assert follower.current() is active  # still serving v1
    assert follower.wait(timeout_s=0) is active

    follower._on_record(b"m", event("v3", kind="rolled_back"))
    assert follower._load_wanted()
    assert follower.current() is not None and follower.current().version == "v3"  # type: ignore[union-attr]
    assert loader.calls == ["v1", "bad2", "v3"]


def test_a_follower_told_to_keep_sklearn_never_tries_the_compiled_engine() -> None:
    """``FORESTREAM_FOREST_ENGINE=sklearn``: the forest stays on sklearn's trees, no fallback
    warning (nothing failed), and ``model_in_use`` says which engine serves."""
    pipeline = fit_pipeline(make_frame(150, seed=21))  # its own object: engines are per model
    _, metadata = trained()
    follower = ModelFollower(
        "unused:9092", "models", "m", lambda ref: (pipeline, metadata), compiled=False
    )
    follower._on_record(b"m", event("v1"))
    with capture_logs() as logs:
        assert follower._load_wanted()
    active = follower.current()
    assert active is not None and active.engine == "sklearn"
    events = [e["event"] for e in logs]
    assert "model_engine_fallback" not in events
    (in_use,) = [e for e in logs if e["event"] == "model_in_use"]
    assert in_use["engine"] == "sklearn"


def test_warm_up_refuses_metadata_that_does_not_match_the_pipeline() -> None:
    pipeline, metadata = trained()
    warm_up(pipeline, metadata)  # the matching pair goes live

    reordered = Metadata(list(reversed(metadata.classes)), metadata.feature_schema)
    with pytest.raises(ValueError, match="classes"):
        warm_up(pipeline, reordered)

    fewer = FeatureSchema(features=metadata.feature_schema.features[:-1])
    with pytest.raises(ValueError, match="features"):
        warm_up(pipeline, Metadata(metadata.classes, fewer))


def test_load_failures_are_reported_with_a_stable_reason() -> None:
    reasons: list[str] = []
    follower = ModelFollower("unused:9092", "models", "m", Loader(), on_load_failure=reasons.append)
    follower._on_record(b"m", event("bad1"))
    assert not follower._load_wanted()
    assert not follower._load_wanted()
    assert reasons == ["ScoringError", "ScoringError"]  # the warm-up caught it
    assert follower.current() is None


@pytest.mark.parametrize("cached", [False, True])
def test_the_loader_refuses_another_sklearn_minor_in_one_line(tmp_path: Any, cached: bool) -> None:
    """Store or cache: the recorded scikit-learn major.minor must be ours, before unpickling."""
    from forestream.errors import VersionMismatch
    from forestream.registry.local import LocalModelStore
    from forestream.registry.signing import installed_sklearn_version
    from forestream.worker.models import store_loader
    from tests.signing_support import session_signer, session_trust
    from tests.worker_support import save_model

    _, saved = save_model(tmp_path / "store", "m", make_frame(120), trees=2)
    ours = installed_sklearn_version()
    major, minor = ours.split(".")[:2]
    recorded = f"{major}.{int(minor) - 1 if int(minor) else int(minor) + 1}.3"
    meta_path = tmp_path / "store" / "m" / saved.version / "metadata.json"
    older = saved.model_copy(update={"sklearn_version": recorded})  # signed as the trainer would
    older = older.model_copy(
        update={"signature": session_signer().sign(older, saved.artifact_sha256)}
    )
    meta_path.write_text(older.model_dump_json())
    ref = ServingRef(version=saved.version, sha256=saved.artifact_sha256)
    cache_dir = tmp_path / "cache" if cached else None
    store = LocalModelStore(tmp_path / "store")
    if cached:  # put it in the cache first, as an older worker build would have
        store_loader(store, "m", cache_dir, trust=session_trust(allow_version_mismatch=True))(ref)
    with pytest.raises(VersionMismatch) as refused:
        store_loader(store, "m", cache_dir, trust=session_trust())(ref)
    message = str(refused.value)
    assert f"scikit-learn {recorded}, this process has {ours}" in message and "\n" not in message
    pipeline, meta = store_loader(
        store, "m", cache_dir, trust=session_trust(allow_version_mismatch=True)
    )(ref)
    assert meta.sklearn_version == recorded and callable(pipeline.predict_proba)
