"""Fleet drift from workers' window counts: real DriftMonitors feed FleetDrift (no broker)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forestream.fleet.drift import FleetDrift, expected_bins, store_metadata
from forestream.registry.metadata import ModelMetadata
from forestream.wire.messages import DriftReport, EvaluationCounts, WindowCounts
from forestream.wire.schema import (
    CategoricalFeature,
    CategoricalReference,
    FeatureSchema,
    NumericFeature,
    NumericReference,
    ReferenceStats,
)
from forestream.worker.batch import ScoredBatch
from forestream.worker.drift import DriftMonitor, build_drift_report
from forestream.worker.drift_windows import WindowCounter
from tests.unit.test_drift import make_stream, reference_from

CLASSES = ["a", "b", "c"]
HOLDOUT = {"a": 0.5, "b": 0.3, "c": 0.2}
MINUTE = 60_000
T0 = 1_700_000_000_000 // MINUTE * MINUTE


def metadata(reference: ReferenceStats, shares: dict[str, float] | None = HOLDOUT) -> ModelMetadata:
    return ModelMetadata(
        name="m",
        version="v1",
        created_at="2026-01-01T00:00:00+00:00",
        target="y",
        classes=CLASSES,
        feature_schema=FeatureSchema(
            features=[
                NumericFeature(name="x1"),
                NumericFeature(name="x2"),
                CategoricalFeature(name="color", categories=["red", "green", "blue"]),
            ]
        ),
        reference=reference,
        metrics={},
        data_sha256="0" * 64,
        data_rows=1,
        sklearn_version="1.0",
        holdout_prediction_shares=shares,
    )


REFERENCE = reference_from(make_stream(20_000, seed=1))
META = metadata(REFERENCE)


def predictions(n: int, seed: int, shares: dict[str, float] = HOLDOUT) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(list(shares), n, p=list(shares.values())).astype(object)


def scored(frame: pd.DataFrame, at_ms: int, predicted: np.ndarray, version: str) -> ScoredBatch:
    n = len(frame)
    return ScoredBatch(
        model_version=version,
        classes=CLASSES,
        frame=frame,
        keys=[None] * n,
        predictions=predicted,
        probabilities=np.ones((n, len(CLASSES))) / len(CLASSES),
        event_times_ms=np.zeros(n, dtype=np.int64),
        scored_at_ms=at_ms,
        reject_codes=[],
        records_in=n,
    )


def worker_reports(
    worker: str,
    frame: pd.DataFrame,
    predicted: np.ndarray,
    version: str = "v1",
    batch: int = 500,
    step_ms: int = 7_000,
) -> list[DriftReport]:
    """A real DriftMonitor with a WindowCounter scoring ``frame`` in batches, one report after
    each batch (cumulative within its windows, as the worker publishes them)."""
    monitor = DriftMonitor(REFERENCE, window=10_000, windows=WindowCounter(60.0, keep=5))
    reports = []
    for i, start in enumerate(range(0, len(frame), batch)):
        at = T0 + i * step_ms
        part = frame.iloc[start : start + batch]
        monitor.on_batch(scored(part, at, predicted[start : start + batch], version))
        reports.append(
            build_drift_report(
                model_name="m", worker_id=worker, model_version=version, drift=monitor, at_ms=at
            )
        )
    return reports


def fleet(reports: list[DriftReport], meta: ModelMetadata | None = META) -> FleetDrift:
    drift = FleetDrift(lambda _v: meta, threshold=0.2, min_records=1_000, keep_windows=None)
    for report in reports:
        drift.add(report)
    return drift


def three_workers(shift_worker_2: float = 0.0) -> list[DriftReport]:
    out = []
    for w in range(3):
        frame = make_stream(4_000, seed=10 + w, shift_x1_std=shift_worker_2 if w == 2 else 0.0)
        out += worker_reports(f"w{w}", frame, predictions(len(frame), seed=20 + w))
    return out


def test_the_shifted_feature_of_one_worker_in_three_is_flagged_alone() -> None:
    result = fleet(three_workers(shift_worker_2=4.0)).drift("v1")
    assert result.records == 12_000 and result.workers == 3
    assert result.drifting_features == ["x1"], result.features
    others = max(d.psi for name, d in result.features.items() if name != "x1")
    assert result.features["x1"].psi > 10 * others


def test_no_shifted_worker_no_flag() -> None:
    result = fleet(three_workers()).drift("v1")
    assert result.records == 12_000
    assert result.drifting_features == [], result.features
    assert result.prediction is not None and not result.prediction.drifting


def test_the_fleet_psi_is_that_of_the_summed_counts() -> None:
    """A shift on one worker of three is diluted by its share of the records, no more: the
    fleet PSI equals one DriftMonitor's PSI over all three streams."""
    frames = [
        make_stream(4_000, seed=10 + w, shift_x1_std=4.0 if w == 2 else 0.0) for w in (0, 1, 2)
    ]
    whole = DriftMonitor(REFERENCE, window=12_000)
    whole.add_frame(pd.concat(frames, ignore_index=True))
    result = fleet(three_workers(shift_worker_2=4.0)).drift("v1")
    for name, d in whole.snapshot().items():
        assert result.features[name].psi == pytest.approx(d.psi, rel=1e-12)
        assert result.features[name].missing_share == pytest.approx(d.missing_share)
        assert result.features[name].unseen_share == pytest.approx(d.unseen_share)


def test_predicted_shares_moving_away_from_the_holdout_flag_prediction_drift() -> None:
    moved = {"a": 0.1, "b": 0.2, "c": 0.7}
    frame = make_stream(4_000, seed=3)
    drifted = fleet(worker_reports("w0", frame, predictions(4_000, 5, moved))).drift("v1")
    assert drifted.prediction is not None and drifted.prediction.drifting
    assert drifted.prediction.shares["c"] == pytest.approx(0.7, abs=0.03)
    assert drifted.prediction.expected == HOLDOUT
    steady = fleet(worker_reports("w0", frame, predictions(4_000, 5))).drift("v1")
    assert steady.prediction is not None and not steady.prediction.drifting
    assert steady.prediction.psi < 0.01


def test_a_version_without_holdout_shares_has_no_prediction_drift() -> None:
    reports = worker_reports("w0", make_stream(2_000, seed=3), predictions(2_000, 5))
    result = fleet(reports, metadata(REFERENCE, shares=None)).drift("v1")
    assert result.prediction is None and set(result.features) == {"x1", "x2", "color"}


def test_an_unknown_version_counts_records_but_judges_nothing() -> None:
    reports = worker_reports("w0", make_stream(2_000, seed=3), predictions(2_000, 5))
    result = fleet(reports, meta=None).drift("v1")
    assert result.records == 2_000 and not result.reference_known
    assert result.features == {} and result.prediction is None


def test_window_counts_add_up_to_the_records_scored_in_every_feature() -> None:
    frame = make_stream(3_000, seed=4)
    last = worker_reports("w0", frame, predictions(3_000, 6), step_ms=20_000)[-1]
    assert last.fleet_window_s == 60.0
    assert len(last.windows) == 2  # 6 batches 20 s apart: two minutes
    assert sum(w.records for w in last.windows) == 3_000
    for w in last.windows:
        assert sum(w.predicted.values()) == w.records
        for name, counts in w.features.items():
            assert sum(counts) == w.records, name
            assert len(counts) == len(expected_bins(name, REFERENCE.features[name])) + 1


def test_a_report_carries_only_the_newest_windows() -> None:
    frame = make_stream(4_000, seed=4)
    reports = worker_reports("w0", frame, predictions(4_000, 6), batch=250, step_ms=MINUTE)
    assert [w.window_start for w in reports[-1].windows] == [T0 + i * MINUTE for i in range(11, 16)]


def test_reports_read_twice_or_shuffled_give_the_same_result() -> None:
    reports = three_workers(shift_worker_2=4.0)
    once = fleet(reports).snapshot()
    assert fleet(reports + reports).snapshot() == once
    assert fleet(list(reversed(reports))).snapshot() == once
    newest = [r for i, r in enumerate(reports) if i % 8 == 7]  # each worker's last of 8
    assert fleet(newest).snapshot() == once  # the newest reports alone hold every window


@settings(max_examples=30, deadline=None)
@given(st.permutations(list(range(24))), st.lists(st.integers(0, 23), max_size=10))
def test_any_order_with_repeats_gives_the_same_result(order: list[int], again: list[int]) -> None:
    reports = _SMALL_REPORTS
    expected = fleet(reports).snapshot()
    shuffled = [reports[i] for i in order] + [reports[i] for i in again]
    assert fleet(shuffled).snapshot() == expected


def _small_reports() -> list[DriftReport]:
    out = []
    for w in range(3):
        frame = make_stream(1_600, seed=30 + w, shift_x1_std=1.0 if w else 0.0)
        out += worker_reports(f"w{w}", frame, predictions(1_600, 40 + w), batch=200, step_ms=25_000)
    return out


_SMALL_REPORTS = _small_reports()


def test_monitoring_values_of_other_kinds_and_garbage_are_skipped() -> None:
    reports = worker_reports("w0", make_stream(1_000, seed=3), predictions(1_000, 5))
    evaluation = EvaluationCounts(
        evaluator_id="e", model_version="v1", window_start=T0, window_s=60, labelled=3, at=T0
    )
    drift = FleetDrift(lambda _v: META)
    taken = drift.add_all(
        [
            evaluation.model_dump_json().encode(),
            b"not json",
            b"[1, 2]",
            json.dumps({"worker_id": "x"}).encode(),
            *(r.model_dump_json().encode() for r in reports),
        ]
    )
    assert taken == len(reports)
    assert drift.drift("v1").records == 1_000


def test_only_the_newest_windows_per_version_are_kept() -> None:
    frame = make_stream(4_000, seed=4)
    reports = worker_reports("w0", frame, predictions(4_000, 6), batch=250, step_ms=MINUTE)
    drift = FleetDrift(lambda _v: META, keep_windows=3)
    for report in reports:
        drift.add(report)
    result = drift.drift("v1")
    assert result.windows == 3 and result.records == 750


def test_counts_not_fitting_the_reference_are_skipped_and_counted() -> None:
    bad = WindowCounts(
        model_version="v1", window_start=T0, records=10, features={"x1": [10]}, predicted={"a": 10}
    )
    report = DriftReport(
        model_name="m", model_version="v1", worker_id="w9", window=0, window_records=0, at=T0,
        windows=[bad],
    )  # fmt: skip
    result = fleet([report]).drift("v1")
    assert result.mismatched == 1 and result.features["x1"].psi == 0.0


def test_versions_are_judged_against_their_own_metadata() -> None:
    frame = make_stream(2_000, seed=3)
    reports = worker_reports("w0", frame, predictions(2_000, 5), version="v1")
    reports += worker_reports("w1", frame, predictions(2_000, 5), version="v2")
    asked: list[str] = []

    def meta_for(version: str) -> ModelMetadata:
        asked.append(version)
        return META

    drift = FleetDrift(meta_for)
    for report in reports:
        drift.add(report)
    assert set(drift.snapshot()) == {"v1", "v2"}
    drift.snapshot()
    assert sorted(asked) == ["v1", "v2"]  # metadata read once per version


def test_expected_bins_put_unseen_after_the_categories() -> None:
    ref = CategoricalReference(shares={"red": 0.5, "green": 0.5})
    assert expected_bins("color", ref).tolist() == [0.5, 0.5, 0.0]
    numeric = NumericReference(edges=[0.0], shares=[0.4, 0.6], mean=0, std=1, missing_share=0)
    assert expected_bins("x", numeric).tolist() == [0.4, 0.6]
    with pytest.raises(ValueError, match="edges"):
        expected_bins(
            "x", NumericReference(edges=[0.0], shares=[1.0], mean=0, std=1, missing_share=0)
        )
    assert math.isclose(sum(expected_bins("x", numeric)), 1.0)


def test_store_metadata_reads_a_version_and_gives_none_for_an_unknown_one(tmp_path: Path) -> None:
    from forestream.registry.local import LocalModelStore

    store = LocalModelStore(tmp_path)
    metadata_for = store_metadata(store, "m")
    assert metadata_for("v1") is None  # nothing saved: asked again later, no error


def test_a_promotion_mid_window_counts_each_version_in_its_own_reference_bins() -> None:
    """v2 has another reference (a category fewer, coarser numeric bins): its window counts
    have its layout, an unseen category lands in its unseen slot, and each version is judged
    against its own metadata."""
    frame = make_stream(1_000, seed=8)
    ref2 = reference_from(frame[frame["color"] != "blue"], bins=4)
    references = {"v1": REFERENCE, "v2": ref2}
    monitor = DriftMonitor(
        None, window=2_000, reference_for=references.get, windows=WindowCounter()
    )
    monitor.on_batch(scored(frame.iloc[:500], T0, predictions(500, 1), "v1"))
    monitor.on_batch(scored(frame.iloc[500:], T0 + 1_000, predictions(500, 2), "v2"))
    report = build_drift_report(
        model_name="m", worker_id="w0", model_version="v2", drift=monitor, at_ms=T0 + 2_000
    )
    by_version = {w.model_version: w for w in report.windows}
    assert [w.window_start for w in report.windows] == [T0, T0]
    assert len(by_version["v1"].features["x1"]) == len(REFERENCE.features["x1"].edges) + 2
    assert len(by_version["v2"].features["x1"]) == len(ref2.features["x1"].edges) + 2
    blue = int((frame.iloc[500:]["color"] == "blue").sum())
    assert by_version["v2"].features["color"][-2] == blue > 0  # unseen, then missing
    missing = int(frame.iloc[500:]["x2"].isna().sum())
    assert by_version["v2"].features["x2"][-1] == missing > 0
    metas = {"v1": META, "v2": metadata(ref2)}
    merged = FleetDrift(metas.get, min_records=1)
    merged.add(report)
    result = merged.snapshot()
    assert result["v1"].records == result["v2"].records == 500
    assert result["v1"].mismatched == result["v2"].mismatched == 0
    assert result["v2"].features["color"].unseen_share == pytest.approx(blue / 500)
    assert result["v2"].drifting_features == ["color"]
