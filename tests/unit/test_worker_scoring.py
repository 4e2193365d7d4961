"""Scoring and output encoding: same answers as the pipeline offline, wire shape pinned."""

from __future__ import annotations

import math
import warnings
from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forestream.errors import ScoringError
from forestream.wire import headers
from forestream.wire.headers import ReasonCode
from forestream.wire.messages import Prediction
from forestream.worker.decoding import decode_batch
from forestream.worker.scoring import (
    Scores,
    ServedLabels,
    dlq_headers,
    encode_predictions,
    score_frame,
)
from tests.worker_support import fit_pipeline, make_frame, row_json, schema_for


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


def test_served_path_bytes_are_unchanged_and_shadow_rows_add_served() -> None:
    """The served path's exact bytes (a golden value), and the shadow path's: the same bytes
    with the served version's prediction appended, any label (even one the candidate lacks)."""
    arguments: dict[str, Any] = {
        "scores": Scores(np.array(["b", "a"], dtype=object), np.array([[0.25, 0.75], [1.0, 0.0]])),
        "classes": ["a", "b"],
        "model_version": "v2",
        "topic": "in",
        "partitions": [0, 1],
        "offsets": [7, 8],
        "event_times_ms": [100, 101],
        "scored_at_ms": 200,
    }
    plain = encode_predictions(**arguments)
    assert plain[0] == (
        b'{"prediction":"b","probabilities":{"a":0.25,"b":0.75},"model_version":"v2",'
        b'"source":{"topic":"in","partition":0,"offset":7},"event_time":100,"scored_at":200}'
    )
    shadow = encode_predictions(**arguments, served=ServedLabels("v1", ["a", 'c"%']))
    assert shadow[0] == plain[0][:-1] + b',"served":{"version":"v1","prediction":"a"}}'
    parsed = Prediction.model_validate_json(shadow[1])
    assert parsed.served is not None and parsed.served.prediction == 'c"%'
    assert parsed.model_dump(exclude={"served"}) == Prediction.model_validate_json(
        plain[1]
    ).model_dump(exclude={"served"})


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

    from forestream.worker.forest_engine import probability_fn as _probability_fn

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

    from forestream.worker.forest_engine import probability_fn as _probability_fn

    class Calibrated(RandomForestClassifier):
        def predict_proba(self, frame: Any) -> Any:
            return np.full((len(frame), 2), 0.5)

    _, train = trained()
    model = Calibrated(n_estimators=3, random_state=0).fit(train[["x1"]], train["target"] == "low")
    assert _probability_fn(model, train[["x1"]]) is None
    scores = score_frame(model, train[["x1"]], ["False", "True"])
    assert (scores.probabilities == 0.5).all()


def test_percent_signs_and_quotes_in_names_survive_the_template() -> None:
    from forestream.worker.scoring import Scores

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


# -- isolating the rows a model cannot score -----------------------------------------------------


def marked_frame(kinds: list[str], seed: int = 6) -> Any:
    """A decoded frame of len(kinds) live rows, x1 marked where the kind is "raises"/"nan"."""
    from tests.unit.rejecting_model import NAN, RAISES

    _, train = trained()
    live = make_frame(len(kinds), seed=seed)
    live.loc[[k == "raises" for k in kinds], "x1"] = RAISES
    live.loc[[k == "nan" for k in kinds], "x1"] = NAN
    decoded = decode_batch([row_json(r) for _, r in live.iterrows()], schema_for(train))
    assert decoded.valid_indexes == list(range(len(kinds)))
    return decoded.frame


def calls_bound(bad: int, rows: int) -> int:
    """What score_isolating promises: one call, plus two per failing range per halving."""
    return 1 + 2 * bad * math.ceil(math.log2(rows)) if bad else 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["good", "good", "good", "raises", "nan"]), max_size=70))
def test_isolation_scores_every_good_row_and_fails_exactly_the_bad_ones(kinds: list[str]) -> None:
    from forestream.worker.scoring import score_isolating
    from tests.unit.rejecting_model import rejecting_pipeline

    pipeline = rejecting_pipeline()
    classes = [str(c) for c in pipeline.classes_]
    frame = marked_frame(kinds)
    good = [i for i, kind in enumerate(kinds) if kind == "good"]
    bad = [i for i, kind in enumerate(kinds) if kind != "good"]

    isolated = score_isolating(pipeline, frame, classes, max_calls=10**6)

    assert isolated.scored.tolist() == good
    assert list(isolated.failed) == bad
    assert (isolated.error is None) == (not bad)
    assert isolated.calls <= calls_bound(len(bad), len(kinds))
    if good:  # the same numbers as scoring the good rows alone, in input order
        expected = pipeline.predict_proba(frame.iloc[good])
        assert np.array_equal(isolated.scores.probabilities, expected)
        assert isolated.scores.labels.tolist() == [classes[j] for j in expected.argmax(axis=1)]
    for i in bad:
        reason = "rejects" if kinds[i] == "raises" else "NaN"
        assert reason in isolated.failed[i]


def test_a_clean_batch_costs_one_call() -> None:
    from forestream.worker.scoring import score_isolating
    from tests.unit.rejecting_model import rejecting_pipeline

    calls = 0

    class Counting:
        def predict_proba(self, frame: Any) -> Any:
            nonlocal calls
            calls += 1
            return rejecting_pipeline().predict_proba(frame)

    frame = marked_frame(["good"] * 50)
    isolated = score_isolating(Counting(), frame, ["high", "low", "mid"])
    assert (calls, isolated.calls, len(isolated.scored), isolated.failed) == (1, 1, 50, {})


def test_a_few_bad_rows_of_a_full_batch_fit_the_default_budget() -> None:
    """Three bad rows of 1,000 (the default --max-batch): every other row is predicted."""
    from forestream.worker.scoring import score_isolating
    from tests.unit.rejecting_model import rejecting_pipeline

    kinds = ["good"] * 1000
    for i in (0, 517, 999):
        kinds[i] = "raises"
    isolated = score_isolating(rejecting_pipeline(), marked_frame(kinds), ["high", "low", "mid"])
    assert list(isolated.failed) == [0, 517, 999]
    assert len(isolated.scored) == 997
    assert isolated.calls <= calls_bound(3, 1000)


@pytest.mark.parametrize("bad", [40, 1000])
def test_past_the_budget_the_unsplit_rest_fails_whole_and_nothing_is_lost(bad: int) -> None:
    from forestream.worker.scoring import ISOLATION_MAX_CALLS, score_isolating
    from tests.unit.rejecting_model import rejecting_pipeline

    kinds = ["good"] * 1000
    for i in np.random.default_rng(bad).choice(1000, size=bad, replace=False).tolist():
        kinds[i] = "raises"
    isolated = score_isolating(rejecting_pipeline(), marked_frame(kinds), ["high", "low", "mid"])
    assert isolated.calls <= 1 + ISOLATION_MAX_CALLS
    scored, failed = set(isolated.scored.tolist()), set(isolated.failed)
    assert not scored & failed and scored | failed == set(range(1000))
    assert {i for i, kind in enumerate(kinds) if kind != "good"} <= failed
    assert any("isolation budget spent" in why for why in isolated.failed.values())


@pytest.mark.parametrize(
    "result",
    [ValueError("boom"), np.ones((3, 2)), np.full((1, 3), np.nan)],
    ids=["raises", "wrong-shape", "nan"],
)
def test_a_model_that_fails_on_everything_fails_every_row_in_bounded_calls(result: Any) -> None:
    from forestream.worker.scoring import score_isolating

    calls = 0

    class Broken:
        def predict_proba(self, frame: Any) -> Any:
            nonlocal calls
            calls += 1
            if isinstance(result, Exception):
                raise result
            return np.resize(result, (len(frame), 3)) if np.isnan(result).all() else result

    frame = marked_frame(["good"] * 300)
    isolated = score_isolating(Broken(), frame, ["a", "b", "c"], max_calls=20)
    assert calls == isolated.calls <= 21
    assert list(isolated.failed) == list(range(300))
    assert len(isolated.scores.labels) == len(isolated.scored) == 0
    assert isolated.scores.probabilities.shape == (0, 3)


def test_a_bad_first_batch_does_not_cost_a_forest_its_fast_path() -> None:
    """The bit-identity check needs a batch predict_proba can score; a failing one defers it."""
    from forestream.worker.forest_engine import probability_fn as _probability_fn

    frame = marked_frame(["good"] * 20)
    forest = fit_pipeline(make_frame(300, seed=1))  # a fresh model: nothing cached yet
    classes = [str(c) for c in forest.classes_]
    with warnings.catch_warnings(), pytest.raises(ScoringError):
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "overflow in cast"
        score_frame(forest, frame.assign(x1=1e300), classes)  # beyond float32: refused whole
    assert _probability_fn(forest, frame) is not None


@pytest.mark.parametrize("odd", [np.nan, np.inf, 1e300])
def test_values_the_forest_must_judge_still_meet_sklearns_own_validation(odd: float) -> None:
    """The fast path casts a plain numeric frame itself; a missing value or one float32 cannot
    hold goes through sklearn's validation, so a bare forest scores (or refuses) such a row
    exactly as ``predict_proba`` does."""
    from sklearn.ensemble import RandomForestClassifier

    live = make_frame(200, seed=5)
    numeric = live[["x1", "x3"]].astype(np.float64)
    forest = RandomForestClassifier(n_estimators=7, random_state=0).fit(numeric, live["target"])
    classes = [str(c) for c in forest.classes_]
    score_frame(forest, numeric, classes)  # the fast path, proved on a clean batch
    odd_frame = numeric.head(10).copy()
    odd_frame.loc[odd_frame.index[3], "x1"] = odd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "overflow in cast"
        try:
            expected = forest.predict_proba(odd_frame)
        except ValueError:
            with pytest.raises(ScoringError):
                score_frame(forest, odd_frame, classes)
        else:
            assert np.array_equal(score_frame(forest, odd_frame, classes).probabilities, expected)
