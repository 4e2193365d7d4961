"""The shared batch path (worker and replay): every input becomes exactly one output record."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forestream.wire import headers
from forestream.wire.headers import ReasonCode
from forestream.wire.messages import Prediction
from forestream.worker.batch import ScoredBatch
from forestream.worker.models import ActiveModel
from forestream.worker.processing import ObserverFanout, process_records
from tests.worker_support import fit_pipeline, make_frame, malformed_records, row_json, schema_for


@dataclass
class Record:
    """The fields of a consumed record the batch path reads (a plain value, not a client)."""

    key: bytes | None
    value: bytes | None
    offset: int
    partition: int = 0
    topic: str = "in"
    timestamp: int = 1_700_000_000_000


@dataclass
class Metadata:
    classes: list[str]
    feature_schema: Any
    reference: Any = None


@cache
def model() -> ActiveModel:
    frame = make_frame(300, seed=1)
    pipeline = fit_pipeline(frame)
    metadata = Metadata([str(c) for c in pipeline.classes_], schema_for(frame))
    return ActiveModel("v7", "sha", pipeline, metadata)


class Broken:
    """A model that loads but cannot score: the batch must go to the DLQ, not vanish."""

    def predict_proba(self, frame: Any) -> Any:
        raise RuntimeError("boom")


def batch_records() -> tuple[list[Record], list[str | None]]:
    """Valid and malformed records interleaved; expected code per record (None = valid)."""
    live = make_frame(30, seed=3)
    records: list[Record] = []
    expected: list[str | None] = []
    bad = malformed_records()
    for i, (_, row) in enumerate(live.iterrows()):
        records.append(Record(f"k{i}".encode(), row_json(row), offset=len(records)))
        expected.append(None)
        if i < len(bad):
            value, code = bad[i]
            records.append(Record(f"bad{i}".encode(), value, offset=len(records)))
            expected.append(code)
    return records, expected


def run(records: list[Record], active: ActiveModel) -> Any:
    return process_records(
        records, active, output_topic="out", dlq_topic="dlq", max_record_bytes=2000
    )


def test_every_record_becomes_one_prediction_or_one_dead_letter() -> None:
    records, expected = batch_records()
    batch = run(records, model())

    assert len(batch.outgoing) == len(records) == batch.records_in
    by_key = {o.key: o for o in batch.outgoing}
    assert len(by_key) == len(records)
    for record, code in zip(records, expected, strict=True):
        out = by_key[record.key]
        if code is None:
            assert out.topic == "out"
            prediction = Prediction.model_validate_json(out.value or b"")
            assert prediction.source.offset == record.offset
            assert prediction.model_version == "v7"
        else:
            assert out.topic == "dlq"
            assert out.value == record.value, "dead letters keep the original bytes"
            got = dict(out.headers)
            assert got[headers.ERROR].decode() == code
            assert got[headers.SOURCE_OFFSET] == str(record.offset).encode()
    assert batch.predicted == expected.count(None)
    assert sum(batch.dead_lettered.values()) == len(records) - batch.predicted
    assert batch.scoring_error is None

    scored = batch.scored
    assert len(scored.frame) == len(scored.keys) == len(scored.predictions) == batch.predicted
    assert scored.probabilities.shape == (batch.predicted, len(model().classes))
    assert sorted(scored.reject_codes) == sorted(c for c in expected if c is not None)


def test_a_model_that_cannot_score_dead_letters_the_whole_batch() -> None:
    records, expected = batch_records()
    good = model()
    broken = ActiveModel("v8", "sha", Broken(), good.metadata)
    batch = run(records, broken)

    assert batch.predicted == 0
    assert batch.scoring_error is not None and "boom" in batch.scoring_error
    assert all(o.topic == "dlq" for o in batch.outgoing)
    assert len(batch.outgoing) == len(records)
    assert batch.dead_lettered[ReasonCode.SCORING_FAILED] == expected.count(None)
    assert len(batch.scored.frame) == len(batch.scored.predictions) == 0


def test_record_without_key_and_value_still_reaches_the_dlq() -> None:
    batch = run([Record(None, None, offset=0)], model())
    [out] = batch.outgoing
    assert (out.topic, out.key, out.value) == ("dlq", None, b"")
    assert dict(out.headers)[headers.ERROR] == ReasonCode.EMPTY.encode()


class Recording:
    def __init__(self) -> None:
        self.batches: list[ScoredBatch] = []

    def on_batch(self, batch: ScoredBatch) -> None:
        self.batches.append(batch)


class Failing:
    def on_batch(self, batch: ScoredBatch) -> None:
        raise ValueError("observer bug")


@pytest.mark.parametrize("calls", [1, 3])
def test_observer_failure_is_counted_and_others_still_run(calls: int) -> None:
    records, _ = batch_records()
    scored = run(records, model()).scored
    before, after = Recording(), Recording()
    fanout = ObserverFanout([before, Failing(), after])
    for _ in range(calls):
        fanout.notify(scored)
    assert fanout.errors == calls
    assert len(before.batches) == len(after.batches) == calls
    assert np.array_equal(after.batches[0].predictions, scored.predictions)


def test_one_number_beyond_float32_dead_letters_only_its_record() -> None:
    """Issue 13: one 1e300 used to send its whole batch to the DLQ as scoring_failed."""
    live = make_frame(40, seed=4)
    records = [
        Record(f"k{i}".encode(), row_json(row), offset=i)
        for i, (_, row) in enumerate(live.iterrows())
    ]
    for offset, value in ((40, b"1e300"), (41, b"-3.5e38"), (42, b"5e-324")):
        body = b'{"x1": %s, "x3": 0.1, "color": "red"}' % value
        records.append(Record(b"odd%d" % offset, body, offset=offset))
    batch = run(records, model())
    assert batch.predicted == 41  # 5e-324 is a subnormal, which the model takes
    assert batch.dead_lettered == {ReasonCode.OUT_OF_RANGE: 2}
    assert batch.scoring_error is None
    letters = [o for o in batch.outgoing if o.topic == "dlq"]
    assert [o.key for o in letters] == [b"odd40", b"odd41"]
    assert (
        "beyond the model's float32 range"
        in dict(letters[0].headers)[headers.ERROR_DETAIL].decode()
    )


def rejecting_model() -> ActiveModel:
    from tests.unit.rejecting_model import rejecting_pipeline

    pipeline = rejecting_pipeline()
    return ActiveModel("v9", "sha", pipeline, Metadata(model().classes, model().schema))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from(["good"] * 5 + ["malformed"]), max_size=59),
    st.lists(st.sampled_from(["raises", "nan"]), max_size=5),
    st.randoms(use_true_random=False),
)
def test_only_the_rows_the_model_rejects_are_dead_lettered_as_scoring_failed(
    others: list[str], rejected: list[str], rng: Any
) -> None:
    """Any mix of good rows, rows the model fails on and malformed records: every good row is
    predicted in input order with its own key and offset, every row the model fails on is in
    the DLQ as scoring_failed with its original bytes (five or fewer per batch of up to 64 are
    always within the isolation budget)."""
    from tests.unit.rejecting_model import NAN, RAISES

    kinds = others + rejected
    rng.shuffle(kinds)
    live = make_frame(len(kinds), seed=rng.randrange(1000))
    bad = malformed_records()
    records, expected = [], []
    for i, (kind, (_, row)) in enumerate(zip(kinds, live.iterrows(), strict=True)):
        if kind in ("raises", "nan"):
            row = row.copy()
            row["x1"] = RAISES if kind == "raises" else NAN
        value, code = rng.choice(bad) if kind == "malformed" else (row_json(row), None)
        code = ReasonCode.SCORING_FAILED if kind in ("raises", "nan") else code
        records.append(Record(f"k{i}".encode(), value, offset=100 + i, partition=i % 3))
        expected.append(code)

    batch = run(records, rejecting_model())

    predictions = [o for o in batch.outgoing if o.topic == "out"]
    letters = {o.key: o for o in batch.outgoing if o.topic == "dlq"}
    good = [r for r, code in zip(records, expected, strict=True) if code is None]
    assert len(batch.outgoing) == len(records)
    assert [o.key for o in predictions] == [r.key for r in good], "input order, own keys"
    parsed = [Prediction.model_validate_json(o.value or b"") for o in predictions]
    assert [(p.source.partition, p.source.offset) for p in parsed] == [
        (r.partition, r.offset) for r in good
    ]
    for record, code in zip(records, expected, strict=True):
        if code is not None:
            letter = letters[record.key]
            assert letter.value == record.value, "dead letters keep the original bytes"
            assert dict(letter.headers)[headers.ERROR].decode() == code
            assert dict(letter.headers)[headers.SOURCE_OFFSET] == str(record.offset).encode()
    scoring_failed = expected.count(ReasonCode.SCORING_FAILED)
    assert batch.dead_lettered[ReasonCode.SCORING_FAILED] == scoring_failed
    assert (batch.scoring_error is not None) == (scoring_failed > 0)
    assert batch.predicted == len(good) == len(batch.scored.frame) == len(batch.scored.keys)
    assert batch.scored.keys == [r.key for r in good]
    if good:  # each prediction is what the model says about that row alone
        pipeline = rejecting_model().pipeline
        frame = batch.scored.frame
        assert np.array_equal(batch.scored.probabilities, pipeline.predict_proba(frame))
        for p, row in zip(parsed, batch.scored.probabilities.tolist(), strict=True):
            assert [p.probabilities[c] for c in model().classes] == row


def test_avro_predictions_change_only_the_prediction_values() -> None:
    """``--output-format avro``: the same records to the same topics with the same keys and
    headers; predictions decode to the JSON ones, dead letters keep the input's bytes."""
    import io
    import json

    import fastavro

    from forestream.wire.confluent import HEADER_BYTES, schema_id_of
    from forestream.wire.prediction_avro import PREDICTION_SCHEMA, avro_prediction_encoder

    records, _ = batch_records()
    as_json = run(records, model())
    as_avro = process_records(
        records, model(), output_topic="out", dlq_topic="dlq", max_record_bytes=2000,
        encode=avro_prediction_encoder(11),
    )  # fmt: skip
    assert [(o.topic, o.key) for o in as_avro.outgoing] == [
        (o.topic, o.key) for o in as_json.outgoing
    ]
    parsed = fastavro.parse_schema(PREDICTION_SCHEMA)
    for j, a in zip(as_json.outgoing, as_avro.outgoing, strict=True):
        if j.topic == "dlq":
            assert (a.value, a.headers) == (j.value, j.headers)
            continue
        assert schema_id_of(a.value) == 11 and not a.headers and not j.headers
        decoded = fastavro.schemaless_reader(io.BytesIO(a.value[HEADER_BYTES:]), parsed, None)
        expected = {**json.loads(j.value), "served": None}  # JSON omits a null ``served``
        del decoded["scored_at"], expected["scored_at"]  # the clock of each run
        assert decoded == expected
