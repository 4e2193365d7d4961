"""Settings of ``forestream produce`` and ``forestream topics create``: env first, flags on top."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from forestream.runtime.settings import CommonSettings, SchemaRegistrySettings


class ProducerSettings(CommonSettings, SchemaRegistrySettings):
    """What the producer adds to the common broker/topic settings.

    Bounds live here (not in the CLI) so an env value is checked as strictly as a flag.
    """

    partitions: int = Field(default=4, ge=1, description="partitions of a created input topic")
    rate: float = Field(default=0.0, ge=0.0, description="records/s, 0 = as fast as possible")
    malformed_share: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="share of deliberately bad records"
    )
    value_format: Literal["json", "avro"] = "json"
    """``avro``: records in the Confluent wire format with the latest schema of
    ``<input topic>-value`` in the Schema Registry (``models register-schema`` puts the model's
    contract there); a row that schema refuses ends the run in one line."""

    @model_validator(mode="after")
    def _avro_needs_registry(self) -> ProducerSettings:
        if self.value_format == "avro":
            if not self.schema_registry_url:
                raise ValueError(
                    "--format avro needs FORESTREAM_SCHEMA_REGISTRY_URL "
                    "(`forestream registry start` prints a local one)"
                )
            if self.malformed_share > 0:
                raise ValueError("--malformed-share makes JSON records: it needs --format json")
        return self
