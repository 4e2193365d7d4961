"""Synthetic input records that match a model's schema and its training distribution.

Numeric features are drawn bin by bin from the reference (pick a bin by its training share,
then uniform within it), so a drift monitor sees "no drift" unless asked to (``shift``).
Categoricals follow the reference shares. Seeded and pure: same inputs, same records.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from forestream.wire.schema import (
    CategoricalFeature,
    CategoricalReference,
    FeatureSchema,
    NumericFeature,
    NumericReference,
    ReferenceStats,
)

if TYPE_CHECKING:
    import numpy as np

CHUNK = 4096
"""Rows drawn per vectorised step: big enough for numpy to pay off, small enough to stream."""

Row = dict[str, float | str | None]


def numeric_bounds(feature: NumericFeature, ref: NumericReference | None) -> tuple[float, float]:
    """Outer limits for the open-ended first and last bins (edges are inner cut points only)."""
    edges = ref.edges if ref else []
    spread = (
        3.0 * ref.std
        if ref is not None and ref.std
        else (edges[-1] - edges[0] if len(edges) >= 2 else 1.0) or 1.0
    )
    centre_lo = edges[0] if edges else (ref.mean if ref and ref.mean is not None else 0.0)
    centre_hi = edges[-1] if edges else centre_lo
    lo = feature.min if feature.min is not None else centre_lo - spread
    hi = feature.max if feature.max is not None else centre_hi + spread
    return min(lo, centre_lo), max(hi, centre_hi)


def reference_std(feature: NumericFeature, ref: NumericReference | None) -> float:
    """The reference's standard deviation, estimated from the bins when it was not recorded."""
    if ref is not None and ref.std:
        return float(ref.std)
    lo, hi = numeric_bounds(feature, ref)
    if ref is not None and len(ref.shares) == len(ref.edges) + 1 and len(ref.shares) > 1:
        cuts = [lo, *ref.edges, hi]
        mids = [(a + b) / 2 for a, b in itertools.pairwise(cuts)]
        total = sum(ref.shares) or 1.0
        mean = sum(m * s for m, s in zip(mids, ref.shares, strict=True)) / total
        var = sum(s * (m - mean) ** 2 for m, s in zip(mids, ref.shares, strict=True)) / total
        if var > 0:
            return math.sqrt(var)
    return (hi - lo) / math.sqrt(12) if hi > lo else 1.0


def draw_numeric(
    feature: NumericFeature, ref: NumericReference | None, size: int, rng: np.random.Generator
) -> np.ndarray:
    import numpy as np

    if ref is not None and len(ref.shares) == len(ref.edges) + 1 and len(ref.shares) > 1:
        lo, hi = numeric_bounds(feature, ref)
        low = np.array([lo, *ref.edges], dtype=float)
        high = np.array([*ref.edges, hi], dtype=float)
        p = np.clip(np.asarray(ref.shares, dtype=float), 0.0, None)
        p = p / p.sum() if p.sum() > 0 else np.full(len(p), 1.0 / len(p))
        bins = rng.choice(len(p), size=size, p=p)
        return low[bins] + rng.random(size) * (high[bins] - low[bins])
    if ref is not None and ref.mean is not None:
        return rng.normal(ref.mean, ref.std or 0.0, size)
    lo, hi = numeric_bounds(feature, ref)
    return rng.uniform(lo, hi, size)


def draw_categorical(
    feature: CategoricalFeature,
    ref: CategoricalReference | None,
    size: int,
    rng: np.random.Generator,
) -> list[str]:
    import numpy as np

    if ref is not None and ref.shares and sum(ref.shares.values()) > 0:
        names = list(ref.shares)
        p = np.asarray([max(ref.shares[n], 0.0) for n in names], dtype=float)
        p = p / p.sum()
    else:
        names = list(feature.categories) or ["unknown"]
        p = np.full(len(names), 1.0 / len(names))
    picks = rng.choice(len(names), size=size, p=p)
    return [names[i] for i in picks.tolist()]


def synthetic_rows(
    schema: FeatureSchema,
    reference: ReferenceStats | None,
    count: int,
    seed: int = 0,
    shift: Mapping[str, float] | None = None,
) -> Iterator[Row]:
    """``count`` records for ``schema``; ``shift[name] = k`` moves a numeric feature by k stds.

    Missing values appear (as ``None``) only for features where training saw them, at the
    training share, so synthetic records are valid input by construction.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    shift = dict(shift or {})
    refs = reference.features if reference is not None else {}
    done = 0
    while done < count:
        size = min(CHUNK, count - done)
        columns: dict[str, list[float | str | None]] = {}
        for feature in schema.features:
            ref = refs.get(feature.name)
            column: list[float | str | None]
            if isinstance(feature, NumericFeature):
                num_ref = ref if isinstance(ref, NumericReference) else None
                values = draw_numeric(feature, num_ref, size, rng)
                if shift.get(feature.name):
                    values = values + shift[feature.name] * reference_std(feature, num_ref)
                column = values.tolist()
            else:
                cat_ref = ref if isinstance(ref, CategoricalReference) else None
                column = list(draw_categorical(feature, cat_ref, size, rng))
            missing_share = ref.missing_share if ref is not None else 0.0
            if feature.missing_seen and missing_share > 0:
                for i in np.flatnonzero(rng.random(size) < missing_share).tolist():
                    column[i] = None
            columns[feature.name] = column
        names = list(columns)
        for row in zip(*columns.values(), strict=True):
            yield dict(zip(names, row, strict=True))
        done += size
