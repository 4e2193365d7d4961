"""Training end to end into a store (no broker): the penguins acceptance bar and what is saved."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from forestream.errors import UserError
from forestream.registry.local import LocalModelStore
from forestream.training.demo_data import PENGUINS_TARGET, write_penguins_csv
from forestream.training.fit import ForestParams
from forestream.training.train import TrainOutcome, TrainRequest, check_params, run_training
from tests.signing_support import session_signer


@pytest.fixture(scope="module")
def penguins(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[TrainOutcome, Path, LocalModelStore]:
    """One default (100 trees) penguins training shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("penguins")
    csv = write_penguins_csv(root / "penguins.csv")
    store = LocalModelStore(root / "store")
    outcome = run_training(
        TrainRequest(csv, PENGUINS_TARGET, "penguins", ForestParams(trees=100)),
        store,
        signer=session_signer(),
    )
    return outcome, csv, store


def test_penguins_reach_the_accuracy_bar_and_beat_the_baseline(penguins) -> None:
    outcome, _, _ = penguins
    metrics = outcome.metadata.metrics
    assert metrics["accuracy"] >= 0.95
    assert metrics["accuracy"] > metrics["baseline_accuracy"]
    assert metrics["macro_f1"] >= 0.9


def test_report_shows_missing_values_and_categoricals(penguins) -> None:
    outcome, _, _ = penguins
    columns = {c.name: c for c in outcome.report.column_quality}
    assert columns["sex"].kind == "categorical" and columns["sex"].missing_share > 0
    assert columns["island"].kind == "categorical"
    assert columns["bill_length_mm"].kind == "numeric"
    assert columns["bill_length_mm"].missing_share > 0
    assert set(outcome.report.class_counts) == {"Adelie", "Chinstrap", "Gentoo"}
    assert outcome.report.leakage == []


def test_metadata_and_report_are_stored_beside_the_verified_artifact(penguins) -> None:
    outcome, csv, store = penguins
    meta = outcome.metadata
    assert meta.version == "v1" and store.versions("penguins") == ["v1"]
    assert meta.data_sha256 == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert meta.data_rows == len(pd.read_csv(csv))
    assert meta.target == "species" and meta.classes == ["Adelie", "Chinstrap", "Gentoo"]
    assert meta.params["trees"] == 100
    schema = meta.feature_schema
    assert schema.feature("sex").missing_seen and schema.feature("island").kind == "categorical"
    assert set(meta.reference.features) == set(schema.names)
    saved = json.loads((store.version_dir("penguins", "v1") / "quality_report.json").read_text())
    assert saved == json.loads(json.dumps(outcome.report.to_dict()))
    pipeline, loaded = store.load_verified("penguins", "v1", expected_sha256=meta.artifact_sha256)
    assert loaded == meta
    assert [str(c) for c in pipeline.classes_] == meta.classes


def test_the_holdout_prediction_shares_are_the_confusion_matrix_columns(penguins) -> None:
    outcome, _, store = penguins
    meta = outcome.metadata
    matrix = meta.metrics["confusion_matrix"]
    predicted = [sum(row[i] for row in matrix["matrix"]) for i in range(len(matrix["labels"]))]
    assert meta.holdout_prediction_shares == pytest.approx(
        {c: n / sum(predicted) for c, n in zip(matrix["labels"], predicted, strict=True)}
    )
    assert list(meta.holdout_prediction_shares or {}) == meta.classes
    assert store.metadata("penguins", "v1").holdout_prediction_shares == (
        meta.holdout_prediction_shares
    )


def test_the_signer_signs_the_artifact(tmp_path: Path) -> None:
    from tests.signing_support import session_trust

    csv = write_penguins_csv(tmp_path / "p.csv")
    store = LocalModelStore(tmp_path / "store")
    request = TrainRequest(csv, "species", "signed", ForestParams(trees=10))
    meta = run_training(request, store, signer=session_signer()).metadata
    assert meta.signature is not None and meta.signing_key_id == session_signer().key_id
    store.load_verified("signed", meta.version, trust=session_trust())


def test_fatal_input_writes_nothing(tmp_path: Path) -> None:
    csv = write_penguins_csv(tmp_path / "p.csv")
    store_root = tmp_path / "store"
    for request in (
        TrainRequest(csv, "nope", "m"),
        TrainRequest(csv, "species", "m", ForestParams(test_size=1.5)),
        TrainRequest(csv, "species", "m", drop=("missing_column",)),
    ):
        with pytest.raises(UserError):
            run_training(request, LocalModelStore(store_root))
    assert not store_root.exists()


@pytest.mark.parametrize("seed", [-1, 2**32, 99_999_999_999])
def test_a_seed_numpy_cannot_take_is_a_user_error(seed: int) -> None:
    with pytest.raises(UserError, match=rf"--seed must be between 0 and 4294967295, got {seed}"):
        check_params(ForestParams(seed=seed))


def test_the_largest_seed_trains(tmp_path: Path) -> None:
    check_params(ForestParams(seed=2**32 - 1))
    csv = write_penguins_csv(tmp_path / "p.csv")
    request = TrainRequest(csv, "species", "m", ForestParams(trees=2, seed=2**32 - 1))
    assert run_training(request, LocalModelStore(tmp_path / "store")).metadata.version == "v1"


def test_name_and_store_are_checked_before_the_data_is_read_or_reported(tmp_path: Path) -> None:
    csv = write_penguins_csv(tmp_path / "p.csv")
    reports: list[object] = []
    with pytest.raises(UserError, match=re.escape("invalid model name '../evil'")):
        run_training(
            TrainRequest(csv, "species", "../evil"),
            LocalModelStore(tmp_path / "store"),
            on_report=reports.append,
        )
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(
        UserError, match=re.escape(f"model store {a_file}: {a_file} is not a directory")
    ):
        run_training(
            TrainRequest(csv, "species", "m"), LocalModelStore(a_file), on_report=reports.append
        )
    assert reports == []
    assert not (tmp_path / "store").exists()


def test_a_continuous_target_writes_nothing(tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    rows = [f"{i * 0.37 % 1:.6f},{i * 1.1:.3f}" for i in range(200)]
    csv.write_text("x,y\n" + "\n".join(rows) + "\n")
    with pytest.raises(UserError, match="target 'y' has 200 distinct values in 200 rows"):
        run_training(TrainRequest(csv, "y", "m"), LocalModelStore(tmp_path / "store"))
    assert not (tmp_path / "store").exists()
