"""What a worker tells the operator about its stream: drift, online accuracy, latency, totals.

:class:`StreamMonitoring` bundles the per-batch observers (a :class:`DriftMonitor` against the
serving version's training reference, which also counts each batch per version and wall-clock
window for fleet drift (:mod:`forestream.worker.drift_windows`), an :class:`OnlineEvaluator`
fed by a :class:`LabelConsumer` thread, a latency window) and publishes a cumulative
:class:`forestream.wire.messages.DriftReport` to the
monitoring topic every ``report_interval_s`` (key = worker id), which ``forestream monitor`` and
the demo read. The loop calls :meth:`StreamMonitoring.tick` once per poll; everything else runs
per batch with numpy.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from forestream.edge.interface import AckingProducer, Outgoing
from forestream.runtime.logs import RateLimited
from forestream.wire.messages import DriftReport
from forestream.wire.schema import ReferenceStats
from forestream.worker.batch import BatchObserver, ScoredBatch
from forestream.worker.drift import DriftMonitor, build_drift_report
from forestream.worker.drift_windows import DEFAULT_WINDOW_S, WindowCounter
from forestream.worker.evaluation import LabelConsumer, OnlineEvaluator

if TYPE_CHECKING:
    from forestream.edge.factory import Target

log = structlog.get_logger("forestream.worker.monitoring")


def worker_id(index: int) -> str:
    """Unique per running process (host + pid), readable in ``forestream monitor``."""
    return f"{socket.gethostname()}-{os.getpid()}-w{index}"


class LatencyWindow:
    """End-to-end latency (input CreateTime → scored) of the most recent valid records.

    A ring of per-batch arrays holding at most ``window`` values in total: percentiles are
    computed on demand (once per report), never per record.
    """

    def __init__(self, window: int = 10_000) -> None:
        self.window = window
        self._batches: deque[np.ndarray] = deque()
        self._held = 0

    def on_batch(self, batch: ScoredBatch) -> None:
        if not len(batch.event_times_ms):
            return
        values = (batch.scored_at_ms - batch.event_times_ms).astype(np.float64)
        self._batches.append(values[-self.window :])
        self._held += min(len(values), self.window)
        while self._held - len(self._batches[0]) >= self.window:
            self._held -= len(self._batches.popleft())

    def percentiles(self) -> tuple[float | None, float | None]:
        """(p50, p99) in ms over the window, ``(None, None)`` before the first record."""
        if not self._batches:
            return None, None
        values = np.concatenate(list(self._batches))[-self.window :]
        p50, p99 = np.percentile(values, [50, 99])
        return float(p50), float(p99)


class MonitoringGauges:
    """Drift and online accuracy on the worker's Prometheus registry, set once per report."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Gauge

        def gauge(name: str, doc: str, label: str) -> Gauge:
            return Gauge(name, doc, [label], namespace="forestream", registry=registry)

        self.psi = gauge("feature_psi", "PSI of the feature over the drift window", "feature")
        self.drifting = gauge(
            "feature_drifting", "1 while the feature is flagged as drifting", "feature"
        )
        self.missing = gauge(
            "feature_missing_share", "Share of window records missing the feature", "feature"
        )
        self.unseen = gauge(
            "feature_unseen_share", "Share of window records with an unseen category", "feature"
        )
        self.accuracy = gauge(
            "online_accuracy", "Accuracy over the labelled window, per model version", "version"
        )
        self.macro_f1 = gauge(
            "online_macro_f1", "Macro F1 over the labelled window, per model version", "version"
        )
        self.labelled = gauge(
            "online_labelled", "Labelled predictions in the window, per model version", "version"
        )

    def update(self, report: DriftReport) -> None:
        for gauge in (self.psi, self.drifting, self.missing, self.unseen):
            gauge.clear()  # features of a previous version must not linger
        for name, drift in report.features.items():
            self.psi.labels(feature=name).set(drift.psi)
            self.drifting.labels(feature=name).set(1.0 if drift.drifting else 0.0)
            self.missing.labels(feature=name).set(drift.missing_share)
            self.unseen.labels(feature=name).set(drift.unseen_share)
        for version, acc in report.online.items():
            self.labelled.labels(version=version).set(acc.labelled)
            if acc.accuracy is not None:
                self.accuracy.labels(version=version).set(acc.accuracy)
            if acc.macro_f1 is not None:
                self.macro_f1.labels(version=version).set(acc.macro_f1)


class StreamMonitoring:
    """Observers plus the periodic report of one worker; see the module docstring."""

    def __init__(
        self,
        *,
        kafka: Target,
        model_name: str,
        monitoring_topic: str,
        labels_topic: str | None,
        worker_id: str,
        reference_for: Callable[[str], ReferenceStats | None],
        drift_window: int = 10_000,
        drift_threshold: float = 0.2,
        drift_min_records: int = 1_000,
        fleet_window_s: float = DEFAULT_WINDOW_S,
        report_interval_s: float = 10.0,
        registry: Any = None,
        rebuild_without_broker_s: float | None = None,
        on_client_rebuilt: Callable[[str], None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.model_name = model_name
        self.monitoring_topic = monitoring_topic
        self.worker_id = worker_id
        self.report_interval_s = report_interval_s
        self.drift = DriftMonitor(
            None,
            window=drift_window,
            threshold=drift_threshold,
            min_records=drift_min_records,
            reference_for=reference_for,
            windows=WindowCounter(fleet_window_s),
        )
        self.evaluator = OnlineEvaluator(window=drift_window)
        self.latency = LatencyWindow(window=drift_window)
        self.labels = (
            LabelConsumer(
                kafka,
                labels_topic,
                self.evaluator,
                rebuild_without_broker_s=rebuild_without_broker_s,
                on_client_rebuilt=on_client_rebuilt,
            )
            if labels_topic
            else None
        )
        self._producer: AckingProducer | None = None
        self._next_report = time.monotonic() + report_interval_s
        self._last_records = 0
        self._last_at = time.monotonic()
        self._warn = RateLimited(30.0)
        self.gauges = MonitoringGauges(registry) if registry is not None else None

    @property
    def observers(self) -> list[BatchObserver]:
        """The evaluator only joins when this worker reads labels itself: otherwise it would
        hold up to 100,000 predictions no label can ever reach (measured: ~35 MB of the
        worker's peak RSS and 1-2 ms per 1,000 records), the fleet evaluator's job instead."""
        if self.labels is None:
            return [self.drift, self.latency]
        return [self.drift, self.evaluator, self.latency]

    def start(self, producer: AckingProducer) -> StreamMonitoring:
        """``producer``: the worker's own (reports are small; no second client needed)."""
        self._producer = producer
        if self.labels is not None:
            self.labels.start()
        return self

    def stop(self) -> None:
        if self.labels is not None:
            self.labels.stop()

    def tick(
        self,
        *,
        model_version: str | None,
        records_in: int,
        predicted: int,
        dead_lettered: Mapping[str, int],
        force: bool = False,
    ) -> None:
        """Log new drift crossings and publish a report when one is due (or ``force``)."""
        now = time.monotonic()
        if not force and now < self._next_report:
            return
        self._next_report = now + self.report_interval_s
        self.drift.log_crossings(log)
        throughput = (records_in - self._last_records) / max(now - self._last_at, 1e-9)
        self._last_records, self._last_at = records_in, now
        p50, p99 = self.latency.percentiles()
        report = build_drift_report(
            model_name=self.model_name,
            worker_id=self.worker_id,
            model_version=model_version,
            drift=self.drift,
            evaluator=self.evaluator,
            records_in=records_in,
            predicted=predicted,
            dead_lettered=dead_lettered,
            throughput=round(throughput, 1),
            latency_p50_ms=p50,
            latency_p99_ms=p99,
        )
        if self.gauges is not None:
            self.gauges.update(report)
        if self._producer is None:
            return
        try:
            # Fire and forget: a lost report is replaced by the next one; waiting for its ack
            # would put monitoring on the scoring path.
            self._producer.send(
                [
                    Outgoing(
                        self.monitoring_topic,
                        self.worker_id.encode(),
                        report.model_dump_json().encode(),
                    )
                ]
            )
        except Exception as exc:  # never let a report stop scoring
            if self._warn.ready():
                log.warning("monitoring_report_failed", error=f"{type(exc).__name__}: {exc}")
