"""Fleet-level drift: every worker's window counts merged into one PSI per feature and version.

Each worker's :class:`forestream.wire.messages.DriftReport` carries, per (model version, wall
clock window), the counts of the records it scored in the version's reference bins and of the
classes it predicted (:class:`forestream.wire.messages.WindowCounts`). Those counts are
cumulative within the window for that worker, so :class:`FleetDrift` keeps the newest counts per
(worker, version, window) and sums across workers and windows: reading a report twice, or
reports in any order, gives the same result. Counts, not PSIs: the PSI of summed counts is the
fleet's, an average of the workers' PSIs is not (a shift on one worker of three is diluted
exactly as much as its share of the records, no more).

The reference bins come from the version's :class:`forestream.registry.metadata.ModelMetadata`
(the reader opens the store through :mod:`forestream.registry`), so reports stay small: counts
only, in the order :func:`expected_bins` defines.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import ValidationError

from forestream.errors import ForestreamError
from forestream.registry.metadata import ModelMetadata
from forestream.wire.messages import DriftReport, FeatureDrift, WindowCounts
from forestream.wire.schema import CategoricalReference, NumericReference, ReferenceStats

if TYPE_CHECKING:
    from forestream.registry.store import ModelStore

DEFAULT_EPS = 1e-4
DEFAULT_KEEP_WINDOWS = 60
"""Windows per version a :class:`FleetDrift` holds (an hour of 60 s windows)."""


def psi(
    expected_shares: object,
    actual_counts: object,
    eps: float = DEFAULT_EPS,
) -> float:
    """Population Stability Index: ``sum((a - e) * ln(a / e))`` over bins.

    ``actual_counts`` are turned into shares. Empty bins: both shares are clipped to at least
    ``eps`` before the log (and in the difference), without renormalising — the usual convention
    that keeps the index finite when a bin is empty on either side, e.g. an unseen category whose
    expected share is 0. With no actual records there is no evidence of drift: the result is 0.
    """
    expected = np.asarray(expected_shares, dtype=np.float64)
    counts = np.asarray(actual_counts, dtype=np.float64)
    if expected.shape != counts.shape:
        raise ValueError(f"{expected.shape[0]} expected shares but {counts.shape[0]} bins counted")
    total = counts.sum()
    if total <= 0:
        return 0.0
    e = np.clip(expected, eps, None)
    a = np.clip(counts / total, eps, None)
    return float(np.sum((a - e) * np.log(a / e)))


def expected_bins(name: str, ref: NumericReference | CategoricalReference) -> np.ndarray:
    """The training shares of one feature's value bins, in the order counts are reported.

    Numeric: ``len(edges) + 1`` bins (bin i holds values in ``(edges[i-1], edges[i]]``).
    Categorical: the reference's categories in its order, then ``unseen`` (expected share 0).
    Counts on the wire add one more slot after these: records with the value missing.
    """
    if isinstance(ref, NumericReference):
        expected = np.asarray(ref.shares, dtype=np.float64)
        if len(expected) != len(ref.edges) + 1:
            raise ValueError(
                f"reference of {name!r}: {len(ref.edges)} edges need {len(ref.edges) + 1} "
                f"shares, got {len(expected)}"
            )
        return expected
    return np.append(np.asarray(list(ref.shares.values()), dtype=np.float64), 0.0)


def store_metadata(store: ModelStore, name: str) -> Callable[[str], ModelMetadata | None]:
    """``metadata_for`` reading ``name``'s versions from a model store: a version the store
    does not have (yet), or cannot be read now, is None, and asked for again later."""

    def metadata_for(version: str) -> ModelMetadata | None:
        try:
            return store.metadata(name, version)
        except ForestreamError:
            return None

    return metadata_for


@dataclass(frozen=True)
class PredictionDrift:
    """The fleet's predicted-class shares against those on the version's training holdout."""

    psi: float
    shares: dict[str, float]
    expected: dict[str, float]
    drifting: bool


@dataclass(frozen=True)
class VersionDrift:
    """One version's fleet drift over the windows held."""

    version: str
    records: int
    workers: int
    windows: int
    features: dict[str, FeatureDrift]
    prediction: PredictionDrift | None
    """None when the version's metadata has no holdout prediction shares (older artifacts)."""
    reference_known: bool
    """False while the version's metadata could not be read: no feature PSI then."""
    mismatched: int = 0
    """Feature counts skipped because their length did not fit the version's reference."""

    @property
    def drifting_features(self) -> list[str]:
        return sorted(name for name, d in self.features.items() if d.drifting)


@dataclass(frozen=True)
class _Held:
    at: int
    records: int
    counts: WindowCounts


class FleetDrift:
    """Newest window counts per (worker, version, window), merged on demand; pure.

    ``metadata_for(version)`` gives the version's metadata (reference bins, holdout prediction
    shares) or None when unknown yet (asked again next time). A feature is ``drifting`` when
    its fleet PSI reaches ``threshold`` with at least ``min_records`` non-missing values, the
    predictions when theirs does with ``min_records`` records: the worker's own rule and
    settings, applied to the fleet's counts.
    """

    def __init__(
        self,
        metadata_for: Callable[[str], ModelMetadata | None],
        *,
        threshold: float = 0.2,
        min_records: int = 1_000,
        keep_windows: int | None = DEFAULT_KEEP_WINDOWS,
        eps: float = DEFAULT_EPS,
    ) -> None:
        if keep_windows is not None and keep_windows < 1:
            raise ValueError("keep_windows must be at least 1")
        self.metadata_for = metadata_for
        self.threshold = threshold
        self.min_records = min_records
        self.keep_windows = keep_windows
        self.eps = eps
        self._held: dict[tuple[str, str, int], _Held] = {}
        self._metadata: dict[str, ModelMetadata] = {}

    def add(self, report: DriftReport) -> None:
        """Take a report's window counts; older or equal counts of the same key are ignored."""
        touched: set[str] = set()
        for window in report.windows:
            key = (report.worker_id, window.model_version, window.window_start)
            held = self._held.get(key)
            if held is None or (report.at, window.records) > (held.at, held.records):
                self._held[key] = _Held(report.at, window.records, window)
                touched.add(window.model_version)
        for version in touched:
            self._prune(version)

    def add_value(self, value: bytes | str) -> bool:
        """A monitoring-topic value: a worker's report is taken (True); other kinds
        (``evaluation_counts``, ``shadow_counts``) and unparsable values are skipped (False)."""
        try:
            parsed = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            return False
        if not isinstance(parsed, dict) or "kind" in parsed:
            return False
        try:
            report = DriftReport.model_validate(parsed)
        except ValidationError:
            return False
        self.add(report)
        return True

    def add_all(self, values: Iterable[bytes | str]) -> int:
        """Every value of ``values``; returns how many were workers' reports."""
        return sum(self.add_value(v) for v in values)

    def _prune(self, version: str) -> None:
        if self.keep_windows is None:
            return
        starts = sorted({k[2] for k in self._held if k[1] == version}, reverse=True)
        if len(starts) <= self.keep_windows:
            return
        oldest = starts[self.keep_windows - 1]
        for key in [k for k in self._held if k[1] == version and k[2] < oldest]:
            del self._held[key]

    def versions(self) -> list[str]:
        return sorted({k[1] for k in self._held})

    def _meta(self, version: str) -> ModelMetadata | None:
        meta = self._metadata.get(version)
        if meta is None:
            meta = self.metadata_for(version)
            if meta is not None:
                self._metadata[version] = meta
        return meta

    def drift(self, version: str) -> VersionDrift:
        """The version's fleet drift over every window held for it."""
        held = [h.counts for k, h in self._held.items() if k[1] == version]
        workers = len({k[0] for k in self._held if k[1] == version})
        windows = len({k[2] for k in self._held if k[1] == version})
        records = sum(w.records for w in held)
        meta = self._meta(version)
        features: dict[str, FeatureDrift] = {}
        mismatched = 0
        if meta is not None:
            features, mismatched = self._features(meta.reference, held)
        prediction = None
        if meta is not None and meta.holdout_prediction_shares:
            prediction = self._prediction(meta.holdout_prediction_shares, held)
        return VersionDrift(
            version=version,
            records=records,
            workers=workers,
            windows=windows,
            features=features,
            prediction=prediction,
            reference_known=meta is not None,
            mismatched=mismatched,
        )

    def snapshot(self) -> dict[str, VersionDrift]:
        return {version: self.drift(version) for version in self.versions()}

    def _features(
        self, reference: ReferenceStats, held: list[WindowCounts]
    ) -> tuple[dict[str, FeatureDrift], int]:
        out: dict[str, FeatureDrift] = {}
        mismatched = 0
        for name, ref in reference.features.items():
            expected = expected_bins(name, ref)
            total = np.zeros(len(expected) + 1, dtype=np.int64)
            for window in held:
                counts = window.features.get(name)
                if counts is None:
                    continue
                if len(counts) != len(total):
                    mismatched += 1
                    continue
                total += np.asarray(counts, dtype=np.int64)
            values = total[:-1]
            present = int(values.sum())
            seen = max(int(total.sum()), 1)
            value = psi(expected, values, self.eps)
            out[name] = FeatureDrift(
                psi=value,
                missing_share=int(total[-1]) / seen,
                unseen_share=(int(values[-1]) if isinstance(ref, CategoricalReference) else 0)
                / seen,
                drifting=value >= self.threshold and present >= self.min_records,
            )
        return out, mismatched

    def _prediction(
        self, expected_shares: dict[str, float], held: list[WindowCounts]
    ) -> PredictionDrift:
        classes = list(expected_shares)
        for window in held:  # a class the holdout never saw predicted gets expected share 0
            classes.extend(c for c in window.predicted if c not in expected_shares)
        classes = list(dict.fromkeys(classes))
        index = {c: i for i, c in enumerate(classes)}
        counts = np.zeros(len(classes), dtype=np.int64)
        for window in held:
            for cls, n in window.predicted.items():
                counts[index[cls]] += n
        expected = np.asarray([expected_shares.get(c, 0.0) for c in classes], dtype=np.float64)
        value = psi(expected, counts, self.eps)
        total = max(int(counts.sum()), 1)
        return PredictionDrift(
            psi=value,
            shares={c: int(counts[i]) / total for i, c in enumerate(classes)},
            expected={c: float(expected[i]) for i, c in enumerate(classes)},
            drifting=value >= self.threshold and int(counts.sum()) >= self.min_records,
        )
