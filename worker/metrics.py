"""Prometheus metrics of one worker, updated once per batch (never once per record in Python).

Every metric lives in a per-worker :class:`~prometheus_client.CollectorRegistry` rather than the
global one, so tests and several workers in one process never collide on metric names.

The end-to-end latency histogram needs one observation per record. prometheus-client has no
public bulk ``observe``, so :class:`BatchHistogram` is a small custom collector: numpy sorts a
whole batch into the buckets in one pass and the collector exposes the standard histogram
samples (``_bucket``/``_count``/``_sum``) at scrape time.
"""

from __future__ import annotations

import threading
from collections import Counter as CountOf
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from forestream.wire.headers import ReasonCode
from forestream.worker.batch import ScoredBatch

NAMESPACE = "forestream"

BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10_000, 50_000, 100_000)
PREDICT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LATENCY_SECONDS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
)  # fmt: skip


class BatchHistogram(Collector):
    """A label-less Prometheus histogram that accepts a whole numpy array per call.

    ``observe_many`` costs one ``searchsorted`` + ``bincount`` per batch instead of a Python
    call (and a lock round-trip) per value, which is what a per-record latency needs.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError("histogram buckets must be strictly increasing")
        if not bounds or bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self.name = name
        self.documentation = documentation
        self._bounds = np.asarray(bounds, dtype=np.float64)
        self._counts = np.zeros(len(bounds), dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe_many(self, values: np.ndarray | Sequence[float]) -> None:
        """Add every value of ``values``; NaN (no measurement) is skipped."""
        arr = np.asarray(values, dtype=np.float64).ravel()
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            return
        # bucket i holds values v with bounds[i-1] < v <= bounds[i] (Prometheus "le")
        index = np.searchsorted(self._bounds, arr, side="left")
        per_bucket = np.bincount(index, minlength=len(self._bounds))
        total = float(arr.sum())
        with self._lock:
            self._counts += per_bucket
            self._sum += total

    def observe(self, value: float) -> None:
        self.observe_many([value])

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = self._counts.copy()
            total = self._sum
        cumulative = np.cumsum(counts)
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric(
            [],
            buckets=[
                (floatToGoString(bound), float(n))
                for bound, n in zip(self._bounds, cumulative, strict=True)
            ],
            sum_value=total,
        )
        yield family


class WorkerMetrics:
    """Everything an operator scrapes from one worker; safe to update from the loop thread
    while the HTTP thread renders it."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r, ns = self.registry, NAMESPACE
        self.consumed = Counter(
            "records_consumed", "Input records taken from Kafka", namespace=ns, registry=r
        )
        self.predicted = Counter(
            "records_predicted", "Records scored and published", namespace=ns, registry=r
        )
        self.dead_lettered = Counter(
            "records_dead_lettered",
            "Records sent to the dead-letter topic, by reason code",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        for reason in ReasonCode.ALL:  # a zero series from the start, so rate() sees the first
            self.dead_lettered.labels(reason=reason)
        self.batches = Counter("batches", "Micro-batches scored", namespace=ns, registry=r)
        self.batch_size = Histogram(
            "batch_size_records",
            "Records per micro-batch (valid + rejected)",
            namespace=ns,
            registry=r,
            buckets=BATCH_SIZE_BUCKETS,
        )
        self.predict_seconds = Histogram(
            "predict_seconds",
            "Model inference time per micro-batch",
            namespace=ns,
            registry=r,
            buckets=PREDICT_SECONDS_BUCKETS,
        )
        self.latency = BatchHistogram(
            f"{ns}_end_to_end_latency_seconds",
            "Input record timestamp to scored_at, per record (negative clock skew counts as 0)",
            LATENCY_SECONDS_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "consumer_lag_records",
            "Records behind the end of each assigned input partition",
            ["partition"],
            namespace=ns,
            registry=r,
        )
        self.model_version = Gauge(
            "model_version_info",
            "1 for the model version currently served (no series while none is loaded)",
            ["version"],
            namespace=ns,
            registry=r,
        )
        self.model_engine = Gauge(
            "model_engine_info",
            "1 for the engine scoring the served version (compiled: the numba forest, sklearn: "
            "sklearn's own trees), labelled by version; set from the last scored batch",
            ["version", "engine"],
            namespace=ns,
            registry=r,
        )
        self.shadow_version = Gauge(
            "shadow_model_info",
            "1 for the candidate version scored in shadow (no series while none is)",
            ["version"],
            namespace=ns,
            registry=r,
        )
        self.shadow_predicted = Counter(
            "shadow_predictions",
            "Candidate predictions sent to the shadow topic",
            namespace=ns,
            registry=r,
        )
        self.shadow_skipped = Counter(
            "shadow_skipped",
            "Batches whose shadow scoring was skipped, never waited for, by reason",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        for reason in ("busy", "backpressure", "error"):
            self.shadow_skipped.labels(reason=reason)  # a zero series from the start
        self._shadow: str | None = None
        self.reloads = Counter(
            "model_reloads", "Model versions loaded and swapped in", namespace=ns, registry=r
        )
        self.reload_failures = Counter(
            "model_reload_failures",
            "Model versions that could not be loaded, by reason",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.observer_errors = Counter(
            "observer_errors",
            "Exceptions raised by batch observers (scoring carried on)",
            ["observer"],
            namespace=ns,
            registry=r,
        )
        self.client_rebuilds = Counter(
            "kafka_client_rebuilds",
            "Kafka clients replaced after knowing no broker for longer than the bound, by client",
            ["client"],
            namespace=ns,
            registry=r,
        )
        for client in ("group_consumer", "model_follower", "labels_reader"):
            self.client_rebuilds.labels(client=client)  # a zero series from the start
        self._lag_partitions: set[int] = set()
        self._lag_lock = threading.Lock()
        self._version: str | None = None
        self._version_lock = threading.Lock()
        self._engine: tuple[str, str] | None = None

    # -- per batch -----------------------------------------------------------------------------

    def observe_batch(self, batch: ScoredBatch) -> None:
        """All metric updates of one scored batch: a handful of calls, whatever its size."""
        self.consumed.inc(batch.records_in)
        self.batches.inc()
        self.batch_size.observe(batch.records_in)
        self.predict_seconds.observe(batch.predict_seconds)
        predicted = len(batch.predictions)
        if predicted:
            self.predicted.inc(predicted)
            latency_ms = batch.scored_at_ms - np.asarray(batch.event_times_ms, dtype=np.int64)
            self.latency.observe_many(np.maximum(latency_ms, 0) / 1000.0)
        self._count_rejects(batch.reject_codes)
        if predicted:
            self.set_engine(batch.model_version, batch.engine)

    def set_engine(self, version: str, engine: str) -> None:
        """Mark ``engine`` as the one scoring ``version`` (one series: the last batch's)."""
        served = (version, engine)
        if served == self._engine:
            return
        with self._version_lock:
            if self._engine is not None:
                self.model_engine.remove(*self._engine)
            self.model_engine.labels(version=version, engine=engine).set(1)
            self._engine = served

    def record_reject_codes(self, codes: Iterable[str]) -> None:
        """Dead letters of a batch that produced no :class:`ScoredBatch` (e.g. scoring failed).

        Each code is one consumed record as well; do not pass codes already carried by a
        ``ScoredBatch`` given to :meth:`observe_batch` (they would count twice).
        """
        codes = list(codes)
        if codes:
            self.consumed.inc(len(codes))
            self._count_rejects(codes)

    def _count_rejects(self, codes: Sequence[str]) -> None:
        for reason, n in CountOf(codes).items():
            self.dead_lettered.labels(reason=reason).inc(n)

    # -- periodic / on events ------------------------------------------------------------------

    def set_lag(self, lag: dict[int, int]) -> None:
        """Replace the lag of every partition; partitions no longer assigned disappear."""
        with self._lag_lock:
            for partition in self._lag_partitions - lag.keys():
                self.lag.remove(str(partition))
            for partition, behind in lag.items():
                self.lag.labels(partition=str(partition)).set(max(int(behind), 0))
            self._lag_partitions = set(lag)

    def set_model_version(self, version: str | None) -> None:
        """Mark ``version`` as served (``None``: no model loaded)."""
        with self._version_lock:
            if version == self._version:
                return
            if self._version is not None:
                self.model_version.remove(self._version)
            if version is not None:
                self.model_version.labels(version=version).set(1)
            self._version = version

    def set_shadow_version(self, version: str | None) -> None:
        """Mark ``version`` as the shadow candidate (``None``: none); from the follower's thread."""
        with self._version_lock:
            if self._shadow is not None:
                self.shadow_version.remove(self._shadow)
            if version is not None:
                self.shadow_version.labels(version=version).set(1)
            self._shadow = version

    def record_shadow_predicted(self, count: int) -> None:
        self.shadow_predicted.inc(count)

    def record_shadow_skip(self, reason: str) -> None:
        self.shadow_skipped.labels(reason=reason).inc()

    def record_reload(self, version: str) -> None:
        """A new model version was loaded and is now served."""
        self.reloads.inc()
        self.set_model_version(version)

    def record_reload_failure(self, reason: str) -> None:
        """Use a short stable reason (e.g. ``sha256_mismatch``), never free text: it is a label."""
        self.reload_failures.labels(reason=reason).inc()

    def record_observer_error(self, observer: str) -> None:
        self.observer_errors.labels(observer=observer).inc()

    def record_client_rebuild(self, client: str) -> None:
        """A Kafka client replaced for having known no broker too long (``group_consumer``,
        ``model_follower``, ``labels_reader``)."""
        self.client_rebuilds.labels(client=client).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this worker's registry."""
        return generate_latest(self.registry)


class MetricsObserver:
    """The :class:`forestream.worker.batch.BatchObserver` that feeds :class:`WorkerMetrics`."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def on_batch(self, batch: ScoredBatch) -> None:
        self.metrics.observe_batch(batch)

    def record_reject_codes(self, codes: Iterable[str]) -> None:
        self.metrics.record_reject_codes(codes)
