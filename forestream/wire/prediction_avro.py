"""Predictions as Avro in the Confluent wire format (``--output-format avro``): the record
schema, derived field for field from :class:`forestream.wire.messages.Prediction`, and the
encoder of a batch's rows. Pure: the worker registers the schema and hands in its id.

``probabilities`` is an Avro ``map`` of class label to double, not a record with a field per
class: it decodes to the same dict the JSON prediction carries, class labels need not be legal
Avro names, and the schema does not depend on the model, so one registered id serves every
model version a process hot-swaps to (a new class set is not a schema change).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from forestream.wire.confluent import frame

if TYPE_CHECKING:  # imported when a batch is encoded: settings and `--help` stay light
    import numpy as np

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
        {
            "name": "served",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "ServedPrediction",
                    "fields": [
                        {"name": "version", "type": "string"},
                        {"name": "prediction", "type": "string"},
                    ],
                },
            ],
            "default": None,
            "doc": "shadow records only: the served version's prediction for the same record",
        },
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
    row.

    Written by hand, as the JSON path is, at a fraction of fastavro's per-record cost (a dict
    per row and a walk of the schema): what is constant within a batch (labels, model version,
    topic, scored_at) is encoded once, the probability maps of the whole batch in one numpy
    buffer, and a row costs three varints and a join. ``tests/unit/test_prediction_avro.py``
    checks the bytes equal fastavro's ``schemaless_writer`` for the same rows.
    """
    header = frame(schema_id, b"")

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
        served: Any = None,
    ) -> list[bytes]:
        """``served``: a :class:`forestream.worker.scoring.ServedLabels` (``version``, one
        label per row) on the shadow path, written as union branch 1; else null."""
        import numpy as np

        n = len(partitions)
        maps = _probability_maps(classes, np.asarray(scores.probabilities, dtype="<f8"))
        width = len(maps) // n if n else 0
        labels = {c: header + _string(c) for c in classes}  # prediction is the first field
        middle = _long(len(classes))  # the map's one block: its count, entries, then 0
        after = b"\x00" + _string(model_version) + _string(topic)
        scored_at = _long(int(scored_at_ms))
        if served is None:
            tails: Any = None
            scored_at += b"\x00"  # then ``served``: null
        else:
            version = b"\x02" + _string(served.version)  # union branch 1, then the record
            by_label: dict[str, bytes] = {}
            tails = [
                by_label.get(label) or by_label.setdefault(label, version + _string(label))
                for label in served.labels
            ]
            if len(tails) != len(partitions):
                raise ValueError("served labels and rows differ in number")
        partition_bytes: dict[int, bytes] = {}
        values = []
        for j, (label, partition, offset, event_time) in enumerate(
            zip(scores.labels.tolist(), partitions, offsets, event_times_ms, strict=True)
        ):
            encoded = partition_bytes.get(partition)
            if encoded is None:
                encoded = partition_bytes[partition] = _long(partition)
            values.append(
                b"".join(
                    (
                        labels[label],
                        middle,
                        maps[j * width : (j + 1) * width],
                        after,
                        encoded,
                        _long(offset),
                        _long(event_time),
                        scored_at,
                        b"" if tails is None else tails[j],
                    )
                )
            )
        return values

    return encode


def _probability_maps(classes: Sequence[str], probabilities: np.ndarray) -> bytes:
    """Every row's map entries (key string, little-endian double, per class), rows one after
    the other at a fixed width: one numpy buffer for the batch."""
    import numpy as np

    keys = [np.frombuffer(_string(c), dtype=np.uint8) for c in classes]
    width = sum(len(k) + 8 for k in keys)
    rows = probabilities.shape[0]
    out = np.empty((rows, width), dtype=np.uint8)
    at = 0
    for i, key in enumerate(keys):
        out[:, at : at + len(key)] = key
        at += len(key)
        column = np.ascontiguousarray(probabilities[:, i], dtype="<f8")
        out[:, at : at + 8] = column.view(np.uint8).reshape(rows, 8)
        at += 8
    return out.tobytes()


def _long(value: int) -> bytes:
    """An Avro ``int``/``long``: zigzag, then little-endian base-128 varint."""
    z = (value << 1) ^ (value >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return _long(len(data)) + data
