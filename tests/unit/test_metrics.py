"""Worker metrics: what a scrape shows after batches, lag updates, reloads and observer errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from forestream.edge.interface import lag_by_partition
from forestream.wire.headers import ReasonCode
from forestream.worker.batch import BatchObserver, ScoredBatch
from forestream.worker.metrics import (
    LATENCY_SECONDS_BUCKETS,
    BatchHistogram,
    MetricsObserver,
    WorkerMetrics,
)


def scored_batch(
    valid: int,
    rejects: list[str] | None = None,
    event_times_ms: list[int] | None = None,
    scored_at_ms: int = 10_000,
    predict_seconds: float = 0.02,
    version: str = "v1",
) -> ScoredBatch:
    rejects = rejects or []
    times = event_times_ms if event_times_ms is not None else [scored_at_ms - 500] * valid
    return ScoredBatch(
        model_version=version,
        classes=["a", "b"],
        frame=pd.DataFrame({"x": np.arange(valid, dtype=np.float64)}),
        keys=[f"k{i}".encode() for i in range(valid)],
        predictions=np.array(["a"] * valid, dtype=object),
        probabilities=np.full((valid, 2), 0.5),
        event_times_ms=np.asarray(times, dtype=np.int64),
        scored_at_ms=scored_at_ms,
        reject_codes=rejects,
        records_in=valid + len(rejects),
        predict_seconds=predict_seconds,
    )


def value(m: WorkerMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_batch_updates_counters_and_histograms() -> None:
    m = WorkerMetrics()
    m.observe_batch(scored_batch(3, ["not_json", "not_json", "missing_feature"]))
    m.observe_batch(scored_batch(5))

    assert value(m, "forestream_records_consumed_total") == 11
    assert value(m, "forestream_records_predicted_total") == 8
    assert value(m, "forestream_records_dead_lettered_total", reason="not_json") == 2
    assert value(m, "forestream_records_dead_lettered_total", reason="missing_feature") == 1
    assert value(m, "forestream_batches_total") == 2
    assert value(m, "forestream_batch_size_records_count") == 2
    assert value(m, "forestream_batch_size_records_sum") == 11
    assert value(m, "forestream_predict_seconds_count") == 2
    assert value(m, "forestream_predict_seconds_sum") == pytest.approx(0.04)
    assert value(m, "forestream_end_to_end_latency_seconds_count") == 8
    assert value(m, "forestream_end_to_end_latency_seconds_sum") == pytest.approx(4.0)
    assert value(m, "forestream_end_to_end_latency_seconds_bucket", le="0.25") == 0
    assert value(m, "forestream_end_to_end_latency_seconds_bucket", le="0.5") == 8


def test_every_reason_code_is_exposed_at_zero_before_any_dead_letter() -> None:
    m = WorkerMetrics()
    for reason in ReasonCode.ALL:
        assert value(m, "forestream_records_dead_lettered_total", reason=reason) == 0


def test_latency_from_a_clock_behind_the_producer_counts_as_zero() -> None:
    m = WorkerMetrics()
    m.observe_batch(scored_batch(2, event_times_ms=[12_000, 9_000], scored_at_ms=10_000))
    assert value(m, "forestream_end_to_end_latency_seconds_bucket", le="0.005") == 1
    assert value(m, "forestream_end_to_end_latency_seconds_sum") == pytest.approx(1.0)


def test_reject_codes_without_a_scored_batch_count_as_consumed_and_dead_lettered() -> None:
    m = WorkerMetrics()
    observer = MetricsObserver(m)
    observer.record_reject_codes(["scoring_failed"] * 4)
    observer.record_reject_codes([])
    assert value(m, "forestream_records_consumed_total") == 4
    assert value(m, "forestream_records_dead_lettered_total", reason="scoring_failed") == 4
    assert value(m, "forestream_records_predicted_total") == 0


def test_observer_is_a_batch_observer_feeding_its_metrics() -> None:
    m = WorkerMetrics()
    observer: BatchObserver = MetricsObserver(m)
    observer.on_batch(scored_batch(7))
    assert value(m, "forestream_records_predicted_total") == 7


def test_lag_replaces_partitions_and_drops_revoked_ones() -> None:
    m = WorkerMetrics()
    m.set_lag({0: 10, 1: 3})
    m.set_lag({1: 0, 2: 7})
    assert value(m, "forestream_consumer_lag_records", partition="0") is None
    assert value(m, "forestream_consumer_lag_records", partition="1") == 0
    assert value(m, "forestream_consumer_lag_records", partition="2") == 7
    m.set_lag({})
    assert value(m, "forestream_consumer_lag_records", partition="2") is None


def test_lag_by_partition_skips_unknown_positions_and_never_goes_negative() -> None:
    assert lag_by_partition({0: 100, 1: 50, 2: 9}, {0: 40, 1: 60}) == {0: 60, 1: 0}


def test_model_version_series_follows_the_served_version() -> None:
    m = WorkerMetrics()
    m.set_model_version("v1")
    assert value(m, "forestream_model_version_info", version="v1") == 1
    m.record_reload("v2")
    assert value(m, "forestream_model_version_info", version="v1") is None
    assert value(m, "forestream_model_version_info", version="v2") == 1
    assert value(m, "forestream_model_reloads_total") == 1
    m.set_model_version(None)
    assert value(m, "forestream_model_version_info", version="v2") is None


def test_the_engine_series_follows_the_last_scored_batch() -> None:
    import dataclasses

    m = WorkerMetrics()
    m.observe_batch(scored_batch(0, ["not_json"]))  # nothing scored: no engine to show
    assert value(m, "forestream_model_engine_info", version="v1", engine="sklearn") is None
    m.observe_batch(dataclasses.replace(scored_batch(2), engine="compiled"))
    assert value(m, "forestream_model_engine_info", version="v1", engine="compiled") == 1
    m.observe_batch(scored_batch(2))  # the version fell back to sklearn's path
    assert value(m, "forestream_model_engine_info", version="v1", engine="compiled") is None
    assert value(m, "forestream_model_engine_info", version="v1", engine="sklearn") == 1
    m.observe_batch(dataclasses.replace(scored_batch(1, version="v2"), engine="compiled"))
    assert value(m, "forestream_model_engine_info", version="v1", engine="sklearn") is None
    assert value(m, "forestream_model_engine_info", version="v2", engine="compiled") == 1


def test_reload_failures_and_observer_errors_are_counted_by_label() -> None:
    m = WorkerMetrics()
    m.record_reload_failure("sha256_mismatch")
    m.record_reload_failure("sha256_mismatch")
    m.record_observer_error("DriftObserver")
    assert value(m, "forestream_model_reload_failures_total", reason="sha256_mismatch") == 2
    assert value(m, "forestream_observer_errors_total", observer="DriftObserver") == 1


def test_two_workers_in_one_process_keep_separate_registries() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    first.observe_batch(scored_batch(2))
    assert value(first, "forestream_records_predicted_total") == 2
    assert value(second, "forestream_records_predicted_total") == 0


def test_rendered_text_parses_as_prometheus_exposition() -> None:
    m = WorkerMetrics()
    m.observe_batch(scored_batch(3, ["too_large"]))
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    latency = families["forestream_end_to_end_latency_seconds"]
    assert latency.type == "histogram"
    count = next(s for s in latency.samples if s.name.endswith("_count"))
    assert count.value == 3


@given(
    st.lists(
        st.one_of(
            st.floats(min_value=-10, max_value=1e5, allow_nan=False),
            st.sampled_from([float(b) for b in LATENCY_SECONDS_BUCKETS]),  # exact edges: le
        ),
        max_size=200,
    )
)
def test_bulk_histogram_matches_prometheus_observe_one_by_one(values: list[float]) -> None:
    reference_registry, bulk_registry = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h", "h", registry=reference_registry, buckets=LATENCY_SECONDS_BUCKETS)
    for v in values:
        reference.observe(v)
    bulk = BatchHistogram("h", "h", LATENCY_SECONDS_BUCKETS, registry=bulk_registry)
    bulk.observe_many(np.asarray(values))

    for bound in [*LATENCY_SECONDS_BUCKETS, math.inf]:
        le = "+Inf" if bound == math.inf else str(float(bound))
        assert bulk_registry.get_sample_value("h_bucket", {"le": le}) == (
            reference_registry.get_sample_value("h_bucket", {"le": le})
        )
    assert bulk_registry.get_sample_value("h_count") == len(values)
    assert bulk_registry.get_sample_value("h_sum") == pytest.approx(
        reference_registry.get_sample_value("h_sum"), rel=1e-9, abs=1e-6
    )


def test_bulk_histogram_skips_nan_and_rejects_unsorted_buckets() -> None:
    registry = CollectorRegistry()
    bulk = BatchHistogram("h", "h", [1.0, 2.0], registry=registry)
    bulk.observe_many([0.5, float("nan"), 3.0])
    assert registry.get_sample_value("h_count") == 2
    assert registry.get_sample_value("h_bucket", {"le": "1.0"}) == 1
    with pytest.raises(ValueError):
        BatchHistogram("g", "g", [2.0, 1.0])
