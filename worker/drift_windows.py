"""One worker's counts per (model version, wall-clock window), for fleet-level drift.

The :class:`forestream.worker.drift.DriftMonitor` already bins every batch into one count
vector; :class:`WindowCounter` adds that vector (and the batch's predicted classes) to the
totals of the batch's version and window, so a report can carry counts the monitoring reader
sums across workers (:class:`forestream.fleet.drift.FleetDrift`). A sliding window of PSIs
cannot be summed across workers; counts in fixed, aligned windows can.

Windows are aligned on the epoch (``window_start`` = scoring time floored to ``window_s``), so
every worker's counts for the same minute share a key. Per window the counts are cumulative,
and only the newest ``keep`` windows are held and reported: a reader that misses a few reports
still gets every window's final counts from a later one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from forestream.wire.messages import WindowCounts

DEFAULT_WINDOW_S = 60.0
DEFAULT_KEEP = 5
"""Windows each report carries: with 60 s windows and 10 s reports, a window's final counts
are repeated in reports for four more minutes."""

Spans = tuple[tuple[str, int, int], ...]
"""Per feature: name, offset in the count vector, length (value bins + the missing slot)."""


@dataclass
class _Window:
    spans: Spans
    counts: np.ndarray
    records: int = 0
    predicted: dict[str, int] = field(default_factory=dict)


class WindowCounter:
    """Cumulative counts per (version, window start); see the module docstring."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, keep: int = DEFAULT_KEEP) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        if keep < 1:
            raise ValueError("keep must be at least 1 window")
        self.window_s = window_s
        self.window_ms = max(round(window_s * 1000), 1)
        self.keep = keep
        self._windows: dict[tuple[str, int], _Window] = {}

    def add(
        self,
        version: str,
        scored_at_ms: int,
        records: int,
        counts: np.ndarray,
        spans: Spans,
        predictions: np.ndarray,
    ) -> None:
        """One batch: its count vector in ``spans``' layout and its predicted labels."""
        start = int(scored_at_ms) // self.window_ms * self.window_ms
        key = (version, start)
        window = self._windows.get(key)
        if window is None or window.spans != spans:
            # a version's reference (so its layout) is fixed; a new layout starts the key over
            window = _Window(spans, np.zeros(len(counts), dtype=np.int64))
            self._windows[key] = window
            self._evict()
        window.counts += counts
        window.records += records
        if len(predictions):
            # hash-based: a third of np.unique's cost on an object array (sorts the strings)
            codes, labels = pd.factorize(predictions)
            tally = np.bincount(codes[codes >= 0], minlength=len(labels))
            for label, n in zip(labels.tolist(), tally.tolist(), strict=True):
                window.predicted[str(label)] = window.predicted.get(str(label), 0) + n

    def _evict(self) -> None:
        starts = sorted({start for _v, start in self._windows}, reverse=True)
        if len(starts) <= self.keep:
            return
        oldest = starts[self.keep - 1]
        for key in [k for k in self._windows if k[1] < oldest]:
            del self._windows[key]

    def snapshot(self) -> list[WindowCounts]:
        """The held windows as they go on the wire, oldest first."""
        return [
            WindowCounts(
                model_version=version,
                window_start=start,
                records=w.records,
                features={
                    name: w.counts[offset : offset + length].tolist()
                    for name, offset, length in w.spans
                },
                predicted=dict(sorted(w.predicted.items())),
            )
            for (version, start), w in sorted(self._windows.items(), key=lambda kv: kv[0][1])
        ]
