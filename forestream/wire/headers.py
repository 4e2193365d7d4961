"""Kafka header names. Stable strings: consumers outside this repo match on them."""

from __future__ import annotations

ERROR = "forestream.error"
ERROR_DETAIL = "forestream.error.detail"
SOURCE_TOPIC = "forestream.source.topic"
SOURCE_PARTITION = "forestream.source.partition"
SOURCE_OFFSET = "forestream.source.offset"
MODEL_VERSION = "forestream.model_version"
VALUE_TRUNCATED = "forestream.value.truncated"
"""On a dead letter whose value was cut to fit the producer: the original size in bytes."""
VALUE_SHA256 = "forestream.value.sha256"
"""On a truncated dead letter: sha256 of the original value (fetch it by source offset)."""
KEY_TRUNCATED = "forestream.key.truncated"
"""On a dead letter whose key was cut to ``MAX_KEY_BYTES``: the original key size in bytes."""
KEY_SHA256 = "forestream.key.sha256"
"""On a dead letter with a truncated key: sha256 of the original key."""

MAX_KEY_BYTES = 64 * 1024
"""An input whose key is longer is dead-lettered as ``too_large`` (its prediction, which must
carry the same key, could exceed what the producer sends); its dead letter keeps this much of
the key, with the two headers above."""
DLQ_MAX_VALUE_BYTES = 896 * 1024
"""A dead letter carries the original value up to this size; a bigger one (one that passed the
broker compressed, or a topic with a raised limit) is cut to it, with the value headers above.
Key (at most ``MAX_KEY_BYTES``) plus value then stay under the producer's 1 MiB
``max_request_size``: a record the producer refuses would block its partition forever."""


class ReasonCode:
    """Stable reason codes carried in the ``forestream.error`` header of a dead letter."""

    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_FEATURE = "missing_feature"
    WRONG_TYPE = "wrong_type"
    NOT_FINITE = "not_finite"
    OUT_OF_RANGE = "out_of_range"
    """A finite number the model cannot compute with (beyond float32 for sklearn's trees)."""
    TOO_LARGE = "too_large"
    EMPTY = "empty"
    SCORING_FAILED = "scoring_failed"
    # records in the Confluent wire format (--input-format avro|json-schema|protobuf)
    NO_MAGIC_BYTE = "no_magic_byte"
    """Not framed: the first byte is not 0, or the value is shorter than the 5-byte header."""
    UNKNOWN_SCHEMA_ID = "unknown_schema_id"
    """The registry has no schema under the record's id."""
    UNDECODABLE_BODY = "undecodable_body"
    """The body does not decode with its writer schema (cut short, trailing bytes, not JSON,
    Protobuf message indexes that are malformed or name no message), or the schema is of
    another format or cannot be parsed."""
    SCHEMA_MISSING_FEATURE = "schema_missing_feature"
    """The writer schema has no field for a feature the model requires."""
    REGISTRY_UNAVAILABLE = "registry_unavailable"
    """An id never fetched, while the registry stayed unreachable past the worker's bound."""

    ALL = (
        NOT_JSON,
        NOT_OBJECT,
        MISSING_FEATURE,
        WRONG_TYPE,
        NOT_FINITE,
        OUT_OF_RANGE,
        TOO_LARGE,
        EMPTY,
        SCORING_FAILED,
        NO_MAGIC_BYTE,
        UNKNOWN_SCHEMA_ID,
        UNDECODABLE_BODY,
        SCHEMA_MISSING_FEATURE,
        REGISTRY_UNAVAILABLE,
    )
