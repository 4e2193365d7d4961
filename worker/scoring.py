"""Score a decoded batch with one ``predict_proba`` call and write the outgoing record bytes.

Pure (no Kafka): the loop hands in frames and record coordinates, gets back bytes and headers.
Prediction values are written with string formatting over precomputed JSON fragments, not a
pydantic model per record, because at thousands of records per second the serialisation would
cost more than the forest; ``tests/unit/test_worker_scoring.py`` parses the output through
:class:`contracts.wire.Prediction` so the two shapes cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from contracts import headers


class ScoringError(Exception):
    """The model could not score a batch; every record of it is dead-lettered, none lost."""


@dataclass(frozen=True)
class Scores:
    labels: np.ndarray
    """Predicted class label (str) per row: ``classes[argmax(probabilities)]``."""
    probabilities: np.ndarray
    """Shape (rows, len(classes)), columns in ``classes`` order."""


def score_frame(pipeline: Any, frame: pd.DataFrame, classes: Sequence[str]) -> Scores:
    """One ``predict_proba`` for the whole batch; any failure becomes :class:`ScoringError`."""
    if len(frame) == 0:
        return Scores(np.empty(0, dtype=object), np.empty((0, len(classes))))
    try:
        probabilities = np.asarray(pipeline.predict_proba(frame), dtype=np.float64)
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
    """One UTF-8 JSON value per row, in the :class:`contracts.wire.Prediction` shape."""
    class_keys = [json.dumps(c) + ":" for c in classes]
    class_json = [json.dumps(c) for c in classes]
    label_index = scores.probabilities.argmax(axis=1).tolist() if len(classes) else []
    tail_version = json.dumps(model_version)
    source_head = '"source":{"topic":' + json.dumps(topic) + ',"partition":'
    out: list[bytes] = []
    for row, best, partition, offset, event_time in zip(
        scores.probabilities.tolist(),
        label_index,
        partitions,
        offsets,
        event_times_ms,
        strict=True,
    ):
        probabilities = ",".join([k + repr(p) for k, p in zip(class_keys, row, strict=True)])
        out.append(
            (
                '{"prediction":'
                + class_json[best]
                + ',"probabilities":{'
                + probabilities
                + '},"model_version":'
                + tail_version
                + ","
                + source_head
                + str(int(partition))
                + ',"offset":'
                + str(int(offset))
                + '},"event_time":'
                + str(int(event_time))
                + ',"scored_at":'
                + str(int(scored_at_ms))
                + "}"
            ).encode()
        )
    return out


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
