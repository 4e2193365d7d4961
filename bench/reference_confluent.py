"""The reference a user would write: a hand-written confluent-kafka scoring loop.

This is what serving the same RandomForest straight from confluent-kafka looks like without
forestream: ``consume(1000, timeout=0.05)``, ``json.loads`` per message, one DataFrame per
batch, ``predict_proba``, one JSON prediction per record, ``flush()``, a synchronous commit.
No schema checks, no dead letters, no model reloads, no metrics: the worker on librdkafka is
compared with it to price what forestream adds on the same client. The clients get the same
settings as the worker's (:mod:`bench.confluent_clients`), or the comparison would be of
configurations rather than of code.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.confluent_clients import POLL_TIMEOUT_S, make_consumer, make_producer

BATCH = 1000


class ReferenceFailed(RuntimeError):
    """The loop could not finish: the benchmark reports it rather than a number."""


def score_loop(
    bootstrap: str,
    source: str,
    sink: str,
    records: int,
    group: str,
    artifact: Path,
    model_version: str,
    timeout_s: float,
) -> None:
    """Score the first ``records`` records of ``source`` into ``sink``, a batch at a time."""
    import joblib
    import pandas as pd

    pipeline = joblib.load(artifact)
    columns = list(pipeline.feature_names_in_)
    classes = [str(c) for c in pipeline.classes_]
    consumer = make_consumer(bootstrap, source, group)
    producer = make_producer(bootstrap)
    failed: list[object] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(err)

    try:
        done = 0
        deadline = time.monotonic() + timeout_s
        while done < records:
            if time.monotonic() > deadline:
                raise ReferenceFailed(f"scored {done} of {records} records in {timeout_s:.0f}s")
            messages = consumer.consume(min(BATCH, records - done), timeout=POLL_TIMEOUT_S)
            if not messages:
                continue
            for msg in messages:
                if msg.error() is not None:
                    raise ReferenceFailed(str(msg.error()))
            frame = pd.DataFrame([json.loads(m.value()) for m in messages], columns=columns)
            probabilities = pipeline.predict_proba(frame)
            for msg, row, best in zip(
                messages, probabilities.tolist(), probabilities.argmax(axis=1), strict=True
            ):
                value = {
                    "prediction": classes[best],
                    "probabilities": dict(zip(classes, row, strict=True)),
                    "model_version": model_version,
                }
                producer.produce(
                    sink, key=msg.key(), value=json.dumps(value), on_delivery=on_delivery
                )
            if producer.flush(30) or failed:
                raise ReferenceFailed(f"the broker did not take the outputs: {failed[:1]}")
            consumer.commit(asynchronous=False)
            done += len(messages)
    finally:
        producer.flush(10)
        consumer.close()
