"""What the demo reads back while it runs: predictions, dead letters, the workers' reports, the
evaluator's counts and the decisions on the models topic, in one reader thread.

Kept apart from :mod:`forestream.demo` (which owns the processes and the feed) so each stays
about one thing; :mod:`forestream.demo_summary` turns :class:`Observed` into the summary.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from forestream.fleet.counts import FleetCounts, labelled_of

if TYPE_CHECKING:
    from forestream.edge.connection import KafkaConnection


class DemoTopics(Protocol):
    predictions: str
    dlq: str
    monitoring: str
    models: str


@dataclass
class Observed:
    """What the demo read back from the output topics while it ran (one reader thread)."""

    predictions_by_version: Counter[str] = field(default_factory=Counter)
    prediction_keys: set[bytes] = field(default_factory=set)
    dead_letters_by_reason: Counter[str] = field(default_factory=Counter)
    dead_letter_keys: set[bytes] = field(default_factory=set)
    latencies_ms: list[int] = field(default_factory=list)
    first_ms: int | None = None
    last_ms: int | None = None
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    drift_flags: set[str] = field(default_factory=set)
    version_order: list[str] = field(default_factory=list)
    fleet: FleetCounts = field(default_factory=FleetCounts)
    """The evaluator's counts (served and shadow), summed as any reader of the topic would."""
    decisions: list[dict[str, Any]] = field(default_factory=list)
    """Model events a rule decided (``decision`` set), in topic order."""


class OutputObserver:
    """The reader thread and what it saw; the waits of the demo ask it under its lock."""

    def __init__(self, kafka: Callable[[], KafkaConnection], topics: DemoTopics) -> None:
        self.kafka = kafka
        self.topics = topics
        self.seen = Observed()
        self.error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._read, name="demo-reader", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def accounted(self) -> int:
        """Input records seen as a prediction (one per key) or a dead letter."""
        with self._lock:
            return len(self.seen.prediction_keys) + sum(self.seen.dead_letters_by_reason.values())

    def labelled(self) -> int:
        """Labels the evaluator has counted against the served versions so far."""
        with self._lock:
            fleet = self.seen.fleet
            return sum(labelled_of(fleet.version(v)) for v in fleet.windows)

    def reports_counted(self) -> int:
        """Records in, by the workers' newest (cumulative) reports."""
        with self._lock:
            return sum(r.get("records_in", 0) for r in self.seen.reports.values())

    def _read(self) -> None:
        from forestream.edge.factory import partition_reader
        from forestream.edge.interface import TopicPartition

        consumer = partition_reader(self.kafka(), client_id="forestream-demo-reader")
        t = self.topics
        topics = [t.predictions, t.dlq, t.monitoring, t.models]
        assigned: list[TopicPartition] = []
        try:
            while not self._stop.is_set():
                fresh = [
                    TopicPartition(topic, p)
                    for topic in topics
                    if topic not in {tp.topic for tp in assigned}
                    for p in sorted(consumer.partitions(topic))
                ]
                if fresh:
                    assigned += fresh
                    consumer.assign(assigned)
                    consumer.seek_to_beginning(fresh)
                if not assigned:
                    time.sleep(0.2)
                    continue
                records = consumer.poll_batch(2000, 0.2)
                with self._lock:
                    for record in records:
                        self._observe(record)
        except Exception as exc:  # the summary must say the numbers are incomplete
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            consumer.close()

    def _observe(self, record: Any) -> None:
        from forestream.wire import headers

        seen, topic = self.seen, record.topic
        if topic == self.topics.predictions:
            value = json.loads(record.value)
            version = value["model_version"]
            seen.predictions_by_version[version] += 1
            if not seen.version_order or seen.version_order[-1] != version:
                seen.version_order.append(version)
            seen.prediction_keys.add(record.key)
            seen.latencies_ms.append(record.timestamp - value["event_time"])
            seen.first_ms = min(seen.first_ms or record.timestamp, record.timestamp)
            seen.last_ms = max(seen.last_ms or 0, record.timestamp)
        elif topic == self.topics.dlq:
            reason = dict(record.headers).get(headers.ERROR, b"?").decode()
            seen.dead_letters_by_reason[reason] += 1
            seen.dead_letter_keys.add(record.key)
        elif topic == self.topics.models:
            event = json.loads(record.value)
            if event.get("decision"):
                seen.decisions.append(event)
        else:
            value = json.loads(record.value)
            if "kind" in value:  # the evaluator's counts share the topic with workers' reports
                seen.fleet.feed(record.value)
                return
            seen.reports[value["worker_id"]] = value
            for name, drift in value.get("features", {}).items():
                if drift.get("drifting"):
                    seen.drift_flags.add(name)
