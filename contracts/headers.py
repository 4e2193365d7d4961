"""Kafka header names. Stable strings: consumers outside this repo match on them."""

from __future__ import annotations

ERROR = "forestream.error"
ERROR_DETAIL = "forestream.error.detail"
SOURCE_TOPIC = "forestream.source.topic"
SOURCE_PARTITION = "forestream.source.partition"
SOURCE_OFFSET = "forestream.source.offset"
MODEL_VERSION = "forestream.model_version"


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
