"""The evaluator's decider (``--promote-policy``): promotion by rule and the rollback guard.

A background thread with its own group-less reader of the whole monitoring topic (all
partitions, from the beginning: the fleet's counts, :class:`~forestream.fleet.counts.FleetCounts`)
and of the models topic (served version, shadow candidate, last promotion:
:class:`~forestream.fleet.decide.ServingState`). Every publish interval it judges
(:func:`~forestream.fleet.decide.next_step`) and, on the instance that owns labels partition 0
(the group hands it to one instance), carries a promotion or rollback out through the
registry's compare-and-set (:func:`~forestream.registry.announce.change_serving_if`): a served
version changed meanwhile means nothing happens, so two deciders cannot undo each other. The
thread never stops the evaluator: a failure is logged and judged again next interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from forestream.edge.interface import TopicPartition
from forestream.fleet.counts import FleetCounts
from forestream.fleet.decide import ServingState, Step, next_step
from forestream.runtime.logs import RateLimited
from forestream.wire.messages import Decision

if TYPE_CHECKING:
    from forestream.edge.interface import PartitionReader
    from forestream.fleet.policy import Policy
    from forestream.registry.announce import Announced
    from forestream.worker.evaluator.settings import EvaluatorSettings

log = structlog.get_logger("forestream.evaluator.promotion")


class Decider:
    """Reads both topics, judges every ``evaluator_publish_interval_s``, acts when ``owner()``."""

    def __init__(
        self,
        settings: EvaluatorSettings,
        policy: Policy,
        ident: str,
        owner: Callable[[], bool],
    ) -> None:
        self.s = settings
        self.policy = policy
        self.ident = ident
        self.owner = owner
        self.fleet = FleetCounts()
        self.state = ServingState(settings.model_name)
        self.decisions = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._waiting_log = RateLimited(settings.summary_interval_s)
        self._last_waiting: dict[str, Any] | None = None
        self._warn = RateLimited(10.0)
        self._declined: set[tuple[str, str, str]] = set()

    def start(self) -> Decider:
        self._thread = threading.Thread(target=self._run, name="promotion-decider", daemon=True)
        self._thread.start()
        log.info(
            "promotion_policy",
            rule=self.policy.rule,
            rollback_labels=self.policy.rollback.labels if self.policy.rollback else None,
            rollback_margin=self.policy.rollback.margin if self.policy.rollback else None,
            model_name=self.s.model_name,
        )
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        from forestream.edge.factory import partition_reader

        while not self._stop.is_set():
            reader: PartitionReader | None = None
            try:
                reader = partition_reader(self.s.kafka(), client_id="forestream-evaluator-decider")
                self._follow(reader)
                return
            except Exception as exc:  # never take the evaluator down: read everything again
                log.warning("promotion_decider_error", error=str(exc), retry_in_s=2.0)
                self.fleet, self.state = FleetCounts(), ServingState(self.s.model_name)
            finally:
                if reader is not None:
                    reader.close()
            self._stop.wait(2.0)

    def _follow(self, reader: PartitionReader) -> None:
        """Wait for both topics, read them from the beginning, judge every interval."""
        topics = (self.s.monitoring_topic, self.s.models_topic)
        tps: list[TopicPartition] = []
        while not self._stop.is_set():
            found = {t: reader.partitions(t) for t in topics}
            if all(found.values()):
                tps = [TopicPartition(t, p) for t in topics for p in sorted(found[t])]
                break
            self._stop.wait(0.5)
        if not tps:
            return
        reader.assign(tps)
        reader.seek_to_beginning(tps)
        interval = self.s.evaluator_publish_interval_s
        next_judge = time.monotonic() + interval
        while not self._stop.is_set():
            for record in reader.poll_batch(2000, 0.2):
                if record.topic == self.s.monitoring_topic:
                    self.fleet.feed(record.value)
                else:
                    self.state.feed(record.key, record.value)
            if time.monotonic() >= next_judge:
                next_judge = time.monotonic() + interval
                self.judge()

    # -- judging and acting -------------------------------------------------------------------

    def judge(self) -> None:
        """One round: what the policy asks for, done if this instance decides."""
        step = next_step(self.policy, self.fleet, self.state)
        if step is None:
            return
        if step.action == "wait":
            self._log_waiting(step)
            return
        if step.action == "keep":
            if self.state.guard is not None:
                self.state.judged.add(self.state.guard)
            log.info("rollback_guard_passed", **step.verdict.evidence)
            return
        if not self.owner():
            return
        self.act(step)

    def _log_waiting(self, step: Step) -> None:
        evidence = step.verdict.evidence
        if evidence == self._last_waiting or not self._waiting_log.ready():
            return
        self._last_waiting = dict(evidence)
        log.info(
            "promotion_waiting",
            rule=self.policy.rule,
            failing=list(step.verdict.failing),
            **evidence,
        )

    def act(self, step: Step) -> Announced | None:
        from forestream.errors import ForestreamError
        from forestream.registry.announce import change_serving_if

        decision = Decision(by=self.ident, rule=self._rule(step), evidence=step.verdict.evidence)
        try:
            store = self.s.open_store()
            trust = self.s.trust()
            if step.action == "promote":  # what no worker could load is refused, as by promote
                store.verify_artifact(self.s.model_name, step.version, trust=trust)
            done = change_serving_if(
                self.s.kafka(),
                self.s.models_topic,
                store,
                self.s.model_name,
                "promote" if step.action == "promote" else "rollback",
                step.version if step.action == "promote" else None,
                expect_served=step.expect_served,
                decision=decision,
                trust=trust,
            )
        except ForestreamError as exc:
            if self._warn.ready():
                log.warning(f"{step.action}_failed", version=step.version, error=str(exc))
            return None
        if done is None:
            key = (step.action, step.version, step.expect_served)
            if key not in self._declined:
                self._declined.add(key)
                log.info(
                    f"{step.action}_declined",
                    version=step.version,
                    expected_served=step.expect_served,
                    reason="the served version changed since the evidence was read",
                )
            return None
        self.state.apply(done.event)  # what we announced, before reading it back
        self.decisions += 1
        event = "promotion_decided" if step.action == "promote" else "rollback_decided"
        fields = {
            **step.verdict.evidence,
            "name": self.s.model_name,
            "version": done.event.version,
            "replaced": step.expect_served,
            "offset": done.offset,
            "rule": decision.rule,
        }
        log.info(event, **fields)
        for note in done.notes:
            log.info("registry_note", note=note)
        return done

    def _rule(self, step: Step) -> str:
        if step.action == "promote":
            return self.policy.rule
        guard = self.policy.rollback
        margin = guard.margin if guard else 0.0
        labels = guard.labels if guard else 0
        return f"rollback: accuracy over first {labels} labels < previous accuracy - {margin:g}"
