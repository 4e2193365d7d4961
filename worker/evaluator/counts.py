"""Mergeable evaluation counts: per model version and label-arrival window, a confusion matrix.

An evaluator publishes what it joined since its last publish as
:class:`forestream.wire.messages.EvaluationCounts` deltas; the fleet's counts for a (version,
window) are the sum over every instance's records. Accuracy and macro F1 are functions of the
summed matrix (:func:`~forestream.fleet.counts.accuracy_of`, ``macro_f1_of``, shared with the
fleet's view in :mod:`forestream.fleet.counts`), equal to
:func:`forestream.worker.evaluation.accuracy_score` / ``macro_f1_score`` on the concatenated
(label, prediction) pairs: a ratio averaged over instances would not be.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from forestream.fleet.counts import Confusion, accuracy_of, add_into, labelled_of, macro_f1_of
from forestream.wire.messages import EvaluationCounts

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

    def add(self, version: str, label: str, prediction: str, label_ts: int) -> None:
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
