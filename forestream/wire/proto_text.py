""".proto text (what a Java ``KafkaProtobufSerializer`` registers) to a ``FileDescriptorProto``.

No protoc: ``proto-schema-parser`` (pure Python, an ANTLR grammar of the language) reads the
text, and this module writes the descriptor of what decoding needs: packages, messages (nested),
enums, fields with their labels and types, ``oneof``, proto3 ``optional`` (a synthetic oneof,
as protoc writes it) and maps (a nested ``map_entry`` message). Type names are left as written:
the descriptor pool resolves them by protobuf's scoping rules, as protoc would. Options,
services, extensions and reserved ranges change nothing a reader needs and are left out.
Groups and editions are refused (ValueError), as is any syntax error (the parser's own
recovery would otherwise drop what it does not understand and go on).
"""

from __future__ import annotations

from typing import Any

from antlr4.error.ErrorListener import ErrorListener
from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    EnumDescriptorProto,
    FieldDescriptorProto,
    FileDescriptorProto,
)
from proto_schema_parser import ast
from proto_schema_parser.parser import Parser

_F = FieldDescriptorProto
SCALARS: dict[str, Any] = {
    "double": _F.TYPE_DOUBLE,
    "float": _F.TYPE_FLOAT,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64,
    "sint32": _F.TYPE_SINT32,
    "sint64": _F.TYPE_SINT64,
    "fixed32": _F.TYPE_FIXED32,
    "fixed64": _F.TYPE_FIXED64,
    "sfixed32": _F.TYPE_SFIXED32,
    "sfixed64": _F.TYPE_SFIXED64,
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}
_LABELS = {
    ast.FieldCardinality.REQUIRED: _F.LABEL_REQUIRED,
    ast.FieldCardinality.REPEATED: _F.LABEL_REPEATED,
    ast.FieldCardinality.OPTIONAL: _F.LABEL_OPTIONAL,
}


class _Raise(ErrorListener):
    def syntaxError(
        self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        raise ValueError(f".proto line {line}:{column}: {msg}")


def _strict(recognizer: Any) -> None:
    recognizer.removeErrorListeners()
    recognizer.addErrorListener(_Raise())


_PARSER = Parser(setup_lexer=_strict, setup_parser=_strict)


def file_descriptor(text: str, name: str) -> FileDescriptorProto:
    """The descriptor of the .proto file ``text`` (called ``name``); ValueError when it is not
    one this module can read."""
    parsed = _PARSER.parse(text)
    if parsed.edition is not None:
        raise ValueError(f"edition {parsed.edition} .proto files are not supported")
    syntax = (parsed.syntax or "proto2").strip("'\"")
    if syntax not in ("proto2", "proto3"):
        raise ValueError(f"unknown syntax {syntax!r}")
    out = FileDescriptorProto(name=name, syntax=syntax)
    proto3 = syntax == "proto3"
    for element in parsed.file_elements:
        if isinstance(element, ast.Package):
            out.package = element.name
        elif isinstance(element, ast.Import):
            out.dependency.append(element.name.strip("'\""))
        elif isinstance(element, ast.Message):
            _message(out.message_type.add(), element, proto3)
        elif isinstance(element, ast.Enum):
            _enum(out.enum_type.add(), element)
    return out


def _message(out: DescriptorProto, message: ast.Message, proto3: bool) -> None:
    out.name = message.name
    optional: list[FieldDescriptorProto] = []  # proto3 `optional`: a synthetic oneof each, last
    for element in message.elements:
        if isinstance(element, ast.Field):
            field = _field(out.field.add(), element, proto3)
            if field.proto3_optional:
                optional.append(field)
        elif isinstance(element, ast.MapField):
            _map(out, element)
        elif isinstance(element, ast.OneOf):
            index = len(out.oneof_decl)
            out.oneof_decl.add(name=element.name)
            for member in element.elements:
                if isinstance(member, ast.Group):
                    raise ValueError(f"group {member.name!r}: groups are not supported")
                if isinstance(member, ast.Field):
                    _field(out.field.add(), member, proto3).oneof_index = index
        elif isinstance(element, ast.Message):
            _message(out.nested_type.add(), element, proto3)
        elif isinstance(element, ast.Enum):
            _enum(out.enum_type.add(), element)
        elif isinstance(element, ast.Group):
            raise ValueError(f"group {element.name!r}: groups are not supported")
    for field in optional:
        field.oneof_index = len(out.oneof_decl)
        out.oneof_decl.add(name=f"_{field.name}")


def _field(out: FieldDescriptorProto, field: ast.Field, proto3: bool) -> FieldDescriptorProto:
    out.name = field.name
    out.number = field.number
    out.label = _LABELS.get(field.cardinality, _F.LABEL_OPTIONAL)  # type: ignore[arg-type]
    if proto3 and field.cardinality == ast.FieldCardinality.OPTIONAL:
        out.proto3_optional = True
    _typed(out, field.type)
    return out


def _typed(out: FieldDescriptorProto, name: str) -> None:
    """A scalar type, or a message/enum name the pool resolves (it sets the kind too)."""
    scalar = SCALARS.get(name)
    if scalar is not None:
        out.type = scalar
    else:
        out.type_name = name


def _map(out: DescriptorProto, field: ast.MapField) -> None:
    """``map<K, V> name = n;`` as protoc writes it: a repeated field of a nested entry message
    ``NameEntry { K key = 1; V value = 2; }`` marked ``map_entry``."""
    entry_name = "".join(part[:1].upper() + part[1:] for part in field.name.split("_")) + "Entry"
    entry = out.nested_type.add(name=entry_name)
    entry.options.map_entry = True
    _typed(entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL), field.key_type)
    _typed(entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL), field.value_type)
    repeated = out.field.add(name=field.name, number=field.number, label=_F.LABEL_REPEATED)
    repeated.type_name = entry_name


def _enum(out: EnumDescriptorProto, enum: ast.Enum) -> None:
    out.name = enum.name
    for element in enum.elements:
        if isinstance(element, ast.EnumValue):
            out.value.add(name=element.name, number=element.number)
