"""The shared batch path (worker and replay): every input becomes exactly one output record."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pytest

from contracts import headers
from contracts.headers import ReasonCode
from contracts.wire import Prediction
from tests.worker_support import fit_pipeline, make_frame, malformed_records, row_json, schema_for
from worker.batch import ScoredBatch
from worker.models import ActiveModel
from worker.processing import ObserverFanout, process_records


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
