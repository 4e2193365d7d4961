"""Promotion by rule against the real broker and a real store: a ``forestream evaluate``
process with ``--promote-policy`` joins predictions, shadow records and labels the test writes
(constructed so each outcome is certain), publishes its counts, and changes what is served
through the registry's compare-and-set: a worse candidate is not promoted, a better one is,
and the promoted version, degrading on its first labels, is rolled back. Each decision
carries its evidence onto the models topic and into ``models list``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.registry.announce import ModelsTopic, change_serving, change_serving_if
from forestream.registry.local import PROMOTIONS, LocalModelStore
from forestream.wire.messages import (
    Decision,
    ModelEvent,
    Prediction,
    ServedPrediction,
    ServingRef,
    ShadowEvent,
    SourceRef,
    shadow_key,
)
from forestream.worker.assignment_log import log_events
from tests.kafka_helpers import read_topic
from tests.waiting import wait_until
from tests.worker_support import ROOT, make_frame, save_model, worker_env

NAME = "m"


def prediction(version: str, right: bool, served: tuple[str, bool] | None = None) -> bytes:
    """A prediction record as a worker writes it, for a record whose true class is ``a``;
    ``served``: a shadow record's served version and whether that one was right."""
    return Prediction(
        prediction="a" if right else "b", probabilities={"a": 0.5, "b": 0.5},
        model_version=version, source=SourceRef(topic="in", partition=0, offset=0),
        event_time=1, scored_at=1,
        served=None if served is None else ServedPrediction(
            version=served[0], prediction="a" if served[1] else "b"
        ),
    ).model_dump_json(exclude_none=True).encode()  # fmt: skip


def test_the_rule_promotes_a_better_candidate_refuses_a_worse_and_rolls_back_a_degrading(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    for seed in (1, 2, 3):
        save_model(store, NAME, make_frame(120, seed=seed), trees=2)
    (store / NAME / PROMOTIONS).unlink()
    roles = ("predictions", "shadow", "labels", "monitoring", "models")
    topics = {r: topic_name(r) for r in roles}
    ensure_topics(kafka_bootstrap, [TopicSpec(topics[r], 1) for r in topics if r != "models"])
    change_serving(kafka_bootstrap, topics["models"], LocalModelStore(store), NAME, "promote", "v1")
    registry = LocalModelStore(store)

    def announce_shadow(version: str) -> None:
        meta = registry.metadata(NAME, version)
        ref = ServingRef(version=version, sha256=meta.artifact_sha256, signature=meta.signature)
        event = ShadowEvent(name=NAME, shadow=ref, at=int(time.time() * 1000))
        with ModelsTopic(kafka_bootstrap, topics["models"]) as models:
            models.put(shadow_key(NAME), event.model_dump_json().encode())

    producer = make_producer(kafka_bootstrap)

    def shadowed(candidate: str, candidate_right: int, served_right: int) -> None:
        """100 records of true class ``a``, shadow-scored by ``candidate`` beside v1 (served):
        the first ``candidate_right`` right for the candidate, ``served_right`` for v1; then
        their labels."""
        for i in range(100):
            value = prediction(candidate, i < candidate_right, ("v1", i < served_right))
            producer.send(topics["shadow"], key=f"{candidate}-{i}".encode(), value=value)
        labelled(f"{candidate}-{i}" for i in range(100))

    def served(version: str, right: int, prefix: str) -> None:
        """100 records of class ``a`` served by ``version``, the first ``right`` right."""
        for i in range(100):
            value = prediction(version, i < right)
            producer.send(topics["predictions"], key=f"{prefix}-{i}".encode(), value=value)
        labelled(f"{prefix}-{i}" for i in range(100))

    def labelled(keys: Any) -> None:
        for key in keys:
            producer.send(topics["labels"], key=key.encode(), value=b'{"label": "a"}')
        producer.flush(30)

    policy = tmp_path / "policy.toml"
    policy.write_text(
        'promote = "labelled>=100 and accuracy>=served+0.01 and agreement>=0.9"\n'
        "[rollback]\nlabels = 100\nmargin = 0.05\n"
    )
    log = tmp_path / "evaluator.log"
    command = [
        sys.executable, "-m", "forestream.cli", "evaluate",
        "--bootstrap-servers", kafka_bootstrap,
        "--output-topic", topics["predictions"], "--labels-topic", topics["labels"],
        "--shadow-topic", topics["shadow"],
        "--monitoring-topic", topics["monitoring"], "--models-topic", topics["models"],
        "--group", topic_name("group"), "--publish-interval-s", "0.3",
        "--promote-policy", str(policy), "--store", str(store), "--name", NAME,
        "--log-format", "json",
    ]  # fmt: skip
    env = {**worker_env(), "FORESTREAM_SUMMARY_INTERVAL_S": "0.3"}

    def logged(event: str) -> list[dict[str, Any]]:
        if proc.poll() is not None:
            raise AssertionError(f"evaluator exited {proc.returncode}:\n{log.read_text()}")
        return log_events(log, event)

    def seen() -> str:
        return "\n".join(line[:400] for line in log.read_text().splitlines()[-12:])

    def served_events() -> list[ModelEvent]:
        records = read_topic(kafka_bootstrap, topics["models"])
        return [ModelEvent.model_validate_json(r.value) for r in records if r.key == NAME.encode()]

    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        # a worse candidate: v3 is less accurate than v1 on the same records
        announce_shadow("v3")
        shadowed("v3", candidate_right=80, served_right=90)  # agreement 0.90, accuracy 0.80
        waiting = wait_until(
            lambda: [e for e in logged("promotion_waiting") if e.get("labelled") == 100],
            "the decider judging v3's 100 labelled shadow records",
            20,
            seen=seen,
        )
        assert waiting[0]["candidate"] == "v3"
        assert waiting[0]["failing"] == ["accuracy>=served+0.01"]
        assert [e.kind for e in served_events()] == ["promoted"]  # still v1, by hand
        assert not logged("promotion_decided")

        # a better candidate: v2 beats v1 on the same records
        announce_shadow("v2")
        shadowed("v2", candidate_right=97, served_right=90)  # agreement 0.93, accuracy 0.97
        (promoted,) = wait_until(lambda: logged("promotion_decided"), "v2 promoted", 20, seen=seen)
        assert (promoted["version"], promoted["replaced"]) == ("v2", "v1")
        assert (promoted["labelled"], promoted["accuracy"]) == (100, 0.97)
        event = served_events()[-1]
        assert (event.kind, event.version) == ("promoted", "v2")
        assert event.decision is not None
        assert event.decision.rule.startswith("labelled>=100")
        assert event.decision.evidence["served_accuracy"] == 0.9
        assert registry.served(NAME) == "v2"

        # v2 degrades: 0.60 over its first 100 labels, v1 had 0.90 -> rolled back to v1
        served("v1", 90, "before")  # what v1 scored (its records predicted before the swap)
        served("v2", 60, "after")
        (rolled,) = wait_until(lambda: logged("rollback_decided"), "v2 rolled back", 20, seen=seen)
        assert (rolled["version"], rolled["replaced"]) == ("v1", "v2")
        assert (rolled["accuracy"], rolled["previous_accuracy"]) == (0.6, 0.9)
        event = served_events()[-1]
        assert (event.kind, event.version) == ("rolled_back", "v1")
        assert event.decision is not None and event.decision.evidence["labels"] == 100
        assert registry.served(NAME) == "v1"
        # v2's shadow counts still satisfy the rule: a rolled-back version is not re-promoted
        assert len(logged("promotion_decided")) == 1
    finally:
        producer.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, seen()

    listed = subprocess.run(
        [sys.executable, "-m", "forestream.cli", "models", "list", "--json",
         "--store", str(store), "--name", NAME],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=worker_env(),
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    rows = {row["version"]: row for row in json.loads(listed.stdout)}
    assert rows["v1"]["stage"] == "serving"
    assert rows["v1"]["decided"]["action"] == "rolled back to by rule"
    assert rows["v2"]["decided"]["action"] == "promoted by rule"
    assert rows["v2"]["decided"]["evidence"]["accuracy"] == 0.97
    assert rows["v3"]["decided"] is None

    # the compare-and-set: evidence read against v2, but v1 is served -> nothing announced
    before = len(served_events())
    stale = Decision(by="test", rule="labelled>=1", evidence={"labelled": 1})
    declined = change_serving_if(
        kafka_bootstrap, topics["models"], registry, NAME, "promote", "v3",
        expect_served="v2", decision=stale,
    )  # fmt: skip
    assert declined is None
    assert len(served_events()) == before and registry.served(NAME) == "v1"
