"""Avro values with the schema a Schema Registry holds for the input topic: what ``produce
--format avro`` and ``demo --format avro`` write (one lookup, then a local encoder).

The latest version of ``<input topic>-value`` is the contract ``models register-schema`` put
there; every record is framed with its id, as a Confluent serializer would frame it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from forestream.edge.schema_registry import SchemaRegistryAccess
from forestream.errors import SchemaRegistryUnavailable, UserError


@dataclass(frozen=True)
class RegisteredEncoder:
    """Rows to framed Avro with ``subject`` version ``version`` (id ``schema_id``); ``encode``
    raises ValueError for a row the schema refuses."""

    subject: str
    version: int
    schema_id: int
    encode: Callable[[Mapping[str, Any]], bytes]


def latest_avro_encoder(access: SchemaRegistryAccess, input_topic: str) -> RegisteredEncoder:
    """The encoder of the subject's latest schema; no registry, no schema or a schema fastavro
    cannot parse is the user's to fix, in one line."""
    from forestream.wire.confluent import avro_encoder

    subject = f"{input_topic}-value"
    try:
        latest = access.latest(subject)
    except SchemaRegistryUnavailable as exc:
        raise UserError(str(exc)) from None
    if latest is None:
        raise UserError(
            f"no schema under {subject} in the Schema Registry: register the model's with "
            "`forestream models register-schema vN`"
        )
    version, text, schema_id = latest
    try:
        encode = avro_encoder(schema_id, text)
    except Exception as exc:  # not an Avro schema fastavro can parse
        raise UserError(f"{subject} version {version} is not a usable Avro schema: {exc}") from None
    return RegisteredEncoder(subject, version, schema_id, encode)
