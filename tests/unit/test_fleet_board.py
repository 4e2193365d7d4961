"""The fleet view's rows: roles from the models topic, numbers from the summed counts."""

from __future__ import annotations

from forestream.fleet.board import FleetBoard, decision_line
from forestream.wire.messages import (
    Decision,
    EvaluationCounts,
    ModelEvent,
    ServingRef,
    ShadowCounts,
    ShadowEvent,
    shadow_key,
)


def counts(version: str, confusion: dict[str, dict[str, int]], ident: str = "e") -> bytes:
    labelled = sum(sum(row.values()) for row in confusion.values())
    return EvaluationCounts(
        evaluator_id=ident, model_version=version, window_start=0, window_s=60.0,
        labelled=labelled, confusion=confusion, at=1,
    ).model_dump_json().encode()  # fmt: skip


def event(version: str, kind: str = "promoted", rule: str | None = None) -> bytes:
    decision = Decision(by="e", rule=rule, evidence={"labelled": 9}) if rule else None
    return ModelEvent(
        kind=kind, name="m", version=version, sha256="0" * 64, created_at="t",  # type: ignore[arg-type]
        serving=ServingRef(version=version, sha256="0" * 64), decision=decision, at=1,
    ).model_dump_json().encode()  # fmt: skip


def test_rows_put_served_then_shadow_then_earlier_with_their_own_numbers() -> None:
    board = FleetBoard("m", lambda _v: None)
    board.add_models(b"m", event("v1"))
    board.add_models(b"m", event("v2", rule="labelled>=9"))
    shadow = ShadowEvent(name="m", shadow=ServingRef(version="v3", sha256="1" * 64), at=1)
    board.add_models(shadow_key("m").encode(), shadow.model_dump_json().encode())
    board.add_models(b"other", event("v7"))  # another model's record: not this board's
    board.add_monitoring(counts("v1", {"a": {"a": 1, "b": 1}}))
    board.add_monitoring(counts("v2", {"a": {"a": 3}}, "e1"))
    board.add_monitoring(counts("v2", {"b": {"b": 1}}, "e2"))
    board.add_monitoring(
        ShadowCounts(
            evaluator_id="e", candidate_version="v3", served_version="v2", window_start=0,
            window_s=60.0, labelled=4, agreed=3, candidate_confusion={"a": {"a": 4}},
            served_confusion={"a": {"a": 3, "b": 1}}, at=1,
        ).model_dump_json().encode()
    )  # fmt: skip
    board.add_monitoring(b"{not json")  # skipped, never fatal

    rows = board.rows()
    assert [(r.version, r.role, r.labelled) for r in rows] == [
        ("v2", "served", 4),
        ("v3", "shadow", 4),
        ("v1", "earlier", 2),
    ]
    served, shadow_row, earlier = rows
    assert served.accuracy == 1.0 and served.agreement is None
    assert (shadow_row.accuracy, shadow_row.served_accuracy, shadow_row.agreement) == (
        1.0,
        0.75,
        0.75,
    )
    assert earlier.accuracy == 0.5
    assert [e.version for e in board.decisions] == ["v2"]  # only rule-made changes
    assert decision_line(board.decisions[0]) == "v2 promoted by rule `labelled>=9` (e): labelled 9"


def test_only_the_newest_three_decisions_are_kept() -> None:
    board = FleetBoard("m", lambda _v: None)
    for n in range(1, 6):
        board.add_models(b"m", event(f"v{n}", rule="labelled>=1"))
    assert [e.version for e in board.decisions] == ["v3", "v4", "v5"]
