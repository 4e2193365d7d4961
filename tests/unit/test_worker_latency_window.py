"""The latency window behind the p50/p99 of a worker's monitoring report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forestream.worker.batch import ScoredBatch
from forestream.worker.monitoring import LatencyWindow


def _batch(event_times_ms: list[int], scored_at_ms: int) -> ScoredBatch:
    n = len(event_times_ms)
    return ScoredBatch(
        model_version="v1",
        classes=["a"],
        frame=pd.DataFrame(index=range(n)),
        keys=[None] * n,
        predictions=np.array(["a"] * n, dtype=object),
        probabilities=np.ones((n, 1)),
        event_times_ms=np.array(event_times_ms, dtype=np.int64),
        scored_at_ms=scored_at_ms,
        reject_codes=[],
        records_in=n,
    )


def test_no_records_no_percentiles() -> None:
    window = LatencyWindow(window=10)
    window.on_batch(_batch([], 1_000))
    assert window.percentiles() == (None, None)


def test_percentiles_are_scored_at_minus_event_time() -> None:
    window = LatencyWindow(window=1000)
    window.on_batch(_batch(list(range(1000, 1100)), 1_100))  # latencies 100 .. 1
    p50, p99 = window.percentiles()
    assert p50 == pytest.approx(np.percentile(np.arange(1, 101), 50))
    assert p99 == pytest.approx(np.percentile(np.arange(1, 101), 99))


def test_only_the_most_recent_window_counts() -> None:
    window = LatencyWindow(window=50)
    window.on_batch(_batch([0] * 40, 10_000))  # old, slow: 10 s
    for _ in range(3):
        window.on_batch(_batch([0] * 20, 5))  # recent, fast: 5 ms
    assert window.percentiles() == (5.0, 5.0)
