"""What the promotion policy asks for now: the served version, the shadow candidate and the
last promotion as the models topic tells them (:class:`ServingState`), judged on the fleet's
counts (:func:`next_step`). Pure: the evaluator's decider (``worker/evaluator/promotion.py``)
feeds it and carries the step out through the registry's compare-and-set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import ValidationError

from forestream.fleet.counts import FleetCounts
from forestream.fleet.policy import Policy, Verdict, judge_promotion, judge_rollback
from forestream.wire.messages import ModelEvent, ShadowEvent, shadow_key


@dataclass
class ServingState:
    """One model's state on the models topic, read in order from the beginning.

    ``guard``: (new, previous) of the newest promotion while it is still served: the rollback
    guard watches it. ``retired``: versions a rollback moved away from; the policy never
    promotes them again (their shadow counts would still hold the old evidence), a person may.
    """

    name: str
    served: str | None = None
    candidate: str | None = None
    guard: tuple[str, str] | None = None
    retired: set[str] = field(default_factory=set)
    judged: set[tuple[str, str]] = field(default_factory=set)
    """Guards already judged "keep" (each is judged once)."""

    def feed(self, key: bytes | None, value: bytes | None) -> None:
        """One models-topic record; other models' records and invalid values are skipped."""
        if key is None or not value:
            return
        text = key.decode("utf-8", "replace")
        try:
            if text == shadow_key(self.name):
                shadow = ShadowEvent.model_validate_json(value).shadow
                self.candidate = shadow.version if shadow is not None else None
            elif text == self.name:
                self.apply(ModelEvent.model_validate_json(value))
        except ValidationError:
            return  # the workers skip it too

    def apply(self, event: ModelEvent) -> None:
        serving = event.serving.version if event.serving is not None else None
        if serving is None or serving == self.served:
            return
        before, self.served = self.served, serving
        if event.kind == "promoted" and before is not None:
            self.guard = (serving, before)
        else:
            self.guard = None
            if event.kind == "rolled_back" and before is not None:
                self.retired.add(before)


@dataclass(frozen=True)
class Step:
    """``promote``/``rollback``: change serving to ``version`` if ``expect_served`` is still
    served; ``wait``: the rule does not hold yet; ``keep``: the rollback guard judged the new
    version good enough."""

    action: Literal["promote", "rollback", "wait", "keep"]
    version: str
    expect_served: str
    verdict: Verdict


def next_step(policy: Policy, fleet: FleetCounts, state: ServingState) -> Step | None:
    """The rollback guard first (a degrading version is worse than a candidate waiting), then
    the candidate; None when there is nothing to judge."""
    served = state.served
    if served is None:
        return None
    guard = state.guard
    if policy.rollback is not None and guard is not None and guard not in state.judged:
        new, previous = guard
        verdict = judge_rollback(policy, fleet, new, previous)
        if verdict.act:
            return Step("rollback", previous, served, verdict)
        if verdict.settled:
            return Step("keep", new, served, verdict)
    candidate = state.candidate
    if candidate is None or candidate == served or candidate in state.retired:
        return None
    verdict = judge_promotion(policy, fleet, candidate, served)
    return Step("promote" if verdict.act else "wait", candidate, served, verdict)
