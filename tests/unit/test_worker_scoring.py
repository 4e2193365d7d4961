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


def test_forests_are_scored_tree_by_tree_with_bit_identical_results() -> None:
    """The joblib-free path must give exactly predict_proba's numbers (ties pick the same
    label), for the trainer's Pipeline and for a bare forest alike."""
    from sklearn.ensemble import RandomForestClassifier

    from worker.scoring import _probability_fn

    pipeline, train = trained()
    live = make_frame(200, seed=4)
    decoded = decode_batch([row_json(r) for _, r in live.iterrows()], schema_for(train))
    forest = RandomForestClassifier(n_estimators=15, random_state=0)
    numeric = decoded.frame[["x1", "x3"]]
    forest.fit(numeric, live["target"])
    for model, frame in ((pipeline, decoded.frame), (forest, numeric)):
        classes = [str(c) for c in model.classes_]
        assert _probability_fn(model, frame) is not None  # the fast path is in use
        scores = score_frame(model, frame, classes)
        assert np.array_equal(scores.probabilities, model.predict_proba(frame))
        assert scores.labels.tolist() == [str(c) for c in model.predict(frame)]


def test_a_forest_with_its_own_predict_proba_keeps_it() -> None:
    from sklearn.ensemble import RandomForestClassifier

    from worker.scoring import _probability_fn

    class Calibrated(RandomForestClassifier):
        def predict_proba(self, frame: Any) -> Any:
            return np.full((len(frame), 2), 0.5)

    _, train = trained()
    model = Calibrated(n_estimators=3, random_state=0).fit(train[["x1"]], train["target"] == "low")
    assert _probability_fn(model, train[["x1"]]) is None
    scores = score_frame(model, train[["x1"]], ["False", "True"])
    assert (scores.probabilities == 0.5).all()


def test_percent_signs_and_quotes_in_names_survive_the_template() -> None:
    from worker.scoring import Scores

    classes = ["50%", 'a"b%d']
    probabilities = np.array([[0.25, 0.75], [1.0, 0.0]])
    scores = Scores(np.array(['a"b%d', "50%"], dtype=object), probabilities)
    values = encode_predictions(
        scores=scores,
        classes=classes,
        model_version="%s%%v",
        topic="t%r",
        partitions=[np.int64(1), 2],
        offsets=[7, np.int64(8)],
        event_times_ms=[5, 6],
        scored_at_ms=9,
    )
    parsed = [Prediction.model_validate_json(v) for v in values]
    assert [p.prediction for p in parsed] == ['a"b%d', "50%"]
    assert [p.probabilities for p in parsed] == [
        {"50%": 0.25, 'a"b%d': 0.75},
        {"50%": 1.0, 'a"b%d': 0.0},
    ]
    assert {(p.model_version, p.source.topic) for p in parsed} == {("%s%%v", "t%r")}
    assert [(p.source.partition, p.source.offset) for p in parsed] == [(1, 7), (2, 8)]


def test_a_released_model_is_not_kept_alive_by_the_scoring_cache() -> None:
    """Hot reload must free the old model: a bare forest is its own cache key (bench/reload)."""
    import gc
    import weakref

    from tests.worker_support import CATEGORICAL

    frame = make_frame(80, seed=5)
    numeric = frame.drop(columns=[*CATEGORICAL, "target"]).fillna(0.0)
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(numeric, frame["target"])
    classes = [str(c) for c in forest.classes_]
    score_frame(forest, numeric, classes)
    score_frame(forest, numeric, classes)
    released = weakref.ref(forest)
    del forest
    gc.collect()
    assert released() is None
