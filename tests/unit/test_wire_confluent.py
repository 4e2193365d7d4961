"""The Confluent wire format and the framed parser, without a registry: framing is total over
any bytes, Avro and JSON Schema records decode to what the JSON path validates (same frame, same
rejects), and each way a framed value can be unusable has its own reason code."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from forestream.wire.confluent import (
    HEADER_BYTES,
    WriterSchema,
    avro_contract,
    avro_encoder,
    contract_changes,
    frame,
    json_contract_changes,
    json_schema_contract,
    not_framed,
    schema_id_of,
    writer_schema,
)
from forestream.wire.headers import ReasonCode
from forestream.wire.schema import CategoricalFeature, FeatureSchema, NumericFeature
from forestream.worker.decoding import decode_batch
from forestream.worker.framed import ABSENT, Absent, Unavailable, framed_parser

SCHEMA = FeatureSchema(
    features=[
        NumericFeature(name="age"),
        NumericFeature(name="income", missing_seen=True),
        CategoricalFeature(name="color", categories=["red", "blue"]),
        CategoricalFeature(name="city", categories=["oslo"], missing_seen=True),
    ]
)
AVRO = {
    "type": "record",
    "name": "Features",
    "fields": [
        {"name": "age", "type": "long"},
        {"name": "income", "type": ["null", "double"], "default": None},
        {"name": "color", "type": "string"},
        {"name": "city", "type": ["null", "string"], "default": None},
        {"name": "note", "type": "string", "default": ""},
    ],
}
PARSED = fastavro.parse_schema(AVRO)
JSON_SCHEMA = {
    "type": "object",
    "properties": {k: {} for k in ("age", "income", "color", "city")},
    "additionalProperties": False,
}
SCHEMAS: dict[int, WriterSchema | Absent | Unavailable] = {
    1: writer_schema(1, None, json.dumps(AVRO)),
    2: writer_schema(2, "JSON", json.dumps(JSON_SCHEMA)),
    3: writer_schema(3, "AVRO", json.dumps({**AVRO, "fields": AVRO["fields"][1:]})),  # no age
    4: writer_schema(4, "AVRO", '{"type": "nonsense"}'),
    5: writer_schema(5, "AVRO", '"string"'),
    6: ABSENT,
    7: Unavailable(61.0, "connection refused"),
}


def lookup(schema_id: int) -> WriterSchema | Absent | Unavailable:
    return SCHEMAS.get(schema_id, ABSENT)


def avro_body(record: dict[str, Any], parsed: Any = PARSED) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()


def decode(values: list[bytes | None], fmt: str = "avro") -> Any:
    return decode_batch(values, SCHEMA, parse=framed_parser(fmt, lookup, SCHEMA))


def only_code(value: bytes | None, fmt: str = "avro") -> str | None:
    decoded = decode([value], fmt)
    assert len(decoded.rejects) + len(decoded.valid_indexes) == 1
    return decoded.rejects[0].code if decoded.rejects else None


GOOD = {"age": 30, "income": 1.5, "color": "red", "city": "oslo", "note": "x"}


@given(st.integers(0, 2**32 - 1), st.binary(max_size=32))
def test_frame_round_trips(schema_id: int, body: bytes) -> None:
    framed = frame(schema_id, body)
    assert schema_id_of(framed) == schema_id and framed[HEADER_BYTES:] == body


@given(st.binary(max_size=16))
def test_schema_id_of_is_total(value: bytes) -> None:
    found = schema_id_of(value)
    framed = len(value) >= HEADER_BYTES and value[0] == 0
    assert (found is not None) == framed
    if value and not framed:
        assert not_framed(value)  # a reason for every unframed value


def test_a_framed_avro_record_is_validated_like_its_json_twin() -> None:
    rows = [GOOD, {**GOOD, "income": None, "city": None}, {**GOOD, "color": "green"}]
    framed = decode([frame(1, avro_body(r)) for r in rows])
    plain = decode_batch([json.dumps(r).encode() for r in rows], SCHEMA)
    assert framed.valid_indexes == plain.valid_indexes == [0, 1, 2]
    assert framed.frame.equals(plain.frame)
    assert framed.unknown_categories == plain.unknown_categories == 1


numbers = st.floats(allow_nan=True, allow_infinity=True) | st.none()
texts = st.sampled_from(["red", "blue", "green", ""]) | st.none()


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "age": st.integers(-(2**63), 2**63 - 1),
                "income": numbers,
                "color": st.text(max_size=4),
                "city": texts,
                "note": st.just(""),
            }
        ),
        max_size=8,
    )
)
def test_avro_and_json_agree_on_every_record(rows: list[dict[str, Any]]) -> None:
    """Same values, same verdicts: valid rows, frame and reason codes (NaN and infinities too)."""
    framed = decode([frame(1, avro_body(r)) for r in rows])
    plain = decode_batch([json.dumps(r).encode() for r in rows], SCHEMA)  # NaN as a literal
    assert framed.valid_indexes == plain.valid_indexes
    assert [(r.index, r.code) for r in framed.rejects] == [(r.index, r.code) for r in plain.rejects]
    assert framed.frame.equals(plain.frame)


def test_json_schema_records_are_the_json_path_behind_a_header() -> None:
    body = json.dumps({k: v for k, v in GOOD.items() if k != "note"}).encode()
    decoded = decode([frame(2, body)], "json-schema")
    assert decoded.valid_indexes == [0] and decoded.frame.equals(decode_batch([body], SCHEMA).frame)
    assert only_code(frame(2, b"{not json"), "json-schema") == ReasonCode.UNDECODABLE_BODY
    assert only_code(frame(2, b"[1]"), "json-schema") == ReasonCode.NOT_OBJECT
    assert only_code(frame(1, avro_body(GOOD)), "json-schema") == ReasonCode.UNDECODABLE_BODY


GOOD_BODY = avro_body(GOOD)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, ReasonCode.EMPTY),
        (b"", ReasonCode.EMPTY),
        (json.dumps(GOOD).encode(), ReasonCode.NO_MAGIC_BYTE),  # plain JSON on an Avro topic
        (b"\x00\x00\x01", ReasonCode.NO_MAGIC_BYTE),  # header cut short
        (frame(6, GOOD_BODY), ReasonCode.UNKNOWN_SCHEMA_ID),
        (frame(99, GOOD_BODY), ReasonCode.UNKNOWN_SCHEMA_ID),
        (frame(7, GOOD_BODY), ReasonCode.REGISTRY_UNAVAILABLE),
        (frame(1, GOOD_BODY[:-3]), ReasonCode.UNDECODABLE_BODY),  # body cut short
        (frame(1, GOOD_BODY + b"\x00"), ReasonCode.UNDECODABLE_BODY),  # trailing bytes
        (frame(1, b""), ReasonCode.UNDECODABLE_BODY),
        (frame(4, GOOD_BODY), ReasonCode.UNDECODABLE_BODY),  # a schema fastavro cannot parse
        (frame(2, GOOD_BODY), ReasonCode.UNDECODABLE_BODY),  # a JSON Schema id on an Avro topic
        (frame(3, GOOD_BODY), ReasonCode.SCHEMA_MISSING_FEATURE),
        (frame(5, avro_body("hi", "string")), ReasonCode.SCHEMA_MISSING_FEATURE),  # not a record
        (frame(1, avro_body({**GOOD, "income": float("nan")})), ReasonCode.NOT_FINITE),
        (frame(1, avro_body({**GOOD, "income": float("-inf")})), ReasonCode.NOT_FINITE),
        (frame(1, avro_body({**GOOD, "income": 1e300})), ReasonCode.OUT_OF_RANGE),
        (frame(1, GOOD_BODY), None),
    ],
)
def test_reason_codes(value: bytes | None, code: str | None) -> None:
    assert only_code(value) == code


def test_an_open_json_schema_leaves_missing_features_to_each_record() -> None:
    open_schema = writer_schema(8, "JSON", json.dumps({"type": "object", "properties": {}}))
    assert open_schema.fields is None and open_schema.missing(["age"]) == []
    closed = SCHEMAS[2]
    assert isinstance(closed, WriterSchema) and closed.missing(["age", "zzz"]) == ["zzz"]


values = st.none() | st.binary(max_size=40) | st.sampled_from([frame(1, GOOD_BODY), GOOD_BODY])


@given(st.lists(values.map(lambda v: v), max_size=20), st.sampled_from([0, 1, 2, 3, 5, 6, 7]))
def test_framed_parser_is_total(raw: list[bytes | None], schema_id: int) -> None:
    """Garbage in any position, framed or not, under any of the test ids: never an exception,
    every record in exactly one of valid / rejects, each reject with a known code."""
    batch = raw + [frame(schema_id, v) for v in raw if v is not None]
    decoded = decode(batch)
    rejected = [r.index for r in decoded.rejects]
    assert sorted(rejected + decoded.valid_indexes) == list(range(len(batch)))
    assert all(r.code in ReasonCode.ALL and r.detail for r in decoded.rejects)


# -- the model's contract as an Avro schema ------------------------------------------------------


def test_the_contract_takes_what_the_worker_takes_and_refuses_a_missing_required_feature() -> None:
    contract = avro_contract(SCHEMA)
    parsed = fastavro.parse_schema(contract)
    assert [f["name"] for f in contract["fields"]] == SCHEMA.names
    row = {"age": 30.0, "income": None, "color": "purple", "city": None}  # unseen category: fine
    registered = writer_schema(9, "AVRO", json.dumps(contract))
    parse = framed_parser("avro", lambda _: registered, SCHEMA)
    decoded = decode_batch([frame(9, avro_body(row, parsed))], SCHEMA, parse=parse)
    assert decoded.valid_indexes == [0] and decoded.unknown_categories == 1
    with pytest.raises((ValueError, TypeError, KeyError)):
        avro_body({"income": 1.0, "color": "red"}, parsed)  # no age: the writer refuses
    with pytest.raises(ValueError, match="not a legal Avro field name"):
        avro_contract(FeatureSchema(features=[NumericFeature(name="bill length")]))


def test_contract_changes_follow_the_workers_swap_rules() -> None:
    old = avro_contract(SCHEMA)
    renamed = SCHEMA.model_copy(
        update={"features": [*SCHEMA.features[1:], NumericFeature(name="new")]}
    )
    assert contract_changes(old, avro_contract(renamed)) == ["'new' is new and required"]
    optional_new = [*SCHEMA.features, NumericFeature(name="new", missing_seen=True)]
    assert contract_changes(old, avro_contract(FeatureSchema(features=optional_new))) == []
    stricter = [NumericFeature(name="income"), *SCHEMA.features[2:]]
    assert contract_changes(old, avro_contract(FeatureSchema(features=stricter))) == [
        "'income' no longer takes null"
    ]
    kind = [CategoricalFeature(name="age"), *SCHEMA.features[1:]]
    assert contract_changes(old, avro_contract(FeatureSchema(features=kind))) == [
        "'age' no longer takes double"
    ]
    looser = [NumericFeature(name="age", missing_seen=True), *SCHEMA.features[1:]]
    assert contract_changes(old, avro_contract(FeatureSchema(features=looser))) == []


# -- the model's contract as a JSON Schema -------------------------------------------------------


def test_the_json_contract_takes_what_the_worker_takes_and_refuses_a_missing_feature() -> None:
    import jsonschema

    contract = json_schema_contract(SCHEMA)
    jsonschema.Draft7Validator.check_schema(contract)
    validator = jsonschema.Draft7Validator(contract)
    assert list(contract["properties"]) == SCHEMA.names
    row = {"age": 30.0, "income": None, "color": "purple", "city": None, "event_id": "e-1"}
    assert not list(validator.iter_errors(row))  # extra fields pass: the schema is open
    registered = writer_schema(9, "JSON", json.dumps(contract))
    parse = framed_parser("json-schema", lambda _: registered, SCHEMA)
    decoded = decode_batch([frame(9, json.dumps(row).encode())], SCHEMA, parse=parse)
    assert decoded.valid_indexes == [0] and decoded.unknown_categories == 1
    required = set(contract["required"])
    assert required == {f.name for f in SCHEMA.features if not f.missing_seen}
    for name in required:
        errors = list(validator.iter_errors({k: v for k, v in row.items() if k != name}))
        assert errors and name in errors[0].message
    assert list(validator.iter_errors({**row, "age": "30"}))  # a numeric string: refused


def test_json_contract_changes_follow_the_workers_swap_rules() -> None:
    old = json_schema_contract(SCHEMA)

    def changes(features: list[Any]) -> list[str]:
        return json_contract_changes(old, json_schema_contract(FeatureSchema(features=features)))

    assert changes([*SCHEMA.features[1:], NumericFeature(name="new")]) == [
        "'new' is new and required"
    ]
    assert changes([*SCHEMA.features, NumericFeature(name="new", missing_seen=True)]) == []
    assert changes([NumericFeature(name="income"), *SCHEMA.features[2:]]) == [
        "'income' is now required",
        "'income' no longer takes null",
    ]
    assert changes([CategoricalFeature(name="age"), *SCHEMA.features[1:]]) == [
        "'age' no longer takes number"
    ]
    assert changes([NumericFeature(name="age", missing_seen=True), *SCHEMA.features[1:]]) == []


def test_the_avro_encoder_frames_what_the_worker_decodes_and_refuses_a_short_row() -> None:
    text = json.dumps(avro_contract(SCHEMA))
    encode = avro_encoder(42, text)
    row = {"age": 30, "income": None, "color": "red", "city": "oslo", "extra": "left out"}
    value = encode(row)
    assert schema_id_of(value) == 42
    parse = framed_parser("avro", lambda _: writer_schema(42, "AVRO", text), SCHEMA)
    assert decode_batch([value], SCHEMA, parse=parse).valid_indexes == [0]
    with pytest.raises(ValueError):
        encode({"income": 1.0, "color": "red"})  # no age
    with pytest.raises(ValueError):
        encode({**row, "age": "thirty"})
