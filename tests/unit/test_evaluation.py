"""OnlineEvaluator: the label join, its bounds, and metrics equal to sklearn's (no broker)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score as sk_accuracy
from sklearn.metrics import f1_score

from forestream.worker.evaluation import (
    OnlineEvaluator,
    accuracy_score,
    decode_label,
    macro_f1_score,
)

CLASSES = ["adelie", "chinstrap", "gentoo", "other"]


def test_macro_f1_matches_sklearn_on_seeded_random_data() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 7, 100, 2_000):
        y_true = rng.choice(CLASSES, n)
        y_pred = np.where(rng.random(n) < 0.6, y_true, rng.choice(CLASSES[:3], n))
        assert macro_f1_score(y_true, y_pred) == pytest.approx(
            f1_score(y_true, y_pred, average="macro")
        )
        assert accuracy_score(y_true, y_pred) == pytest.approx(sk_accuracy(y_true, y_pred))


@given(
    st.lists(st.tuples(st.sampled_from(CLASSES), st.sampled_from(CLASSES)), min_size=1, max_size=60)
)
def test_macro_f1_matches_sklearn_including_classes_only_predicted_or_only_true(
    pairs: list[tuple[str, str]],
) -> None:
    y_true = [t for t, _ in pairs]
    y_pred = [p for _, p in pairs]
    expected = f1_score(y_true, y_pred, average="macro", zero_division=0.0)
    assert macro_f1_score(y_true, y_pred) == pytest.approx(expected)


def test_no_pairs_means_no_metric_rather_than_zero() -> None:
    assert accuracy_score([], []) is None
    assert macro_f1_score([], []) is None
    assert OnlineEvaluator().accuracy("v1") is None


def test_joined_labels_give_the_offline_accuracy_whatever_the_arrival_order() -> None:
    rng = np.random.default_rng(1)
    n = 3_000
    keys = [f"k{i}".encode() for i in range(n)]
    predictions = rng.choice(CLASSES[:3], n)
    labels = np.where(rng.random(n) < 0.7, predictions, rng.choice(CLASSES[:3], n))
    evaluator = OnlineEvaluator(window=n)
    # a third of the labels arrive before their predictions, the rest after, shuffled
    early = rng.permutation(n)[: n // 3]
    evaluator.add_labels([keys[i] for i in early], labels[early])
    for start in range(0, n, 250):
        evaluator.add_predictions(keys[start : start + 250], predictions[start : start + 250], "v1")
    late = np.setdiff1d(np.arange(n), early)
    late = rng.permutation(late)
    evaluator.add_labels([keys[i] for i in late], labels[late])

    assert evaluator.labels_joined == n
    assert evaluator.pending_predictions == 0 and evaluator.pending_labels == 0
    assert evaluator.accuracy("v1") == pytest.approx(sk_accuracy(labels, predictions))
    assert evaluator.macro_f1("v1") == pytest.approx(f1_score(labels, predictions, average="macro"))
    snap = evaluator.snapshot()["v1"]
    assert snap.labelled == n
    assert snap.accuracy == pytest.approx(sk_accuracy(labels, predictions))


def test_each_version_is_scored_on_its_own_predictions() -> None:
    evaluator = OnlineEvaluator()
    evaluator.add_predictions([b"a", b"b"], ["x", "x"], "v1")
    evaluator.add_predictions([b"c", b"d"], ["y", "x"], "v2")
    evaluator.add_labels([b"a", b"b", b"c", b"d"], ["x", "x", "x", "x"])
    assert evaluator.accuracy("v1") == 1.0
    assert evaluator.accuracy("v2") == 0.5
    assert set(evaluator.snapshot()) == {"v1", "v2"}


def test_a_pair_is_counted_once_and_a_repredicted_key_keeps_its_newest_prediction() -> None:
    evaluator = OnlineEvaluator()
    evaluator.add_predictions([b"a"], ["wrong"], "v1")
    evaluator.add_predictions([b"a"], ["right"], "v2")  # redelivered, scored by v2
    evaluator.add_labels([b"a"], ["right"])
    evaluator.add_labels([b"a"], ["right"])  # duplicate label: no prediction left to join
    assert evaluator.labels_joined == 1
    assert evaluator.pairs("v2") == [("right", "right")]
    assert evaluator.pairs("v1") == []
    assert evaluator.pending_labels == 1


def test_keyless_records_cannot_be_joined_and_are_ignored() -> None:
    evaluator = OnlineEvaluator()
    evaluator.add_predictions([None, b"a"], ["x", "x"], "v1")
    evaluator.add_labels([None], ["x"])
    assert evaluator.pending_predictions == 1
    assert evaluator.pending_labels == 0


def test_pending_maps_are_bounded_and_evict_the_oldest() -> None:
    evaluator = OnlineEvaluator(max_pending=10)
    evaluator.add_predictions([f"p{i}".encode() for i in range(15)], ["x"] * 15, "v1")
    evaluator.add_labels([f"l{i}".encode() for i in range(12)], ["x"] * 12)
    assert evaluator.pending_predictions == 10
    assert evaluator.evicted_predictions == 5
    assert evaluator.pending_labels == 10
    assert evaluator.evicted_labels == 2
    evaluator.add_labels([b"p0", b"p14"], ["x", "x"])  # p0 was evicted, p14 still held
    assert evaluator.labels_joined == 1


def test_the_window_keeps_the_newest_pairs_and_versions_are_bounded() -> None:
    evaluator = OnlineEvaluator(window=4, max_versions=2)
    keys = [f"k{i}".encode() for i in range(6)]
    evaluator.add_predictions(keys, ["x"] * 6, "v1")
    evaluator.add_labels(keys, ["y", "y", "x", "x", "x", "x"])
    assert evaluator.accuracy("v1") == 1.0  # the two wrong ones slid out
    for version in ("v2", "v3"):
        evaluator.add_predictions([version.encode()], ["x"], version)
        evaluator.add_labels([version.encode()], ["x"])
    assert set(evaluator.snapshot()) == {"v2", "v3"}


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (b'{"label": "gentoo"}', "gentoo"),
        (b'{"label": 2}', "2"),
        (b'{"label": true}', None),
        (b'{"label": 1.5}', None),
        (b'{"lbl": "x"}', None),
        (b'["x"]', None),
        (b"\xff", None),
        (b"", None),
        (None, None),
    ],
)
def test_label_values_decode_or_are_rejected(value: bytes | None, label: str | None) -> None:
    assert decode_label(value) == label


@given(st.binary(max_size=64))
def test_label_decoding_never_raises(value: bytes) -> None:
    result = decode_label(value)
    assert result is None or isinstance(result, str)
