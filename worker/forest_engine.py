"""Which code computes a model's probabilities: the compiled forest, or sklearn's own trees.

Two engines, one rule: a model's probabilities are ``predict_proba``'s, to the bit.

- ``compiled``: the fitted forest as one node array walked by numba
  (:mod:`forestream.worker.compiled_forest`), the preprocessing steps still sklearn's
  ``transform``. Only for a ``RandomForestClassifier`` (bare, or the last step of a Pipeline)
  of plain single-output decision trees.
- ``sklearn``: the trees' own ``Tree.predict``, one call per tree, summed in tree order
  (:class:`TreeByTree`: ``predict_proba`` without joblib's per-call overhead), or
  ``predict_proba`` itself for anything that is not a plain forest.

**The parity gate.** When a version loads (the model follower's thread, never the scoring
loop), :func:`prepare` compiles the forest and scores reference rows with it and with
``predict_proba``: the compiled engine serves only if every label is the same and every
probability bit-identical. The first live batch is checked the same way
(:func:`probabilities`, once); a difference there switches the version to sklearn's path for
good. Either failure, or a model the compiler cannot take, is logged once with the reason
(``model_engine_fallback``), and which engine serves shows on ``model_in_use`` and in the
``forestream_model_engine_info`` gauge.

A model scored without :func:`prepare` (a test double, a library caller) gets today's lazy
choice on its first batch: the tree-by-tree path if it is bit-identical there, else
``predict_proba``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import structlog

log = structlog.get_logger("forestream.worker.forest_engine")

COMPILED = "compiled"
SKLEARN = "sklearn"

ProbabilityFn = Callable[[pd.DataFrame], np.ndarray]


class TreeByTree:
    """``predict_proba`` of a fitted random forest without joblib's per-call overhead.

    sklearn's forest dispatches its trees through ``joblib.Parallel`` even with ``n_jobs=1``;
    that costs ~6 ms per call for 100 trees, most of the time of a 50-record batch and a
    third of a 1,000-record one. This runs the same per-tree calls in the same order and
    sums them the same way, so the result is bit-identical (checked, not assumed).
    """

    engine = SKLEARN

    def __init__(self, pipeline: Any) -> None:
        from sklearn.ensemble._forest import ForestClassifier
        from sklearn.pipeline import Pipeline
        from sklearn.tree import DecisionTreeClassifier

        self.preprocess = pipeline[:-1] if isinstance(pipeline, Pipeline) else None
        forest = pipeline[-1] if isinstance(pipeline, Pipeline) else pipeline
        if type(forest).predict_proba is not ForestClassifier.predict_proba:
            raise TypeError(f"{type(forest).__name__} is not a sklearn forest classifier")
        if forest.n_outputs_ != 1 or not all(
            type(tree).predict_proba is DecisionTreeClassifier.predict_proba
            for tree in forest.estimators_
        ):
            raise TypeError("only single-output forests of plain decision trees")
        # weakly: for a bare forest the forest *is* the cache key, and a strong reference from
        # the cached value would keep every reloaded model alive (RSS grew by one model per
        # reload in bench/reload.py); the caller holds the model for the call anyway
        self._forest = weakref.ref(forest)
        self.trees = [tree.tree_ for tree in forest.estimators_]
        self.n_classes = int(forest.n_classes_)
        names = getattr(forest, "feature_names_in_", None)
        self._names = None if names is None else [str(n) for n in names]

    def _matrix(self, features: Any, forest: Any) -> np.ndarray:
        """What the trees read: float32, C order. A frame of plain numeric columns named as
        the forest was fitted is cast here; sklearn's own validation (``_validate_X_predict``,
        5 % of the worker's loop at ~30k rec/s) does the same cast and has the last word on
        anything else, missing values and infinities included."""
        if (
            isinstance(features, pd.DataFrame)
            and self._names is not None
            and list(features.columns) == self._names
            and all(dtype.kind in "fiu" for dtype in features.dtypes)
        ):
            matrix = np.ascontiguousarray(features.to_numpy(dtype=np.float32))
            if np.isfinite(matrix).all():  # NaN is the forest's to allow or refuse
                return matrix
        return forest._validate_X_predict(features)

    def _features(self, frame: pd.DataFrame) -> np.ndarray:
        features = frame if self.preprocess is None else self.preprocess.transform(frame)
        forest = self._forest()
        if forest is None:
            raise ReferenceError("the model of this scorer was released")
        return self._matrix(features, forest)

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        features = self._features(frame)
        total = np.zeros((features.shape[0], self.n_classes), dtype=np.float64)
        for tree in self.trees:
            total += tree.predict(features)[:, : self.n_classes]
        total /= len(self.trees)
        return total


class CompiledScorer(TreeByTree):
    """The same input path as :class:`TreeByTree`, the trees walked by the compiled forest."""

    engine = COMPILED

    def __init__(self, pipeline: Any, compile_forest: Callable[[Any], Any] | None = None) -> None:
        from sklearn.ensemble import RandomForestClassifier

        super().__init__(pipeline)
        forest = self._forest()
        if not isinstance(forest, RandomForestClassifier):
            raise TypeError(f"{type(forest).__name__} is not a RandomForestClassifier")
        if compile_forest is None:
            from forestream.worker import compiled_forest

            compile_forest = compiled_forest.compile_forest
        self.compiled = compile_forest(forest)
        self.trees = []  # the compiled nodes replace them: one copy of the forest is enough

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        features = self._features(frame)
        if hasattr(features, "toarray"):  # a sparse one-hot block: absent entries are 0.0
            features = features.toarray()
        return self.compiled.predict_proba(features)


@dataclass
class Choice:
    """The engine of one model object."""

    fn: ProbabilityFn | None
    """None: the model's own ``predict_proba``."""
    reason: str | None = None
    """Why the compiled engine does not serve (None when it does)."""
    check_next: bool = False
    """Compare the next scored frame with ``predict_proba`` (the first live batch)."""
    label: str = ""
    """The version, for logs."""

    @property
    def engine(self) -> str:
        return getattr(self.fn, "engine", SKLEARN)


_choices: weakref.WeakKeyDictionary[Any, Choice] = weakref.WeakKeyDictionary()
_choices_lock = threading.Lock()


def _remember(pipeline: Any, choice: Choice) -> Choice:
    try:
        with _choices_lock:
            _choices[pipeline] = choice
    except TypeError:  # not weak-referenceable (a test double): decided again each time
        pass
    return choice


def _lookup(pipeline: Any) -> Choice | None:
    try:
        return _choices.get(pipeline)
    except TypeError:
        return None


def parity_problem(got: np.ndarray, expected: np.ndarray) -> str | None:
    """Why ``got`` is not ``predict_proba``'s ``expected``, or None: same shape, same labels
    (argmax), every probability bit-identical."""
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return f"shape {got.shape} differs from predict_proba's {expected.shape}"
    labels = int(np.count_nonzero(got.argmax(axis=1) != expected.argmax(axis=1)))
    if labels:
        return f"{labels} of {len(got)} labels differ from predict_proba"
    if not np.array_equal(got, expected):
        rows = int(np.count_nonzero((got != expected).any(axis=1)))
        worst = float(np.nanmax(np.abs(got - expected)))
        return f"{rows} of {len(got)} rows differ from predict_proba (max {worst:.3g})"
    return None


def _sklearn_path(pipeline: Any, frame: pd.DataFrame, expected: np.ndarray) -> ProbabilityFn | None:
    """The tree-by-tree path if it is bit-identical on ``frame``, else None (predict_proba)."""
    try:
        candidate = TreeByTree(pipeline)
        return candidate if np.array_equal(candidate(frame), expected) else None
    except Exception:
        return None


def prepare(
    pipeline: Any,
    reference: pd.DataFrame,
    *,
    label: str = "",
    compiled: bool = True,
    compile_forest: Callable[[Any], Any] | None = None,
) -> Choice:
    """Pick the engine of ``pipeline`` by the parity gate on the ``reference`` rows; never
    raises. Run where a version loads, off the scoring thread: compiling takes a while.
    ``compiled=False``: sklearn's path without trying (numba is not even imported)."""
    try:
        expected = np.asarray(pipeline.predict_proba(reference), dtype=np.float64)
    except Exception as exc:  # the warm-up will say it properly; nothing is decided here
        return Choice(None, f"predict_proba failed on the reference rows: {exc}", label=label)
    if not compiled:
        fallback = _sklearn_path(pipeline, reference, expected)
        return _remember(pipeline, Choice(fallback, "compiled engine turned off", label=label))
    reason: str | None
    try:
        scorer = CompiledScorer(pipeline, compile_forest)
    except Exception as exc:
        reason = f"not compiled: {type(exc).__name__}: {exc}"
    else:
        try:
            reason = parity_problem(scorer(reference), expected)
        except Exception as exc:
            reason = f"compiled engine failed on the reference rows: {type(exc).__name__}: {exc}"
        finally:
            _release_compiler()
        if reason is None:
            return _remember(pipeline, Choice(scorer, None, label=label))
        reason = f"parity gate on {len(reference)} reference rows: {reason}"
    fallback = _sklearn_path(pipeline, reference, expected)
    choice = _remember(pipeline, Choice(fallback, reason, label=label))
    log.warning("model_engine_fallback", version=label or None, engine=SKLEARN, reason=reason)
    return choice


def _release_compiler() -> None:
    """The kernel is loaded and has run: LLVM's library pages can leave the resident set
    (:func:`~forestream.worker.process_memory.release_compiler_pages`)."""
    from forestream.worker.process_memory import release_compiler_pages

    advised = release_compiler_pages()
    log.debug("compiler_pages_released", mb=advised >> 20)


def check_first_batch(pipeline: Any) -> None:
    """Have the next frame scored (the first live batch) checked against ``predict_proba``."""
    choice = _lookup(pipeline)
    if choice is not None and choice.engine == COMPILED:
        choice.check_next = True


def engine_of(pipeline: Any) -> str:
    """``compiled`` or ``sklearn``: which engine scores ``pipeline`` now."""
    choice = _lookup(pipeline)
    return choice.engine if choice is not None else SKLEARN


def _lazy(pipeline: Any, frame: pd.DataFrame) -> Choice | None:
    """A model nobody prepared: the tree-by-tree path if bit-identical on this first frame.

    A frame ``predict_proba`` itself cannot score decides nothing (else one bad first batch
    would cost the model its fast path for good)."""
    try:
        TreeByTree(pipeline)
    except Exception:  # not a forest, another sklearn: use the public API
        return _remember(pipeline, Choice(None, "not a plain sklearn forest"))
    try:
        expected = pipeline.predict_proba(frame)
    except Exception:
        return None
    return _remember(pipeline, Choice(_sklearn_path(pipeline, frame, expected), "not prepared"))


def probability_fn(pipeline: Any, frame: pd.DataFrame) -> ProbabilityFn | None:
    """The engine's function for ``pipeline`` (deciding lazily if it was not prepared); None
    means ``predict_proba``."""
    choice = _lookup(pipeline) or _lazy(pipeline, frame)
    return None if choice is None else choice.fn


def probabilities(pipeline: Any, frame: pd.DataFrame) -> tuple[np.ndarray, str]:
    """``predict_proba(frame)`` as the model's engine computes it, and that engine's name.

    The public API has the last word on errors: if the engine fails, ``predict_proba`` runs
    (and raises, if it must). A compiled engine's first live frame is also scored by
    ``predict_proba``; if the two differ in one bit the version goes back to sklearn's path
    for good, with a log line saying why, and this frame gets ``predict_proba``'s numbers.
    """
    fn = probability_fn(pipeline, frame)
    if fn is None:
        return pipeline.predict_proba(frame), SKLEARN
    try:
        raw = fn(frame)
    except Exception:
        return pipeline.predict_proba(frame), SKLEARN
    choice = _lookup(pipeline)
    if choice is not None and choice.check_next and choice.fn is fn:
        expected = np.asarray(pipeline.predict_proba(frame), dtype=np.float64)
        choice.check_next = False
        problem = parity_problem(raw, expected)
        if problem is not None:
            reason = f"parity gate on the first live batch ({len(frame)} rows): {problem}"
            _remember(
                pipeline,
                Choice(_sklearn_path(pipeline, frame, expected), reason, label=choice.label),
            )
            log.warning(
                "model_engine_fallback", version=choice.label or None, engine=SKLEARN, reason=reason
            )
            return expected, SKLEARN
    return raw, getattr(fn, "engine", SKLEARN)
