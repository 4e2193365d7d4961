"""Schema and drift reference derived from a training frame, binned the way the worker bins."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from forestream.training.schema_build import (
    bin_shares,
    build_reference,
    build_schema,
    quantile_edges,
)
from forestream.wire.schema import CategoricalReference, NumericReference


def training_frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    x = rng.normal(10, 2, 200)
    x[:10] = np.nan
    colour = np.array(rng.choice(["red", "green", "blue"], 200), dtype=object)
    return pd.DataFrame({"x": x, "colour": pd.Series(colour, dtype=object), "n": np.arange(200.0)})


KINDS = {"x": "numeric", "colour": "categorical", "n": "numeric"}


def test_schema_keeps_order_kinds_categories_range_and_missingness() -> None:
    data = training_frame()
    schema = build_schema(data, KINDS)  # type: ignore[arg-type]
    assert schema.names == ["x", "colour", "n"]
    x, colour, n = schema.features
    assert (x.kind, x.missing_seen) == ("numeric", True)
    assert x.min == np.nanmin(data["x"]) and x.max == np.nanmax(data["x"])
    assert colour.kind == "categorical" and colour.categories == ["blue", "green", "red"]
    assert not colour.missing_seen and not n.missing_seen
    assert (n.min, n.max) == (0.0, 199.0)


def test_reference_numeric_deciles_and_missing_share() -> None:
    data = training_frame()
    ref = build_reference(data, KINDS).features  # type: ignore[arg-type]
    n = ref["n"]
    assert isinstance(n, NumericReference)
    assert len(n.edges) == 9 and len(n.shares) == 10
    assert np.allclose(n.shares, 0.1)
    assert n.mean == 99.5 and n.std == np.std(np.arange(200.0))
    x = ref["x"]
    assert isinstance(x, NumericReference) and x.missing_share == 0.05
    colour = ref["colour"]
    assert isinstance(colour, CategoricalReference)
    assert set(colour.shares) == {"red", "green", "blue"}
    assert abs(sum(colour.shares.values()) - 1) < 1e-9


def test_ties_collapse_bins_instead_of_repeating_edges() -> None:
    values = np.array([1.0] * 50 + [2.0] * 50)
    edges = quantile_edges(values)
    assert edges == sorted(set(edges))
    assert bin_shares(values, edges)[0] == 0.5 and abs(sum(bin_shares(values, edges)) - 1) < 1e-9


def test_bins_hold_left_open_right_closed_intervals() -> None:
    # bin i holds (edges[i-1], edges[i]]: a value equal to an edge belongs to the bin below it
    assert bin_shares(np.array([1.0, 2.0, 2.5, 3.0, 4.0]), [2.0, 3.0]) == [0.4, 0.4, 0.2]


finite = st.floats(-1e6, 1e6, allow_nan=False)


@given(arrays(np.float64, st.integers(1, 300), elements=finite), st.integers(2, 12))
def test_shares_are_a_distribution_over_len_edges_plus_one_bins(
    values: np.ndarray, bins: int
) -> None:
    edges = quantile_edges(values, bins)
    shares = bin_shares(values, edges)
    assert len(edges) <= bins - 1
    assert all(a < b for a, b in itertools.pairwise(edges))
    assert len(shares) == len(edges) + 1
    assert abs(sum(shares) - 1.0) < 1e-9
    # matches the worker's rule applied independently
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    assert np.allclose(shares, counts / len(values))
