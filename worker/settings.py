"""Settings of ``forestream worker``: env ``FORESTREAM_*``, CLI flags on top."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from forestream.edge.broker_loss import DEFAULT_REBUILD_AFTER_S
from forestream.registry.signing import TrustSettings
from forestream.runtime.settings import GuaranteeSettings, SchemaRegistrySettings
from forestream.wire.confluent import InputFormat
from forestream.wire.prediction_avro import OutputFormat

INPUT_FORMATS: tuple[str, ...] = get_args(InputFormat)
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)

DEFAULT_MODEL_CACHE = Path(".forestream/model-cache")


class WireFormatSettings(SchemaRegistrySettings):
    """How input and prediction values are written: the worker's and ``replay``'s (a replay
    reads the same input topic, so it inherits ``FORESTREAM_INPUT_FORMAT``)."""

    input_format: InputFormat = "json"
    """How input values are written: ``json`` (UTF-8 JSON objects), or in the Confluent wire
    format with a Schema Registry: ``avro``, ``json-schema``, ``protobuf``. Decoded records are
    validated as JSON ones are (docs/wire.md)."""
    schema_registry_wait_s: float = Field(default=60.0, ge=0, le=240)
    """While the registry is away, a batch holding a schema id never fetched waits this long
    (from the start of the outage) before such records go to the DLQ as
    ``registry_unavailable``; ids fetched before keep scoring. At most 240 s: the client's
    max.poll.interval (300 s) must not pass while a batch waits."""

    output_format: OutputFormat = "json"
    """How predictions are written: ``json``, or ``avro`` in the Confluent wire format, the
    prediction schema registered at start under ``<output topic>-value`` (docs/wire.md). Dead
    letters keep the input's own bytes either way."""

    @field_validator("input_format", "output_format", mode="before")
    @classmethod
    def _format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _registry_for_format(self) -> WireFormatSettings:
        for flag, value in (
            ("--input-format", self.input_format),
            ("--output-format", self.output_format),
        ):
            if value != "json" and not self.schema_registry_url:
                raise ValueError(
                    f"{flag} {value} needs FORESTREAM_SCHEMA_REGISTRY_URL "
                    "(`forestream registry start` prints a local one)"
                )
        return self


class WorkerSettings(GuaranteeSettings, TrustSettings, WireFormatSettings):
    """What one worker process needs beyond broker address and topic names; the verify key
    and the opt-outs of signature and version checks come from :class:`TrustSettings`."""

    group: str = "forestream-workers"
    log_format: str = "json"
    """A service: JSON lines unless told otherwise (the other commands default to ``auto``)."""
    max_batch: int = Field(default=1000, ge=1, le=100_000)
    """A micro-batch closes at this many records..."""
    max_wait_ms: int = Field(default=20, ge=0, le=60_000)
    """...or this long after its first record, whichever comes first. Under load batches fill
    before that (records arrive while the previous batch is scored); at a trickle it is most
    of a record's latency (p99 at 1,000 rec/s: ~64 ms with 50, see the README benchmark)."""
    adaptive_window: bool = True
    """Close a small batch (at most a tenth of ``max_batch``) as soon as a poll finds the
    input drained, instead of waiting out ``max_wait_ms`` for records that are not there
    (``worker/window.py``). On by default: under load polls come back full and batches fill
    as before; ``False`` restores the fixed window."""
    pipeline: bool | None = None
    """Score the next micro-batch while the previous one's outputs are being acknowledged,
    and commit without waiting for the coordinator (``False``: one batch at a time). Unset:
    on, on both clients (never under exactly-once). kafka-python was off by default while
    sklearn's trees took most of a batch: its Python sender then only fought scoring for the
    GIL. With the compiled forest it paid in every ``make bench`` since: 1.15-1.23x."""

    @property
    def pipelined(self) -> bool:
        if self.exactly_once:  # one transaction at a time: nothing to overlap with
            return False
        return self.pipeline if self.pipeline is not None else True

    transactional_id: str | None = Field(default=None, min_length=1, max_length=200)
    """Exactly-once: this worker's ``transactional.id``, unique among live workers. Unset:
    ``forestream-<group>-<host>-<worker index>``, the same after a restart on the same host,
    so the restarted worker aborts its predecessor's open transaction at once; without an
    explicit index the worker claims the lowest one free on this host (worker/index_claim.py),
    so two workers started by hand do not fence each other."""

    def transactional_id_or_default(self) -> str:
        if self.transactional_id is not None:
            return self.transactional_id
        return f"forestream-{self.group}-{socket.gethostname()}-{self.worker_index}"

    shadow_share: float = Field(default=1.0, gt=0, le=1)
    """The share of each batch's predicted records a shadow candidate scores (by key hash)."""
    max_record_bytes: int = Field(default=1024 * 1024, ge=1)
    """Larger input values are dead-lettered as ``too_large`` without being parsed."""
    max_records: int | None = Field(default=None, ge=1)
    """Stop (exit 0) after this many input records: for demos and tests."""
    summary_interval_s: float = Field(default=10.0, gt=0)
    """How often the periodic throughput summary is logged."""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Prometheus port (the metrics observer's business; ``None`` = no endpoint)."""
    metrics_host: str = Field(default="127.0.0.1", min_length=1)
    """The address ``/metrics``, ``/healthz`` and ``/readyz`` listen on: loopback unless
    told otherwise (a container sets ``0.0.0.0`` inside its own network), so nothing is
    exposed by accident."""
    model_wait_log_s: float = Field(default=10.0, gt=0)
    """While no promoted model is known, say so at most this often."""
    worker_index: int = Field(default=0, ge=0)
    """Set by the supervisor (``FORESTREAM_WORKER_INDEX``) to tell its children apart. Unset
    under exactly-once without a transactional id: the lowest index free on this host."""
    index_lock_dir: Path | None = None
    """Where exactly-once workers lock the indexes they claim. Unset: ``/tmp/forestream-<uid>``
    (the same for every process of the user, unlike ``$XDG_RUNTIME_DIR``); containers sharing
    a hostname need a directory mounted into each to see each other's claims."""
    drift_window: int = Field(default=10_000, ge=100)
    """Records in the sliding window that drift, latency and online accuracy are computed over."""
    drift_threshold: float = Field(default=0.2, gt=0)
    """PSI at which a feature is flagged as drifting (0.1 notable, 0.2 significant by habit)."""
    drift_min_records: int = Field(default=1_000, ge=1)
    """No drift flag before a feature has this many values in the window (small-sample noise);
    half the window when the window is not larger."""
    fleet_window_s: float = Field(default=60.0, ge=1, le=86_400)
    """Length of the wall-clock windows whose bin and predicted-class counts each monitoring
    report carries (the last few), for drift merged across the fleet. Aligned on the epoch, so
    every worker with the same setting counts into the same windows."""
    report_interval_s: float = Field(default=10.0, gt=0)
    """How often the DriftReport is published to the monitoring topic."""
    follow_labels: bool = False
    """Join late labels from the labels topic to this worker's own predictions (its online
    accuracy). Off by default: ``forestream evaluate`` reads each label once for the fleet."""
    session_timeout_ms: int = Field(default=10_000, ge=6_000, le=300_000)
    """A worker silent this long leaves the group and its partitions move. kafka-python 3
    defaults to 45 s (heartbeats run on the client's IO thread, so a long batch does not
    count); 10 s bounds both failover after a crash and a stalled group join (see README)."""
    rebuild_without_broker_s: float = Field(default=DEFAULT_REBUILD_AFTER_S, ge=5, le=3600)
    """librdkafka only: once the group consumer's client has heard from no broker this long
    (its statistics say so), it is replaced by a new one, which bootstraps afresh and rejoins
    the group; what the old one held uncommitted is handled as lost partitions (re-read,
    never lost). A client can otherwise lose every broker for good (librdkafka#5301) and sit
    idle while the group moves its partitions to others. The model follower's and the labels
    reader's clients are rebuilt alike. Below ~15 s a healthy member with nothing to fetch may
    be rebuilt needlessly. kafka-python keeps no such statistics."""
    model_cache_dir: Path | None = None
    """Where loaded artifacts are kept by sha256, so a restart or a rollback to a version seen
    before needs no store. Unset: ``.forestream/model-cache`` when the store is a URI; a local
    store is read in place."""

    forest_engine: Literal["auto", "sklearn"] = "auto"
    """``auto``: a RandomForest is scored by the compiled engine once it passed the parity gate
    (bit-identical to ``predict_proba``, see docs/models.md). ``sklearn``: always sklearn's own
    trees, and numba is never imported: ~90 MB less peak RSS while a version loads, ~30 MB once it
    serves (mostly LLVM's shared library), for a forest 3-50x slower per record."""

    def cache_dir(self) -> Path | None:
        """The artifact cache to use, if any (see ``model_cache_dir``)."""
        from forestream.registry.store import is_uri  # not at import: `--help` stays light

        if self.model_cache_dir is not None:
            return self.model_cache_dir
        return DEFAULT_MODEL_CACHE if is_uri(self.model_store) else None
