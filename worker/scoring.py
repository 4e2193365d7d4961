"""Score a decoded batch with one ``predict_proba`` call and write the outgoing record bytes.

A batch the model cannot score is split in halves and re-scored until the failing rows are
found (:func:`score_isolating`), so one poisonous record dead-letters itself, not its batch.

Pure (no Kafka): the loop hands in frames and record coordinates, gets back bytes and headers.
Prediction values are written with string formatting over precomputed JSON fragments, not a
pydantic model per record, because at thousands of records per second the serialisation would
cost more than the forest; ``tests/unit/test_worker_scoring.py`` parses the output through
:class:`forestream.wire.messages.Prediction` so the two shapes cannot drift apart.
"""

from __future__ import annotations

import contextlib
import json
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from forestream.errors import ScoringError
from forestream.wire import headers


@dataclass(frozen=True)
class Scores:
    labels: np.ndarray
    """Predicted class label (str) per row: ``classes[argmax(probabilities)]``."""
    probabilities: np.ndarray
    """Shape (rows, len(classes)), columns in ``classes`` order."""

    @classmethod
    def empty(cls, n_classes: int) -> Scores:
        """No rows: an empty batch, or one whose scoring failed."""
        return cls(np.empty(0, dtype=object), np.empty((0, n_classes)))


ProbabilityFn = Callable[[pd.DataFrame], np.ndarray]


class _TreeByTree:
    """``predict_proba`` of a fitted random forest without joblib's per-call overhead.

    sklearn's forest dispatches its trees through ``joblib.Parallel`` even with ``n_jobs=1``;
    that costs ~6 ms per call for 100 trees, most of the time of a 50-record batch and a
    third of a 1,000-record one. This runs the same per-tree calls in the same order and
    sums them the same way, so the result is bit-identical: :func:`_probability_fn` checks
    that against ``predict_proba`` on the first batch and falls back to it if not.
    """

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

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        features = frame if self.preprocess is None else self.preprocess.transform(frame)
        forest = self._forest()
        if forest is None:
            raise ReferenceError("the model of this scorer was released")
        features = self._matrix(features, forest)
        total = np.zeros((features.shape[0], self.n_classes), dtype=np.float64)
        for tree in self.trees:
            total += tree.predict(features)[:, : self.n_classes]
        total /= len(self.trees)
        return total


_fast_paths: weakref.WeakKeyDictionary[Any, ProbabilityFn | None] = weakref.WeakKeyDictionary()
_fast_paths_lock = threading.Lock()


def _probability_fn(pipeline: Any, frame: pd.DataFrame) -> ProbabilityFn | None:
    """The tree-by-tree scorer of ``pipeline`` once it proved bit-identical, else None.

    Decided once per model object (on its warm-up batch): any model that is not a plain
    forest, or whose result differs in a single bit, keeps ``predict_proba``. A frame that
    ``predict_proba`` itself cannot score decides nothing (else one bad first batch would cost
    the model its fast path for good).
    """
    try:
        return _fast_paths[pipeline]
    except (KeyError, TypeError):  # TypeError: not weak-referenceable (a test double)
        pass
    fast: ProbabilityFn | None
    try:
        candidate = _TreeByTree(pipeline)
    except Exception:  # not a forest, another sklearn: use the public API
        fast = None
    else:
        try:
            expected = pipeline.predict_proba(frame)
        except Exception:
            return None  # a bad frame, not a verdict on the model: decide on a later one
        try:
            fast = candidate if np.array_equal(candidate(frame), expected) else None
        except Exception:
            fast = None
    with _fast_paths_lock, contextlib.suppress(TypeError):
        _fast_paths[pipeline] = fast
    return fast


def score_frame(pipeline: Any, frame: pd.DataFrame, classes: Sequence[str]) -> Scores:
    """One ``predict_proba`` for the whole batch; any failure becomes :class:`ScoringError`."""
    if len(frame) == 0:
        return Scores.empty(len(classes))
    try:
        fast = _probability_fn(pipeline, frame)
        try:
            raw = fast(frame) if fast is not None else pipeline.predict_proba(frame)
        except Exception:
            if fast is None:
                raise
            raw = pipeline.predict_proba(frame)  # the public API has the last word on errors
        probabilities = np.asarray(raw, dtype=np.float64)
    except Exception as exc:  # a model bug or a schema mismatch: the batch goes to the DLQ
        raise ScoringError(f"{type(exc).__name__}: {exc}") from exc
    if probabilities.shape != (len(frame), len(classes)):
        raise ScoringError(
            f"predict_proba returned shape {probabilities.shape}, expected "
            f"({len(frame)}, {len(classes)}) for classes {list(classes)}"
        )
    if not np.isfinite(probabilities).all():
        raise ScoringError("predict_proba returned NaN or infinite probabilities")
    labels = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)]
    return Scores(labels, probabilities)


ISOLATION_MAX_CALLS = 64
"""Most extra ``predict_proba`` calls spent finding the failing rows of one batch. One bad row
of a 1,000-row batch takes 20 (two per halving), three take about 55; past the budget, what is
still unsplit is dead-lettered whole, so even a model that fails on every row costs a bounded
~65 calls (0.4-0.6 s measured with the test pipeline) per batch."""


@dataclass(frozen=True)
class IsolatedScores:
    """A batch scored around the rows the model cannot score."""

    scores: Scores
    """Rows that scored, in frame order."""
    scored: np.ndarray
    """Frame position (ascending) of each row of ``scores``."""
    failed: dict[int, str]
    """Frame position -> the model's error, for every row that could not be scored."""
    error: str | None = None
    """The whole batch's error when its first evaluation failed, else None."""
    calls: int = 0
    """``predict_proba`` evaluations spent (1 for a batch that scored at once)."""


def score_isolating(
    pipeline: Any,
    frame: pd.DataFrame,
    classes: Sequence[str],
    *,
    max_calls: int = ISOLATION_MAX_CALLS,
) -> IsolatedScores:
    """:func:`score_frame`, but a failing batch is bisected so that only failing rows are lost.

    A failing range is split in halves and each half re-scored; failing halves are split again,
    breadth first, down to single rows. With k rows that fail wherever they are, at most k
    ranges fail per halving, so it takes at most ``1 + 2k * ceil(log2 n)`` calls, and never
    more than ``1 + max_calls``: once the budget is spent, failing ranges not yet split fail
    whole (breadth first keeps them as small as the budget allows). A clean batch costs the one
    call it always did. Rows keep the probabilities of the call that scored them (a forest
    scores rows independently of each other).
    """
    n = len(frame)
    try:
        whole = score_frame(pipeline, frame, classes)
    except ScoringError as exc:
        error = str(exc)
    else:
        return IsolatedScores(whole, np.arange(n), {}, None, 1 if n else 0)
    probabilities = np.zeros((n, len(classes)), dtype=np.float64)
    labels = np.empty(n, dtype=object)
    scored = np.zeros(n, dtype=bool)
    failed: dict[int, str] = {}
    pending = deque([(0, n, error)])  # failing ranges [start, stop) and their error
    extra = 0
    while pending:
        start, stop, why = pending.popleft()
        if stop - start == 1:
            failed[start] = why
        elif extra + 2 > max_calls:
            note = f"{why} (one of {stop - start} rows not told apart: isolation budget spent)"
            failed.update(dict.fromkeys(range(start, stop), note))
        else:
            middle = (start + stop) // 2
            for lo, hi in ((start, middle), (middle, stop)):
                extra += 1
                try:
                    part = score_frame(pipeline, frame.iloc[lo:hi], classes)
                except ScoringError as exc:
                    pending.append((lo, hi, str(exc)))
                else:
                    probabilities[lo:hi] = part.probabilities
                    labels[lo:hi] = part.labels
                    scored[lo:hi] = True
    positions = np.flatnonzero(scored)
    scores = Scores(labels[positions], probabilities[positions])
    return IsolatedScores(scores, positions, dict(sorted(failed.items())), error, 1 + extra)


def encode_predictions(
    *,
    scores: Scores,
    classes: Sequence[str],
    model_version: str,
    topic: str,
    partitions: Sequence[int],
    offsets: Sequence[int],
    event_times_ms: Sequence[int],
    scored_at_ms: int,
) -> list[bytes]:
    """One UTF-8 JSON value per row, in the :class:`forestream.wire.messages.Prediction` shape.

    Everything constant within a batch is baked into one %-template (JSON strings escaped,
    ``%`` doubled), so a row costs a single formatting call; ``%r`` of a float is its
    shortest round-tripping repr, the same text ``json.dumps`` writes.
    """
    probabilities = ",".join(_literal(json.dumps(c)) + ":%r" for c in classes)
    template = (
        '{"prediction":%s,"probabilities":{' + probabilities + '},"model_version":'
        + _literal(json.dumps(model_version))
        + ',"source":{"topic":' + _literal(json.dumps(topic))
        + ',"partition":%d,"offset":%d},"event_time":%d,"scored_at":'
        + str(int(scored_at_ms)) + "}"
    )  # fmt: skip
    label_json = {c: json.dumps(c) for c in classes}  # labels were picked once, by score_frame
    return [
        (template % (label_json[label], *row, partition, offset, event_time)).encode()
        for row, label, partition, offset, event_time in zip(
            scores.probabilities.tolist(),
            scores.labels.tolist(),
            partitions,
            offsets,
            event_times_ms,
            strict=True,
        )
    ]


def _literal(text: str) -> str:
    """``text`` as it must appear in a %-template to come out unchanged."""
    return text.replace("%", "%%")


def dlq_headers(
    code: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    model_version: str | None,
) -> list[tuple[str, bytes]]:
    """Headers of a dead letter: why it was rejected, where it came from, which model saw it."""
    return [
        (headers.ERROR, code.encode()),
        (headers.ERROR_DETAIL, detail.encode("utf-8", "replace")),
        (headers.SOURCE_TOPIC, topic.encode()),
        (headers.SOURCE_PARTITION, str(partition).encode()),
        (headers.SOURCE_OFFSET, str(offset).encode()),
        (headers.MODEL_VERSION, (model_version or "").encode()),
    ]
