"""Promotion by rule, the pure parts: the policy's grammar and file form, the fleet's summed
counts, and the decision on constructed counts (promote, refuse, roll back: exact)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forestream.errors import UserError
from forestream.fleet.counts import FleetCounts, accuracy_of
from forestream.fleet.decide import ServingState, next_step
from forestream.fleet.policy import (
    Clause,
    Policy,
    Rollback,
    judge_promotion,
    judge_rollback,
    load_policy,
    parse_rule,
)
from forestream.wire.messages import (
    DriftReport,
    EvaluationCounts,
    ModelEvent,
    ServingRef,
    ShadowCounts,
    ShadowEvent,
    shadow_key,
)

RULE = "labelled>=100 and accuracy>=served and agreement>=0.9"


def confusion(right: int, wrong: int) -> dict[str, dict[str, int]]:
    """``right`` pairs predicted correctly, ``wrong`` not (two classes)."""
    out: dict[str, dict[str, int]] = {"a": {}}
    if right:
        out["a"]["a"] = right
    if wrong:
        out["a"]["b"] = wrong
    return out


def evaluation(version: str, right: int, wrong: int, window: int = 0) -> bytes:
    return (
        EvaluationCounts(
            evaluator_id="e",
            model_version=version,
            window_start=window,
            window_s=60.0,
            labelled=right + wrong,
            confusion=confusion(right, wrong),
            at=1,
        )
        .model_dump_json()
        .encode()
    )


def shadow(
    candidate: str, served: str, cand_right: int, served_right: int, n: int, agreed: int
) -> bytes:
    return (
        ShadowCounts(
            evaluator_id="e",
            candidate_version=candidate,
            served_version=served,
            window_start=0,
            window_s=60.0,
            labelled=n,
            agreed=agreed,
            candidate_confusion=confusion(cand_right, n - cand_right),
            served_confusion=confusion(served_right, n - served_right),
            at=1,
        )
        .model_dump_json()
        .encode()
    )


# -- the grammar -----------------------------------------------------------------------------


def test_rule_parses_terms_numbers_and_served() -> None:
    clauses = parse_rule("labelled>=2000 and accuracy>=served+0.01 and macro_f1 > served-0.5")
    assert clauses == (
        Clause("labelled", ">=", 2000.0),
        Clause("accuracy", ">=", 0.01, relative=True),
        Clause("macro_f1", ">", -0.5, relative=True),
    )
    assert [str(c) for c in clauses] == [
        "labelled>=2000",
        "accuracy>=served+0.01",
        "macro_f1>served-0.5",
    ]


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ("", "empty"),
        ("labeled>=10", "unknown term 'labeled'"),
        ("labelled>=served", "cannot be compared with served"),
        ("accuracy==0.9", "use >=, >, <= or <"),
        ("accuracy>=0.9 or labelled>=3", "cannot read"),
        ("accuracy>=", "cannot read"),
        ("accuracy>=served*2", "cannot read"),
    ],
)
def test_a_bad_rule_is_one_line_naming_it(rule: str, says: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_rule(rule)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


TERM = st.sampled_from(["labelled", "agreement", "accuracy", "macro_f1"])
OP = st.sampled_from([">=", ">", "<=", "<"])
NUMBER = st.floats(min_value=0, max_value=1e6, allow_nan=False).map(lambda x: round(x, 4))


@given(st.lists(st.tuples(TERM, OP, NUMBER), min_size=1, max_size=5))
def test_printed_rules_parse_back(parts: list[tuple[str, str, float]]) -> None:
    text = " and ".join(f"{t} {op} {n!r}" for t, op, n in parts)
    clauses = parse_rule(text)
    assert [(c.term, c.op, c.value) for c in clauses] == parts
    assert parse_rule(" and ".join(str(c) for c in clauses)) == clauses


@given(st.text(max_size=40))
def test_any_text_parses_or_is_a_user_error(text: str) -> None:
    try:
        parse_rule(text)
    except UserError as exc:
        assert "\n" not in str(exc) or "\n" in text


def test_policy_file_adds_the_rollback_guard(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(f'promote = "{RULE}"\n[rollback]\nlabels = 500\nmargin = 0.02\n')
    policy = load_policy(str(path))
    assert policy.rule == RULE
    assert policy.rollback == Rollback(500, 0.02)
    assert load_policy(RULE).rollback is None  # one line: no guard


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('promote = "labelled>=1"\n[rollback]\nlabels = 0\n', "labels must be an integer"),
        ('promote = "labelled>=1"\n[rollback]\nlabels = 5\nmargin = 2\n', "margin must be"),
        ('promote = "labelled>=1"\nrolback = 1\n', "unknown key(s) rolback"),
        ("[rollback]\nlabels = 5\n", "promote = "),
        ("promote = ", "not TOML"),
        ('promote = "accuracy=>1"\n', "cannot read"),
    ],
)
def test_a_bad_policy_file_is_one_line(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        load_policy(str(path))
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="cannot read it"):
        load_policy(str(tmp_path / "missing.toml"))


# -- the fleet's counts -----------------------------------------------------------------------


def test_fleet_counts_sum_both_kinds_and_skip_the_rest() -> None:
    fleet = FleetCounts()
    report = DriftReport(
        model_name="m", model_version="v1", worker_id="w", window=1, window_records=0, at=1
    )
    values = [
        evaluation("v1", 3, 1, window=0),
        evaluation("v1", 5, 1, window=60_000),
        report.model_dump_json().encode(),
        b"not json",
        json.dumps({"kind": "evaluation_counts"}).encode(),  # invalid: skipped
        shadow("v2", "v1", 9, 8, 10, 9),
        shadow("v2", "v1", 10, 7, 10, 8),
        None,
    ]
    kinds = [fleet.feed(v) for v in values]
    assert kinds == [
        "evaluation_counts",
        "evaluation_counts",
        None,
        None,
        None,
        "shadow_counts",
        "shadow_counts",
        None,
    ]
    assert fleet.version("v1") == {"a": {"a": 8, "b": 2}}
    totals = fleet.shadow[("v2", "v1")]
    assert (totals.labelled, totals.agreed) == (20, 17)
    assert accuracy_of(totals.candidate) == 19 / 20
    assert accuracy_of(totals.served) == 15 / 20
    assert fleet.first("v1", 4) == {"a": {"a": 3, "b": 1}}  # earliest window suffices
    assert fleet.first("v1", 5) == {"a": {"a": 8, "b": 2}}  # never splits a window
    assert fleet.first("v1", 11) is None


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 3)), max_size=8))
def test_fleet_counts_merge_like_one_reader(cells: list[tuple[int, int, int]]) -> None:
    values = [evaluation("v1", r, w, window=k * 60_000) for r, w, k in cells]
    whole, left, right = FleetCounts(), FleetCounts(), FleetCounts()
    for i, value in enumerate(values):
        whole.feed(value)
        (left if i % 2 else right).feed(value)
    left.merge(right)
    assert left.version("v1") == whole.version("v1")
    assert left.records == whole.records


# -- deciding ---------------------------------------------------------------------------------


def event(kind: str, serving: str) -> ModelEvent:
    return ModelEvent(
        kind=kind,  # type: ignore[arg-type]
        name="m",
        version=serving,
        sha256="0" * 64,
        created_at="2026-01-01T00:00:00Z",
        serving=ServingRef(version=serving, sha256="0" * 64),
        at=1,
    )


def state_with(*events: ModelEvent, candidate: str | None = "v2") -> ServingState:
    state = ServingState("m")
    for e in events:
        state.feed(b"m", e.model_dump_json().encode())
    if candidate is not None:
        value = ShadowEvent(name="m", shadow=ServingRef(version=candidate, sha256="1" * 64), at=1)
        state.feed(shadow_key("m").encode(), value.model_dump_json().encode())
    return state


GUARDED = Policy(RULE, parse_rule(RULE), Rollback(labels=100, margin=0.05))


def test_a_better_candidate_is_promoted_with_its_evidence() -> None:
    fleet = FleetCounts()
    fleet.feed(shadow("v2", "v1", cand_right=95, served_right=90, n=100, agreed=92))
    step = next_step(GUARDED, fleet, state_with(event("promoted", "v1")))
    assert step is not None
    assert (step.action, step.version, step.expect_served) == ("promote", "v2", "v1")
    assert step.verdict.evidence == {
        "candidate": "v2",
        "served": "v1",
        "labelled": 100,
        "agreement": 0.92,
        "accuracy": 0.95,
        "macro_f1": step.verdict.evidence["macro_f1"],
        "served_accuracy": 0.9,
        "served_macro_f1": step.verdict.evidence["served_macro_f1"],
    }


@pytest.mark.parametrize(
    ("cand_right", "served_right", "n", "agreed", "failing"),
    [
        (89, 90, 100, 92, ("accuracy>=served",)),  # worse than served
        (95, 90, 99, 92, ("labelled>=100",)),  # too few labels
        (95, 90, 100, 89, ("agreement>=0.9",)),  # disagrees too often
        (0, 0, 0, 0, ("labelled>=100", "accuracy>=served", "agreement>=0.9")),  # nothing yet
    ],
)
def test_a_candidate_the_rule_refuses_waits(
    cand_right: int, served_right: int, n: int, agreed: int, failing: tuple[str, ...]
) -> None:
    fleet = FleetCounts()
    if n:
        fleet.feed(shadow("v2", "v1", cand_right, served_right, n, agreed))
    step = next_step(GUARDED, fleet, state_with(event("promoted", "v1")))
    assert step is not None
    assert step.action == "wait"
    assert step.verdict.failing == failing


def test_counts_against_another_served_version_do_not_count() -> None:
    fleet = FleetCounts()
    fleet.feed(shadow("v2", "v0", 95, 90, 100, 92))
    verdict = judge_promotion(GUARDED, fleet, "v2", "v1")
    assert not verdict.act and verdict.evidence["labelled"] == 0


def test_a_degrading_promotion_is_rolled_back_on_its_first_labels() -> None:
    fleet = FleetCounts()
    fleet.feed(evaluation("v1", 90, 10))  # previous: 0.90 over all its counts
    fleet.feed(evaluation("v2", 80, 20, window=60_000))  # first 100 labels: 0.80 < 0.90 - 0.05
    fleet.feed(evaluation("v2", 100, 0, window=120_000))  # later ones do not rescue it
    state = state_with(event("promoted", "v1"), event("promoted", "v2"))
    assert state.guard == ("v2", "v1")
    step = next_step(GUARDED, fleet, state)
    assert step is not None
    assert (step.action, step.version, step.expect_served) == ("rollback", "v1", "v2")
    assert step.verdict.evidence["accuracy"] == 0.8
    assert step.verdict.evidence["previous_accuracy"] == 0.9


def test_the_guard_waits_for_enough_labels_then_keeps_a_good_version() -> None:
    fleet = FleetCounts()
    fleet.feed(evaluation("v1", 90, 10))
    fleet.feed(evaluation("v2", 40, 59, window=60_000))  # 99 labels: not judged yet
    state = state_with(event("promoted", "v1"), event("promoted", "v2"))
    assert not judge_rollback(GUARDED, fleet, "v2", "v1").settled
    assert next_step(GUARDED, fleet, state) is None  # v2 is served, nothing else to judge
    fleet2 = FleetCounts()
    fleet2.feed(evaluation("v1", 90, 10))
    fleet2.feed(evaluation("v2", 86, 14, window=60_000))  # 0.86 >= 0.90 - 0.05: kept
    step = next_step(GUARDED, fleet2, state)
    assert step is not None and step.action == "keep"
    state.judged.add(("v2", "v1"))
    assert next_step(GUARDED, fleet2, state) is None  # judged once
    fleet3 = FleetCounts()
    fleet3.feed(evaluation("v2", 10, 90, window=60_000))  # no counts of v1 (yet): not judged
    verdict = judge_rollback(GUARDED, fleet3, "v2", "v1")
    assert not verdict.act and not verdict.settled
    assert verdict.failing == ("no previous counts",)


def test_after_a_rollback_the_retired_candidate_is_not_promoted_again() -> None:
    fleet = FleetCounts()
    fleet.feed(shadow("v2", "v1", 95, 90, 100, 92))  # the old evidence still holds
    state = state_with(event("promoted", "v1"), event("promoted", "v2"), event("rolled_back", "v1"))
    assert state.served == "v1" and state.guard is None and state.retired == {"v2"}
    assert next_step(GUARDED, fleet, state) is None


def test_no_guard_without_a_rollback_table_and_nothing_without_a_served_version() -> None:
    fleet = FleetCounts()
    fleet.feed(evaluation("v1", 90, 10))
    fleet.feed(evaluation("v2", 10, 90, window=60_000))
    one_line = load_policy(RULE)
    state = state_with(event("promoted", "v1"), event("promoted", "v2"), candidate=None)
    assert next_step(one_line, fleet, state) is None
    assert next_step(GUARDED, fleet, state_with(candidate="v2")) is None


def test_a_bad_promote_policy_ends_the_evaluator_start_in_one_line(tmp_path: Path) -> None:
    """Refused before any broker is reached (there is none at this address)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "forestream", "evaluate", "--bootstrap-servers", "127.0.0.1:1",
         "--promote-policy", "labelled>=2000 and acuracy>=served"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown term 'acuracy'" in lines[0], done.stderr
