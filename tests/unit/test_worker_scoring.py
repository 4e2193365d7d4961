"""Scoring and output encoding: same answers as the pipeline offline, wire shape pinned."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pytest

from contracts import headers
from contracts.headers import ReasonCode
from contracts.wire import Prediction
from tests.worker_support import fit_pipeline, make_frame, row_json, schema_for
from worker.decoding import decode_batch
from worker.scoring import ScoringError, dlq_headers, encode_predictions, score_frame


@cache
def trained() -> tuple[Any, Any]:
    frame = make_frame(300, seed=1)
    return fit_pipeline(frame), frame


def test_scores_match_offline_pipeline_on_decoded_records() -> None:
    pipeline, train = trained()
    live = make_frame(60, seed=2)
    decoded = decode_batch([row_json(r) for _, r in live.iterrows()], schema_for(train))
    assert decoded.valid_indexes == list(range(60))
    classes = [str(c) for c in pipeline.classes_]
    scores = score_frame(pipeline, decoded.frame, classes)
    offline = pipeline.predict(live[decoded.frame.columns])
    assert scores.labels.tolist() == offline.tolist()
    np.testing.assert_allclose(
        scores.probabilities, pipeline.predict_proba(live[decoded.frame.columns])
    )


def test_encoded_predictions_parse_as_the_wire_model() -> None:
    pipeline, train = trained()
    live = make_frame(5, seed=3)
    decoded = decode_batch([row_json(r) for _, r in live.iterrows()], schema_for(train))
    classes = [str(c) for c in pipeline.classes_]
    scores = score_frame(pipeline, decoded.frame, classes)
    values = encode_predictions(
        scores=scores,
        classes=classes,
        model_version='v"1',  # needs escaping
        topic="in.topic",
        partitions=[0, 1, 2, 3, 0],
        offsets=[10, 11, 12, 13, 14],
        event_times_ms=[1000, 1001, 1002, 1003, 1004],
        scored_at_ms=2000,
    )
    parsed = [Prediction.model_validate_json(v) for v in values]
    assert [p.prediction for p in parsed] == scores.labels.tolist()
    assert [p.source.offset for p in parsed] == [10, 11, 12, 13, 14]
    assert [p.source.partition for p in parsed] == [0, 1, 2, 3, 0]
    assert {p.source.topic for p in parsed} == {"in.topic"}
    assert {p.model_version for p in parsed} == {'v"1'}
    assert [p.event_time for p in parsed] == [1000, 1001, 1002, 1003, 1004]
    assert {p.scored_at for p in parsed} == {2000}
    for p, row in zip(parsed, scores.probabilities, strict=True):
        assert list(p.probabilities) == classes
        assert list(p.probabilities.values()) == row.tolist()  # repr round-trips exactly
        assert p.prediction == classes[int(np.argmax(row))]


def test_empty_frame_is_not_sent_to_the_model() -> None:
    class Exploding:
        def predict_proba(self, _frame: Any) -> Any:
            raise AssertionError("must not be called")

    _, train = trained()
    decoded = decode_batch([b"junk"], schema_for(train))
    scores = score_frame(Exploding(), decoded.frame, ["a", "b"])
    assert scores.probabilities.shape == (0, 2)


@pytest.mark.parametrize(
    "result",
    [ValueError("boom"), np.ones((3, 2)), np.full((1, 3), np.nan)],
    ids=["raises", "wrong-shape", "nan"],
)
def test_model_failures_become_scoring_error(result: Any) -> None:
    class Broken:
        def predict_proba(self, _frame: Any) -> Any:
            if isinstance(result, Exception):
                raise result
            return result

    _, train = trained()
    decoded = decode_batch([row_json(make_frame(1).iloc[0])], schema_for(train))
    with pytest.raises(ScoringError):
        score_frame(Broken(), decoded.frame, ["a", "b", "c"])


def test_dlq_headers_names_and_values() -> None:
    got = dict(dlq_headers(ReasonCode.NOT_JSON, "bad ✗", "in", 3, 42, None))
    assert got == {
        headers.ERROR: b"not_json",
        headers.ERROR_DETAIL: "bad ✗".encode(),
        headers.SOURCE_TOPIC: b"in",
        headers.SOURCE_PARTITION: b"3",
        headers.SOURCE_OFFSET: b"42",
        headers.MODEL_VERSION: b"",
    }
