"""A fitted sklearn random forest as one compact node array and a numba loop over it.

sklearn walks the forest tree by tree (one Cython pass over the whole batch per tree, then a
float64 sum); the benchmark forest's trees are deep (unlimited depth), so the walk is bound by
memory, not arithmetic. Here every tree is renumbered depth-first so that a node's left child
is the next node and only the right child's index is stored: a node is 12 bytes (float32
threshold rounded down, uint32 feature, uint32 right child) and a root-to-leaf walk mostly reads
forward in one array. Rows go in blocks of :data:`BLOCK_ROWS`, tree after tree, four walks side
by side; one pass per record across every tree measured slower (the forest does not stay in
cache between records: docs/benchmark-findings.md). Each row adds its leaves' class
probabilities in float64 in tree order, then divides by the tree count: exactly the additions
and the division ``RandomForestClassifier.predict_proba`` performs, element by element, so the
result is bit-identical (the parity gate of :mod:`forestream.worker.forest_engine` checks
that, it does not assume it).

Semantics kept from sklearn's ``Tree.apply``: the input is float32 (what sklearn casts to),
and ``x <= t`` goes left (the threshold rounded down to float32 decides exactly as sklearn's
float64 one for every float32 ``x``: see :data:`NODE`); a NaN goes where the
node's ``missing_go_to_left`` says (right when the tree was fitted without missing values,
where sklearn's own input check refuses NaN before the trees see it).

The kernel is compiled on first import with an explicit signature (off the scoring thread: the
model follower imports this when it loads a version) and cached on disk under
``~/.cache/forestream/numba`` (``NUMBA_CACHE_DIR`` wins when set), so a restart loads it in
milliseconds instead of compiling again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NODE = np.dtype([("threshold", "<f4"), ("feature", "<u4"), ("right", "<u4")])
"""One node, 12 bytes. A split sends ``x[feature] <= threshold`` to the next node, anything
else to node ``right``. A leaf points to itself (``threshold`` NaN, ``right`` its own index), so
a walk that reached its leaf stays there and four walks can step together without a test per
walk. ``threshold`` is sklearn's float64 threshold rounded *down* to float32: for every float32
``x`` (what sklearn casts its input to), ``x <= t64`` exactly when ``x <= floor32(t64)``."""
_LEAF = -1
BLOCK_ROWS = 256
"""Rows walked through every tree before the next block: the block's input (30 KB at 30
features) stays in the core's cache while each tree's nodes come and go."""


def _cache_dir() -> str:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    return str(Path.home() / ".cache" / "forestream" / "numba")


def _import_numba() -> Any:
    import numba

    if not os.environ.get("NUMBA_CACHE_DIR"):
        numba.config.CACHE_DIR = _cache_dir()  # type: ignore[attr-defined]
    return numba


_numba = _import_numba()
_t = _numba.types
_NODES = _numba.from_dtype(NODE)[::1]
_ONE = np.uint64(1)


@_numba.njit(inline="always")
def _step(row: np.ndarray, nodes: np.ndarray, k: Any) -> Any:  # pragma: no cover - numba
    node = nodes[k]
    return k + _ONE if row[node.feature] <= node.threshold else np.uint64(node.right)


@_numba.njit(
    _t.void(_t.float32[:, ::1], _NODES, _t.uint32[::1], _t.uint64[::1], _t.float64[:, ::1],
            _t.float64[:, ::1]),
    cache=True,
    nogil=True,
)  # fmt: skip
def _walk(  # pragma: no cover - compiled by numba; tests call it through CompiledForest
    x: np.ndarray,
    nodes: np.ndarray,
    leaf_of: np.ndarray,
    roots: np.ndarray,
    leaves: np.ndarray,
    out: np.ndarray,
) -> None:
    """Input without NaN: per block of rows, tree after tree, four rows' walks side by side
    (independent chains of loads the core overlaps); each row adds its leaf of each tree in
    tree order."""
    n, n_classes, n_trees = x.shape[0], out.shape[1], roots.shape[0]
    out[:] = 0.0
    for start in range(0, n, BLOCK_ROWS):
        stop = min(n, start + BLOCK_ROWS)
        for t in range(n_trees):
            root = roots[t]
            i = start
            while i + 4 <= stop:
                x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
                k0 = k1 = k2 = k3 = root
                while True:
                    n0 = _step(x0, nodes, k0)
                    n1 = _step(x1, nodes, k1)
                    n2 = _step(x2, nodes, k2)
                    n3 = _step(x3, nodes, k3)
                    if (n0 == k0) & (n1 == k1) & (n2 == k2) & (n3 == k3):
                        break
                    k0, k1, k2, k3 = n0, n1, n2, n3
                for c in range(n_classes):
                    out[i, c] += leaves[leaf_of[k0], c]
                    out[i + 1, c] += leaves[leaf_of[k1], c]
                    out[i + 2, c] += leaves[leaf_of[k2], c]
                    out[i + 3, c] += leaves[leaf_of[k3], c]
                i += 4
            while i < stop:
                row, k = x[i], root
                while True:
                    following = _step(row, nodes, k)
                    if following == k:
                        break
                    k = following
                for c in range(n_classes):
                    out[i, c] += leaves[leaf_of[k], c]
                i += 1
    out /= n_trees


@_numba.njit(
    _t.void(_t.float32[:, ::1], _NODES, _t.uint8[::1], _t.uint32[::1], _t.uint64[::1],
            _t.float64[:, ::1], _t.float64[:, ::1]),
    cache=True,
    nogil=True,
)  # fmt: skip
def _walk_missing(  # pragma: no cover - compiled by numba; tests call it through CompiledForest
    x: np.ndarray,
    nodes: np.ndarray,
    nan_left: np.ndarray,
    leaf_of: np.ndarray,
    roots: np.ndarray,
    leaves: np.ndarray,
    out: np.ndarray,
) -> None:
    """Input with NaN somewhere: one walk at a time, a NaN going where sklearn's
    ``missing_go_to_left`` sends it (a leaf's flag is 0, so a leaf still holds)."""
    n, n_classes, n_trees = x.shape[0], out.shape[1], roots.shape[0]
    out[:] = 0.0
    for t in range(n_trees):
        for i in range(n):
            row, k = x[i], roots[t]
            while True:
                node = nodes[k]
                value = row[node.feature]
                if value <= node.threshold or (value != value and nan_left[k] != 0):
                    following = k + _ONE
                else:
                    following = np.uint64(node.right)
                if following == k:
                    break
                k = following
            for c in range(n_classes):
                out[i, c] += leaves[leaf_of[k], c]
    out /= n_trees


@dataclass(frozen=True)
class CompiledForest:
    """Every tree's nodes (depth-first, one array), where each tree starts, the leaf table."""

    nodes: np.ndarray
    """:data:`NODE` records of every tree, tree after tree."""
    roots: np.ndarray
    """uint64: the index of each tree's root, in the forest's tree order."""
    leaf_of: np.ndarray
    """uint32 per node: a leaf's row in ``leaves`` (0 for a split: never read)."""
    nan_left: np.ndarray
    """uint8 per node: 1 where sklearn sends a missing value left (``missing_go_to_left``)."""
    leaves: np.ndarray
    """float64 (leaves, classes): each leaf's class probabilities, as the tree stores them."""
    n_features: int

    @property
    def n_classes(self) -> int:
        return int(self.leaves.shape[1])

    @property
    def nbytes(self) -> int:
        arrays = (self.nodes, self.roots, self.leaf_of, self.nan_left, self.leaves)
        return int(sum(a.nbytes for a in arrays))

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        """Class probabilities of the rows of ``matrix`` (cast to float32 C order, as sklearn
        does), as the forest's ``predict_proba`` computes them."""
        x = np.ascontiguousarray(matrix, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got shape {x.shape}")
        out = np.empty((x.shape[0], self.n_classes), dtype=np.float64)
        if np.isnan(x).any():
            _walk_missing(x, self.nodes, self.nan_left, self.leaf_of, self.roots, self.leaves, out)
        else:
            _walk(x, self.nodes, self.leaf_of, self.roots, self.leaves, out)
        return out


def _floor_float32(values: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64 value."""
    rounded = values.astype(np.float32)
    up = rounded.astype(np.float64) > values
    rounded[up] = np.nextafter(rounded[up], np.float32(-np.inf))
    return rounded


def _tree_nodes(tree: Any, n_classes: int, node_base: int, leaf_base: int) -> dict[str, Any]:
    """One sklearn ``Tree`` renumbered depth-first (a left child right after its parent), its
    nodes placed from ``node_base`` and its leaves from row ``leaf_base`` of the leaf table."""
    left, right = tree.children_left, tree.children_right
    count = int(tree.node_count)
    order = np.empty(count, dtype=np.int64)  # new index -> old index
    new_of = np.empty(count, dtype=np.int64)
    stack = [0]
    n = 0
    while stack:
        old = stack.pop()
        order[n] = old
        new_of[old] = n
        n += 1
        if left[old] != _LEAF:
            stack.append(int(right[old]))
            stack.append(int(left[old]))  # popped first: the left child comes next
    if n != count:
        raise ValueError(f"tree has {count} nodes but {n} are reachable from its root")
    is_leaf = left[order] == _LEAF
    position = node_base + np.arange(count)
    nodes = np.zeros(count, dtype=NODE)
    nodes["feature"] = np.where(is_leaf, 0, tree.feature[order])
    nodes["threshold"] = np.where(
        is_leaf, np.float32(np.nan), _floor_float32(tree.threshold[order])
    )
    nodes["right"] = np.where(
        is_leaf, position, node_base + new_of[np.where(is_leaf, 0, right[order])]
    )
    missing = getattr(tree, "missing_go_to_left", None)
    nan_left = np.zeros(count, dtype=np.uint8)
    if missing is not None:
        nan_left[:] = np.where(is_leaf, 0, np.asarray(missing)[order] != 0)
    leaf_of = np.where(is_leaf, leaf_base + np.cumsum(is_leaf) - 1, 0).astype(np.uint32)
    values = np.ascontiguousarray(tree.value[order[is_leaf], 0, :n_classes], dtype=np.float64)
    return {"nodes": nodes, "nan_left": nan_left, "leaf_of": leaf_of, "leaves": values}


def compile_forest(forest: Any) -> CompiledForest:
    """The compact layout of a fitted single-output forest classifier of plain decision trees.

    Raises ``TypeError`` for anything else (the caller keeps sklearn's path).
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.ensemble._forest import ForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    if not isinstance(forest, RandomForestClassifier) or (
        type(forest).predict_proba is not ForestClassifier.predict_proba
    ):
        raise TypeError(f"{type(forest).__name__} is not a RandomForestClassifier")
    if forest.n_outputs_ != 1:
        raise TypeError("multi-output forests are not compiled")
    trees = forest.estimators_
    if not trees or not all(
        type(tree).predict_proba is DecisionTreeClassifier.predict_proba for tree in trees
    ):
        raise TypeError("only forests of plain decision trees are compiled")
    n_classes = int(forest.n_classes_)
    parts: list[dict[str, Any]] = []
    roots = []
    start = leaf_base = 0
    for estimator in trees:
        part = _tree_nodes(estimator.tree_, n_classes, start, leaf_base)
        roots.append(start)
        start += len(part["nodes"])
        leaf_base += len(part["leaves"])
        parts.append(part)
    if start >= 2**32:
        raise TypeError(f"{start} nodes do not fit the uint32 layout")

    def joined(key: str) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate([part[key] for part in parts]))

    return CompiledForest(
        nodes=joined("nodes"),
        roots=np.asarray(roots, dtype=np.uint64),
        leaf_of=joined("leaf_of"),
        nan_left=joined("nan_left"),
        leaves=joined("leaves"),
        n_features=int(forest.n_features_in_),
    )
