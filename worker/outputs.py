"""How predictions are written (``--output-format``), shared by the worker and ``replay``.

Avro predictions need the prediction schema's registry id before the first record: it is
registered once per process, at start, under ``<output topic>-value`` (TopicNameStrategy). The
schema does not depend on the model (``probabilities`` is a map), so a hot swap to a version
with other classes needs no new id. A registry that cannot be reached or refuses the schema at
start ends the command in one line, exit 2, like a broker address that cannot work: unlike
input records, which can wait in their topic, predictions cannot be written without an id.
Dead letters stay as they came in (the input's own bytes), whatever the output format.
"""

from __future__ import annotations

import structlog

from forestream.edge.schema_registry import SchemaRegistryAccess
from forestream.errors import SchemaRegistryUnavailable, UserError
from forestream.wire.prediction_avro import (
    PREDICTION_COMPATIBILITY,
    PREDICTION_SCHEMA_TEXT,
    avro_prediction_encoder,
    prediction_subject,
)
from forestream.worker.scoring import PredictionEncoder, encode_predictions

log = structlog.get_logger("forestream.worker")


def prediction_encoder(
    output_format: str, output_topic: str, access: SchemaRegistryAccess | None
) -> PredictionEncoder:
    """The encoder of ``output_format``; for Avro, registers the schema first (one line and
    a :class:`UserError` when the registry is away or refuses it)."""
    if output_format == "json":
        return encode_predictions
    if access is None:
        raise UserError(f"--output-format {output_format} needs FORESTREAM_SCHEMA_REGISTRY_URL")
    schema_id = register_prediction_schema(access, output_topic)
    encoder: PredictionEncoder = avro_prediction_encoder(schema_id)
    return encoder


def register_prediction_schema(access: SchemaRegistryAccess, output_topic: str) -> int:
    """The prediction schema's id under the output topic's subject (registered if new; the
    same id when already there). A new subject gets :data:`PREDICTION_COMPATIBILITY`."""
    subject = prediction_subject(output_topic)
    try:
        compatibility = None
        if access.latest(subject) is None:
            access.set_compatibility(subject, PREDICTION_COMPATIBILITY)
            compatibility = PREDICTION_COMPATIBILITY
        schema_id = access.register(subject, PREDICTION_SCHEMA_TEXT)
    except SchemaRegistryUnavailable as exc:
        raise UserError(
            f"--output-format avro: {exc}; predictions cannot be written without their schema id"
        ) from None
    except UserError as exc:  # refused: an incompatible schema there, credentials
        raise UserError(f"--output-format avro: {exc}") from None
    log.info(
        "prediction_schema_registered",
        subject=subject,
        schema_id=schema_id,
        compatibility=compatibility,
    )
    return schema_id
