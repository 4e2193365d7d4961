"""Protobuf in the Confluent wire format, without a registry: the message indexes are total over
any bytes, a writer schema reads the same from its base64 descriptor as from its .proto text,
decoded records are validated as their JSON twins are, and each way a record can be unusable has
its reason code."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from forestream.wire.confluent import WriterSchema, frame, writer_schema
from forestream.wire.headers import ReasonCode
from forestream.wire.proto_text import file_descriptor
from forestream.wire.protobuf_framing import (
    MAX_INDEXES,
    ProtobufFile,
    encode_indexes,
    message_indexes,
)
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
PROTO = """
syntax = "proto3";
package forestream.test;
import "google/protobuf/wrappers.proto";
import "confluent/meta.proto";  // options only: not needed to read

// the model's features; `optional` where a value may be missing
message Features {
  double age = 1;
  optional double income = 2;
  string color = 3;
  optional string city = 4;
  string note = 5 [json_name = "Note"];
}

message Other {
  optional double income = 1;
  string color = 2;
  enum Color { RED = 0; BLUE = 1; }
  message Nested {
    int64 age = 1;
    google.protobuf.DoubleValue income = 2;
    Color color = 3;  // Other.Color, by protobuf's scoping
    google.protobuf.StringValue city = 4;
    repeated double tags = 5;
    map<string, double> extra = 6;
    oneof choice { bytes blob = 7; string label = 8; }
  }
}

message Odd {  // features of kinds the model cannot take
  double age = 1;
  string color = 2;
  repeated string city = 3;
  optional bytes income = 4;
}
"""
PROTO2 = """
syntax = "proto2";
message Features {
  required double age = 1;
  optional double income = 2;
  optional string color = 3;
  optional string city = 4;
}
"""
_F = descriptor_pb2.FieldDescriptorProto


def features_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """``Features`` of PROTO built by hand, as a producer's generated code would carry it."""
    out = descriptor_pb2.FileDescriptorProto(
        name="features.proto", package="forestream.test", syntax="proto3"
    )
    message = out.message_type.add(name="Features")
    for number, (name, kind, optional) in enumerate(
        [
            ("age", _F.TYPE_DOUBLE, False),
            ("income", _F.TYPE_DOUBLE, True),
            ("color", _F.TYPE_STRING, False),
            ("city", _F.TYPE_STRING, True),
            ("note", _F.TYPE_STRING, False),
        ],
        start=1,
    ):
        field = message.field.add(name=name, number=number, type=kind, label=_F.LABEL_OPTIONAL)
        if optional:
            field.proto3_optional = True
            field.oneof_index = len(message.oneof_decl)
            message.oneof_decl.add(name=f"_{name}")
    return out


def message_class(proto: descriptor_pb2.FileDescriptorProto, name: str) -> Any:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def text_class(name: str) -> Any:
    return message_factory.GetMessageClass(TEXT_FILE.pool.FindMessageTypeByName(name))


DESCRIPTOR = features_descriptor()
Features = message_class(DESCRIPTOR, "forestream.test.Features")
SERIALIZED = base64.b64encode(DESCRIPTOR.SerializeToString()).decode()
TEXT_FILE = ProtobufFile(2, PROTO)
Other = text_class("forestream.test.Other")
Nested = text_class("forestream.test.Other.Nested")
Odd = text_class("forestream.test.Odd")
Proto2 = message_class(file_descriptor(PROTO2, "p2.proto"), "Features")
SCHEMAS: dict[int, WriterSchema | Absent | Unavailable] = {
    1: writer_schema(1, "PROTOBUF", SERIALIZED),  # confluent-kafka's serializer registers this
    2: writer_schema(2, "PROTOBUF", PROTO),  # a Java serializer registers this
    3: writer_schema(3, "PROTOBUF", PROTO2),
    4: writer_schema(4, "PROTOBUF", "message Broken {"),
    5: writer_schema(5, "AVRO", json.dumps({"type": "record", "name": "r", "fields": []})),
    6: ABSENT,
    7: Unavailable(61.0, "connection refused"),
}


def lookup(schema_id: int) -> WriterSchema | Absent | Unavailable:
    return SCHEMAS.get(schema_id, ABSENT)


def framed(schema_id: int, message: Any, indexes: tuple[int, ...] = (0,)) -> bytes:
    return frame(schema_id, encode_indexes(indexes) + message.SerializePartialToString())


def decode(values: list[bytes | None]) -> Any:
    return decode_batch(values, SCHEMA, parse=framed_parser("protobuf", lookup, SCHEMA))


def only(value: bytes | None) -> tuple[str | None, str]:
    decoded = decode([value])
    assert len(decoded.rejects) + len(decoded.valid_indexes) == 1
    return (decoded.rejects[0].code, decoded.rejects[0].detail) if decoded.rejects else (None, "")


GOOD = Features(age=30.0, income=1.5, color="red", city="oslo", note="x")


# -- message indexes ------------------------------------------------------------------------------


@given(st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=MAX_INDEXES), st.binary())
def test_message_indexes_round_trip(indexes: list[int], body: bytes) -> None:
    data = b"head" + encode_indexes(indexes) + body
    assert message_indexes(data, 4) == (tuple(indexes), len(data) - len(body))


def test_a_lone_zero_is_the_first_message() -> None:
    assert encode_indexes([0]) == b"\x00"
    assert message_indexes(b"\x00", 0) == ((0,), 1)
    assert message_indexes(b"\x02\x00", 0) == ((0,), 2)  # [0] written out in full: the same
    assert message_indexes(b"\x04\x02\x00", 0) == ((1, 0), 3)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "cut short"),
        (b"\x80", "cut short"),  # a varint with its continuation bit and nothing after
        (b"\x04\x02", "cut short"),  # two indexes announced, one there
        (b"\x02\xff\xff", "cut short"),
        (b"\x80\x80\x80\x80\x80\x01", "longer than 5 bytes"),
        (b"\x01", "count -1"),  # zig-zag 1 is -1
        (b"\x02\x01", "negative message index -1"),
        (encode_indexes([0] * (MAX_INDEXES + 1)), f"not in 1..{MAX_INDEXES}"),
    ],
)
def test_malformed_message_indexes_say_why(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        message_indexes(data, 0)


@given(st.binary(max_size=24))
def test_message_indexes_are_total(data: bytes) -> None:
    try:
        indexes, offset = message_indexes(data, 0)
    except ValueError as exc:
        assert str(exc)
    else:
        assert indexes and all(i >= 0 for i in indexes) and 0 < offset <= len(data)


# -- writer schemas -------------------------------------------------------------------------------


def test_the_descriptor_and_the_text_read_the_same() -> None:
    """The base64 descriptor (id 1) and the .proto text (id 2) of one message: same fields,
    same records."""
    by_descriptor, by_text = SCHEMAS[1], SCHEMAS[2]
    assert isinstance(by_descriptor, WriterSchema) and isinstance(by_text, WriterSchema)
    assert by_descriptor.messages is not None and by_text.messages is not None
    first, second = by_descriptor.messages((0,)), by_text.messages((0,))
    assert first.fields == second.fields == {"age", "income", "color", "city", "note"}
    body = GOOD.SerializeToString()
    assert first.read is not None and second.read is not None
    assert first.read(body) == second.read(body) == {
        "age": 30.0, "income": 1.5, "color": "red", "city": "oslo", "note": "x"
    }  # fmt: skip
    unset = Features().SerializeToString()
    assert second.read(unset) == {"age": 0.0, "income": None, "color": "", "city": None, "note": ""}


def test_nested_messages_wrappers_enums_and_composites() -> None:
    nested = TEXT_FILE.message((1, 0))
    assert nested.name == "forestream.test.Other.Nested"
    assert nested.read(Nested().SerializeToString()) == {
        "age": 0, "income": None, "color": "RED", "city": None, "tags": [], "extra": {},
        "blob": None, "label": None,
    }  # fmt: skip
    full = Nested(age=7, color=1, tags=[1.0], label="l")
    full.income.value = 2.5
    full.city.value = "oslo"
    full.extra["k"] = 1.0
    assert nested.read(full.SerializeToString()) == {
        "age": 7, "income": 2.5, "color": "BLUE", "city": "oslo", "tags": [], "extra": {},
        "blob": None, "label": "l",
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"message index \[1, 1\] names no message"):
        TEXT_FILE.message((1, 1))
    with pytest.raises(ValueError, match=r"message index \[3\] names no message"):
        TEXT_FILE.message((3,))


def test_a_record_of_a_nested_message_is_scored() -> None:
    record = Nested(age=30, color=1)
    record.income.value = 1.5
    decoded = decode([framed(2, record, (1, 0))])
    assert decoded.valid_indexes == [0]
    row = decoded.frame.iloc[0]
    assert (row["age"], row["income"], row["color"]) == (30.0, 1.5, "BLUE")
    assert row.isna()["city"]
    assert decoded.extra_keys == 4  # tags, extra, blob, label


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("syntax = 'proto3'; message M { double x = 1 oops; }", "line 1:"),
        ('syntax = "proto2"; message M { optional group G = 1 { } }', "groups are not supported"),
        ('edition = "2023"; message M { }', "edition"),
        ('import "other.proto"; message M { other.T t = 1; }', "schema references are not"),
        ("message M { Undefined u = 1; }", "Undefined"),
    ],
)
def test_a_schema_that_cannot_be_read_says_why(text: str, why: str) -> None:
    schema = writer_schema(9, "PROTOBUF", text)
    assert schema.problem is not None and why in schema.problem, schema.problem
    assert schema.read is None and schema.messages is None


def test_the_text_parser_writes_what_protoc_would_for_maps_and_optionals() -> None:
    proto = file_descriptor(PROTO, "x.proto")
    nested = proto.message_type[1].nested_type[0]
    [entry] = nested.nested_type
    assert entry.name == "ExtraEntry" and entry.options.map_entry
    assert [o.name for o in proto.message_type[0].oneof_decl] == ["_income", "_city"]
    assert [o.name for o in nested.oneof_decl] == ["choice"]


# -- records --------------------------------------------------------------------------------------

numbers = st.floats(allow_nan=True, allow_infinity=True) | st.none()
texts = st.sampled_from(["red", "blue", "green", ""]) | st.text(max_size=4) | st.none()


@given(
    st.lists(
        st.fixed_dictionaries({"age": numbers, "income": numbers, "color": texts, "city": texts}),
        max_size=8,
    ),
    st.sampled_from([1, 2]),
)
def test_protobuf_and_json_agree_on_every_record(
    rows: list[dict[str, Any]], schema_id: int
) -> None:
    """Same values, same verdicts. ``None`` is "not set": for ``optional`` fields a missing
    value, for the others their default, which is what the JSON twin says."""
    values = [framed(schema_id, Features(**{k: v for k, v in r.items() if v is not None}))
              for r in rows]  # fmt: skip
    twins = [{**r, "age": r["age"] or 0.0, "color": r["color"] or ""} for r in rows]
    got = decode(values)
    plain = decode_batch([json.dumps(t).encode() for t in twins], SCHEMA)  # NaN as a literal
    assert got.valid_indexes == plain.valid_indexes
    assert [(r.index, r.code) for r in got.rejects] == [(r.index, r.code) for r in plain.rejects]
    assert got.frame.equals(plain.frame)
    assert got.unknown_categories == plain.unknown_categories


GOOD_VALUE = framed(1, GOOD)
GOOD_BODY = GOOD.SerializeToString()
ALIEN = Other(color="red").SerializeToString()  # field 2 is a string there, a double here


@pytest.mark.parametrize(
    ("value", "code", "detail"),
    [
        (None, ReasonCode.EMPTY, ""),
        (GOOD_BODY, ReasonCode.NO_MAGIC_BYTE, "not the magic byte"),
        (b"\x00\x00\x00\x01", ReasonCode.NO_MAGIC_BYTE, "shorter than the 5-byte wire-format"),
        (frame(6, b"\x00" + GOOD_BODY), ReasonCode.UNKNOWN_SCHEMA_ID, "not in the registry"),
        (frame(7, b"\x00" + GOOD_BODY), ReasonCode.REGISTRY_UNAVAILABLE, "has not answered"),
        (frame(1, b""), ReasonCode.UNDECODABLE_BODY, "message indexes cut short"),
        (frame(1, b"\x80"), ReasonCode.UNDECODABLE_BODY, "message indexes cut short"),
        (frame(1, b"\x02"), ReasonCode.UNDECODABLE_BODY, "message indexes cut short"),
        (frame(1, b"\x03\x00"), ReasonCode.UNDECODABLE_BODY, "count -2"),
        (frame(1, b"\x02\x02" + GOOD_BODY), ReasonCode.UNDECODABLE_BODY, "index [1] names no"),
        (frame(1, b"\x04\x00\x00" + GOOD_BODY), ReasonCode.UNDECODABLE_BODY, "[0, 0] names no"),
        (GOOD_VALUE[:-2], ReasonCode.UNDECODABLE_BODY, "DecodeError"),  # body cut short
        (GOOD_VALUE + b"\xff", ReasonCode.UNDECODABLE_BODY, "DecodeError"),
        (GOOD_VALUE + b"\x48\x01", ReasonCode.UNDECODABLE_BODY, "does not declare"),  # field 9
        (frame(1, b"\x00" + ALIEN), ReasonCode.UNDECODABLE_BODY, "does not declare"),
        (frame(4, b"\x00" + GOOD_BODY), ReasonCode.UNDECODABLE_BODY, ".proto line 1:16"),
        (frame(5, b"\x00" + GOOD_BODY), ReasonCode.UNDECODABLE_BODY, "is a AVRO schema"),
        (
            framed(2, Other(income=1.0, color="red"), (1,)),
            ReasonCode.SCHEMA_MISSING_FEATURE,
            "no field for required feature(s) 'age'",
        ),
        (framed(1, Features(age=float("nan"), color="red")), ReasonCode.NOT_FINITE, "NaN"),
        (framed(1, Features(age=1.0, income=-math.inf, color="red")), ReasonCode.NOT_FINITE, ""),
        (framed(1, Features(age=1e300, color="red")), ReasonCode.OUT_OF_RANGE, "float32"),
        (
            framed(2, Odd(age=1.0, color="red"), (2,)),
            ReasonCode.WRONG_TYPE,
            "'city' expects a string, got array",
        ),
        (
            framed(2, Odd(age=1.0, color="red", income=b"1"), (2,)),
            ReasonCode.WRONG_TYPE,
            "'income' expects a number, got bytes",
        ),
        (framed(3, Proto2(age=1.0)), ReasonCode.MISSING_FEATURE, "'color' is missing"),
        (framed(3, Proto2(color="red")), ReasonCode.MISSING_FEATURE, "'age' is missing"),
        (framed(2, Nested(color=1, blob=b"r"), (1, 0)), None, ""),  # unset wrappers: missing
        (GOOD_VALUE, None, ""),
        (framed(2, GOOD), None, ""),
        (framed(1, Features()), None, ""),  # proto3 defaults are values: 0.0 and ""
    ],
)
def test_reason_codes(value: bytes | None, code: str | None, detail: str) -> None:
    got, why = only(value)
    assert got == code and detail in why, why


values = st.none() | st.binary(max_size=40) | st.sampled_from([GOOD_VALUE, b"\x00" + GOOD_BODY])


@given(
    st.lists(values, max_size=20),
    st.sampled_from([1, 2, 3, 4, 5, 6, 7]),
    st.sampled_from([b"", b"\x00", b"\x02\x02", b"\x04\x02\x00", b"\x02\x04"]),
)
def test_the_protobuf_parser_is_total(
    raw: list[bytes | None], schema_id: int, indexes: bytes
) -> None:
    """Garbage anywhere, framed or not, behind any indexes of any test id: never an exception,
    every record in exactly one of valid / rejects, each reject with a known code."""
    batch = raw + [frame(schema_id, indexes + v) for v in raw if v is not None]
    decoded = decode(batch)
    rejected = [r.index for r in decoded.rejects]
    assert sorted(rejected + decoded.valid_indexes) == list(range(len(batch)))
    assert all(r.code in ReasonCode.ALL and r.detail for r in decoded.rejects)


def test_features_that_may_be_missing_without_presence_are_said_once() -> None:
    """``income`` and ``city`` may be missing (training saw them so); a message declaring them
    without presence can never send them missing, which the worker says once per message."""
    implicit = writer_schema(11, "PROTOBUF", PROTO.replace("optional ", ""))
    parse = framed_parser("protobuf", {11: implicit}.__getitem__, SCHEMA)
    with capture_logs() as logs:
        for _ in range(2):  # two batches
            decoded = decode_batch(
                [framed(11, Features(age=1.0, color="red"))], SCHEMA, parse=parse
            )
            assert decoded.valid_indexes == [0]
            assert decoded.frame.iloc[0]["income"] == 0.0 and decoded.frame.iloc[0]["city"] == ""
        with_presence = framed_parser("protobuf", lookup, SCHEMA)
        decode_batch([GOOD_VALUE], SCHEMA, parse=with_presence)
    told = [e for e in logs if e["event"] == "protobuf_features_without_presence"]
    assert len(told) == 1 and told[0]["features"] == ["income", "city"], told
