"""The model's feature contract in the Schema Registry (``models register-schema``, ``train
--register-schema``): an Avro record or a JSON Schema object derived from a version's feature
schema, registered under ``<input topic>-value`` so that producers' serializers check records
before Kafka sees them.

A new subject gets compatibility ``BACKWARD`` (:data:`forestream.wire.confluent.
CONTRACT_COMPATIBILITY` says why); a subject that exists keeps the level it has. A contract the
subject's latest version could not be read by is refused in one line naming the fields, before
the registry is asked (which refuses it too, with its own less readable message).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from forestream.edge.schema_registry import SchemaRegistryAccess
from forestream.errors import SchemaRegistryRefused, SchemaRegistryUnavailable, UserError
from forestream.wire.confluent import (
    CONTRACT_COMPATIBILITY,
    avro_contract,
    contract_changes,
    json_contract_changes,
    json_schema_contract,
)
from forestream.wire.schema import FeatureSchema


@dataclass(frozen=True)
class Registered:
    subject: str
    schema_id: int
    version: int | None
    compatibility: str | None
    """Set by this call (a new subject); None when the subject kept its own."""


def subject_for(input_topic: str) -> str:
    """Confluent's TopicNameStrategy: what serializers look up for the topic's values."""
    return f"{input_topic}-value"


def check_reachable(access: SchemaRegistryAccess, input_topic: str) -> None:
    """One read of the subject, before a long fit whose contract it will register."""
    try:
        access.latest(subject_for(input_topic))
    except SchemaRegistryUnavailable as exc:
        raise UserError(str(exc)) from None


def register_contract(
    access: SchemaRegistryAccess,
    input_topic: str,
    features: FeatureSchema,
    model_version: str,
    contract_format: str = "avro",
) -> Registered:
    """Register ``features`` as the subject's next version (or find it there already); a
    registry that does not answer is the user's to fix, in one line."""
    try:
        return _register(access, input_topic, features, model_version, contract_format)
    except SchemaRegistryUnavailable as exc:
        raise UserError(str(exc)) from None


def _register(
    access: SchemaRegistryAccess,
    input_topic: str,
    features: FeatureSchema,
    model_version: str,
    contract_format: str,
) -> Registered:
    schema_type = "JSON" if contract_format == "json-schema" else "AVRO"
    if schema_type == "JSON":
        contract = json_schema_contract(features)
    else:
        try:
            contract = avro_contract(features)
        except ValueError as exc:
            raise UserError(f"{model_version} has no Avro contract: {exc}") from None
    text = json.dumps(contract, separators=(",", ":"))
    subject = subject_for(input_topic)
    latest = access.latest_typed(subject)
    compatibility = None
    if latest is None:
        access.set_compatibility(subject, CONTRACT_COMPATIBILITY)
        compatibility = CONTRACT_COMPATIBILITY
    else:
        version, registered_text, _, registered_type = latest
        if registered_type != schema_type:
            fix = _FORMATS.get(registered_type)
            raise SchemaRegistryRefused(
                f"{subject} holds {_FORMAT_NAMES.get(registered_type, registered_type)} "
                f"schemas (version {version}), not {contract_format}: "
                + (f"register with --contract-format {fix}, or " if fix else "")
                + "use another input topic"
            )
        try:
            registered = json.loads(registered_text)
        except ValueError:
            registered = None
        changes = json_contract_changes if schema_type == "JSON" else contract_changes
        problems = changes(registered, contract) if isinstance(registered, dict) else []
        if problems:
            raise SchemaRegistryRefused(
                f"{model_version}'s features are not {CONTRACT_COMPATIBILITY} compatible with "
                f"{subject} version {version}: {'; '.join(problems)}"
            )
    schema_id = access.register(subject, text, schema_type)
    return Registered(
        subject, schema_id, access.version_of(subject, text, schema_type), compatibility
    )


_FORMATS = {"AVRO": "avro", "JSON": "json-schema"}
_FORMAT_NAMES = {"AVRO": "Avro", "JSON": "JSON Schema", "PROTOBUF": "Protobuf"}
