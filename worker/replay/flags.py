"""``forestream replay``'s flags: parsed and checked against each other, pure (no broker).

A replay re-scores a bounded range of an input topic, for backfills. Its range is given as
offsets or times, its topics must differ from the input (never write into the topic being
read), and a resumed replay takes all of it from its checkpoint instead.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args

from pydantic import Field

from forestream.errors import UserError
from forestream.registry.signing import TrustSettings
from forestream.runtime.settings import (
    REPLAY_GROUP_PREFIX,
    Guarantee,
    GuaranteeSettings,
    illegal_topic_name,
)
from forestream.worker.settings import INPUT_FORMATS, OUTPUT_FORMATS, WireFormatSettings


class ReplaySettings(GuaranteeSettings, TrustSettings, WireFormatSettings):
    """Replay reads far more than it waits, so its batches are bigger than the live worker's.
    It verifies the model as the worker does (:class:`TrustSettings`, flags on top), and
    reads and writes the formats the worker does (:class:`WireFormatSettings`).

    Its guarantee is ``FORESTREAM_GUARANTEE``, as the workers'; its consumer group and
    transactional id are its own (never ``FORESTREAM_GROUP`` or ``FORESTREAM_TRANSACTIONAL_ID``,
    which name live workers': committing to their group, or fencing one of them, would be
    worse than any duplicate)."""

    replay_max_batch: int = Field(default=5000, ge=1, le=100_000)
    max_record_bytes: int = Field(default=1024 * 1024, ge=1)


MAX_TIME_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: the last millisecond a time flag may name."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_MS = re.compile(r"[+-]?[0-9]+")

Offsets = dict[int, int] | int
"""One offset for every partition, or one per named partition."""


def parse_offsets(spec: str, flag: str) -> Offsets:
    """``"100"`` (every partition) or ``"0:100,1:250"`` (per partition)."""
    spec = spec.strip()
    try:
        if ":" not in spec:
            value = int(spec)
            if value < 0:
                raise ValueError
            return value
        result: dict[int, int] = {}
        for part in spec.split(","):
            partition, offset = part.split(":")
            if int(partition) < 0 or int(offset) < 0:
                raise ValueError
            if int(partition) in result:
                raise UserError(f"{flag} {spec!r}: partition {int(partition)} is given twice")
            result[int(partition)] = int(offset)
        return result
    except ValueError:
        raise UserError(
            f"{flag} {spec!r}: expected an offset (e.g. 100) or partition:offset pairs "
            "(e.g. 0:100,1:250), all >= 0"
        ) from None


def parse_time_ms(text: str, flag: str) -> int:
    """Epoch milliseconds or ISO 8601 (naive times are UTC), from 1970 to the end of 9999."""
    text = text.strip()
    if _EPOCH_MS.fullmatch(text):
        ms = int(text)
    else:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise UserError(
                f"{flag} {text!r}: expected ISO 8601 (2026-11-25T10:00:00Z) or epoch milliseconds"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ms = (moment - _EPOCH) // timedelta(milliseconds=1)  # exact, no float rounding
    if not 0 <= ms <= MAX_TIME_MS:
        raise UserError(
            f"{flag} {text!r}: out of range; a time must lie between 1970-01-01T00:00:00Z and "
            f"9999-12-31T23:59:59.999Z (epoch ms 0 to {MAX_TIME_MS})"
        )
    return ms


@dataclass(frozen=True)
class RangeFlags:
    """The range flags, parsed and checked against each other (not yet against the topic)."""

    from_offset: Offsets | None = None
    to_offset: Offsets | None = None
    from_ms: int | None = None
    to_ms: int | None = None


def parse_range(
    from_offset: str | None,
    to_offset: str | None,
    from_time: str | None,
    to_time: str | None,
) -> RangeFlags:
    """Parse the range flags; an inverted range (from > to) is a mistake, an empty one is not."""
    if (from_offset is not None or to_offset is not None) and (
        from_time is not None or to_time is not None
    ):
        raise UserError("give an offset range or a time range, not both")
    flags = RangeFlags(
        from_offset=None if from_offset is None else parse_offsets(from_offset, "--from-offset"),
        to_offset=None if to_offset is None else parse_offsets(to_offset, "--to-offset"),
        from_ms=None if from_time is None else parse_time_ms(from_time, "--from-time"),
        to_ms=None if to_time is None else parse_time_ms(to_time, "--to-time"),
    )
    if flags.from_ms is not None and flags.to_ms is not None and flags.from_ms > flags.to_ms:
        raise UserError(
            f"--from-time {from_time!r} is after --to-time {to_time!r}: the range is inverted"
        )
    inverted = _inverted_offsets(flags.from_offset, flags.to_offset)
    if inverted:
        raise UserError(
            f"--from-offset {from_offset!r} is past --to-offset {to_offset!r} "
            f"({inverted}): the range is inverted"
        )
    return flags


def _inverted_offsets(start: Offsets | None, stop: Offsets | None) -> str:
    """Where both ends are given explicitly and the first is past the end: '' when nowhere."""
    if start is None or stop is None:
        return ""
    if isinstance(start, int) and isinstance(stop, int):
        return f"{start} > {stop}" if start > stop else ""
    named = sorted(
        {*(start if isinstance(start, dict) else {}), *(stop if isinstance(stop, dict) else {})}
    )
    bad = []
    for p in named:
        first, last = _pick(start, p), _pick(stop, p)
        if first is not None and last is not None and first > last:
            bad.append(f"partition {p}: {first} > {last}")
    return "; ".join(bad)


def check_offset_partitions(
    value: Offsets | None, flag: str, available: list[int], selected: list[int], topic: str
) -> None:
    """A per-partition spec may only name partitions that the topic has and the replay reads."""
    if not isinstance(value, dict):
        return
    unknown = sorted(p for p in value if p not in available)
    if unknown:
        raise UserError(
            f"{flag}: topic {topic!r} has no partition {', '.join(map(str, unknown))}; "
            f"its partitions are {sorted(available)}"
        )
    left_out = sorted(p for p in value if p not in selected)
    if left_out:
        raise UserError(
            f"{flag}: partition {', '.join(map(str, left_out))} is not replayed "
            f"(--partitions selects {selected})"
        )


def check_topics(
    input_topic: str, output_topic: str, dlq_topic: str, dlq_flag: str = "--dlq-topic"
) -> None:
    """Legal names, and three different topics: never write into the topic being read.

    ``dlq_flag`` names the DLQ topic in messages (the default one was not typed by the user).
    """
    for flag, name in (("--output-topic", output_topic), (dlq_flag, dlq_topic)):
        problem = illegal_topic_name(name)
        if problem is not None:
            raise UserError(f"{flag} {problem}")
    if output_topic == input_topic:
        raise UserError(
            f"--output-topic {output_topic!r} is the input topic: the replay would write its "
            "predictions into the topic it reads; pass another --output-topic"
        )
    if dlq_topic == input_topic:
        raise UserError(
            f"{dlq_flag} {dlq_topic!r} is the input topic: the replay would re-read its own "
            "dead letters; pass another --dlq-topic"
        )
    if dlq_topic == output_topic:
        raise UserError(
            f"{dlq_flag} {dlq_topic!r} is the output topic: dead letters and predictions must "
            "go to different topics"
        )


def check_resume_flags(resume: Path, given: dict[str, object]) -> None:
    """With --resume, the checkpoint fixes topics, model and range: refuse flags that it fixes."""
    clashing = [flag for flag, value in given.items() if value is not None and value is not False]
    if clashing:
        raise UserError(
            f"--resume {resume}: the checkpoint fixes {', '.join(clashing)}; drop "
            f"{'it' if len(clashing) == 1 else 'them'} (a resumed replay keeps its topics, "
            "model and range)"
        )


def parse_partitions(spec: str | None, available: list[int], topic: str) -> list[int]:
    if spec is None:
        return sorted(available)
    try:
        wanted = sorted({int(p) for p in spec.split(",") if p.strip()})
    except ValueError:
        raise UserError(f"--partitions {spec!r}: expected numbers like 0,2,3") from None
    unknown = [p for p in wanted if p not in available]
    if unknown or not wanted:
        raise UserError(
            f"--partitions {spec!r}: topic {topic!r} has partitions {sorted(available)}"
        )
    return wanted


def _pick(value: Offsets | None, partition: int) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return value.get(partition)


def bounded_range(
    partitions: list[int],
    beginning: dict[int, int],
    end: dict[int, int],
    start: Offsets | None,
    stop: Offsets | None,
) -> dict[int, tuple[int, int]]:
    """Per partition ``[first, last)``: the asked range clipped to what the topic holds now."""
    result = {}
    for p in partitions:
        first = _pick(start, p)
        last = _pick(stop, p)
        first = beginning[p] if first is None else max(first, beginning[p])
        last = end[p] if last is None else min(last, end[p])
        result[p] = (first, max(first, last))
    return result


GUARANTEES: tuple[str, ...] = get_args(Guarantee)


def new_exactly_once_ids() -> tuple[str, str]:
    """A new replay's consumer group and transactional id: one random name (two namespaces),
    fixed for the replay's life so that a resume commits to the same group and fences the
    process it replaces. The prefix lets one prefixed ACL cover every replay."""
    name = f"{REPLAY_GROUP_PREFIX}{uuid.uuid4().hex[:16]}"
    return name, name


def check_formats(input_format: str, output_format: str, registry_url: str | None) -> None:
    """Formats a checkpoint names (a file may have been edited), and the registry they need."""
    if input_format not in INPUT_FORMATS or output_format not in OUTPUT_FORMATS:
        raise UserError(
            f"formats {input_format!r}/{output_format!r}: expected an input format of "
            f"{', '.join(INPUT_FORMATS)} and an output format of {', '.join(OUTPUT_FORMATS)}"
        )
    for flag, value in (("--input-format", input_format), ("--output-format", output_format)):
        if value != "json" and not registry_url:
            raise UserError(
                f"{flag} {value} needs FORESTREAM_SCHEMA_REGISTRY_URL "
                "(`forestream registry start` prints a local one)"
            )
