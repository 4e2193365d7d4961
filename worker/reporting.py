"""What the worker tells the outside between batches: totals, summaries, lag, monitoring.

Kept apart from the loop so that the loop reads as poll, process, finish; everything here is
best-effort and runs on the loop thread (it is skipped while the loop holds, since a broker
not answering could block it for seconds).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from forestream.edge.interface import GroupConsumer
from forestream.runtime.deadline import Clock, Deadline
from forestream.worker.processing import ObserverFanout, ProcessedBatch

if TYPE_CHECKING:
    from forestream.worker.health import Telemetry
    from forestream.worker.monitoring import StreamMonitoring

log = structlog.get_logger("forestream.worker")

LAG_INTERVAL_S = 5.0


@dataclass
class Totals:
    records_in: int = 0
    predicted: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    batches: int = 0


class Reporter:
    """Counts delivered batches and reports them: logs, metrics and the monitoring topic."""

    def __init__(
        self,
        observers: ObserverFanout,
        telemetry: Telemetry | None,
        summary_interval_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self.totals = Totals()
        self.observers = observers
        self.telemetry = telemetry
        self.monitoring: StreamMonitoring | None = None
        self.summary_interval_s = summary_interval_s
        self.clock = clock
        self._lag_due = Deadline.passed(clock)
        self._summary_at = clock()
        self._summary_records = 0

    def delivered(self, batch: ProcessedBatch) -> None:
        """A batch's outputs count: add it up and show it to the observers."""
        self.totals.records_in += batch.records_in
        self.totals.batches += 1
        self.totals.predicted += batch.predicted
        self.totals.dead_lettered.update(batch.dead_lettered)
        self.observers.notify(batch.scored)

    def measure_lag(self, consumer: GroupConsumer | None) -> None:
        """Consumer lag for the metrics endpoint, every few seconds from the loop thread."""
        if self.telemetry is None or consumer is None or not self._lag_due.expired():
            return
        self._lag_due = Deadline.after(LAG_INTERVAL_S, self.clock)
        lag = consumer.lag(timeout_s=2.0)
        if lag is not None:  # Kafka did not answer: keep the previous values
            self.telemetry.metrics.set_lag(lag)

    def report_monitoring(self, model_version: str | None, force: bool = False) -> None:
        if self.monitoring is None:
            return
        self.monitoring.tick(
            model_version=model_version,
            records_in=self.totals.records_in,
            predicted=self.totals.predicted,
            dead_lettered=self.totals.dead_lettered,
            force=force,
        )

    def maybe_log_summary(self, model_version: str | None) -> None:
        if self.clock() - self._summary_at >= self.summary_interval_s:
            self.log_summary(model_version)

    def log_summary(self, model_version: str | None, final: bool = False) -> None:
        now = self.clock()
        elapsed = max(now - self._summary_at, 1e-9)
        fresh = self.totals.records_in - self._summary_records
        labels = self.monitoring.labels if self.monitoring is not None else None
        log.info(
            "worker_final_summary" if final else "worker_summary",
            records_in=self.totals.records_in,
            predicted=self.totals.predicted,
            dead_lettered=dict(self.totals.dead_lettered),
            batches=self.totals.batches,
            observer_errors=self.observers.errors,
            rate_per_s=round(fresh / elapsed, 1),
            model_version=model_version,
            # 0 with --no-follow-labels: the fleet's label traffic is the evaluators' alone
            labels_read=labels.labels_read if labels is not None else 0,
        )
        self._summary_at = now
        self._summary_records = self.totals.records_in
