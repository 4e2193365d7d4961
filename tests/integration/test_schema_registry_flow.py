"""Avro through a real Schema Registry, end to end: a real broker and a real Apicurio Registry
started by the project, records written by confluent-kafka's own ``AvroSerializer`` (not ours)
with a schema the test registers, scored by one ``forestream worker --input-format avro``.

The predictions must equal the JSON path's for the same values (the JSON records validated by
the same decoder, then the pipeline), and wire-format garbage must land in the DLQ with its
bytes and reason while the worker goes on.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from kafka import KafkaConsumer, TopicPartition

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.local.schema_registry import RegistryInfo
from forestream.wire import headers
from forestream.wire.confluent import frame
from forestream.wire.headers import ReasonCode
from forestream.wire.messages import Prediction
from forestream.worker.decoding import decode_batch
from tests.worker_support import (
    CATEGORICAL,
    NUMERIC,
    ROOT,
    log_events,
    make_frame,
    publish_promotion,
    row_json,
    save_model,
    worker_command,
    worker_env,
)

MODEL = "avro"
ROWS = 40


def avro_schema(name: str, fields: list[str]) -> str:
    """A record with the model's features: x2 and shape nullable (training saw them missing)."""
    types = {"x1": "double", "x2": ["null", "double"], "x3": "double", "color": "string",
             "shape": ["null", "string"]}  # fmt: skip
    return json.dumps(
        {
            "type": "record",
            "name": name,
            "fields": [
                {"name": f, "type": types[f], **({"default": None} if f in ("x2", "shape") else {})}
                for f in fields
            ],
        }
    )


def as_record(row: Any) -> dict[str, Any]:
    """A frame row as the Avro serializer takes it: NaN becomes null."""
    out: dict[str, Any] = {}
    for name in NUMERIC + CATEGORICAL:
        value = row[name]
        missing = isinstance(value, float) and math.isnan(value)
        out[name] = None if missing else (float(value) if name in NUMERIC else str(value))
    return out


def serializer(registry: RegistryInfo, schema: str) -> AvroSerializer:
    client = SchemaRegistryClient({"url": registry.url})
    return AvroSerializer(client, schema)


def read_all(bootstrap: str, topics: list[str], want: int) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, 0) for t in topics]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        for _ in range(100):  # bounded: 100 polls of at most 200 ms
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if len(records) >= want:
                break
        return records
    finally:
        consumer.close()


def test_avro_from_confluents_serializer_scores_as_json_does(
    kafka_bootstrap: str,
    schema_registry: RegistryInfo,
    topic_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    topics = {k: topic_name(k) for k in ("in", "out", "dlq", "models")}
    ensure_topics(kafka_bootstrap, [TopicSpec(topics[k], 1) for k in ("in", "out", "dlq")])
    store = tmp_path / "store"
    pipeline, metadata = save_model(store, MODEL, make_frame(300, seed=1), trees=10)
    publish_promotion(kafka_bootstrap, topics["models"], metadata)

    rows = [as_record(row) for _, row in make_frame(ROWS, seed=7).iterrows()]
    context = SerializationContext(topics["in"], MessageField.VALUE)
    features = NUMERIC + CATEGORICAL
    avro = serializer(schema_registry, avro_schema("Features", features))
    good = [avro(row, context) for row in rows]
    # a schema without x1, which the model requires: every record of it is refused by schema
    no_x1 = serializer(schema_registry, avro_schema("NoX1", [f for f in features if f != "x1"]))
    lacking = no_x1({k: v for k, v in rows[0].items() if k != "x1"}, context)
    assert good[0][0] == 0 and good[0][1:5] != lacking[1:5]  # framed, two registered ids
    bad = {
        b"plain json": (row_json(make_frame(1).iloc[0]), ReasonCode.NO_MAGIC_BYTE),
        b"header cut": (good[0][:3], ReasonCode.NO_MAGIC_BYTE),
        b"unknown id": (frame(987_654, good[0][5:]), ReasonCode.UNKNOWN_SCHEMA_ID),
        b"body cut": (good[0][:-4], ReasonCode.UNDECODABLE_BODY),
        b"no x1": (lacking, ReasonCode.SCHEMA_MISSING_FEATURE),
    }

    producer = make_producer(kafka_bootstrap)
    try:
        for i, value in enumerate(good[: ROWS // 2]):
            producer.send(topics["in"], key=f"r{i}".encode(), value=value)
        for key, (value, _) in bad.items():
            producer.send(topics["in"], key=key, value=value)
        for i, value in enumerate(good[ROWS // 2 :], start=ROWS // 2):
            producer.send(topics["in"], key=f"r{i}".encode(), value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()

    total = ROWS + len(bad)
    log = tmp_path / "worker.log"
    env = worker_env() | {"FORESTREAM_SCHEMA_REGISTRY_URL": schema_registry.url}
    command = worker_command(
        kafka_bootstrap, topics, store, MODEL, topic_name("group"),
        "--input-format", "avro", "--max-records", str(total), "--max-batch", "16",
    )  # fmt: skip
    with log.open("wb") as sink:
        worker = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        code = worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=10)
        raise AssertionError(f"worker did not finish:\n{log.read_text()[-3000:]}") from None
    assert code == 0, log.read_text()[-3000:]
    assert len(log_events(log, "writer_schema_fetched")) == 2  # each id fetched once

    records = read_all(kafka_bootstrap, [topics["out"], topics["dlq"]], total)
    predictions = {
        r.key: Prediction.model_validate_json(r.value) for r in records if r.topic == topics["out"]
    }
    letters = {r.key: r for r in records if r.topic == topics["dlq"]}
    assert len(predictions) == ROWS and len(letters) == len(bad), (
        sorted(predictions),
        {k: dict(r.headers) for k, r in letters.items()},
    )
    for key, (value, code) in bad.items():
        letter = letters[key]
        got = dict(letter.headers)
        assert got[headers.ERROR].decode() == code, (key, got[headers.ERROR_DETAIL])
        assert letter.value == value  # the original bytes

    # the JSON path on the same values: the same decoder and the same pipeline
    decoded = decode_batch([json.dumps(r).encode() for r in rows], metadata.feature_schema)
    assert decoded.valid_indexes == list(range(ROWS))
    expected = pipeline.predict_proba(decoded.frame)
    for i, probabilities in enumerate(expected):
        prediction = predictions[f"r{i}".encode()]
        got = [prediction.probabilities[c] for c in metadata.classes]
        assert np.allclose(got, probabilities), (i, rows[i], got, probabilities)
        assert prediction.model_version == metadata.version
