"""The feature schema and drift reference statistics of a model, derived from its training frame.

Pure. Numeric bins use the rule the worker's drift monitor uses on live data,
``np.searchsorted(edges, x, side="left")`` (bin i holds (edges[i-1], edges[i]]), so a live
stream drawn from the training distribution reproduces the training shares.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from forestream.training.quality import Kind
from forestream.wire.schema import (
    CategoricalFeature,
    CategoricalReference,
    FeatureSchema,
    NumericFeature,
    NumericReference,
    Reference,
    ReferenceStats,
)

REFERENCE_BINS = 10


def quantile_edges(values: np.ndarray, bins: int = REFERENCE_BINS) -> list[float]:
    """Inner cut points at the training quantiles, deduplicated (ties collapse bins)."""
    if values.size == 0:
        return []
    inner = np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return [float(e) for e in np.unique(inner)]


def bin_shares(values: np.ndarray, edges: list[float]) -> list[float]:
    """Share of ``values`` per bin (len(edges) + 1 bins), binned exactly like the worker does."""
    if values.size == 0:
        return [0.0] * (len(edges) + 1)
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    counts = np.bincount(index, minlength=len(edges) + 1)
    return [float(c) for c in counts / values.size]


def build_schema(features: pd.DataFrame, kinds: dict[str, Kind]) -> FeatureSchema:
    """Ordered input contract: names, kinds, categories, observed range, missingness."""
    out: list[NumericFeature | CategoricalFeature] = []
    for name in features.columns:
        series = features[name]
        missing_seen = bool(series.isna().any())
        if kinds[name] == "numeric":
            present = series.dropna()
            out.append(
                NumericFeature(
                    name=name,
                    min=float(present.min()) if len(present) else None,
                    max=float(present.max()) if len(present) else None,
                    missing_seen=missing_seen,
                )
            )
        else:
            categories = sorted(str(v) for v in series.dropna().unique())
            out.append(
                CategoricalFeature(name=name, categories=categories, missing_seen=missing_seen)
            )
    return FeatureSchema(features=out)


def build_reference(
    features: pd.DataFrame, kinds: dict[str, Kind], bins: int = REFERENCE_BINS
) -> ReferenceStats:
    """Per-feature training distributions the drift monitor compares live inputs with."""
    stats: dict[str, Reference] = {}
    for name in features.columns:
        series = features[name]
        missing_share = float(series.isna().mean()) if len(series) else 0.0
        if kinds[name] == "numeric":
            values = series.dropna().to_numpy(dtype=np.float64)
            edges = quantile_edges(values, bins)
            stats[name] = NumericReference(
                edges=edges,
                shares=bin_shares(values, edges),
                mean=float(values.mean()) if values.size else None,
                std=float(values.std()) if values.size else None,
                missing_share=missing_share,
            )
        else:
            shares = series.dropna().map(str).value_counts(normalize=True)
            stats[name] = CategoricalReference(
                shares={str(k): float(v) for k, v in shares.items()},
                missing_share=missing_share,
            )
    return ReferenceStats(features=stats)
