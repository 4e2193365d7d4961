"""Avro predictions (``--output-format avro``): the schema mirrors the JSON contract, and an
Avro value read back with fastavro holds exactly what the JSON prediction of the same row does.
Also: the setting, the replay checkpoint keeping the formats, an unreachable registry at start.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from forestream.edge.schema_registry import SchemaRegistryAccess
from forestream.errors import UserError
from forestream.wire.confluent import HEADER_BYTES, schema_id_of
from forestream.wire.messages import Prediction, SourceRef
from forestream.wire.prediction_avro import (
    PREDICTION_SCHEMA,
    PREDICTION_SCHEMA_TEXT,
    avro_prediction_encoder,
    prediction_subject,
)
from forestream.worker.outputs import prediction_encoder
from forestream.worker.replay.checkpoint import Checkpoint
from forestream.worker.replay.flags import check_formats
from forestream.worker.scoring import Scores, ServedLabels, encode_predictions
from forestream.worker.settings import WorkerSettings

PARSED = fastavro.parse_schema(json.loads(PREDICTION_SCHEMA_TEXT))


def read_avro(value: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(value[HEADER_BYTES:]), PARSED, None)


def both(
    classes: list[str],
    probabilities: np.ndarray,
    model_version: str = "v3",
    topic: str = "in.topic",
    schema_id: int = 42,
) -> tuple[list[bytes], list[bytes]]:
    """The JSON and the Avro values of the same scored rows."""
    labels = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)]
    n = len(probabilities)
    arguments: dict[str, Any] = {
        "scores": Scores(labels, probabilities),
        "classes": classes,
        "model_version": model_version,
        "topic": topic,
        "partitions": [i % 3 for i in range(n)],
        "offsets": [2**40 + i for i in range(n)],
        "event_times_ms": [1_700_000_000_000 + i for i in range(n)],
        "scored_at_ms": 1_800_000_000_000,
    }
    return encode_predictions(**arguments), avro_prediction_encoder(schema_id)(**arguments)


def test_the_schema_has_the_json_predictions_fields_in_order() -> None:
    assert [f["name"] for f in PREDICTION_SCHEMA["fields"]] == list(Prediction.model_fields)
    source = PREDICTION_SCHEMA["fields"][3]["type"]
    assert [f["name"] for f in source["fields"]] == list(SourceRef.model_fields)
    assert prediction_subject("forestream.predictions") == "forestream.predictions-value"


def test_a_value_is_framed_with_the_registered_id_and_reads_as_the_json_one() -> None:
    probabilities = np.array([[0.25, 0.75], [0.6, 0.4]])
    as_json, as_avro = both(["no", "yes"], probabilities, schema_id=7)
    for j, a in zip(as_json, as_avro, strict=True):
        assert a[0] == 0 and schema_id_of(a) == 7
        decoded = read_avro(a)
        assert decoded == {**json.loads(j), "served": None}  # JSON omits a null ``served``
        assert Prediction.model_validate(decoded) == Prediction.model_validate_json(j)
    assert read_avro(as_avro[0])["prediction"] == "yes"
    assert list(read_avro(as_avro[0])["probabilities"]) == ["no", "yes"]  # class order kept


LABELS = st.text(min_size=1, max_size=12)  # any unicode: a map key need not be an Avro name


LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=80, deadline=None)
@given(
    classes=st.lists(LABELS, min_size=1, max_size=6, unique=True),
    rows=st.integers(min_value=0, max_value=8),
    data=st.data(),
    version=st.text(min_size=1, max_size=20),
    topic=st.text(min_size=1, max_size=30),
    scored_at=LONGS,
    schema_id=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_avro_values_are_fastavros_bytes_and_hold_the_json_values(
    classes: list[str],
    rows: int,
    data: st.DataObject,
    version: str,
    topic: str,
    scored_at: int,
    schema_id: int,
) -> None:
    """The hand-written encoder against fastavro's writer, byte for byte (varints at every
    magnitude and sign, any unicode label), and read back against the JSON prediction."""
    unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False, allow_subnormal=True)
    matrix = data.draw(st.lists(st.lists(unit, min_size=len(classes), max_size=len(classes)),
                                min_size=rows, max_size=rows))  # fmt: skip
    probabilities = np.array(matrix, dtype=np.float64).reshape(rows, len(classes))
    labels = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)] if rows else []
    arguments: dict[str, Any] = {
        "scores": Scores(np.asarray(labels, dtype=object), probabilities),
        "classes": classes,
        "model_version": version,
        "topic": topic,
        "partitions": data.draw(st.lists(st.integers(0, 2**31 - 1), min_size=rows, max_size=rows)),
        "offsets": data.draw(st.lists(LONGS, min_size=rows, max_size=rows)),
        "event_times_ms": data.draw(st.lists(LONGS, min_size=rows, max_size=rows)),
        "scored_at_ms": scored_at,
    }
    plain_json = encode_predictions(**arguments)
    if data.draw(st.booleans(), label="shadow"):  # the shadow path: ``served`` set per row
        arguments["served"] = ServedLabels(
            data.draw(st.text(min_size=1, max_size=20), label="served version"),
            data.draw(st.lists(LABELS, min_size=rows, max_size=rows), label="served labels"),
        )
    as_avro = avro_prediction_encoder(schema_id)(**arguments)
    as_json = encode_predictions(**arguments)
    assert len(as_avro) == rows
    for j, (a, text) in enumerate(zip(as_avro, as_json, strict=True)):
        expected = {"served": None, **json.loads(text)}  # JSON omits a null ``served``
        served = arguments.get("served")
        if served is not None:
            assert expected["served"] == {"version": served.version, "prediction": served.labels[j]}
            assert text.startswith(plain_json[j][:-1])  # the served path's bytes, then served
            assert Prediction.model_validate_json(text).served is not None
        else:
            assert text == plain_json[j]
        out = io.BytesIO()
        fastavro.schemaless_writer(out, PARSED, expected)
        assert a[HEADER_BYTES:] == out.getvalue(), j
        assert schema_id_of(a) == schema_id
        assert read_avro(a) == expected  # doubles exact: the same floats as JSON's repr


def test_json_stays_the_default_and_avro_needs_a_registry() -> None:
    assert WorkerSettings().output_format == "json"
    assert prediction_encoder("json", "out", None) is encode_predictions
    assert WorkerSettings(output_format=" AVRO ", schema_registry_url="http://r").output_format == (
        "avro"
    )
    with pytest.raises(ValidationError, match="--output-format avro needs FORESTREAM_SCHEMA_REG"):
        WorkerSettings(output_format="avro")
    with pytest.raises(ValidationError, match="output_format"):
        WorkerSettings(output_format="protobuf", schema_registry_url="http://r")


def test_an_unreachable_registry_at_start_is_one_user_error() -> None:
    access = SchemaRegistryAccess("http://127.0.0.1:1", timeout_s=1.0)  # nothing listens
    with pytest.raises(UserError) as raised:
        prediction_encoder("avro", "out", access)
    message = str(raised.value)
    assert message.startswith("--output-format avro: schema registry http://127.0.0.1:1 ")
    assert "\n" not in message and "predictions cannot be written" in message


def test_the_checkpoint_keeps_the_formats_and_older_files_read_json(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    state = Checkpoint("in", "out", "out.dlq", "/m", "m", "v1", {0: (0, 9)})
    state.input_format, state.output_format = "avro", "avro"
    state.save(path)
    assert Checkpoint.load(path) == state
    body = json.loads(path.read_text())
    del body["input_format"], body["output_format"]
    path.write_text(json.dumps(body))
    older = Checkpoint.load(path)
    assert (older.input_format, older.output_format) == ("json", "json")


def test_a_resumed_checkpoints_formats_are_checked() -> None:
    check_formats("json", "json", None)
    check_formats("json-schema", "avro", "http://r")
    with pytest.raises(UserError, match="--input-format avro needs FORESTREAM_SCHEMA_REGISTRY"):
        check_formats("avro", "json", None)
    with pytest.raises(UserError, match="expected an input format of json, avro"):
        check_formats("xml", "json", "http://r")


def test_a_worker_and_a_replay_register_when_built_before_any_client() -> None:
    """The worker's :class:`Serving` (built before the model follower starts) and a replay
    run ask the registry at once: a registry away ends them before they read a record."""
    from typing import cast

    from forestream.worker.serving import Serving, output_encoder

    url = "http://127.0.0.1:1"
    settings = WorkerSettings(output_format="avro", schema_registry_url=url)
    with pytest.raises(UserError, match=r"^--output-format avro: schema registry "):
        Serving(settings, cast(Any, None), None)
    with pytest.raises(UserError, match=r"^--output-format avro: schema registry "):
        output_encoder(settings, "replayed")
    assert output_encoder(WorkerSettings(), "out") is encode_predictions
