"""Shadow scoring's pure parts: which records the share picks, the announcement on the models
topic, when a batch's shadow work is skipped, and how the follower takes a candidate."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from forestream.edge.interface import ConsumedRecord, InputRecord
from forestream.wire.messages import ModelEvent, ServingRef, ShadowEvent, shadow_key
from forestream.worker.models import ModelFollower
from forestream.worker.shadow import MAX_UNACKED_BATCHES, record_ident, select, selects, skip_reason
from tests.unit.test_worker_models import Loader, event


def _record(key: bytes | None, offset: int = 0) -> InputRecord:
    return ConsumedRecord("in", 0, offset, 0, key, b"{}")


def test_share_is_chosen_by_key_the_same_every_time() -> None:
    keys = [f"k-{i}".encode() for i in range(2000)]
    first = [selects(k, 0.5) for k in keys]
    assert first == [selects(k, 0.5) for k in keys]  # another worker, another run: same picks
    # a smaller share picks a subset of a larger one (the threshold only moves)
    assert all(selects(k, 0.5) for k in keys if selects(k, 0.2))


@pytest.mark.parametrize("share", [0.05, 0.3, 0.5, 0.9])
def test_share_proportion_holds_over_many_keys(share: float) -> None:
    n = 20_000
    picked = sum(selects(f"order-{i}".encode(), share) for i in range(n))
    assert abs(picked / n - share) < 0.02, picked


def test_share_one_picks_every_valid_record() -> None:
    records = [_record(f"k{i}".encode(), i) for i in range(10)]
    assert select(records, [0, 2, 3, 9], 1.0) == [0, 2, 3, 9]
    assert select(records, [1, 4], 0.5) == [i for i in (1, 4) if selects(f"k{i}".encode(), 0.5)]


def test_records_without_key_are_chosen_by_their_coordinates() -> None:
    assert record_ident(_record(None, 7)) == b"in/0/7"
    assert record_ident(_record(b"", 7)) == b""
    picks = {selects(record_ident(_record(None, i)), 0.5) for i in range(200)}
    assert picks == {True, False}  # keyless streams are split too, not all-or-nothing


def test_shadow_announcement_round_trips_and_has_its_own_key() -> None:
    ref = ServingRef(version="v2", sha256="ab" * 32, signature="sig")
    started = ShadowEvent(name="penguins", shadow=ref, at=5)
    assert ShadowEvent.model_validate_json(started.model_dump_json()) == started
    stopped = ShadowEvent.model_validate_json(b'{"name": "penguins", "at": 6}')
    assert stopped.shadow is None and stopped.kind == "shadow"
    assert shadow_key("penguins") == "penguins/shadow"
    with pytest.raises(ValidationError):  # never mistaken for a promotion, nor one for it
        ModelEvent.model_validate_json(started.model_dump_json())
    with pytest.raises(ValidationError):
        ShadowEvent.model_validate_json(event("v1"))


def test_skip_when_busy_or_acks_lag() -> None:
    assert skip_reason(False, 0) is None
    assert skip_reason(False, MAX_UNACKED_BATCHES - 1) is None
    assert skip_reason(True, 0) == "busy"
    assert skip_reason(False, MAX_UNACKED_BATCHES) == "backpressure"


def _shadow(version: str | None) -> bytes:
    ref = ServingRef(version=version, sha256=f"sha-{version}") if version else None
    return ShadowEvent(name="m", shadow=ref, at=0).model_dump_json().encode()


def test_follower_loads_the_candidate_beside_the_served_version_and_drops_it_on_stop() -> None:
    seen: list[str | None] = []
    follower = ModelFollower("unused:9092", "models", "m", Loader())
    follower.on_shadow_change = seen.append
    follower._on_record(b"m/shadow", _shadow("v2"))
    assert not follower._needs_shadow_load()  # the served version comes first
    follower._on_record(b"m", event("v1"))
    assert follower._load_wanted()
    assert follower._needs_shadow_load() and follower._load_shadow()
    served, shadow = follower.current(), follower.shadow()
    assert served is not None and served.version == "v1"
    assert shadow is not None and shadow.version == "v2"
    follower._on_record(b"m/shadow", _shadow(None))
    assert follower.shadow() is None and follower.current() is served
    assert seen == ["v2", None]


def test_a_candidate_that_fails_its_checks_never_touches_serving() -> None:
    failures: list[str] = []
    follower = ModelFollower(
        "unused:9092", "models", "m", Loader(), on_load_failure=failures.append
    )
    follower._on_record(b"m", event("v1"))
    assert follower._load_wanted()
    follower._on_record(b"m/shadow", _shadow("bad-v2"))
    assert not follower._load_shadow()
    assert follower.shadow() is None
    assert follower.current() is not None and follower.current().version == "v1"  # type: ignore[union-attr]
    assert failures and not follower._needs_load()


class _Follower:
    def __init__(self, model: object) -> None:
        self.model = model

    def shadow(self) -> object:
        return self.model


def test_offer_never_waits_a_batch_finding_the_scorer_busy_is_skipped_and_counted() -> None:
    from types import SimpleNamespace
    from typing import Any, cast

    from forestream.worker.metrics import WorkerMetrics
    from forestream.worker.settings import WorkerSettings
    from forestream.worker.shadow import MAX_QUEUED_BATCHES, ShadowScorer

    metrics = WorkerMetrics()
    telemetry: Any = SimpleNamespace(metrics=metrics)
    follower: Any = _Follower(SimpleNamespace(version="v2"))
    scorer = ShadowScorer(
        WorkerSettings(),
        follower,
        telemetry,
        parser=lambda records, schema: cast(Any, None),
        encoder=lambda: cast(Any, None),
    )
    scorer._thread = cast(Any, object())  # the shadow thread, busy: nothing takes jobs
    records = [_record(b"k", 0)]
    for _ in range(MAX_QUEUED_BATCHES):
        scorer.offer(records, [0], "v1", ["a"])  # fills the queue
    scorer.offer(records, [0], "v1", ["a"])  # returns at once, skipped
    scorer.offer(records, [], "v1", [])  # nothing predicted: nothing to shadow, not a skip
    follower.model = None
    scorer.offer(records, [0], "v1", ["a"])  # no candidate: not a skip either
    follower.model = SimpleNamespace(version="v1")
    scorer.offer(records, [0], "v1", ["a"])  # candidate promoted, now served: nothing to do
    assert metrics.shadow_skipped.labels(reason="busy")._value.get() == 1
    assert metrics.shadow_skipped.labels(reason="backpressure")._value.get() == 0


def test_shadow_rows_carry_the_served_prediction_of_their_own_record() -> None:
    """The encoder sees the rows the candidate scored (a subset of those chosen, in order):
    each finds the served label of its source record, JSON and Avro alike."""
    import numpy as np

    from forestream.wire.messages import Prediction
    from forestream.wire.prediction_avro import avro_prediction_encoder
    from forestream.worker.scoring import Scores, encode_predictions
    from forestream.worker.shadow import with_served

    by_source = {(0, 5): "a", (1, 5): "b", (0, 9): "c"}  # (0, 9) was not scored by the candidate
    arguments = {
        "scores": Scores(np.array(["b", "a"], dtype=object), np.array([[0.1, 0.9], [0.8, 0.2]])),
        "classes": ["a", "b"],
        "model_version": "v2",
        "topic": "in",
        "partitions": [1, 0],
        "offsets": [5, 5],
        "event_times_ms": [1, 2],
        "scored_at_ms": 3,
    }
    values = with_served(encode_predictions, "v1", by_source)(**arguments)  # type: ignore[arg-type]
    parsed = [Prediction.model_validate_json(v) for v in values]
    assert [(p.prediction, p.served and p.served.model_dump()) for p in parsed] == [
        ("b", {"version": "v1", "prediction": "b"}),
        ("a", {"version": "v1", "prediction": "a"}),
    ]
    avro = with_served(avro_prediction_encoder(1), "v1", by_source)(**arguments)  # type: ignore[arg-type]
    assert [v.endswith(b"\x02\x04v1\x02b") for v in avro] == [True, False]
    assert avro[1].endswith(b"\x02\x04v1\x02a")


def test_batches_of_one_candidate_are_scored_together_in_order() -> None:
    """The shadow thread joins consecutive batches of one candidate and served version: their
    records appended, indexes shifted, the served labels kept beside their own index."""
    from types import SimpleNamespace
    from typing import Any

    import numpy as np

    from forestream.worker.shadow import _Job, coalesce

    v2: Any = SimpleNamespace(version="v2")
    v3: Any = SimpleNamespace(version="v3")
    a = [_record(b"a", 0), _record(b"b", 1)]
    b = [_record(b"c", 2), _record(b"d", 3), _record(b"e", 4)]
    c = [_record(b"f", 5)]
    jobs = [
        _Job(v2, a, [0, 1], "v1", np.array(["x", "y"])),
        _Job(v2, b, [0, 2], "v1", ["z", "w"]),  # record 1 of b was a dead letter
        _Job(v3, c, [0], "v1", ["q"]),  # another candidate: a job of its own
    ]
    first, second = coalesce(jobs)
    assert first.model is v2 and [r.key for r in first.records] == [b"a", b"b", b"c", b"d", b"e"]
    assert list(first.indexes) == [0, 1, 2, 4]
    assert list(first.served_labels) == ["x", "y", "z", "w"]
    assert second.model is v3 and list(second.indexes) == [0]
