"""Which new feature schemas a running stream can switch to without a producer change."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from forestream.wire.schema import (
    CategoricalFeature,
    FeatureSchema,
    NumericFeature,
    serving_incompatibilities,
)

NAMES = ["a", "b", "c", "d", "e"]


def numeric(name: str, missing: bool = False, **bounds: float) -> NumericFeature:
    return NumericFeature(name=name, missing_seen=missing, **bounds)


def categorical(name: str, categories: list[str], missing: bool = False) -> CategoricalFeature:
    return CategoricalFeature(name=name, categories=categories, missing_seen=missing)


@st.composite
def feature(draw: st.DrawFn, name: str) -> NumericFeature | CategoricalFeature:
    missing = draw(st.booleans())
    if draw(st.booleans()):
        low = draw(st.floats(-1e6, 1e6))
        return numeric(name, missing, min=low, max=low + draw(st.floats(0, 1e6)))
    return categorical(name, draw(st.lists(st.sampled_from("xyzw"), unique=True)), missing)


@st.composite
def schemas(draw: st.DrawFn) -> FeatureSchema:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=len(NAMES)))
    return FeatureSchema(features=[draw(feature(n)) for n in names])


@given(schemas())
def test_a_schema_can_always_replace_itself(schema: FeatureSchema) -> None:
    assert serving_incompatibilities(schema, schema) == []


@given(schemas(), st.randoms(use_true_random=False))
def test_reordering_dropping_and_reranging_are_compatible(
    schema: FeatureSchema, rng: random.Random
) -> None:
    kept = [f for f in schema.features if rng.random() < 0.7]
    rng.shuffle(kept)
    changed = [
        f.model_copy(update={"min": -1e9, "max": 1e9})
        if isinstance(f, NumericFeature)
        else f.model_copy(update={"categories": [*f.categories, "brand-new"]})
        for f in kept
    ]
    assert serving_incompatibilities(schema, FeatureSchema(features=changed)) == []


@given(schemas(), schemas())
def test_every_problem_names_a_feature_the_new_model_reads(
    current: FeatureSchema, new: FeatureSchema
) -> None:
    problems = serving_incompatibilities(current, new)
    for problem in problems:
        assert any(f"feature {name!r}" in problem for name in new.names), problem
    # a verdict exists exactly when some shared feature changed kind or tightened, or a
    # required feature is new
    carried = {f.name: f for f in current.features}
    expected_bad = {
        f.name
        for f in new.features
        if (f.name not in carried and not f.missing_seen)
        or (
            f.name in carried
            and (
                carried[f.name].kind != f.kind
                or (carried[f.name].missing_seen and not f.missing_seen)
            )
        )
    }
    assert len(problems) == len(expected_bad)


def test_new_required_feature_is_refused_but_a_new_optional_one_is_served() -> None:
    current = FeatureSchema(features=[numeric("a")])
    required = FeatureSchema(features=[numeric("a"), numeric("b")])
    optional = FeatureSchema(features=[numeric("a"), numeric("b", missing=True)])

    assert serving_incompatibilities(current, required) == [
        "feature 'b' is required by the new model but not part of the current input contract"
    ]
    assert serving_incompatibilities(current, optional) == []


def test_kind_change_is_refused_both_ways() -> None:
    as_number = FeatureSchema(features=[numeric("a")])
    as_category = FeatureSchema(features=[categorical("a", ["x"])])

    assert serving_incompatibilities(as_number, as_category) == [
        "feature 'a' changes type from numeric to categorical"
    ]
    assert serving_incompatibilities(as_category, as_number) == [
        "feature 'a' changes type from categorical to numeric"
    ]


def test_optional_feature_becoming_required_is_refused_the_reverse_is_not() -> None:
    optional = FeatureSchema(features=[categorical("a", ["x"], missing=True)])
    required = FeatureSchema(features=[categorical("a", ["x"])])

    assert serving_incompatibilities(optional, required) == [
        "feature 'a' may be missing under the current contract but is required by the new model"
    ]
    assert serving_incompatibilities(required, optional) == []


def test_dropped_features_and_new_categories_are_served() -> None:
    current = FeatureSchema(features=[numeric("a", min=0, max=1), categorical("b", ["x"])])
    new = FeatureSchema(features=[categorical("b", ["x", "y"])])

    assert serving_incompatibilities(current, new) == []


def test_follower_refuses_an_incompatible_version_and_keeps_serving() -> None:
    """The check runs in the real follower, on the same failure path as a bad artifact."""
    from structlog.testing import capture_logs

    from forestream.wire.messages import ModelEvent, ServingRef
    from forestream.worker.models import ModelFollower
    from tests.worker_support import fit_pipeline, make_frame, schema_for

    frame = make_frame(120, seed=3)
    pipeline = fit_pipeline(frame, trees=3)
    loose = schema_for(frame)  # x2 and shape may be missing
    strict = FeatureSchema(
        features=[f.model_copy(update={"missing_seen": False}) for f in loose.features]
    )

    class Metadata:
        def __init__(self, schema: FeatureSchema) -> None:
            self.classes = [str(c) for c in pipeline.classes_]
            self.feature_schema = schema
            self.reference = None

    by_version = {"v1": Metadata(loose), "v2": Metadata(strict)}
    reasons: list[str] = []
    follower = ModelFollower(
        "unused:9092",
        "models",
        "m",
        lambda ref: (pipeline, by_version[ref.version]),
        on_load_failure=reasons.append,
    )

    def promote(version: str) -> None:
        ref = ServingRef(version=version, sha256=f"sha-{version}")
        event = ModelEvent(
            kind="promoted", name="m", version=version, sha256=ref.sha256,
            created_at="2026-01-01T00:00:00Z", serving=ref, at=0,
        )  # fmt: skip
        follower._on_record(b"m", event.model_dump_json().encode())

    promote("v1")
    assert follower._load_wanted()
    promote("v2")
    with capture_logs() as logs:
        assert not follower._load_wanted()
        assert not follower._load_wanted()  # retried later: refused again, logged once
    active = follower.current()
    assert active is not None and active.version == "v1"
    assert reasons == ["SchemaIncompatible", "SchemaIncompatible"]
    failures = [entry for entry in logs if entry["event"] == "model_load_failed"]
    assert len(failures) == 1
    assert "'x2' may be missing" in failures[0]["reason"]
    assert failures[0]["keeps_serving"] == "v1"
