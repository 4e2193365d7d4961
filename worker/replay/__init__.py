"""``forestream replay``: re-score a bounded range of an input topic, for backfills.

It reads with ``assign`` (never joining a group, so the live workers' offsets are never
touched), fixes the end offsets when it starts, and pushes every batch through the same
:func:`forestream.worker.processing.process_records` as the live worker. Progress is
checkpointed after every batch (:mod:`.checkpoint`), so an interrupted replay resumes where it
stopped. :mod:`.flags` parses and checks the flags, :mod:`.run` runs it (exactly-once through
the worker's :class:`~forestream.worker.delivery.Transactions`), :mod:`.cli` is the command.
"""

from __future__ import annotations

from forestream.worker.replay.checkpoint import (
    CHECKPOINT_DIR,
    Checkpoint,
    refuse_unfinished,
    resolve_checkpoint,
    settled_ranges,
    store_checkpoint_location,
)
from forestream.worker.replay.cli import register
from forestream.worker.replay.flags import (
    GUARANTEES,
    MAX_TIME_MS,
    RangeFlags,
    ReplaySettings,
    bounded_range,
    check_offset_partitions,
    check_resume_flags,
    check_topics,
    new_exactly_once_ids,
    parse_offsets,
    parse_partitions,
    parse_range,
    parse_time_ms,
)

_RUNNING = ("ReplayResult", "load_model", "replay")
"""From :mod:`.run`, imported on first use: it brings the clients' side (and structlog), and
``forestream --help`` should not wait for them."""


def __getattr__(name: str) -> object:
    if name in _RUNNING:
        from forestream.worker.replay import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CHECKPOINT_DIR",
    "GUARANTEES",
    "MAX_TIME_MS",
    "Checkpoint",
    "RangeFlags",
    "ReplayResult",
    "ReplaySettings",
    "bounded_range",
    "check_offset_partitions",
    "check_resume_flags",
    "check_topics",
    "load_model",
    "new_exactly_once_ids",
    "parse_offsets",
    "parse_partitions",
    "parse_range",
    "parse_time_ms",
    "refuse_unfinished",
    "register",
    "replay",
    "resolve_checkpoint",
    "settled_ranges",
    "store_checkpoint_location",
]
