"""The evaluator's pure parts: the partition-local join, its bounds, bad input by reason, the
count records and the merge math (counts summed over instances give the fleet's exact scores)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forestream.edge.interface import TopicPartition
from forestream.errors import TopicsNotCoPartitioned, UserError
from forestream.exit_codes import USER_ERROR, exit_code_for
from forestream.worker.evaluation import accuracy_score, macro_f1_score
from forestream.worker.evaluator.counts import (
    CountsBuffer,
    accuracy_of,
    macro_f1_of,
    merge,
    record_key,
    window_start,
)
from forestream.worker.evaluator.join import (
    DecodedPrediction,
    PartitionJoin,
    decode_prediction,
    label_or_reason,
)
from forestream.worker.evaluator.service import check_co_partitioned

CLASSES = frozenset({"a", "b", "c"})


def pred(prediction: str, version: str = "v1") -> DecodedPrediction:
    return DecodedPrediction(prediction, version, CLASSES)


def make(max_pending: int = 100, max_wait_ms: int = 60_000) -> tuple[PartitionJoin, CountsBuffer]:
    buffer = CountsBuffer(60.0)
    return PartitionJoin(buffer, max_pending, max_wait_ms), buffer


def cells(buffer: CountsBuffer) -> dict[tuple[str, int], dict[tuple[str, str], int]]:
    return {cell: dict(counter) for cell, counter in buffer.cells.items()}


def test_a_label_joins_its_prediction_whichever_comes_first() -> None:
    join, buffer = make()
    join.add_prediction(b"k1", 0, 1_000, pred("a"))
    join.add_label(b"k1", 0, 61_000, "a")  # label after: window of the label's timestamp
    join.add_label(b"k2", 1, 62_000, "b")
    join.add_prediction(b"k2", 1, 62_500, pred("c"))  # label before
    assert cells(buffer) == {("v1", 60_000): {("a", "a"): 1, ("b", "c"): 1}}
    assert join.joined == 2 and not join.predictions and not join.labels


def test_a_pair_counts_once_and_a_redelivered_prediction_keeps_the_newest() -> None:
    join, buffer = make()
    join.add_prediction(b"k", 0, 1_000, pred("a"))
    join.add_prediction(b"k", 5, 1_100, pred("b", "v2"))
    assert join.oldest_prediction_offset() == 5
    join.add_label(b"k", 0, 2_000, "b")
    join.add_label(b"k", 1, 2_100, "b")  # a duplicate label waits: its pair was counted
    assert cells(buffer) == {("v2", 0): {("b", "b"): 1}}
    assert len(join.labels) == 1


def test_a_label_no_class_of_the_version_is_rejected_not_counted() -> None:
    join, buffer = make()
    join.add_prediction(b"k", 0, 1_000, pred("a"))
    join.add_label(b"k", 0, 1_000, "zebra")
    assert join.rejected == {"unknown_class": 1} and not buffer.cells


def test_waiting_is_bounded_by_count_oldest_first() -> None:
    join, _ = make(max_pending=3)
    for i in range(5):
        join.add_prediction(f"p{i}".encode(), i, 1_000, pred("a"))
        join.add_label(f"l{i}".encode(), i, 1_000, "a")
    assert list(join.predictions) == [b"p2", b"p3", b"p4"]
    assert list(join.labels) == [b"l2", b"l3", b"l4"]
    assert join.evicted == {"prediction_full": 2, "label_full": 2}
    assert join.oldest_prediction_offset() == 2 and join.oldest_label_offset() == 2


def test_waiting_is_bounded_by_record_time() -> None:
    join, buffer = make(max_wait_ms=10_000)
    join.add_prediction(b"old", 0, 1_000, pred("a"))
    join.add_label(b"lonely", 0, 2_000, "a")
    join.add_prediction(b"young", 1, 5_000, pred("a"))
    join.add_label(b"x", 1, 12_500, "b")  # stream time 12.5 s: horizon 2.5 s
    assert list(join.predictions) == [b"young"]
    assert list(join.labels) == [b"x"]
    assert join.evicted == {"prediction_expired": 1, "label_expired": 1}
    join.add_label(b"old", 2, 12_600, "a")  # too late: it waits, never joined
    assert not buffer.cells


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (None, b'{"label": "a"}', "no_key"),
        (b"k", b"not json", "malformed"),
        (b"k", b'{"label": 1.5}', "malformed"),
        (b"k", b"[]", "malformed"),
        (b"k", None, "malformed"),
    ],
)
def test_bad_labels_have_a_reason(key: bytes | None, value: bytes | None, reason: str) -> None:
    assert label_or_reason(key, value) == (None, reason)


def test_good_labels_and_predictions_decode() -> None:
    assert label_or_reason(b"k", b'{"label": 3}') == ("3", None)
    value = json.dumps(
        {"prediction": "a", "model_version": "v1", "probabilities": {"a": 0.9, "b": 0.1}}
    ).encode()
    assert decode_prediction(value) == DecodedPrediction("a", "v1", frozenset({"a", "b"}))
    for bad in (b"", b"{", b"[]", b'{"prediction": "a", "model_version": "v1"}'):
        assert decode_prediction(bad) is None


def test_records_are_deltas_keyed_by_version_and_window() -> None:
    buffer = CountsBuffer(60.0)
    buffer.add("v1", "a", "a", 59_999)
    buffer.add("v1", "a", "b", 60_000)
    buffer.add("v1", "a", "b", 119_999)
    records = buffer.drain("e1", now_ms=1)
    assert [(r.window_start, r.labelled, r.confusion) for r in records] == [
        (0, 1, {"a": {"a": 1}}),
        (60_000, 2, {"a": {"b": 2}}),
    ]
    assert record_key(records[1]) == b"v1/60000"
    assert not buffer.cells and buffer.drain("e1", 2) == []
    assert window_start(61_234, 60_000) == 60_000


def test_the_topics_must_be_co_partitioned() -> None:
    with pytest.raises(TopicsNotCoPartitioned) as raised:
        check_co_partitioned({"preds": 4, "labels": 2}, "preds", "labels", "here")
    message = str(raised.value)
    assert "'preds' has 4 partitions" in message and "'labels' has 2" in message
    assert exit_code_for(raised.value) == USER_ERROR
    with pytest.raises(UserError, match="'labels' does not exist"):
        check_co_partitioned({"preds": 4}, "preds", "labels", "here")
    check_co_partitioned({"preds": 3, "labels": 3}, "preds", "labels", "here")


pairs = st.lists(
    st.tuples(
        st.sampled_from(["v1", "v2"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(0, 200_000),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(pairs=pairs, instances=st.integers(1, 4), cuts=st.lists(st.integers(0, 200), max_size=6))
def test_merged_counts_score_as_the_concatenated_pairs(
    pairs: list[tuple[str, str, str, int]], instances: int, cuts: list[int]
) -> None:
    """Pairs spread over instances and publishes in any way: the summed records give, per
    (version, window), the accuracy and macro F1 of that cell's pairs taken together."""
    buffers = [CountsBuffer(60.0) for _ in range(instances)]
    records = []
    for i, (version, label, prediction, ts) in enumerate(pairs):
        buffers[i % instances].add(version, label, prediction, ts)
        if i in cuts:  # a publish in between: more, smaller deltas
            records += buffers[i % instances].drain(f"e{i % instances}", i)
    for n, buffer in enumerate(buffers):
        records += buffer.drain(f"e{n}", 0)
    merged = merge(records)
    expected: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for version, label, prediction, ts in pairs:
        expected.setdefault((version, window_start(ts, 60_000)), []).append((label, prediction))
    assert set(merged) == set(expected)
    for cell, cell_pairs in expected.items():
        labels = [p[0] for p in cell_pairs]
        predictions = [p[1] for p in cell_pairs]
        assert accuracy_of(merged[cell]) == pytest.approx(accuracy_score(labels, predictions))
        assert macro_f1_of(merged[cell]) == pytest.approx(macro_f1_score(labels, predictions))
    assert accuracy_of({}) is None and macro_f1_of({}) is None


def test_the_monitor_passes_over_count_records() -> None:
    from forestream.monitor import ReportBoard

    buffer = CountsBuffer(60.0)
    buffer.add("v1", "a", "a", 0)
    (record,) = buffer.drain("e1", 0)
    board = ReportBoard()
    board.add(record.model_dump_json().encode())
    assert board.malformed == 0 and not board.latest


def test_the_metrics_read_the_counters_by_reason() -> None:
    from prometheus_client import CollectorRegistry

    from forestream.worker.evaluator.metrics import EvaluatorCollector
    from forestream.worker.evaluator.service import Evaluator
    from forestream.worker.evaluator.settings import EvaluatorSettings

    evaluator = Evaluator(EvaluatorSettings(), ident="e1")
    join = PartitionJoin(evaluator.buffer, max_pending=1, max_wait_ms=60_000)
    evaluator.joins[0] = join
    join.add_prediction(b"p1", 0, 1_000, pred("a"))
    join.add_prediction(b"p2", 1, 1_000, pred("a"))  # evicts p1
    join.add_label(b"p2", 0, 1_000, "b")
    evaluator.labels_read, evaluator.predictions_read = 3, 2
    evaluator.bad_labels["no_key"] += 2
    registry = CollectorRegistry()
    registry.register(EvaluatorCollector(evaluator))

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("forestream_evaluator_records_total", role="labels") == 3
    assert sample("forestream_evaluator_joined_total") == 1
    assert sample("forestream_evaluator_evicted_total", reason="prediction_full") == 1
    assert sample("forestream_evaluator_bad_records_total", role="labels", reason="no_key") == 2
    assert sample("forestream_evaluator_waiting", side="predictions") == 0
    # a partition moving away takes its join, not its counts: the counters never go back
    evaluator.released([TopicPartition("labels", 0)])
    assert sample("forestream_evaluator_evicted_total", reason="prediction_full") == 1
    assert sample("forestream_evaluator_joined_total") == 1


def test_exactly_once_reads_labels_again_for_a_partition_given_straight_back() -> None:
    """kafka-python's eager rebalance revokes every partition and gives some straight back,
    keeping the group consumer's position; the pairs joined since the last transaction are
    dropped, so the labels, like the predictions, are read again from the committed offset
    (else those pairs were lost: the fleet acceptance test caught one)."""
    from typing import cast

    from forestream.edge.interface import TransactionalProducer
    from forestream.worker.evaluator.service import Evaluator
    from forestream.worker.evaluator.settings import EvaluatorSettings

    evaluator = Evaluator(EvaluatorSettings(guarantee="exactly-once"), ident="e1")
    evaluator.txn = cast(TransactionalProducer, object())  # only its presence is read here
    tps = [TopicPartition("labels", p) for p in (0, 1)]
    evaluator.assigned(tps)
    evaluator.seek_due.clear()  # what the loop does once it has positioned both readers
    evaluator.labels_due.clear()
    evaluator.joins[0].add_prediction(b"k", 5, 1_000, pred("a"))
    evaluator.joins[0].add_label(b"k", 7, 1_000, "a")
    evaluator.label_pos[0] = 8
    assert len(evaluator.buffer) == 1
    evaluator.revoking(tps)  # eager: every partition goes
    evaluator.assigned(tps[:1])  # and partition 0 comes straight back
    assert len(evaluator.buffer) == 0  # the pair, not committed, is dropped...
    assert evaluator.seek_due == {0} and evaluator.labels_due == {0}  # ...and read again


def test_at_least_once_keeps_what_waits_on_a_partition_given_straight_back() -> None:
    """The same eager rebalance at-least-once: revocation publishes and commits (labels at the
    position read), so a label waiting for its prediction is not read again; the partition
    given back resumes with it instead of losing it. A partition that moved is dropped once
    the poll returns, its totals kept."""
    from typing import cast

    from forestream.edge.interface import AckingProducer
    from forestream.worker.evaluator.service import Evaluator
    from forestream.worker.evaluator.settings import EvaluatorSettings

    evaluator = Evaluator(EvaluatorSettings(), ident="e1")
    evaluator.producer = cast(AckingProducer, object())  # nothing to publish: never used
    tps = [TopicPartition("labels", p) for p in (0, 1)]
    evaluator.assigned(tps)
    evaluator.seek_due.clear()  # what the loop does once it has positioned the reader
    evaluator.joins[0].add_label(b"k", 7, 1_000, "a")  # read before its prediction
    evaluator.label_pos[0], evaluator.prediction_pos[0] = 8, 3
    evaluator.joins[1].add_prediction(b"m", 4, 1_000, pred("a"))
    offsets = evaluator.revoking(tps)  # eager: every partition goes, committed as read
    assert offsets[TopicPartition(evaluator.s.labels_topic, 0)] == 8
    evaluator.released(tps, lost=False)  # what both clients call right after the revocation
    evaluator.assigned(tps[:1])  # partition 0 comes straight back, 1 moved
    assert len(evaluator.joins[0].labels) == 1 and evaluator.label_pos[0] == 8
    assert 0 not in evaluator.seek_due  # the reader goes on where it was: nothing re-read
    evaluator._drop_parked()  # the poll that ran the rebalance returned
    assert set(evaluator.joins) == {0} and not evaluator.parked
    evaluator.joins[0].add_prediction(b"k", 9, 1_000, pred("a"))
    assert len(evaluator.buffer) == 1  # the pair the label was waiting for is counted


def test_a_lost_partition_drops_what_was_parked() -> None:
    """Lost (the session expired, nothing committed): nothing of it is kept to resume."""
    from typing import cast

    from forestream.edge.interface import AckingProducer
    from forestream.worker.evaluator.service import Evaluator
    from forestream.worker.evaluator.settings import EvaluatorSettings

    evaluator = Evaluator(EvaluatorSettings(), ident="e1")
    evaluator.producer = cast(AckingProducer, object())
    tps = [TopicPartition("labels", 0)]
    evaluator.assigned(tps)
    evaluator.joins[0].add_label(b"k", 7, 1_000, "a")
    evaluator.label_pos[0] = 8
    evaluator.revoking(tps)
    evaluator.released(tps, lost=True)
    assert not evaluator.parked and not evaluator.joins
