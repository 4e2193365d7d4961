"""The evaluator's shadow comparison, pure: shadow records decoded by reason, joined with the
same labels as the predictions, counted per (candidate, served, window) with exact numbers,
merged over instances; and the evaluator routing, committing and publishing them."""

from __future__ import annotations

import json

import pytest

from forestream.edge.interface import ConsumedRecord, TopicPartition
from forestream.errors import TopicsNotCoPartitioned
from forestream.exit_codes import USER_ERROR, exit_code_for
from forestream.fleet.counts import ShadowTotals
from forestream.wire.messages import EvaluationCounts, ShadowCounts
from forestream.worker.evaluator.counts import (
    ShadowCountsBuffer,
    accuracy_of,
    merge_shadow,
    shadow_record_key,
)
from forestream.worker.evaluator.join import PartitionJoin, Served, decode_shadow
from forestream.worker.evaluator.service import Evaluator, shadow_topic_to_read
from forestream.worker.evaluator.settings import EvaluatorSettings


def shadow_value(candidate: str, served: str | None, version: str = "v2", by: str = "v1") -> bytes:
    value: dict[str, object] = {
        "prediction": candidate,
        "probabilities": {"a": 0.5, "b": 0.5},
        "model_version": version,
        "source": {"topic": "in", "partition": 0, "offset": 1},
        "event_time": 1,
        "scored_at": 2,
    }
    if served is not None:
        value["served"] = {"version": by, "prediction": served}
    return json.dumps(value).encode()


def test_shadow_records_decode_with_served_or_a_reason() -> None:
    decoded, reason = decode_shadow(shadow_value("a", "b"))
    assert reason is None and decoded is not None
    assert (decoded.prediction, decoded.version, decoded.served) == ("a", "v2", Served("v1", "b"))
    assert decode_shadow(shadow_value("a", None)) == (None, "no_served")
    bad_served = json.loads(shadow_value("a", "b"))
    bad_served["served"] = {"version": "", "prediction": "b"}
    assert decode_shadow(json.dumps(bad_served).encode()) == (None, "no_served")
    assert decode_shadow(b"not json") == (None, "malformed")
    assert decode_shadow(b'{"served": {"version": "v1", "prediction": "a"}}') == (None, "malformed")


def test_a_labelled_shadow_record_counts_both_versions_on_it() -> None:
    buffer = ShadowCountsBuffer(60.0)
    join = PartitionJoin(buffer, max_pending=100, max_wait_ms=60_000)
    rows = [  # key, candidate's, served's, label
        (b"k1", "a", "a", "a"),  # both right, agree
        (b"k2", "b", "a", "a"),  # served right
        (b"k3", "b", "b", "b"),  # both right, agree
        (b"k4", "a", "b", "b"),  # served right
        (b"k5", "a", "b", "a"),  # candidate right
    ]
    for offset, (key, candidate, served, label) in enumerate(rows):
        decoded, _ = decode_shadow(shadow_value(candidate, served))
        assert decoded is not None
        if offset % 2:  # label first or shadow record first: the same pair
            join.add_label(key, offset, 60_000 + offset, label)
            join.add_prediction(key, offset, 60_000 + offset, decoded)
        else:
            join.add_prediction(key, offset, 60_000 + offset, decoded)
            join.add_label(key, offset, 60_000 + offset, label)
    join.add_label(b"k6", 9, 60_009, "c")  # waits: no shadow record for it
    assert join.joined == 5 and len(join.labels) == 1
    (record,) = buffer.drain("e1", 7)
    assert record == ShadowCounts(
        evaluator_id="e1",
        candidate_version="v2",
        served_version="v1",
        window_start=60_000,
        window_s=60.0,
        labelled=5,
        agreed=2,
        candidate_confusion={"a": {"a": 2, "b": 1}, "b": {"a": 1, "b": 1}},
        served_confusion={"a": {"a": 2, "b": 1}, "b": {"b": 2}},
        at=7,
    )
    assert shadow_record_key(record) == b"v2/shadow/v1/60000"
    assert not buffer.cells  # drained: the next record is a delta
    assert accuracy_of(record.candidate_confusion) == pytest.approx(3 / 5)
    assert accuracy_of(record.served_confusion) == pytest.approx(4 / 5)


def test_shadow_counts_merge_over_instances_and_windows() -> None:
    def counts(ident: str, start: int, labelled: int, agreed: int, diag: int) -> ShadowCounts:
        return ShadowCounts(
            evaluator_id=ident,
            candidate_version="v2",
            served_version="v1",
            window_start=start,
            window_s=60.0,
            labelled=labelled,
            agreed=agreed,
            candidate_confusion={"a": {"a": diag, "b": labelled - diag}},
            served_confusion={"a": {"a": labelled}},
            at=0,
        )

    other = counts("e1", 0, 4, 4, 4).model_copy(update={"candidate_version": "v3"})
    merged = merge_shadow([counts("e1", 0, 10, 6, 7), counts("e2", 60_000, 30, 30, 30), other])
    totals = merged["v2", "v1"]
    assert (totals.labelled, totals.agreed) == (40, 36)
    assert totals.candidate == {"a": {"a": 37, "b": 3}}
    assert totals.served == {"a": {"a": 40}}
    assert totals.agreement == pytest.approx(36 / 40)
    assert accuracy_of(totals.candidate) == pytest.approx(37 / 40)
    assert merged["v3", "v1"].labelled == 4
    assert merge_shadow([]) == {} and ShadowTotals().agreement is None


def test_the_shadow_topic_is_optional_but_co_partitioned() -> None:
    settings = EvaluatorSettings(output_topic="preds", labels_topic="labels")
    assert shadow_topic_to_read({"preds": 3, "labels": 3}, settings) is None
    assert shadow_topic_to_read({"labels": 3, "preds.shadow": 3}, settings) == "preds.shadow"
    with pytest.raises(TopicsNotCoPartitioned) as raised:
        shadow_topic_to_read({"labels": 3, "preds.shadow": 2}, settings)
    assert "'preds.shadow' has 2 partitions" in str(raised.value)
    assert "\n" not in str(raised.value) and exit_code_for(raised.value) == USER_ERROR


def test_the_evaluator_joins_both_topics_and_publishes_both_kinds_together() -> None:
    from prometheus_client import CollectorRegistry

    from forestream.worker.evaluator.metrics import EvaluatorCollector

    settings = EvaluatorSettings(
        output_topic="preds", labels_topic="labels", monitoring_topic="mon"
    )
    evaluator = Evaluator(settings, ident="e1", shadow_topic="preds.shadow")
    evaluator.assigned([TopicPartition("labels", 0)])
    evaluator.seek_due.clear()  # as _follow does once the reader is positioned
    prediction = json.loads(shadow_value("a", None, version="v1"))
    evaluator._feed_predictions(
        [
            ConsumedRecord("preds", 0, 10, 1_000, b"k1", json.dumps(prediction).encode()),
            ConsumedRecord("preds.shadow", 0, 20, 1_000, b"k1", shadow_value("b", "a")),
            ConsumedRecord("preds.shadow", 0, 21, 1_000, b"k2", shadow_value("a", "a")),
            ConsumedRecord("preds.shadow", 0, 22, 1_000, b"k3", shadow_value("a", None)),
        ]
    )
    evaluator._feed_labels([ConsumedRecord("labels", 0, 5, 61_000, b"k1", b'{"label": "a"}')])
    assert evaluator.offsets({0}) == {
        TopicPartition("labels", 0): 6,
        TopicPartition("preds", 0): 11,
        TopicPartition("preds.shadow", 0): 21,  # k2 still waits for its label
    }
    evaluator._fill_outbox()
    by_key = {o.key: o.value for o in evaluator.outbox}
    assert set(by_key) == {b"v1/60000", b"v2/shadow/v1/60000"}
    served = EvaluationCounts.model_validate_json(by_key[b"v1/60000"])
    shadow = ShadowCounts.model_validate_json(by_key[b"v2/shadow/v1/60000"])
    assert served.confusion == {"a": {"a": 1}}
    assert (shadow.labelled, shadow.agreed) == (1, 0)
    assert shadow.candidate_confusion == {"a": {"b": 1}}
    assert shadow.served_confusion == {"a": {"a": 1}}

    registry = CollectorRegistry()
    registry.register(EvaluatorCollector(evaluator))

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("forestream_evaluator_records_total", role="shadow") == 3
    assert sample("forestream_evaluator_shadow_joined_total") == 1
    assert sample("forestream_evaluator_joined_total") == 1
    assert sample("forestream_evaluator_bad_records_total", role="shadow", reason="no_served") == 1
    assert sample("forestream_evaluator_waiting", side="shadow") == 1
    evaluator.released([TopicPartition("labels", 0)])  # totals survive the partition moving
    assert sample("forestream_evaluator_shadow_joined_total") == 1
    assert not evaluator.shadow_joins and not evaluator.shadow_pos


def test_without_a_shadow_topic_the_evaluator_has_no_shadow_join() -> None:
    evaluator = Evaluator(EvaluatorSettings(), ident="e1")
    evaluator.assigned([TopicPartition("labels", 0), TopicPartition("labels", 1)])
    assert sorted(evaluator.joins) == [0, 1] and not evaluator.shadow_joins


def test_a_shadow_join_evicts_by_its_own_bounds_counted_apart() -> None:
    settings = EvaluatorSettings(evaluator_max_pending=1)
    evaluator = Evaluator(settings, ident="e1", shadow_topic="s")
    evaluator.assigned([TopicPartition("labels", 0)])
    evaluator.seek_due.clear()
    evaluator._feed_predictions(
        [ConsumedRecord("s", 0, i, 1_000, f"k{i}".encode(), shadow_value("a", "a")) for i in (0, 1)]
    )
    assert evaluator.totals()["evicted"] == {"shadow_prediction_full": 1}


def test_the_monitor_passes_over_shadow_count_records() -> None:
    from forestream.monitor import ReportBoard

    buffer = ShadowCountsBuffer(60.0)
    buffer.add("v2", "a", "a", 0, Served("v1", "b"))
    (record,) = buffer.drain("e1", 0)
    board = ReportBoard()
    board.add(record.model_dump_json().encode())
    assert board.malformed == 0 and not board.latest
