"""The Confluent Protobuf wire format past the 5-byte header, and writer schemas as readers.

A Confluent Protobuf serializer writes, between the header and the message, the *message
indexes*: which message of the registered .proto file the body is. A zig-zag varint count, then
that many zig-zag varint indexes (the first into the file's top-level messages, each next one
into the previous message's nested ones); a count of 0, the single byte ``0``, means ``[0]``,
the file's first message. Pure: no registry, no Kafka.

A registered schema becomes a message class at run time, without protoc: the registry's text is
either a base64 ``FileDescriptorProto`` (what confluent-kafka's ``ProtobufSerializer``
registers, and what Confluent's registry returns for ``?format=serialized``) or .proto text
(what Java's serializer registers; Apicurio returns the text as registered whatever the
``format``), read by :mod:`forestream.wire.proto_text`. Each file gets its own descriptor pool,
so two versions of one message never clash.

A decoded message becomes the dict the JSON path validates, field name → value:

- a field with presence (proto3 ``optional``, a ``oneof`` member, any proto2 singular field,
  a message) that was not set is ``None``, a missing value;
- a proto3 scalar without presence is taken as sent: unset reads as ``0`` / ``""`` / ``false``
  (the wire cannot tell "not set" from the default), so a feature that may be missing must be
  declared ``optional``;
- ``google.protobuf.DoubleValue`` and the other wrappers are their ``value`` (unset: ``None``);
- an enum is its value's name (a category), or its number when the writer's enum lacks it;
- ``float`` is the float32 value it holds; integers are numbers; ``bytes``, repeated fields,
  maps and other messages are kept only as what they are (``wrong_type`` for a feature).

A body holding fields its writer schema does not declare (or a declared field with the wrong
wire type) was not written with that schema and is refused, as is one that is not protobuf
(cut short, a bad wire type or length). Protobuf itself cannot refuse every stray byte: bytes
that happen to be well-formed fields of the schema read as such (a repeated field number
overwrites the earlier value, as protobuf's merge rule says).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import (
    any_pb2,
    api_pb2,
    descriptor_pb2,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    source_context_pb2,
    struct_pb2,
    timestamp_pb2,
    type_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from forestream.wire.proto_text import file_descriptor

MAX_VARINT_BYTES = 5
"""Indexes are 32-bit (Java's ``ByteUtils.readVarint`` refuses a longer varint too)."""
MAX_INDEXES = 100
"""A deeper path than protobuf's own recursion limit (100) names no message."""
WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
_WELL_KNOWN = (
    any_pb2,
    api_pb2,
    descriptor_pb2,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    source_context_pb2,
    struct_pb2,
    timestamp_pb2,
    type_pb2,
    wrappers_pb2,
)
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


# -- message indexes -------------------------------------------------------------------------------


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    """The zig-zag varint at ``offset`` and the offset past it; ValueError if cut short or
    longer than 32 bits."""
    result = shift = 0
    for n in range(MAX_VARINT_BYTES):
        if offset + n >= len(data):
            raise ValueError("message indexes cut short")
        byte = data[offset + n]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), offset + n + 1
        shift += 7
    raise ValueError(f"message index varint longer than {MAX_VARINT_BYTES} bytes")


def message_indexes(data: bytes, offset: int) -> tuple[tuple[int, ...], int]:
    """The message indexes at ``offset`` of ``data`` and the offset of the message body past
    them; ValueError (saying why) when they are cut short, negative or too many."""
    count, offset = _varint(data, offset)
    if count == 0:
        return (0,), offset
    if count < 0 or count > MAX_INDEXES:
        raise ValueError(f"message index count {count} is not in 1..{MAX_INDEXES}")
    indexes = []
    for _ in range(count):
        index, offset = _varint(data, offset)
        if index < 0:
            raise ValueError(f"negative message index {index}")
        indexes.append(index)
    return tuple(indexes), offset


def _zigzag(value: int) -> bytes:
    value = (value << 1) ^ (value >> 31)
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_indexes(indexes: tuple[int, ...] | list[int]) -> bytes:
    """The bytes a Confluent serializer writes for ``indexes`` (``[0]`` as the single ``0``)."""
    if list(indexes) == [0]:
        return b"\x00"
    return _zigzag(len(indexes)) + b"".join(_zigzag(i) for i in indexes)


# -- writer schemas --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageReader:
    """One message type of a registered file: its field names, and body bytes to a dict."""

    name: str
    fields: frozenset[str]
    read: Callable[[bytes], dict[str, Any]]
    implicit: frozenset[str] = frozenset()
    """Singular fields without presence: unset, they read as their default, never missing."""


class ProtobufFile:
    """A registered .proto file, its message types built on first use (each reader kept)."""

    def __init__(self, schema_id: int, text: str) -> None:
        self.proto = _file_proto(schema_id, text)
        self.pool = _pool_with(self.proto)
        self._readers: dict[tuple[int, ...], MessageReader] = {}

    def message(self, indexes: tuple[int, ...]) -> MessageReader:
        """The message ``indexes`` name; ValueError when they name none."""
        reader = self._readers.get(indexes)
        if reader is None:
            reader = self._readers[indexes] = _reader(self._descriptor(indexes))
        return reader

    def _descriptor(self, indexes: tuple[int, ...]) -> Descriptor:
        messages = self.proto.message_type
        path = self.proto.package
        for depth, index in enumerate(indexes):
            if index >= len(messages):
                where = "top-level" if depth == 0 else f"nested in {path}"
                raise ValueError(
                    f"message index {list(indexes)} names no message ({len(messages)} {where})"
                )
            path = f"{path}.{messages[index].name}" if path else messages[index].name
            messages = messages[index].nested_type
        return self.pool.FindMessageTypeByName(path)


def _file_proto(schema_id: int, text: str) -> FileDescriptorProto:
    """The registry's text as a descriptor: a base64 ``FileDescriptorProto``, else .proto."""
    stripped = text.strip()
    if _BASE64.fullmatch(stripped):
        try:
            proto = FileDescriptorProto.FromString(base64.b64decode(stripped, validate=True))
        except (binascii.Error, DecodeError):
            pass
        else:
            if proto.message_type:
                if not proto.name:
                    proto.name = f"schema-{schema_id}.proto"
                return proto
    return file_descriptor(text, f"schema-{schema_id}.proto")


def _pool_with(proto: FileDescriptorProto) -> DescriptorPool:
    """A pool of its own holding ``proto`` and the well-known types it imports; ValueError
    naming the other imports (schema references) when their types are needed."""
    known = {m.DESCRIPTOR.name: m.DESCRIPTOR for m in _WELL_KNOWN}
    pool = DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added:
            return
        added.add(name)
        file = known[name]
        for dependency in file.dependencies:
            add(dependency.name)
        pool.AddSerializedFile(file.serialized_pb)

    unresolved = [d for d in proto.dependency if d not in known]
    for dependency in proto.dependency:
        if dependency in known:
            add(dependency)
    if unresolved:  # an import used only for options needs nothing; a type from it fails below
        kept = [d for d in proto.dependency if d in known]
        del proto.dependency[:], proto.public_dependency[:], proto.weak_dependency[:]
        proto.dependency.extend(kept)
    try:
        pool.Add(proto)
    except Exception as exc:  # upb raises TypeError, the pure-Python backend others
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if unresolved:
            why += f" (imports {', '.join(unresolved)}: schema references are not supported)"
        raise ValueError(why) from None
    return pool


def _reader(descriptor: Descriptor) -> MessageReader:
    """Body bytes to the dict the JSON path validates (see the module's docstring)."""
    cls = GetMessageClass(descriptor)
    parse = cls.FromString
    serialize = cls.SerializePartialToString
    plain: list[str] = []  # read as they are
    present: list[str] = []  # None unless set
    getters: list[tuple[str, Callable[[Any], Any]]] = []
    for field in descriptor.fields:
        getter = _getter(field)
        if getter is None:
            (present if field.has_presence else plain).append(field.name)
        else:
            getters.append((field.name, getter))
    full_name = descriptor.full_name

    def read(body: bytes) -> dict[str, Any]:
        message = parse(body)
        size = len(serialize(message))  # not ByteSize: it raises for a proto2 required field unset
        message.DiscardUnknownFields()
        if len(serialize(message)) != size:
            raise ValueError(f"the body holds fields {full_name} does not declare")
        out = {name: getattr(message, name) for name in plain}
        for name in present:
            out[name] = getattr(message, name) if message.HasField(name) else None
        for name, get in getters:
            out[name] = get(message)
        return out

    implicit = frozenset(
        f.name
        for f in descriptor.fields
        if not f.is_repeated and not f.has_presence and f.message_type is None
    )
    return MessageReader(full_name, frozenset(f.name for f in descriptor.fields), read, implicit)


def _getter(field: FieldDescriptor) -> Callable[[Any], Any] | None:
    """How to read a field other than a plain scalar; None for a plain scalar."""
    name = field.name
    if field.is_repeated:
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        return (lambda _: {}) if is_map else (lambda _: [])
    if field.message_type is not None:
        if field.message_type.full_name in WRAPPERS:
            return lambda m: getattr(m, name).value if m.HasField(name) else None
        return lambda m: {} if m.HasField(name) else None
    if field.enum_type is not None:
        names = {v.number: v.name for v in field.enum_type.values}
        presence = field.has_presence

        def enum(message: Any) -> Any:
            if presence and not message.HasField(name):
                return None
            number = getattr(message, name)
            return names.get(number, number)

        return enum
    return None
