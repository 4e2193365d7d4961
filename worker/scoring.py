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

import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from forestream.errors import ScoringError
from forestream.wire import headers
from forestream.worker.forest_engine import SKLEARN
from forestream.worker.forest_engine import probabilities as probabilities_of


@dataclass(frozen=True)
class Scores:
    labels: np.ndarray
    """Predicted class label (str) per row: ``classes[argmax(probabilities)]``."""
    probabilities: np.ndarray
    """Shape (rows, len(classes)), columns in ``classes`` order."""
    engine: str = SKLEARN
    """Which engine computed them (:mod:`forestream.worker.forest_engine`)."""

    @classmethod
    def empty(cls, n_classes: int) -> Scores:
        """No rows: an empty batch, or one whose scoring failed."""
        return cls(np.empty(0, dtype=object), np.empty((0, n_classes)))


def score_frame(pipeline: Any, frame: pd.DataFrame, classes: Sequence[str]) -> Scores:
    """One ``predict_proba`` for the whole batch, computed by the model's engine
    (:func:`forestream.worker.forest_engine.probabilities`); any failure becomes
    :class:`ScoringError`."""
    if len(frame) == 0:
        return Scores.empty(len(classes))
    try:
        raw, engine = probabilities_of(pipeline, frame)
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
    return Scores(labels, probabilities, engine)


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


class PredictionEncoder(Protocol):
    """Rows of a scored batch to prediction values: :func:`encode_predictions` (JSON) or
    :func:`forestream.wire.prediction_avro.avro_prediction_encoder` (``--output-format avro``)."""

    def __call__(
        self,
        *,
        scores: Scores,
        classes: Sequence[str],
        model_version: str,
        topic: str,
        partitions: Sequence[int],
        offsets: Sequence[int],
        event_times_ms: Sequence[int],
        scored_at_ms: int,
        served: ServedLabels | None = None,
    ) -> list[bytes]: ...


@dataclass(frozen=True)
class ServedLabels:
    """Shadow records only: the served version and its prediction per row, written as the
    record's ``served`` (:class:`forestream.wire.messages.ServedPrediction`)."""

    version: str
    labels: Sequence[str]


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
    served: ServedLabels | None = None,
) -> list[bytes]:
    """One UTF-8 JSON value per row, in the :class:`forestream.wire.messages.Prediction` shape.

    Everything constant within a batch is baked into one %-template (JSON strings escaped,
    ``%`` doubled), so a row costs a single formatting call; ``%r`` of a float is its
    shortest round-tripping repr, the same text ``json.dumps`` writes. ``served`` (the shadow
    path) appends the ``served`` object; without it the bytes are the served path's, unchanged.
    """
    if served is not None:
        return _with_served(
            encode_predictions(
                scores=scores,
                classes=classes,
                model_version=model_version,
                topic=topic,
                partitions=partitions,
                offsets=offsets,
                event_times_ms=event_times_ms,
                scored_at_ms=scored_at_ms,
            ),
            served,
        )
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


def _with_served(values: list[bytes], served: ServedLabels) -> list[bytes]:
    """Each value with ``,"served":{...}`` before its closing brace (shadow rows only, a few
    thousand a second at most: a slice and a join per row)."""
    head = b',"served":{"version":' + json.dumps(served.version).encode() + b',"prediction":'
    tails: dict[str, bytes] = {}
    out = []
    for value, label in zip(values, served.labels, strict=True):
        tail = tails.get(label)
        if tail is None:
            tail = tails[label] = head + json.dumps(label).encode() + b"}}"
        out.append(value[:-1] + tail)
    return out


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
