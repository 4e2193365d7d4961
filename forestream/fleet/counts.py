"""The fleet's counts, summed from the monitoring topic: pure, mergeable, exact.

Evaluators publish *deltas* (:class:`~forestream.wire.messages.EvaluationCounts` per served
version and window, :class:`~forestream.wire.messages.ShadowCounts` per candidate, served
version and window); the fleet's numbers are the sum of every record, whichever instance wrote
it. Ratios come last, from the summed matrices (:func:`accuracy_of`, :func:`macro_f1_of`):
averaging per-instance ratios would not be exact.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from forestream.wire.messages import EvaluationCounts, ShadowCounts

Confusion = Mapping[str, Mapping[str, int]]
"""true class -> predicted class -> pairs."""


def add_into(total: dict[str, dict[str, int]], confusion: Confusion) -> None:
    for label, row in confusion.items():
        into = total.setdefault(label, {})
        for prediction, n in row.items():
            into[prediction] = into.get(prediction, 0) + n


def labelled_of(confusion: Confusion) -> int:
    return sum(n for row in confusion.values() for n in row.values())


def accuracy_of(confusion: Confusion) -> float | None:
    """Diagonal over total; ``None`` with no pairs."""
    total = labelled_of(confusion)
    if not total:
        return None
    return sum(row.get(label, 0) for label, row in confusion.items()) / total


def macro_f1_of(confusion: Confusion) -> float | None:
    """Mean over the classes present (as label or prediction) of 2·tp / (2·tp + fp + fn):
    the definition :func:`forestream.worker.evaluation.macro_f1_score` computes from pairs."""
    true_count: Counter[str] = Counter()
    pred_count: Counter[str] = Counter()
    for label, row in confusion.items():
        for prediction, n in row.items():
            if n:
                true_count[label] += n
                pred_count[prediction] += n
    classes = set(true_count) | set(pred_count)
    if not classes:
        return None
    f1 = [2 * confusion.get(c, {}).get(c, 0) / (true_count[c] + pred_count[c]) for c in classes]
    return sum(f1) / len(f1)


@dataclass
class ShadowTotals:
    """A candidate against the served version, over the same labelled shadow records."""

    labelled: int = 0
    agreed: int = 0
    candidate: dict[str, dict[str, int]] = field(default_factory=dict)
    served: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.labelled if self.labelled else None


@dataclass
class FleetCounts:
    """Every counts record read so far, summed: per (version, window start) for served
    versions, per (candidate, served) for shadow candidates."""

    windows: dict[str, dict[int, dict[str, dict[str, int]]]] = field(default_factory=dict)
    shadow: dict[tuple[str, str], ShadowTotals] = field(default_factory=dict)
    records: int = 0
    """Counts records summed (either kind)."""

    def feed(self, value: bytes | None) -> str | None:
        """Sum one monitoring-topic value; its kind, or None if it is not a counts record
        (a worker's DriftReport, a malformed value: skipped)."""
        if not value:
            return None
        try:
            kind = json.loads(value).get("kind")
        except (ValueError, AttributeError):
            return None
        try:
            if kind == "evaluation_counts":
                self.add(EvaluationCounts.model_validate_json(value))
            elif kind == "shadow_counts":
                self.add_shadow(ShadowCounts.model_validate_json(value))
            else:
                return None
        except ValidationError:
            return None
        return str(kind)

    def add(self, counts: EvaluationCounts) -> None:
        cells = self.windows.setdefault(counts.model_version, {})
        add_into(cells.setdefault(counts.window_start, {}), counts.confusion)
        self.records += 1

    def add_shadow(self, counts: ShadowCounts) -> None:
        totals = self.shadow.setdefault(
            (counts.candidate_version, counts.served_version), ShadowTotals()
        )
        totals.labelled += counts.labelled
        totals.agreed += counts.agreed
        add_into(totals.candidate, counts.candidate_confusion)
        add_into(totals.served, counts.served_confusion)
        self.records += 1

    def merge(self, other: FleetCounts) -> None:
        """Add ``other``'s sums to these (two readers' shares of the topic)."""
        for version, cells in other.windows.items():
            mine = self.windows.setdefault(version, {})
            for start, confusion in cells.items():
                add_into(mine.setdefault(start, {}), confusion)
        for pair, totals in other.shadow.items():
            into = self.shadow.setdefault(pair, ShadowTotals())
            into.labelled += totals.labelled
            into.agreed += totals.agreed
            add_into(into.candidate, totals.candidate)
            add_into(into.served, totals.served)
        self.records += other.records

    def version(self, version: str) -> dict[str, dict[str, int]]:
        """``version``'s confusion matrix over every window."""
        total: dict[str, dict[str, int]] = {}
        for confusion in self.windows.get(version, {}).values():
            add_into(total, confusion)
        return total

    def first(self, version: str, n: int) -> dict[str, dict[str, int]] | None:
        """``version``'s first labels: its earliest windows, summed until they hold at least
        ``n`` pairs (window granularity: a window is never split); None while fewer exist."""
        total: dict[str, dict[str, int]] = {}
        for start in sorted(self.windows.get(version, {})):
            add_into(total, self.windows[version][start])
            if labelled_of(total) >= n:
                return total
        return None
