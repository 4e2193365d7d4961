"""Mergeable evaluation counts: per model version and label-arrival window, a confusion matrix.

An evaluator publishes what it joined since its last publish as
:class:`forestream.wire.messages.EvaluationCounts` deltas; the fleet's counts for a (version,
window) are the sum over every instance's records. Accuracy and macro F1 are functions of the
summed matrix (:func:`~forestream.fleet.counts.accuracy_of`, ``macro_f1_of``, shared with the
fleet's view in :mod:`forestream.fleet.counts`), equal to
:func:`forestream.worker.evaluation.accuracy_score` / ``macro_f1_score`` on the concatenated
(label, prediction) pairs: a ratio averaged over instances would not be.

Shadow records joined with labels are counted apart (:class:`ShadowCountsBuffer`, published as
:class:`forestream.wire.messages.ShadowCounts`): per (candidate, served version, window), the
candidate's and the served version's confusion matrices over the same records, and how many of
them the two predicted alike; :func:`merge_shadow` sums them
(:class:`forestream.fleet.counts.FleetCounts` does).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from forestream.fleet.counts import (
    Confusion,
    ShadowTotals,
    accuracy_of,
    add_into,
    labelled_of,
    macro_f1_of,
)
from forestream.wire.messages import EvaluationCounts, ShadowCounts

if TYPE_CHECKING:
    from forestream.worker.evaluator.join import Served

__all__ = [
    "Confusion",
    "CountsBuffer",
    "accuracy_of",
    "add_into",
    "labelled_of",
    "macro_f1_of",
    "merge",
    "record_key",
    "window_start",
]


def window_start(timestamp_ms: int, window_ms: int) -> int:
    """The start of the window holding ``timestamp_ms`` (windows aligned on the epoch)."""
    return timestamp_ms - timestamp_ms % window_ms


class CountsBuffer:
    """Pairs joined since the last publish, by (version, window start) → (true, pred) → n."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.window_ms = max(int(window_s * 1000), 1)
        self.cells: dict[tuple[str, int], Counter[tuple[str, str]]] = {}

    def add(
        self,
        version: str,
        label: str,
        prediction: str,
        label_ts: int,
        served: Served | None = None,
    ) -> None:
        """``served``: always None here (the predictions topic's records have none)."""
        cell = (version, window_start(label_ts, self.window_ms))
        counter = self.cells.get(cell)
        if counter is None:
            counter = self.cells[cell] = Counter()
        counter[(label, prediction)] += 1

    def __len__(self) -> int:
        return len(self.cells)

    def drain(self, evaluator_id: str, now_ms: int) -> list[EvaluationCounts]:
        """One record per (version, window) held, and an empty buffer."""
        out: list[EvaluationCounts] = []
        for (version, start), counter in sorted(self.cells.items()):
            confusion: dict[str, dict[str, int]] = {}
            for (label, prediction), n in sorted(counter.items()):
                confusion.setdefault(label, {})[prediction] = n
            out.append(
                EvaluationCounts(
                    evaluator_id=evaluator_id,
                    model_version=version,
                    window_start=start,
                    window_s=self.window_s,
                    labelled=sum(counter.values()),
                    confusion=confusion,
                    at=now_ms,
                )
            )
        self.cells = {}
        return out


class ShadowCountsBuffer:
    """Shadow records joined since the last publish: by (candidate, served version, window
    start) → (true, candidate's, served's) → n."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.window_ms = max(int(window_s * 1000), 1)
        self.cells: dict[tuple[str, str, int], Counter[tuple[str, str, str]]] = {}

    def add(
        self,
        version: str,
        label: str,
        prediction: str,
        label_ts: int,
        served: Served | None = None,
    ) -> None:
        """``version``/``prediction``: the candidate's; a record without ``served`` never gets
        here (the evaluator counts it malformed) and is ignored if it does."""
        if served is None:
            return
        cell = (version, served.version, window_start(label_ts, self.window_ms))
        counter = self.cells.get(cell)
        if counter is None:
            counter = self.cells[cell] = Counter()
        counter[(label, prediction, served.prediction)] += 1

    def __len__(self) -> int:
        return len(self.cells)

    def drain(self, evaluator_id: str, now_ms: int) -> list[ShadowCounts]:
        """One record per (candidate, served, window) held, and an empty buffer."""
        out: list[ShadowCounts] = []
        for (candidate, served, start), counter in sorted(self.cells.items()):
            candidate_confusion: dict[str, dict[str, int]] = {}
            served_confusion: dict[str, dict[str, int]] = {}
            agreed = 0
            for (label, by_candidate, by_served), n in counter.items():
                row = candidate_confusion.setdefault(label, {})
                row[by_candidate] = row.get(by_candidate, 0) + n
                row = served_confusion.setdefault(label, {})
                row[by_served] = row.get(by_served, 0) + n
                if by_candidate == by_served:
                    agreed += n
            out.append(
                ShadowCounts(
                    evaluator_id=evaluator_id,
                    candidate_version=candidate,
                    served_version=served,
                    window_start=start,
                    window_s=self.window_s,
                    labelled=sum(counter.values()),
                    agreed=agreed,
                    candidate_confusion=_sorted(candidate_confusion),
                    served_confusion=_sorted(served_confusion),
                    at=now_ms,
                )
            )
        self.cells = {}
        return out


def _sorted(confusion: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {label: dict(sorted(row.items())) for label, row in sorted(confusion.items())}


def shadow_record_key(counts: ShadowCounts) -> bytes:
    """``<candidate>/shadow/<served>/<window start>``: the records to sum for one cell share it."""
    return (
        f"{counts.candidate_version}/shadow/{counts.served_version}/{counts.window_start}".encode()
    )


def merge_shadow(records: Iterable[ShadowCounts]) -> dict[tuple[str, str], ShadowTotals]:
    """The fleet's shadow counts per (candidate, served version): every record summed, every
    window (filter the records first for a time range). Agreement: ``ShadowTotals.agreement``."""
    from forestream.fleet.counts import FleetCounts

    fleet = FleetCounts()
    for record in records:
        fleet.add_shadow(record)
    return fleet.shadow


def record_key(counts: EvaluationCounts) -> bytes:
    """``<version>/<window start>``: the records to sum for one cell share it."""
    return f"{counts.model_version}/{counts.window_start}".encode()


def merge(records: Iterable[EvaluationCounts]) -> dict[tuple[str, int], dict[str, dict[str, int]]]:
    """The fleet's confusion matrix per (version, window start): every record summed."""
    out: dict[tuple[str, int], dict[str, dict[str, int]]] = {}
    for record in records:
        cell = out.setdefault((record.model_version, record.window_start), {})
        add_into(cell, record.confusion)
    return out
