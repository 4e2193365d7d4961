"""Where a replay is, saved after every batch so that an interrupted replay resumes.

The file fixes the replay's topics, model, range and guarantee; exactly-once, also the
consumer group and transactional id fixed at start, whose committed offsets are the truth
(the file may lag them by a batch). :func:`resolve_checkpoint` turns the flags into fixed
per-partition ranges against the topic as it is when the replay starts (records that arrive
later are not part of the range).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from forestream.edge.interface import PartitionReader, TopicPartition
from forestream.errors import UserError
from forestream.runtime.settings import Guarantee
from forestream.worker.replay.flags import (
    GUARANTEES,
    RangeFlags,
    ReplaySettings,
    bounded_range,
    check_offset_partitions,
    new_exactly_once_ids,
    parse_partitions,
)

CHECKPOINT_DIR = Path(".forestream/replay")


@dataclass
class Checkpoint:
    """Where a replay is: enough to resume it with the same topics, model and guarantee."""

    input_topic: str
    output_topic: str
    dlq_topic: str
    model_store: str
    model_name: str
    model_version: str
    ranges: dict[int, tuple[int, int]]
    """partition -> (next offset to read, end offset, exclusive). Exactly-once, the group's
    committed offsets are the truth and these may lag them by one batch (never lead them,
    but past offsets that hold no record: transaction markers)."""
    guarantee: Guarantee = "at-least-once"
    """Files written before exactly-once existed have none: at-least-once."""
    group: str | None = None
    """Exactly-once: the consumer group the transactions commit the input offsets to."""
    transactional_id: str | None = None
    """Exactly-once: the producer's ``transactional.id``, the same for every resume."""
    input_format: str = "json"
    """How the input topic's values are written; files from before formats existed: json."""
    output_format: str = "json"
    """How predictions are written, kept so that a resume writes the same format."""

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == "exactly-once"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # one temporary file per process: a fenced zombie thawing between its write and its
        # rename must not find its file renamed away by the replay that took over (exit 2
        # where the fence's exit 9 was due; seen in CI). The group's offsets, not this file,
        # say where an exactly-once resume starts, so a zombie's stale save misleads nothing.
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        body: dict[str, object] = {
            "input_topic": self.input_topic,
            "output_topic": self.output_topic,
            "dlq_topic": self.dlq_topic,
            "model_store": self.model_store,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "ranges": {str(p): list(r) for p, r in self.ranges.items()},
            "guarantee": self.guarantee,
            "input_format": self.input_format,
            "output_format": self.output_format,
        }
        if self.exactly_once:
            body["group"] = self.group
            body["transactional_id"] = self.transactional_id
        tmp.write_text(json.dumps(body, indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        try:
            body = json.loads(path.read_text())
            state = cls(
                input_topic=body["input_topic"],
                output_topic=body["output_topic"],
                dlq_topic=body["dlq_topic"],
                model_store=body["model_store"],
                model_name=body["model_name"],
                model_version=body["model_version"],
                ranges={int(p): (int(r[0]), int(r[1])) for p, r in body["ranges"].items()},
                guarantee=cast(Guarantee, body.get("guarantee", "at-least-once")),
                group=body.get("group"),
                transactional_id=body.get("transactional_id"),
                input_format=body.get("input_format", "json"),
                output_format=body.get("output_format", "json"),
            )
        except FileNotFoundError:
            raise UserError(f"--resume: no checkpoint file {path}") from None
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise UserError(f"--resume: {path} is not a replay checkpoint") from None
        if state.guarantee not in GUARANTEES:
            raise UserError(
                f"--resume: {path} names guarantee {state.guarantee!r}; expected one of "
                f"{', '.join(GUARANTEES)}"
            )
        if not (isinstance(state.input_format, str) and isinstance(state.output_format, str)):
            raise UserError(f"--resume: {path} is not a replay checkpoint")
        if state.exactly_once and not (
            isinstance(state.group, str)
            and state.group
            and isinstance(state.transactional_id, str)
            and state.transactional_id
        ):
            raise UserError(
                f"--resume: {path} is an exactly-once checkpoint without its group and "
                "transactional id: it cannot be resumed without duplicates"
            )
        return state

    def remaining(self) -> int:
        return sum(end - nxt for nxt, end in self.ranges.values())

    def offsets_text(self) -> str:
        return ",".join(f"{p}:{nxt}" for p, (nxt, _end) in sorted(self.ranges.items()))


def settled_ranges(
    ranges: dict[int, tuple[int, int]], committed: dict[int, int | None]
) -> dict[int, tuple[int, int]]:
    """Exactly-once: where each partition really is, from the group's committed offsets.

    The file is saved after each transaction commits, so it lags the group by at most that
    batch; it leads it only past offsets that hold no record (a partition closed at its end
    behind transaction markers). Hence the later of the two. A partition the group has no
    offset for (nothing committed yet, or the broker expired the offsets of the idle group,
    ``offsets.retention.minutes``) keeps the file's.
    """
    settled = {}
    for p, (nxt, end) in ranges.items():
        at = committed.get(p)
        settled[p] = (nxt if at is None else min(max(nxt, at), end), end)
    return settled


def store_checkpoint_location(location: str) -> str:
    """A local store as an absolute path (a resume may run elsewhere); a URI as given."""
    from forestream.registry.store import is_uri

    return location if is_uri(location) else str(Path(location).resolve())


def resolve_checkpoint(
    consumer: PartitionReader,
    settings: ReplaySettings,
    model_version: str,
    output_topic: str,
    dlq_topic: str,
    partitions_spec: str | None,
    flags: RangeFlags,
    guarantee: Guarantee = "at-least-once",
) -> Checkpoint:
    """Turn the flags into fixed per-partition ranges, against the topic as it is now."""
    topic = settings.input_topic
    available = consumer.partitions(topic)
    if not available:
        raise UserError(f"input topic {topic!r} does not exist on {settings.bootstrap_servers}")
    partitions = parse_partitions(partitions_spec, sorted(available), topic)
    check_offset_partitions(
        flags.from_offset, "--from-offset", sorted(available), partitions, topic
    )
    check_offset_partitions(flags.to_offset, "--to-offset", sorted(available), partitions, topic)
    tps = [TopicPartition(topic, p) for p in partitions]
    beginning = {tp.partition: o for tp, o in consumer.beginning_offsets(tps).items()}
    end = {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}

    def at(ms: int) -> dict[int, int]:
        found = consumer.offsets_for_times(tps, ms)
        return {
            tp.partition: (o if (o := found.get(tp)) is not None else end[tp.partition])
            for tp in tps
        }

    start = flags.from_offset if flags.from_ms is None else at(flags.from_ms)
    stop = flags.to_offset if flags.to_ms is None else at(flags.to_ms)
    group, transactional_id = (
        new_exactly_once_ids() if guarantee == "exactly-once" else (None, None)
    )
    return Checkpoint(
        input_topic=topic,
        output_topic=output_topic,
        dlq_topic=dlq_topic,
        model_store=store_checkpoint_location(settings.model_store),
        model_name=settings.model_name,
        model_version=model_version,
        ranges=bounded_range(partitions, beginning, end, start, stop),
        guarantee=guarantee,
        group=group,
        transactional_id=transactional_id,
        input_format=settings.input_format,
        output_format=settings.output_format,
    )


def refuse_unfinished(path: Path) -> None:
    """A new replay must not overwrite the checkpoint of one that has not finished: that file
    is all there is to resume it with (and, under exactly-once, its group and transactional id)."""
    if not path.exists():
        return
    try:
        earlier = Checkpoint.load(path)
    except UserError:
        raise UserError(
            f"checkpoint {path} exists and is not a replay checkpoint: pass another --checkpoint"
        ) from None
    if earlier.remaining() > 0:
        raise UserError(
            f"checkpoint {path} holds an unfinished replay ({earlier.remaining()} records left, "
            f"into {earlier.output_topic!r}): resume it with `forestream replay --resume "
            f"{path}`, or pass another --checkpoint (or delete the file) to start over"
        )


def default_checkpoint_path(output_topic: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in output_topic)
    return CHECKPOINT_DIR / f"{safe}.json"
