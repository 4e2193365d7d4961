"""Announce versions on the compacted models topic; workers follow it to know what to serve.

Key = model name, so compaction keeps the newest event per model. Every event carries
``serving`` (the promoted version at that moment, with its hash), so whatever compaction
drops, the surviving event still tells a new worker what to load and how to verify it.
"""

from __future__ import annotations

import time
from typing import Literal

from contracts.kafka_errors import classify_client_error
from contracts.kafka_io import (
    Target,
    connection,
    ensure_topics,
    make_producer,
    models_topic_spec,
)
from contracts.model_store import ModelMetadata, ModelStore
from contracts.wire import ModelEvent, ServingRef

EventKind = Literal["published", "promoted", "rolled_back"]

SEND_TIMEOUT_S = 30.0


def serving_ref(store: ModelStore, name: str) -> ServingRef | None:
    """The store's promoted version of ``name`` as the topic announces it (None if none)."""
    version = store.served(name)
    if version is None:
        return None
    meta = store.metadata(name, version)
    return ServingRef(version=meta.version, sha256=meta.artifact_sha256, signature=meta.signature)


def model_event(kind: EventKind, metadata: ModelMetadata, serving: ServingRef | None) -> ModelEvent:
    return ModelEvent(
        kind=kind,
        name=metadata.name,
        version=metadata.version,
        sha256=metadata.artifact_sha256,
        signature=metadata.signature,
        created_at=metadata.created_at,
        accuracy=metadata.metrics.get("accuracy"),
        macro_f1=metadata.metrics.get("macro_f1"),
        serving=serving,
        at=int(time.time() * 1000),
    )


def publish_event(kafka: Target, topic: str, event: ModelEvent) -> None:
    """Send one event (topic created compacted on first use) and wait until the broker has it."""
    from kafka.errors import KafkaError

    from contracts.errors import UserError

    ensure_topics(kafka, [models_topic_spec(topic)])
    producer = make_producer(kafka, linger_ms=0)
    try:
        future = producer.send(
            topic, key=event.name.encode(), value=event.model_dump_json().encode()
        )
        future.get(timeout=SEND_TIMEOUT_S)
    except KafkaError as exc:
        fatal = classify_client_error(exc, connection(kafka), topic=topic)
        if fatal is not None:
            raise fatal from None
        raise UserError(
            f"could not publish {event.kind} {event.name} {event.version} to {topic!r} "
            f"at {connection(kafka).bootstrap}: {exc}"
        ) from None
    finally:
        producer.close(timeout=5)
