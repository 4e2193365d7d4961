"""The Confluent Schema Registry wire format, and what a writer's schema says about features.

A value written by a Confluent serializer (Avro, JSON Schema, Protobuf) is framed as: one magic
byte ``0``, the writer schema's registry id as 4 bytes big-endian, then the encoded body (for
Protobuf, message indexes first: :mod:`forestream.wire.protobuf_framing`). Pure:
no registry, no Kafka; the worker fetches schemas by id (``forestream.edge.schema_registry``)
and decodes bodies with what this module parses.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from forestream.wire.schema import FeatureSchema, NumericFeature

MAGIC_BYTE = 0
HEADER_BYTES = 5
MAX_SCHEMA_ID = 2**32 - 1

InputFormat = Literal["json", "avro", "json-schema", "protobuf"]
REGISTRY_FORMATS: dict[str, str] = {"avro": "AVRO", "json-schema": "JSON", "protobuf": "PROTOBUF"}
"""The formats framed with a schema id, and the registry's ``schemaType`` of each."""


def frame(schema_id: int, body: bytes) -> bytes:
    """``body`` framed as a Confluent serializer frames it."""
    if not 0 <= schema_id <= MAX_SCHEMA_ID:
        raise ValueError(f"schema id {schema_id} is not a 4-byte unsigned integer")
    return bytes([MAGIC_BYTE]) + schema_id.to_bytes(4, "big") + body


def schema_id_of(value: bytes) -> int | None:
    """The writer schema id of a framed value; None when ``value`` is not framed."""
    if len(value) < HEADER_BYTES or value[0] != MAGIC_BYTE:
        return None
    return int.from_bytes(value[1:HEADER_BYTES], "big")


def not_framed(value: bytes) -> str:
    """Why ``value`` (which :func:`schema_id_of` refused) is not in the wire format."""
    if value[0] != MAGIC_BYTE:
        return f"first byte is 0x{value[0]:02x}, not the magic byte 0x00 of the wire format"
    return f"{len(value)} bytes, shorter than the {HEADER_BYTES}-byte wire-format header"


@dataclass(frozen=True)
class WriterSchema:
    """A registered schema as a decoder needs it: how to read a body, and its field names."""

    schema_id: int
    schema_type: str
    """``AVRO``, ``JSON`` or ``PROTOBUF`` (the registry's ``schemaType``; absent means AVRO)."""
    fields: frozenset[str] | None
    """Top-level field names; None when the schema does not close them (an open JSON Schema)."""
    read: Callable[[bytes], Any] | None
    """Body bytes to a Python value; raises on a body the schema cannot read. None when the
    schema itself could not be parsed (``problem`` says why)."""
    problem: str | None = None
    messages: Callable[[tuple[int, ...]], WriterSchema] | None = None
    """Protobuf: the schema of the message a record's message indexes name (a file may hold
    several), with that message's fields and reader; ValueError when they name none."""
    implicit: frozenset[str] = frozenset()
    """Protobuf: fields without presence, which read as their default when unset (never
    missing)."""

    def missing(self, required: list[str]) -> list[str]:
        """The features of ``required`` this schema has no field for."""
        if self.fields is None:
            return []
        return [name for name in required if name not in self.fields]


def writer_schema(schema_id: int, schema_type: str | None, text: str) -> WriterSchema:
    """Parse a schema the registry returned for ``schema_id``; never raises."""
    kind = (schema_type or "AVRO").upper()
    try:
        if kind == "AVRO":
            return _avro(schema_id, text)
        if kind == "JSON":
            return _json_schema(schema_id, text)
        if kind == "PROTOBUF":
            return _protobuf(schema_id, text)
    except Exception as exc:  # a schema fastavro, json or protobuf cannot read: its records fail
        return WriterSchema(schema_id, kind, None, None, f"{type(exc).__name__}: {exc}"[:200])
    return WriterSchema(schema_id, kind, None, None, f"{kind} schemas are not supported")


def _avro(schema_id: int, text: str) -> WriterSchema:
    import fastavro

    parsed = fastavro.parse_schema(json.loads(text))
    fields: frozenset[str] = frozenset()
    if isinstance(parsed, dict) and parsed.get("type") == "record":
        fields = frozenset(f["name"] for f in parsed["fields"])
    reader = fastavro.schemaless_reader

    def read(body: bytes) -> Any:
        stream = io.BytesIO(body)
        value = reader(stream, parsed, None)
        left = len(body) - stream.tell()
        if left:
            raise ValueError(f"{left} bytes left after the record")
        return value

    return WriterSchema(schema_id, "AVRO", fields, read)


def _json_schema(schema_id: int, text: str) -> WriterSchema:
    """Only a closed object schema (``additionalProperties: false``) says a feature is absent:
    an open one lets producers send any key, so its records are judged one by one."""
    schema = json.loads(text)
    fields: frozenset[str] | None = None
    if (
        isinstance(schema, dict)
        and isinstance(schema.get("properties"), dict)
        and schema.get("additionalProperties") is False
        and "patternProperties" not in schema
    ):
        fields = frozenset(schema["properties"])
    return WriterSchema(schema_id, "JSON", fields, None)


def _protobuf(schema_id: int, text: str) -> WriterSchema:
    from forestream.wire.protobuf_framing import ProtobufFile

    file = ProtobufFile(schema_id, text)

    def message(indexes: tuple[int, ...]) -> WriterSchema:
        reader = file.message(indexes)
        return WriterSchema(
            schema_id, "PROTOBUF", reader.fields, reader.read, implicit=reader.implicit
        )

    return WriterSchema(schema_id, "PROTOBUF", None, None, messages=message)


def finite_markers(record: dict[str, Any], marker: Callable[[str], Any]) -> dict[str, Any]:
    """``record`` with every non-finite float replaced by ``marker("NaN"|"Infinity"|
    "-Infinity")``: Avro and Protobuf doubles carry NaN and infinities, which the JSON path
    rejects as ``not_finite``; as plain floats they would pass for a missing value."""
    for name, value in record.items():
        if type(value) is float and not math.isfinite(value):
            record[name] = marker(
                "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
            )
    return record


# -- the model's contract as a registry schema ---------------------------------------------------

AVRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CONTRACT_COMPATIBILITY = "BACKWARD"
"""The subject's compatibility level: a new schema must read what producers wrote with the
latest one. That is the worker's own rule for a new model version (``serving_incompatibilities``:
records valid today must stay valid): a new required feature, a feature made required, or a
changed kind is refused, a dropped feature or a new optional one is not. FULL would also refuse
dropping a required feature, which a new model may well do; NONE checks nothing."""


def avro_contract(features: FeatureSchema, name: str = "Features") -> dict[str, Any]:
    """An Avro record for ``features``: numbers as ``double``, categories as ``string``, each
    nullable (default null) where training saw it missing, required otherwise.

    Strings, not enums: the worker takes an unseen category (one-hot ignored, counted), and an
    enum would make every new category a breaking change for producers and refuse at produce
    time a record the model can score. Raises ValueError for a name Avro does not allow.
    """
    fields: list[dict[str, Any]] = []
    for feature in features.features:
        if not AVRO_NAME.fullmatch(feature.name):
            raise ValueError(
                f"feature {feature.name!r} is not a legal Avro field name "
                "(letters, digits and '_', not starting with a digit)"
            )
        kind = "double" if isinstance(feature, NumericFeature) else "string"
        if feature.missing_seen:
            fields.append({"name": feature.name, "type": ["null", kind], "default": None})
        else:
            fields.append({"name": feature.name, "type": kind})
    return {"type": "record", "name": name, "namespace": "forestream", "fields": fields}


def json_schema_contract(features: FeatureSchema, title: str = "Features") -> dict[str, Any]:
    """A JSON Schema object for ``features``: numbers as ``number``, categories as ``string``,
    each also ``null`` where training saw it missing, and ``required`` otherwise.

    Open (no ``additionalProperties: false``): JSON producers often carry fields of their own
    (an id, a timestamp) that the worker ignores, and a closed schema would refuse them at
    produce time. What the contract must hold producers to is the required features and their
    types, which ``required`` and ``type`` do."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for feature in features.features:
        kind = "number" if isinstance(feature, NumericFeature) else "string"
        properties[feature.name] = {"type": [kind, "null"] if feature.missing_seen else kind}
        if not feature.missing_seen:
            required.append(feature.name)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": title,
        "type": "object",
        "properties": properties,
        "required": required,
    }


def avro_encoder(schema_id: int, text: str) -> Callable[[Any], bytes]:
    """Rows to framed Avro values with the registered schema ``text`` (id ``schema_id``), as a
    Confluent serializer writes them; raises ValueError for a row the schema refuses (a
    required feature missing or null, a wrong type). Keys the schema does not name are left
    out."""
    import fastavro

    parsed = fastavro.parse_schema(json.loads(text))
    header = frame(schema_id, b"")
    writer = fastavro.schemaless_writer

    def encode(row: Any) -> bytes:
        out = io.BytesIO()
        out.write(header)
        try:
            writer(out, parsed, row)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"{type(exc).__name__}: {exc}"[:200]) from None
        return out.getvalue()

    return encode


def contract_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why ``new`` cannot read records written with ``old`` (BACKWARD), field by field, for
    the flat records :func:`avro_contract` makes; empty when it can."""
    before = {f["name"]: f for f in old.get("fields", []) if isinstance(f, dict)}
    problems = []
    for field in new.get("fields", []):
        name, kind = field["name"], field["type"]
        was = before.get(name)
        if was is None:
            if "default" not in field:
                problems.append(f"{name!r} is new and required")
        elif _branches(was["type"]) - _branches(kind):
            lost = sorted(_branches(was["type"]) - _branches(kind))
            problems.append(f"{name!r} no longer takes {'/'.join(lost)}")
    return problems


def _branches(kind: Any) -> set[str]:
    if isinstance(kind, list):
        return {k if isinstance(k, str) else json.dumps(k) for k in kind}
    return {kind if isinstance(kind, str) else json.dumps(kind)}


def json_contract_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why ``new`` would refuse objects valid under ``old`` (BACKWARD), property by property,
    for the schemas :func:`json_schema_contract` makes; empty when it can read them all."""
    found = old.get("properties")
    before: dict[str, Any] = found if isinstance(found, dict) else {}
    was_required = set(old.get("required") or [])
    problems = []
    for name in new.get("required") or []:
        if name not in was_required:
            problems.append(f"{name!r} is {'now' if name in before else 'new and'} required")
    for name, spec in (new.get("properties") or {}).items():
        was = before.get(name)
        if isinstance(was, dict) and isinstance(spec, dict):
            lost = _branches(was.get("type")) - _branches(spec.get("type"))
            if lost:
                problems.append(f"{name!r} no longer takes {'/'.join(sorted(lost))}")
    return problems
