"""Settings of ``forestream worker``: env ``FORESTREAM_*``, CLI flags on top."""

from __future__ import annotations

from pydantic import Field

from contracts.settings import CommonSettings


class WorkerSettings(CommonSettings):
    """What one worker process needs beyond broker address and topic names."""

    group: str = "forestream-workers"
    max_batch: int = Field(default=1000, ge=1, le=100_000)
    """A micro-batch closes at this many records..."""
    max_wait_ms: int = Field(default=50, ge=0, le=60_000)
    """...or this long after its first record, whichever comes first."""
    max_record_bytes: int = Field(default=1024 * 1024, ge=1)
    """Larger input values are dead-lettered as ``too_large`` without being parsed."""
    max_records: int | None = Field(default=None, ge=1)
    """Stop (exit 0) after this many input records: for demos and tests."""
    summary_interval_s: float = Field(default=10.0, gt=0)
    """How often the periodic throughput summary is logged."""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Prometheus port (the metrics observer's business; ``None`` = no endpoint)."""
    model_wait_log_s: float = Field(default=10.0, gt=0)
    """While no promoted model is known, say so at most this often."""
    worker_index: int = 0
    """Set by the supervisor (``FORESTREAM_WORKER_INDEX``) to tell its children apart."""
