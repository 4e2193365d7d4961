"""The evaluator's Prometheus metrics, read from its counters when scraped (nothing is
updated per record: the join keeps plain counters, this collector turns them into samples)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from forestream.worker.evaluator.service import Evaluator


class EvaluatorCollector:
    """``forestream_evaluator_*``: records read, pairs joined, evictions, bad records and
    rejected pairs by reason, records waiting, count records published; the shadow join's
    reads, joins and waiting records beside them (its evictions as ``shadow_<reason>``)."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        t = self.evaluator.totals()
        read = CounterMetricFamily(
            "forestream_evaluator_records", "Records read, by topic role", labels=["role"]
        )
        read.add_metric(["labels"], t["labels_read"])
        read.add_metric(["predictions"], t["predictions_read"])
        read.add_metric(["shadow"], t["shadow_read"])
        yield read
        yield CounterMetricFamily(
            "forestream_evaluator_joined", "Pairs joined and counted", value=t["joined"]
        )
        yield CounterMetricFamily(
            "forestream_evaluator_shadow_joined",
            "Shadow records joined with their label and counted",
            value=t["shadow_joined"],
        )
        yield CounterMetricFamily(
            "forestream_evaluator_published",
            "Count records acknowledged by the monitoring topic",
            value=t["published_records"],
        )
        evicted = CounterMetricFamily(
            "forestream_evaluator_evicted", "Waiting records evicted, by reason", labels=["reason"]
        )
        for reason, n in sorted(t["evicted"].items()):
            evicted.add_metric([reason], n)
        yield evicted
        bad = CounterMetricFamily(
            "forestream_evaluator_bad_records",
            "Records that cannot be joined, by topic role and reason",
            labels=["role", "reason"],
        )
        for role in ("labels", "predictions", "shadow"):
            for reason, n in sorted(t[f"bad_{role}"].items()):
                bad.add_metric([role, reason], n)
        yield bad
        rejected = CounterMetricFamily(
            "forestream_evaluator_rejected", "Pairs never counted, by reason", labels=["reason"]
        )
        for reason, n in sorted(t["rejected"].items()):
            rejected.add_metric([reason], n)
        yield rejected
        waiting = GaugeMetricFamily(
            "forestream_evaluator_waiting", "Records waiting for their other half", labels=["side"]
        )
        waiting.add_metric(["predictions"], t["waiting_predictions"])
        waiting.add_metric(["labels"], t["waiting_labels"])
        waiting.add_metric(["shadow"], t["waiting_shadow"])
        yield waiting


def serve_metrics(evaluator: Evaluator, port: int, host: str) -> CollectorRegistry:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread; the registry, for tests."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(EvaluatorCollector(evaluator))
    start_http_server(port, addr=host, registry=registry)
    return registry
