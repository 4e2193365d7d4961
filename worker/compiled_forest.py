"""A fitted sklearn random forest as one compact node array and a numba loop over it.

sklearn walks the forest tree by tree (one Cython pass over the whole batch per tree, then a
float64 sum); the benchmark forest's trees are deep (unlimited depth), so a walk is a chain of
dependent loads, and sklearn's (like a plain loop's) waits on each one. Here every tree is
renumbered depth-first so that a node's left child is the next node: a node is 8 bytes
(float32 threshold rounded down; a uint32 holding the feature index in its low bits and the
distance to the right child in the rest, see :data:`NODE`) and a walk mostly reads forward.

The walks go level by level (:func:`_walk`): every walk still under way in a group takes one
step, those that reached their leaf drop out of the list, and the loop goes round until the
list is empty. The steps of one pass do not depend on each other, so the core keeps dozens of
node loads in flight instead of one per walk, and no branch guesses the direction of a split
(the one branch left, "did this walk stop", is almost always "no"). A group is up to
:data:`BLOCK_ROWS` rows of one tree; a smaller batch takes several trees at a time, up to
:data:`GROUP_WALKS` walks (a single record walks up to 128 trees side by side). Four
interleaved walks per tree, the layout before, were measured at about twice the cost
(docs/benchmark-findings.md).

Each row adds its leaves' class probabilities in float64 in tree order, then divides by the
tree count: exactly the additions and the division ``RandomForestClassifier.predict_proba``
performs, element by element, so the result is bit-identical (the parity gate of
:mod:`forestream.worker.forest_engine` checks that, it does not assume it).

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

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forestream.worker.process_memory import release_compiler_pages

NODE = np.dtype([("threshold", "<f4"), ("packed", "<u4")])
"""One node, 8 bytes. ``packed`` is ``distance << feature_bits | feature``: a split sends
``x[feature] <= threshold`` to the next node, anything else ``distance`` nodes further on (its
right child). A leaf has ``threshold`` NaN and distance 0, so a step from a leaf stays there
(that step is how a walk finds out it ended). ``threshold`` is sklearn's float64 threshold
rounded *down* to float32: for every float32 ``x`` (what sklearn casts its input to),
``x <= t64`` exactly when ``x <= floor32(t64)``."""
_LEAF = -1
BLOCK_ROWS = 256
"""Rows of one group: the block's input (30 KB at 30 features) and one tree's nodes stay in
the core's cache while the block walks it."""
GROUP_WALKS = 128
"""A batch smaller than this walks several trees at once, up to this many walks in a group."""


def _cache_dir() -> str:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    return str(Path.home() / ".cache" / "forestream" / "numba")


def _import_numba() -> Any:
    import numba

    # importing llvmlite left ~50 MB of its library resident that loading the kernel does not
    # read again: released now, the process's peak while a version loads is ~25 MB lower
    release_compiler_pages()
    if not os.environ.get("NUMBA_CACHE_DIR"):
        numba.config.CACHE_DIR = _cache_dir()  # type: ignore[attr-defined]
    return numba


@contextlib.contextmanager
def _cache_loads_without_registries() -> Iterator[None]:
    """While the kernels below load, numba's cache loads them with only its runtime (NRT)
    initialised, not the full refresh of its target context: that refresh imports and
    registers every lowering implementation numba has (229 modules, ~26 MB of the worker's
    RSS), which only compiling needs. A cache miss still compiles as usual: numba's compiler
    refreshes the context itself. Uses numba internals (:data:`NUMBA_CACHE`, bounded in
    pyproject); where they are missing, numba's own load runs."""
    from numba.core import caching
    from numba.core.runtime import rtsys

    from forestream.runtime.internals import NUMBA_CACHE, missing

    cache = caching.Cache
    if missing(cache, NUMBA_CACHE):
        yield
        return

    def load_overload(self: Any, sig: Any, target_context: Any) -> Any:
        rtsys.initialize(target_context)  # the symbols the kernels link against
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)

    original = cache.load_overload
    cache.load_overload = load_overload  # type: ignore[method-assign]
    try:
        yield
    finally:
        cache.load_overload = original  # type: ignore[method-assign]


_numba = _import_numba()
_t = _numba.types
_KERNEL = _t.void(_t.float32[:, ::1], _t.float32[::1], _t.uint32[::1], _t.uint8[::1],
                  _t.uint32[::1], _t.uint64[::1], _t.float64[:, ::1], _t.float64[:, ::1],
                  _t.uint32)  # fmt: skip
"""Both kernels' one signature, compiled (or loaded from the cache) when this module loads."""


def _walk_missing(  # pragma: no cover - compiled by numba; tests call it through CompiledForest
    x: np.ndarray,
    thresholds: np.ndarray,
    packed: np.ndarray,
    nan_left: np.ndarray,
    leaf_of: np.ndarray,
    roots: np.ndarray,
    leaves: np.ndarray,
    out: np.ndarray,
    feature_bits: int | np.uint32,
) -> None:
    """Input with NaN somewhere: one walk at a time, a NaN going where sklearn's
    ``missing_go_to_left`` sends it (a leaf's flag is 0 and its distance 0, so a leaf holds)."""
    n, n_classes, n_trees = x.shape[0], out.shape[1], roots.shape[0]
    mask = (np.uint32(1) << feature_bits) - np.uint32(1)
    out[:] = 0.0
    for t in range(n_trees):
        for i in range(n):
            row, k = x[i], roots[t]
            while True:
                p = packed[k]
                value = row[p & mask]
                if value <= thresholds[k] or (value != value and nan_left[k] != 0):
                    following = k + np.uint64(1)
                else:
                    following = k + np.uint64(p >> feature_bits)
                if following == k:
                    break
                k = following
            for c in range(n_classes):
                out[i, c] += leaves[leaf_of[k], c]
    out /= n_trees


def _walk(  # pragma: no cover - compiled by numba; tests call it through CompiledForest
    x: np.ndarray,
    thresholds: np.ndarray,
    packed: np.ndarray,
    nan_left: np.ndarray,
    leaf_of: np.ndarray,
    roots: np.ndarray,
    leaves: np.ndarray,
    out: np.ndarray,
    feature_bits: int | np.uint32,
) -> None:
    """Per group (a block of rows, one tree or a few), level by level, each walk under way one
    step; then each row adds its leaf of each tree in tree order. Input with a NaN goes to
    :func:`_walk_missing` (checked here: numpy's check cost ~2 µs a call, most of a record's).

    A walk is one int64 in ``live``: its slot in ``reached`` (tree-major) in the high 32 bits,
    its row's offset in the block's input in the low 32; its node is ``at``."""
    n, n_classes, n_trees, n_features = x.shape[0], out.shape[1], roots.shape[0], x.shape[1]
    flat = x.ravel()
    for i in range(flat.shape[0]):
        if np.isnan(flat[i]):
            _walk_missing(x, thresholds, packed, nan_left, leaf_of, roots, leaves, out,
                          feature_bits)  # fmt: skip
            return
    mask = (np.uint32(1) << feature_bits) - np.uint32(1)
    block = min(n, BLOCK_ROWS)
    per_group = max(1, GROUP_WALKS // max(block, 1))
    live = np.empty(block * per_group, np.int64)
    at = np.empty(block * per_group, np.uint64)
    reached = np.empty(block * per_group, np.uint64)
    out[:] = 0.0
    for start in range(0, n, max(block, 1)):
        rows = min(n, start + block) - start
        base = start * n_features
        for first in range(0, n_trees, per_group):
            last = min(n_trees, first + per_group)
            m = 0
            for t in range(first, last):
                for r in range(rows):
                    live[m] = (m << 32) | (r * n_features)
                    at[m] = roots[t]
                    m += 1
            while m > 0:
                kept = 0
                for w in range(m):
                    walk = live[w]
                    k = at[w]
                    p = packed[k]
                    left = flat[base + (walk & 0xFFFFFFFF) + (p & mask)] <= thresholds[k]
                    # a select of the distance, not a branch: LLVM makes it a cmov
                    following = k + (np.uint64(1) if left else np.uint64(p >> feature_bits))
                    reached[walk >> 32] = following
                    live[kept] = walk
                    at[kept] = following
                    kept += following != k
                m = kept
            slot = 0
            for _tree in range(first, last):
                for r in range(rows):
                    leaf = leaf_of[reached[slot]]
                    slot += 1
                    for c in range(n_classes):
                        out[start + r, c] += leaves[leaf, c]
    out /= n_trees


with _cache_loads_without_registries():
    _walk_missing = _numba.njit(_KERNEL, cache=True, nogil=True, boundscheck=False)(_walk_missing)
    _walk = _numba.njit(_KERNEL, cache=True, nogil=True, boundscheck=False)(_walk)
# loading (or compiling) them made ~50 MB of LLVM's library resident again, for a moment:
# given back now, before whoever imported this loads anything else (scoring never calls LLVM)
release_compiler_pages()


@dataclass(frozen=True)
class CompiledForest:
    """Every tree's nodes (depth-first, one array), where each tree starts, the leaf table."""

    thresholds: np.ndarray
    """float32 per node, every tree's nodes depth-first, tree after tree: see :data:`NODE`."""
    packed: np.ndarray
    """uint32 per node: ``distance << feature_bits | feature`` (:data:`NODE`)."""
    roots: np.ndarray
    """uint64: the index of each tree's root, in the forest's tree order."""
    leaf_of: np.ndarray
    """uint32 per node: a leaf's row in ``leaves`` (0 for a split: never read)."""
    nan_left: np.ndarray
    """uint8 per node: 1 where sklearn sends a missing value left (``missing_go_to_left``)."""
    leaves: np.ndarray
    """float64 (leaves, classes): each leaf's class probabilities, as the tree stores them."""
    n_features: int
    feature_bits: int
    """Low bits of ``NODE.packed`` that hold the feature index."""

    @property
    def n_classes(self) -> int:
        return int(self.leaves.shape[1])

    @property
    def nbytes(self) -> int:
        arrays = (
            self.thresholds,
            self.packed,
            self.roots,
            self.leaf_of,
            self.nan_left,
            self.leaves,
        )
        return int(sum(a.nbytes for a in arrays))

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        """Class probabilities of the rows of ``matrix`` (cast to float32 C order, as sklearn
        does), as the forest's ``predict_proba`` computes them."""
        x = np.ascontiguousarray(matrix, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got shape {x.shape}")
        out = np.empty((x.shape[0], self.n_classes), dtype=np.float64)
        _walk(x, self.thresholds, self.packed, self.nan_left, self.leaf_of, self.roots,
              self.leaves, out, np.uint32(self.feature_bits))  # fmt: skip
        return out


def _floor_float32(values: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64 value."""
    rounded = values.astype(np.float32)
    up = rounded.astype(np.float64) > values
    rounded[up] = np.nextafter(rounded[up], np.float32(-np.inf))
    return rounded


def _tree_nodes(tree: Any, n_classes: int, feature_bits: int, leaf_base: int) -> dict[str, Any]:
    """One sklearn ``Tree`` renumbered depth-first (a left child right after its parent), its
    leaves placed from row ``leaf_base`` of the leaf table."""
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
    distance = np.where(is_leaf, 0, new_of[np.where(is_leaf, 0, right[order])] - np.arange(count))
    if int(distance.max()) >= 2 ** (32 - feature_bits):
        raise TypeError(f"a tree of {count} nodes does not fit the 8-byte node layout")
    feature = np.where(is_leaf, 0, tree.feature[order]).astype(np.uint64)
    nodes = np.zeros(count, dtype=NODE)
    nodes["threshold"] = np.where(
        is_leaf, np.float32(np.nan), _floor_float32(tree.threshold[order])
    )
    nodes["packed"] = (distance.astype(np.uint64) << np.uint64(feature_bits)) | feature
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
    n_features = int(forest.n_features_in_)
    feature_bits = max(1, (n_features - 1).bit_length())
    if feature_bits > 24:
        raise TypeError(f"{n_features} features do not fit the 8-byte node layout")
    parts: list[dict[str, Any]] = []
    roots = []
    start = leaf_base = 0
    for estimator in trees:
        part = _tree_nodes(estimator.tree_, n_classes, feature_bits, leaf_base)
        roots.append(start)
        start += len(part["nodes"])
        leaf_base += len(part["leaves"])
        parts.append(part)
    if start >= 2**32:
        raise TypeError(f"{start} nodes do not fit the uint32 layout")

    def joined(key: str) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate([part[key] for part in parts]))

    return CompiledForest(
        thresholds=joined("nodes")["threshold"].copy(),
        packed=joined("nodes")["packed"].copy(),
        roots=np.asarray(roots, dtype=np.uint64),
        leaf_of=joined("leaf_of"),
        nan_left=joined("nan_left"),
        leaves=joined("leaves"),
        n_features=n_features,
        feature_bits=feature_bits,
    )
