"""Settings of ``forestream evaluate``: env ``FORESTREAM_*``, CLI flags on top."""

from __future__ import annotations

from pydantic import Field

from forestream.registry.signing import TrustSettings
from forestream.runtime.settings import GuaranteeSettings


class EvaluatorSettings(GuaranteeSettings, TrustSettings):
    """What one evaluator process needs beyond broker address and topic names (it reads the
    predictions topic, ``FORESTREAM_OUTPUT_TOPIC``, and the labels topic). ``guarantee``:
    exactly-once publishes each interval's counts and commits its offsets in one transaction.
    With a promotion policy it also promotes and rolls back ``FORESTREAM_MODEL_NAME`` in
    ``FORESTREAM_MODEL_STORE``, verifying versions like ``models promote``."""

    evaluator_group: str = "forestream-evaluator"
    """The evaluators' consumer group: instances in it share the partitions."""
    log_format: str = "json"
    """A service: JSON lines unless told otherwise."""
    evaluator_max_pending: int = Field(default=100_000, ge=1)
    """Per partition and side: predictions waiting for a label (and labels for a prediction)
    beyond this many are evicted, oldest first."""
    evaluator_max_wait_s: float = Field(default=3600.0, gt=0)
    """A record waits at most this long, in record time (the newest timestamp seen on its
    partition), for its other half."""
    evaluation_window_s: float = Field(default=60.0, gt=0)
    """Counts are kept per window of this length, by the label record's timestamp."""
    evaluator_publish_interval_s: float = Field(default=5.0, gt=0)
    """How often counts are published (then offsets committed)."""
    session_timeout_ms: int = Field(default=10_000, ge=6_000, le=300_000)
    """An evaluator silent this long leaves the group and its partitions move."""
    evaluator_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Prometheus ``/metrics`` port (``None`` = no endpoint)."""
    metrics_host: str = Field(default="127.0.0.1", min_length=1)
    """The address ``/metrics`` listens on: loopback unless told otherwise."""
    summary_interval_s: float = Field(default=10.0, gt=0)
    """How often the evaluator_summary line (reads, joins, evictions, bad records) is logged."""
    evaluator_promote_policy: str | None = None
    """A promotion rule on one line, or a ``.toml`` policy file with a rollback guard (see
    docs/evaluator.md, "Promotion by rule"); unset: the evaluator never promotes."""
