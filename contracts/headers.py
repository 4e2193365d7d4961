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

DLQ_MAX_VALUE_BYTES = 960 * 1024
"""A dead letter carries the original bytes up to this size; a bigger value (one that passed
the broker compressed, say) is cut to it, with the two headers above, because a record the
producer refuses (1 MiB ``max_request_size``) would block its partition forever."""


class ReasonCode:
    """Stable reason codes carried in the ``forestream.error`` header of a dead letter."""

    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_FEATURE = "missing_feature"
    WRONG_TYPE = "wrong_type"
    NOT_FINITE = "not_finite"
    TOO_LARGE = "too_large"
    EMPTY = "empty"
    NO_MODEL = "no_model"
    SCORING_FAILED = "scoring_failed"

    ALL = (
        NOT_JSON,
        NOT_OBJECT,
        MISSING_FEATURE,
        WRONG_TYPE,
        NOT_FINITE,
        TOO_LARGE,
        EMPTY,
        NO_MODEL,
        SCORING_FAILED,
    )
