"""Which observers a worker's monitoring feeds: the label join only when it reads labels."""

from __future__ import annotations

from forestream.worker.monitoring import StreamMonitoring


def monitoring(labels_topic: str | None) -> StreamMonitoring:
    return StreamMonitoring(
        kafka="127.0.0.1:9",  # never contacted: nothing is started
        model_name="m",
        monitoring_topic="monitoring",
        labels_topic=labels_topic,
        worker_id="w0",
        reference_for=lambda _version: None,
    )


def test_without_labels_no_prediction_waits_for_one() -> None:
    """The default worker (labels joined by the fleet evaluator) keeps no predictions for a
    join that cannot happen: up to 100,000 of them were ~35 MB of its RSS."""
    watched = monitoring(None)
    assert watched.evaluator not in watched.observers
    assert watched.drift in watched.observers and watched.latency in watched.observers


def test_a_worker_reading_labels_joins_them() -> None:
    watched = monitoring("labels")
    assert watched.evaluator in watched.observers
