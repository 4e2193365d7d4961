"""The model a worker serves: waiting for the first one, scoring with the active one.

A hot swap (the follower promoted a new version) shows here first, between two batches, so
that every batch is scored by exactly one version and the swap is logged once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from forestream.edge.interface import InputRecord
from forestream.runtime.logs import RateLimited
from forestream.wire.headers import ReasonCode
from forestream.worker.decoding import Parser, parse_json
from forestream.worker.framed import WriterSchemas, framed_parser, schema_ids, writer_schemas
from forestream.worker.models import ActiveModel, ModelFollower
from forestream.worker.outputs import prediction_encoder
from forestream.worker.processing import ProcessedBatch, process_records
from forestream.worker.scoring import PredictionEncoder
from forestream.worker.settings import WireFormatSettings, WorkerSettings
from forestream.worker.shadow import ShadowScorer

if TYPE_CHECKING:
    from forestream.wire.schema import FeatureSchema, ReferenceStats
    from forestream.worker.health import Telemetry

log = structlog.get_logger("forestream.worker")


class Serving:
    """The active model and the scoring of a batch with it."""

    def __init__(
        self, settings: WorkerSettings, follower: ModelFollower, telemetry: Telemetry | None
    ) -> None:
        self.settings = settings
        self.follower = follower
        self.telemetry = telemetry
        self.model: ActiveModel | None = None
        self._warn_scoring = RateLimited(10.0)
        self._warn_waiting = RateLimited(settings.model_wait_log_s)
        self.writer_schemas = writer_schemas_for(settings)
        self.encode = output_encoder(settings, settings.output_topic)
        """Registered with the Schema Registry here, before any client starts, for Avro."""
        self.shadow = ShadowScorer(
            settings,
            follower,
            telemetry,
            parser=self._shadow_parser,
            encoder=lambda: output_encoder(settings, settings.shadow_topic_or_default()),
        )
        """Scores a share of each batch with a candidate, if one is announced, off this thread."""
        if telemetry is not None:
            follower.on_shadow_change = telemetry.metrics.set_shadow_version
        self.keep_waiting: Callable[[], bool] = lambda: True
        """Called while a batch waits for the Schema Registry (the loop sets it: it tells
        health the loop is waiting, not stuck); False ends the wait."""

    @property
    def version(self) -> str | None:
        return self.model.version if self.model else None

    def wait(self, stopping: Callable[[], bool], tick: Callable[[], None]) -> ActiveModel | None:
        """The first model, or None when stopped first; ``tick`` runs between waits (raising
        a background thread's fatal error, telling health we are not stuck)."""
        while not stopping():
            if self.telemetry is not None:
                self.telemetry.health.tick()  # waiting for a model is not being stuck
            model = self.follower.wait(timeout_s=0.5)
            tick()
            if model is not None:
                self.model = model
                return model
            if self._warn_waiting.ready():
                log.info(
                    "waiting_for_model",
                    name=self.settings.model_name,
                    models_topic=self.settings.models_topic,
                )
        return None

    def score(self, records: list[InputRecord]) -> ProcessedBatch:
        """Validate and score with the model active now (a swap shows here first)."""
        s = self.settings
        model = self.follower.current() or self.model
        if model is None:
            raise RuntimeError("model used before it was set (a call out of order)")
        if self.model is not None and model.version != self.model.version:
            log.info("model_swapped", previous=self.model.version, version=model.version)
            if self.telemetry is not None:
                self.telemetry.health.set_model(model.version)
                self.telemetry.metrics.record_reload(model.version)
        self.model = model
        batch = process_records(
            records,
            model,
            output_topic=s.output_topic,
            dlq_topic=s.dlq_topic,
            max_record_bytes=s.max_record_bytes,
            parse=record_parser(
                s.input_format, self.writer_schemas, records, model.schema, self.keep_waiting
            ),
            encode=self.encode,
        )
        try:  # returns at once; a shadow bug must not cost the served batch
            self.shadow.offer(records, batch.valid_indexes, model.version, batch.scored.predictions)
        except Exception as exc:
            if self._warn_scoring.ready():
                log.error("shadow_offer_failed", error=f"{type(exc).__name__}: {exc}")
        if batch.scoring_error is not None and self._warn_scoring.ready():
            log.error(
                "scoring_failed",
                error=batch.scoring_error,
                dead_lettered=batch.dead_lettered[ReasonCode.SCORING_FAILED],
                suppressed=self._warn_scoring.take_suppressed(),
            )
        return batch

    def _shadow_parser(self, records: list[InputRecord], features: FeatureSchema) -> Parser:
        """The shadow's parser, which never fetches a writer schema: its records are a share of
        a batch whose ids this thread fetched first (those it could not were dead-lettered)."""
        if self.writer_schemas is None:
            return parse_json
        return framed_parser(self.settings.input_format, self.writer_schemas.lookup, features)

    def reference_for(self, version: str) -> ReferenceStats | None:
        """Drift reference of the version that scored the batch being observed (the active one)."""
        model = self.model
        if model is None or model.version != version:
            return None
        return getattr(model.metadata, "reference", None)


def writer_schemas_for(settings: WireFormatSettings) -> WriterSchemas | None:
    """The registry's schemas for a wire-format input; None for JSON. The worker's and
    ``replay``'s: one reading of framed records."""
    if settings.input_format == "json":
        return None
    return writer_schemas(
        settings.schema_registry(), settings.input_format, settings.schema_registry_wait_s
    )


def record_parser(
    input_format: str,
    schemas: WriterSchemas | None,
    records: list[InputRecord],
    features: FeatureSchema,
    keep_waiting: Callable[[], bool] = lambda: True,
) -> Parser:
    """The parser of one batch: JSON, or the framed format with every schema id the batch
    names fetched first (held while the registry is away, see :mod:`forestream.worker.framed`)."""
    if schemas is None:
        return parse_json
    schemas.ensure(schema_ids([r.value for r in records]), keep_waiting)
    return framed_parser(input_format, schemas.lookup, features)


def output_encoder(settings: WireFormatSettings, output_topic: str) -> PredictionEncoder:
    """The prediction encoder of ``settings.output_format`` for ``output_topic`` (Avro:
    the schema registered now, once for the process)."""
    access = settings.schema_registry() if settings.output_format != "json" else None
    return prediction_encoder(settings.output_format, output_topic, access)
