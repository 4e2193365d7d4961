"""Predictions as Avro in the Confluent wire format (``--output-format avro``): the record
schema, derived field for field from :class:`forestream.wire.messages.Prediction`, and the
encoder of a batch's rows. Pure: the worker registers the schema and hands in its id.

``probabilities`` is an Avro ``map`` of class label to double, not a record with a field per
class: it decodes to the same dict the JSON prediction carries, class labels need not be legal
Avro names, and the schema does not depend on the model, so one registered id serves every
model version a process hot-swaps to (a new class set is not a schema change).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from forestream.wire.confluent import frame

OutputFormat = Literal["json", "avro"]

PREDICTION_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Prediction",
    "namespace": "forestream",
    "doc": "A forestream prediction; the record key is the input record's key.",
    "fields": [
        {"name": "prediction", "type": "string", "doc": "the predicted class label"},
        {
            "name": "probabilities",
            "type": {"type": "map", "values": "double"},
            "doc": "probability of each class label the model knows",
        },
        {"name": "model_version", "type": "string"},
        {
            "name": "source",
            "type": {
                "type": "record",
                "name": "SourceRef",
                "fields": [
                    {"name": "topic", "type": "string"},
                    {"name": "partition", "type": "int"},
                    {"name": "offset", "type": "long"},
                ],
            },
            "doc": "the input record scored",
        },
        {"name": "event_time", "type": "long", "doc": "input record timestamp, ms since epoch"},
        {"name": "scored_at", "type": "long", "doc": "when the batch was scored, ms since epoch"},
    ],
}
"""Plain ``long`` milliseconds, not the ``timestamp-millis`` logical type: readers would get
datetimes where the JSON prediction has integers."""

PREDICTION_SCHEMA_TEXT = json.dumps(PREDICTION_SCHEMA, separators=(",", ":"))

PREDICTION_COMPATIBILITY = "FULL_TRANSITIVE"
"""Set on a new ``<output topic>-value`` subject (an existing one keeps its level). Readers of a
predictions topic are other teams' consumers, upgraded on their own schedule, and they read it
from the start (audits, backfills) across every worker upgrade: a later schema must be readable
by old readers (forward) and read old records (backward), against every version, not only the
latest. In practice: a field is only ever added or removed with a default."""


def prediction_subject(output_topic: str) -> str:
    """TopicNameStrategy: the subject Confluent deserializers of the topic's values use."""
    return f"{output_topic}-value"


def avro_prediction_encoder(schema_id: int) -> Any:
    """A drop-in for :func:`forestream.worker.scoring.encode_predictions` writing framed Avro
    with the registered prediction schema ``schema_id``: same keyword arguments, one value per
    row. The schema is parsed once; a batch is written into one buffer, then cut per record."""
    import fastavro

    parsed = fastavro.parse_schema(json.loads(PREDICTION_SCHEMA_TEXT))
    header = frame(schema_id, b"")
    write = fastavro.schemaless_writer

    def encode(
        *,
        scores: Any,
        classes: Sequence[str],
        model_version: str,
        topic: str,
        partitions: Sequence[int],
        offsets: Sequence[int],
        event_times_ms: Sequence[int],
        scored_at_ms: int,
    ) -> list[bytes]:
        out = io.BytesIO()
        ends: list[int] = []
        labels = scores.labels.tolist()
        probabilities = np.asarray(scores.probabilities, dtype=np.float64).tolist()
        scored_at = int(scored_at_ms)
        for label, row, partition, offset, event_time in zip(
            labels, probabilities, partitions, offsets, event_times_ms, strict=True
        ):
            out.write(header)
            write(
                out,
                parsed,
                {
                    "prediction": label,
                    "probabilities": dict(zip(classes, row, strict=True)),
                    "model_version": model_version,
                    "source": {"topic": topic, "partition": partition, "offset": offset},
                    "event_time": event_time,
                    "scored_at": scored_at,
                },
            )
            ends.append(out.tell())
        buffer = out.getbuffer()
        values, start = [], 0
        for end in ends:
            values.append(bytes(buffer[start:end]))
            start = end
        return values

    return encode
