"""Avro through a real Schema Registry, end to end: a real broker and a real Apicurio Registry
started by the project, records written by confluent-kafka's own ``AvroSerializer`` (not ours)
with a schema the test registers, scored by one ``forestream worker --input-format avro
--output-format avro``.

The predictions, read with confluent-kafka's own ``AvroDeserializer``, must equal the JSON
path's for the same values (the JSON records validated by the same decoder, then the pipeline),
and wire-format garbage must land in the DLQ with its bytes and reason while the worker goes
on; a ``forestream replay --input-format avro`` of the same range must score as the worker
did. Then the registry is stopped under a running worker: the id it has keeps scoring, an id
it never fetched is held until the registry is back; that test reads JSON Schema records from
confluent-kafka's ``JSONSerializer``. Protobuf records come from confluent-kafka's
``ProtobufSerializer`` with a message class built at run time from a ``FileDescriptorProto``
(no protoc), the serializer registering the schema itself.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from kafka import KafkaConsumer, TopicPartition

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.local.schema_registry import RegistryInfo
from forestream.wire import headers
from forestream.wire.confluent import frame
from forestream.wire.headers import ReasonCode
from forestream.wire.messages import Prediction
from forestream.worker.decoding import decode_batch
from tests.waiting import wait_until
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
CLI = [sys.executable, "-m", "forestream"]


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
        "--input-format", "avro", "--output-format", "avro",
        "--max-records", str(total), "--max-batch", "16",
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
    [registered] = log_events(log, "prediction_schema_registered")  # once, at start

    # the predictions as any Avro consumer reads them: confluent-kafka's own deserializer
    client = SchemaRegistryClient({"url": schema_registry.url})
    latest = client.get_latest_version(f"{topics['out']}-value")
    assert latest.schema_id == registered["schema_id"]
    assert client.get_compatibility(f"{topics['out']}-value") == "FULL_TRANSITIVE"
    deserialize = AvroDeserializer(client)
    out_context = SerializationContext(topics["out"], MessageField.VALUE)
    records = read_all(kafka_bootstrap, [topics["out"], topics["dlq"]], total)
    predictions = {
        r.key: Prediction.model_validate(deserialize(r.value, out_context))
        for r in records
        if r.topic == topics["out"]
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

    # a replay of the same range reads the Avro input as the worker did (here into JSON)
    replayed_topic = topic_name("replayed")
    done = subprocess.run(
        [*CLI, "replay", "--bootstrap-servers", kafka_bootstrap, "--input-topic", topics["in"],
         "--output-topic", replayed_topic, "--store", str(store), "--name", MODEL,
         "--checkpoint", str(tmp_path / "replay.json"), "--input-format", "avro"],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "replay.json").read_text())["input_format"] == "avro"
    replayed = read_all(kafka_bootstrap, [replayed_topic, f"{replayed_topic}.dlq"], total)
    again = {
        r.key: Prediction.model_validate_json(r.value)
        for r in replayed
        if r.topic == replayed_topic
    }
    assert again.keys() == predictions.keys()
    for key, prediction in predictions.items():
        assert again[key].prediction == prediction.prediction
        assert again[key].probabilities == prediction.probabilities  # exact: Avro doubles
        assert again[key].source == prediction.source
    assert {r.key for r in replayed if r.topic != replayed_topic} == set(bad)


# -- Protobuf -------------------------------------------------------------------------------------


def protobuf_class(name: str, fields: list[str]) -> Any:
    """A proto3 message of the model's features, built at run time as generated code would
    carry it: doubles and strings, ``optional`` (with presence) where the value may be missing."""
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"{name.lower()}.proto", package="forestream.test", syntax="proto3"
    )
    message = proto.message_type.add(name=name)
    for number, feature in enumerate(fields, start=1):
        kind = field.TYPE_DOUBLE if feature in NUMERIC else field.TYPE_STRING
        added = message.field.add(name=feature, number=number, type=kind)
        if feature in ("x2", "shape"):
            added.proto3_optional = True
            added.oneof_index = len(message.oneof_decl)
            message.oneof_decl.add(name=f"_{feature}")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"forestream.test.{name}"))


def test_protobuf_from_confluents_serializer_scores_as_json_does(
    kafka_bootstrap: str,
    schema_registry: RegistryInfo,
    topic_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """As the Avro test, in Protobuf: unset ``optional`` fields are the JSON path's nulls. Half
    the records name the schema the serializer registered (a base64 ``FileDescriptorProto``),
    half the same message registered as .proto text, as a Java serializer registers it."""
    topics = {k: topic_name(k) for k in ("in", "out", "dlq", "models")}
    ensure_topics(kafka_bootstrap, [TopicSpec(topics[k], 1) for k in ("in", "out", "dlq")])
    store = tmp_path / "store"
    pipeline, metadata = save_model(store, MODEL, make_frame(300, seed=1), trees=10)
    publish_promotion(kafka_bootstrap, topics["models"], metadata)

    rows = [as_record(row) for _, row in make_frame(ROWS, seed=7).iterrows()]
    context = SerializationContext(topics["in"], MessageField.VALUE)
    client = SchemaRegistryClient({"url": schema_registry.url})
    features = NUMERIC + CATEGORICAL
    conf = {"use.deprecated.format": False}
    message = protobuf_class("Features", features)
    serialize = ProtobufSerializer(message, client, conf)
    good = [serialize(message(**{k: v for k, v in r.items() if v is not None}), context)
            for r in rows]  # fmt: skip
    declared = "\n".join(
        f"  {'optional ' if f in ('x2', 'shape') else ''}"
        f"{'double' if f in NUMERIC else 'string'} {f} = {n};"
        for n, f in enumerate(features, start=1)
    )
    text = f'syntax = "proto3";\npackage forestream.text;\nmessage Features {{\n{declared}\n}}\n'
    text_id = client.register_schema(topic_name("text-value"), Schema(text, "PROTOBUF"))
    assert client.get_schema(text_id).schema_str == text  # Apicurio keeps the text
    good[ROWS // 2 :] = [frame(text_id, v[5:]) for v in good[ROWS // 2 :]]
    no_x1 = protobuf_class("NoX1", [f for f in features if f != "x1"])
    lacking = ProtobufSerializer(no_x1, client, conf)(no_x1(x3=1.0, color="red"), context)
    assert good[0][0] == 0 and good[0][5] == 0 and good[0][1:5] != lacking[1:5]
    bad = {
        b"plain json": (row_json(make_frame(1).iloc[0]), ReasonCode.NO_MAGIC_BYTE),
        b"unknown id": (frame(987_654, good[0][5:]), ReasonCode.UNKNOWN_SCHEMA_ID),
        b"body cut": (good[0][:-4], ReasonCode.UNDECODABLE_BODY),
        b"no such message": (good[0][:5] + b"\x02\x02" + good[0][6:], ReasonCode.UNDECODABLE_BODY),
        b"no x1": (lacking, ReasonCode.SCHEMA_MISSING_FEATURE),
    }

    producer = make_producer(kafka_bootstrap)
    try:
        for i, value in enumerate(good):
            producer.send(topics["in"], key=f"r{i}".encode(), value=value)
            if i == ROWS // 2:
                for key, (garbage, _) in bad.items():
                    producer.send(topics["in"], key=key, value=garbage)
        producer.flush(timeout=30)
    finally:
        producer.close()

    total = ROWS + len(bad)
    log = tmp_path / "worker.log"
    env = worker_env() | {"FORESTREAM_SCHEMA_REGISTRY_URL": schema_registry.url,
                          "FORESTREAM_INPUT_FORMAT": "protobuf"}  # fmt: skip
    command = worker_command(
        kafka_bootstrap, topics, store, MODEL, topic_name("group"),
        "--max-records", str(total), "--max-batch", "16",
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
    fetched = log_events(log, "writer_schema_fetched")
    assert [e["schema_type"] for e in fetched] == ["PROTOBUF"] * 3  # each id once

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
        got = dict(letters[key].headers)
        assert got[headers.ERROR].decode() == code, (key, got[headers.ERROR_DETAIL])
        assert letters[key].value == value  # the original bytes

    decoded = decode_batch([json.dumps(r).encode() for r in rows], metadata.feature_schema)
    assert decoded.valid_indexes == list(range(ROWS))
    for i, probabilities in enumerate(pipeline.predict_proba(decoded.frame)):
        prediction = predictions[f"r{i}".encode()]
        got = [prediction.probabilities[c] for c in metadata.classes]
        assert np.allclose(got, probabilities), (i, rows[i], got, probabilities)
        assert prediction.model_version == metadata.version


# -- a registry outage under a running worker ------------------------------------------------------


def registry_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "registry", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )


class Outputs:
    """Predictions and dead letters read so far, by key."""

    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        self.topics = topics
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        tps = [TopicPartition(topics[t], 0) for t in ("out", "dlq")]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.predicted: dict[bytes, Prediction] = {}
        self.dead: dict[bytes, str] = {}

    def poll(self) -> Outputs:
        for batch in self.consumer.poll(timeout_ms=100).values():
            for r in batch:
                if r.topic == self.topics["out"]:
                    self.predicted[r.key] = Prediction.model_validate_json(r.value)
                else:
                    self.dead[r.key] = dict(r.headers)[headers.ERROR].decode()
        return self


def json_schema(title: str) -> str:
    """A closed object schema with the model's features; x2 and shape may be null."""
    kinds = {"x1": "number", "x2": ["number", "null"], "x3": "number", "color": "string",
             "shape": ["string", "null"]}  # fmt: skip
    return json.dumps(
        {
            "title": title,
            "type": "object",
            "properties": {name: {"type": kind} for name, kind in kinds.items()},
            "required": ["x1", "x3", "color"],
            "additionalProperties": False,
        }
    )


def test_a_registry_outage_holds_unseen_ids_and_never_stops_seen_ones(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    """JSON Schema records from confluent-kafka's own ``JSONSerializer``, scored as the JSON
    path scores the same values; then the registry is stopped and started again under the
    worker. Also `forestream registry start|stop|status` as a user runs them (the same port,
    remembered, and the same schemas, kept in the registry's data directory)."""
    data_dir = str(tmp_path / "registry")
    assert registry_cli("status", "--data-dir", data_dir).returncode == 1
    started = registry_cli("start", "--data-dir", data_dir)
    worker: subprocess.Popen[bytes] | None = None
    outputs: Outputs | None = None
    try:
        assert started.returncode == 0, started.stderr
        url, export = started.stdout.splitlines()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/apis/ccompat/v7")
        assert export == f"export FORESTREAM_SCHEMA_REGISTRY_URL={url}"
        assert registry_cli("start", "--data-dir", data_dir).stdout.splitlines()[0] == url
        assert registry_cli("status", "--data-dir", data_dir).stdout.startswith(f"running {url}")

        topics = {k: topic_name(k) for k in ("in", "out", "dlq", "models")}
        ensure_topics(kafka_bootstrap, [TopicSpec(topics[k], 1) for k in ("in", "out", "dlq")])
        rows = [as_record(row) for _, row in make_frame(30, seed=3).iterrows()]
        context = SerializationContext(topics["in"], MessageField.VALUE)
        client = SchemaRegistryClient({"url": url})
        seen = JSONSerializer(json_schema("Seen"), client)
        unseen = JSONSerializer(json_schema("Unseen"), client)
        values = [seen(r, context) for r in rows[:20]] + [unseen(r, context) for r in rows[20:]]
        ids = {v[1:5] for v in values}
        assert len(ids) == 2

        store = tmp_path / "store"
        pipeline, metadata = save_model(store, MODEL, make_frame(300, seed=1), trees=10)
        publish_promotion(kafka_bootstrap, topics["models"], metadata)
        log = tmp_path / "worker.log"
        env = worker_env() | {"FORESTREAM_SCHEMA_REGISTRY_URL": url,
                              "FORESTREAM_SCHEMA_REGISTRY_WAIT_S": "240"}  # fmt: skip
        command = worker_command(
            kafka_bootstrap, topics, store, MODEL, topic_name("group"),
            "--input-format", "json-schema",
        )  # fmt: skip
        with log.open("wb") as sink:
            worker = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        producer = make_producer(kafka_bootstrap)
        outputs = Outputs(kafka_bootstrap, topics)

        def send(first: int, last: int) -> None:
            for i in range(first, last):
                producer.send(topics["in"], key=f"r{i}".encode(), value=values[i])
            producer.flush(timeout=30)

        def scored(n: int) -> Callable[[], bool]:
            def check() -> bool:
                assert worker is not None and worker.poll() is None, log.read_text()[-3000:]
                return len(outputs.poll().predicted) >= n

            return check

        send(0, 10)
        wait_until(scored(10), "the first 10 records scored", 60, seen=lambda: outputs.dead)

        stopped = registry_cli("stop", "--data-dir", data_dir)
        assert stopped.stdout.strip() == f"stopped registry on {url}"
        assert registry_cli("status", "--data-dir", data_dir).stdout.strip() == "stopped"
        send(10, 20)  # the id the worker has: scored with the registry gone
        wait_until(scored(20), "seen id scored during the outage", 30, seen=lambda: outputs.dead)
        send(20, 30)  # an id it never fetched: held, not dead-lettered
        wait_until(
            lambda: log_events(log, "schema_registry_unavailable"),
            "the worker holding an unseen id",
            30,
        )
        assert len(outputs.poll().predicted) == 20 and not outputs.dead

        again = registry_cli("start", "--data-dir", data_dir)
        assert again.returncode == 0 and again.stdout.splitlines()[0] == url, again.stderr
        wait_until(scored(30), "held records scored once the registry is back", 30)
        assert not outputs.dead and log_events(log, "schema_registry_back")
        decoded = decode_batch([json.dumps(r).encode() for r in rows], metadata.feature_schema)
        assert decoded.valid_indexes == list(range(30))  # the JSON path on the same values
        for i, probabilities in enumerate(pipeline.predict_proba(decoded.frame)):
            prediction = outputs.predicted[f"r{i}".encode()]
            got = [prediction.probabilities[c] for c in metadata.classes]
            assert np.allclose(got, probabilities), (i, rows[i], got, probabilities)
        producer.close()
        worker.terminate()
        assert worker.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
        if outputs is not None:
            outputs.consumer.close()
        registry_cli("stop", "--data-dir", data_dir)


# -- the model's contract in the registry ----------------------------------------------------------


def test_register_schema_publishes_the_contract_and_refuses_an_incompatible_one(
    kafka_bootstrap: str,
    schema_registry: RegistryInfo,
    topic_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """`train --register-schema`, then `models register-schema` on two more versions: the
    first makes the subject (BACKWARD), registering it again changes nothing, a compatible one
    adds a version, an incompatible one is refused in one line naming the field;
    a producer using the registered schema cannot send a record without a required feature,
    and `forestream produce --format avro` writes what confluent-kafka's deserializer reads.
    Then the same as a JSON Schema (`--contract-format json-schema`) on another topic."""
    store, topic, name = tmp_path / "store", topic_name("in"), "contract"
    env = os.environ.copy() | {"FORESTREAM_SCHEMA_REGISTRY_URL": schema_registry.url}
    subject = f"{topic}-value"

    def register(version: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "models", "register-schema", version, "--store", str(store), "--name", name,
             "--input-topic", topic],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip

    base = make_frame(300, seed=1)  # x2 and shape seen missing: nullable, the rest required
    base.to_csv(tmp_path / "train.csv", index=False)
    first = subprocess.run(  # the trainer's own schema, registered right after the fit
        [*CLI, "train", "--data", str(tmp_path / "train.csv"), "--target", "target",
         "--trees", "3", "--allow-unsigned", "--register-schema", "--store", str(store),
         "--name", name, "--input-topic", topic],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    [line] = [ln for ln in first.stdout.splitlines() if ln.startswith("registered ")]
    assert line.startswith(f"registered {name} v1 as {subject} version 1 (schema id ")
    assert line.endswith(", compatibility BACKWARD)")
    assert register("v1").stdout.startswith(f"registered {name} v1 as {subject} version 1 ")

    looser = base.copy()
    looser.loc[:5, "x1"] = np.nan  # x1 may now be missing: older records still read
    save_model(store, name, looser, trees=3)
    second = register("v2")
    assert second.returncode == 0 and f"as {subject} version 2 " in second.stdout, second.stderr

    stricter = base.copy()
    stricter["x2"] = stricter["x2"].fillna(0.0)  # x2 never missing: required, old nulls unread
    save_model(store, name, stricter, trees=3)
    third = register("v3")
    assert third.returncode == 2 and not third.stdout, third.stdout
    assert third.stderr.strip() == (
        f"error: v3's features are not BACKWARD compatible with {subject} version 2: "
        "'x1' no longer takes null; 'x2' no longer takes null"  # v2 let x1 be null too
    )

    client = SchemaRegistryClient({"url": schema_registry.url})
    latest = client.get_latest_version(subject)
    assert latest.version == 2
    assert client.get_compatibility(subject) == "BACKWARD"
    produce = AvroSerializer(
        client, latest.schema.schema_str, conf={"auto.register.schemas": False}
    )
    context = SerializationContext(topic, MessageField.VALUE)
    row = {"x1": None, "x2": 1.0, "x3": 0.5, "color": "red", "shape": None}
    assert produce(row, context)[1:5] == latest.schema_id.to_bytes(4, "big")
    with pytest.raises(Exception, match="x3"):  # refused by the serializer, before Kafka
        produce({k: v for k, v in row.items() if k != "x3"}, context)

    produced = subprocess.run(
        [*CLI, "produce", "--synthetic", "12", "--format", "avro", "--version", "v2",
         "--store", str(store), "--name", name, "--input-topic", topic, "--partitions", "1",
         "--bootstrap-servers", kafka_bootstrap],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    read = AvroDeserializer(client)
    records = read_all(kafka_bootstrap, [topic], 12)
    values = [read(r.value, SerializationContext(topic, MessageField.VALUE)) for r in records]
    assert len(values) == 12 and all(set(v) == set(row) for v in values)
    assert {r.value[1:5] for r in records} == {latest.schema_id.to_bytes(4, "big")}

    nothing = subprocess.run(
        [*CLI, "produce", "--synthetic", "1", "--format", "avro", "--store", str(store),
         "--name", name, "--input-topic", topic_name("unregistered"),
         "--bootstrap-servers", kafka_bootstrap],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert nothing.returncode == 2 and "no schema under" in nothing.stderr, nothing.stderr
    away = subprocess.run(
        [*CLI, "produce", "--synthetic", "1", "--format", "avro", "--store", str(store),
         "--name", name, "--input-topic", topic, "--bootstrap-servers", kafka_bootstrap],
        capture_output=True, text=True, timeout=60,
        env=env | {"FORESTREAM_SCHEMA_REGISTRY_URL": "http://127.0.0.1:1"},
    )  # fmt: skip
    assert away.returncode == 2, away.stderr
    assert away.stderr.strip().splitlines() == [
        "error: schema registry http://127.0.0.1:1 unreachable: [Errno 111] Connection refused"
    ]

    # the same contract as a JSON Schema, for a topic whose producers write JSON Schema
    json_topic = topic_name("json-in")
    json_subject = f"{json_topic}-value"

    def register_json(version: str, topic: str = json_topic) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "models", "register-schema", version, "--store", str(store), "--name", name,
             "--input-topic", topic, "--contract-format", "json-schema"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip

    made = register_json("v2")
    assert made.returncode == 0 and f"as {json_subject} version 1 " in made.stdout, made.stderr
    refused = register_json("v3")
    assert refused.returncode == 2 and "'x2' is now required" in refused.stderr, refused.stderr
    assert refused.stderr.startswith(
        f"error: v3's features are not BACKWARD compatible with {json_subject} version 1: "
    )
    mixed = register_json("v2", topic)  # the Avro subject
    assert mixed.returncode == 2 and mixed.stderr.strip() == (
        f"error: {subject} holds Avro schemas (version 2), not json-schema: "
        "register with --contract-format avro, or use another input topic"
    ), mixed.stderr
    json_latest = client.get_latest_version(json_subject)
    assert json_latest.schema.schema_type == "JSON" and json_latest.version == 1
    produce_json = JSONSerializer(
        json_latest.schema.schema_str, client, conf={"auto.register.schemas": False}
    )
    json_context = SerializationContext(json_topic, MessageField.VALUE)
    assert produce_json(row, json_context)[1:5] == json_latest.schema_id.to_bytes(4, "big")
    with pytest.raises(Exception, match="x3"):  # refused by the serializer, before Kafka
        produce_json({k: v for k, v in row.items() if k != "x3"}, json_context)
