"""``forestream replay``: re-score a bounded range of an input topic, for backfills.

It reads with ``assign`` (never joining a group, so the live workers' offsets are never
touched), fixes the end offsets when it starts (records that arrive later are not part of the
range), and pushes every batch through the same
:func:`forestream.worker.processing.process_records` as
the live worker: one code path for validation, the DLQ and scoring. Progress is checkpointed
to a file after every batch, so an interrupted replay resumes where it stopped instead of
starting over.

At-least-once (the default), a batch is published through
:class:`forestream.worker.processing.AckedPublisher` and the file saved once it is acknowledged: a
crash
in between re-scores that batch on ``--resume``. Exactly-once, a batch's outputs and its input
next-offsets are committed in one transaction (:func:`forestream.worker.transactions.transact`), the
offsets to a consumer group of the replay's own that nobody joins; the group and the
transactional id are fixed at start and kept in the file, and a resume starts from the
group's committed offsets (the file may lag them by a batch) after its new producer has
fenced any earlier one and settled its open transaction.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast, get_args

import typer
from pydantic import Field

from forestream.edge.interface import (
    InputRecord,
    PartitionReader,
    TopicPartition,
    TransactionAborted,
    TransientKafkaError,
)
from forestream.errors import UserError
from forestream.runtime.cli_options import (
    BootstrapOpt,
    InputTopicOpt,
    LogFormatOpt,
    ModelNameOpt,
    StoreOpt,
)
from forestream.runtime.settings import (
    REPLAY_GROUP_PREFIX,
    Guarantee,
    GuaranteeSettings,
    illegal_topic_name,
)

if TYPE_CHECKING:  # the clients' side is imported when a replay runs: `--help` stays fast
    from forestream.edge.errors import ProducerFenced
    from forestream.edge.interface import AckingProducer, GroupOffsetsReader, TransactionalProducer
    from forestream.worker.processing import AckedPublisher, ProcessedBatch

CHECKPOINT_DIR = Path(".forestream/replay")


class ReplaySettings(GuaranteeSettings):
    """Replay reads far more than it waits, so its batches are bigger than the live worker's.

    Its guarantee is ``FORESTREAM_GUARANTEE``, as the workers'; its consumer group and
    transactional id are its own (never ``FORESTREAM_GROUP`` or ``FORESTREAM_TRANSACTIONAL_ID``,
    which name live workers': committing to their group, or fencing one of them, would be
    worse than any duplicate)."""

    replay_max_batch: int = Field(default=5000, ge=1, le=100_000)
    max_record_bytes: int = Field(default=1024 * 1024, ge=1)


# -- pure flag checks and range arithmetic ---------------------------------------------------
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

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == "exactly-once"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        body: dict[str, object] = {
            "input_topic": self.input_topic,
            "output_topic": self.output_topic,
            "dlq_topic": self.dlq_topic,
            "model_store": self.model_store,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "ranges": {str(p): list(r) for p, r in self.ranges.items()},
            "guarantee": self.guarantee,
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


@dataclass
class ReplayResult:
    scored: int
    dead_lettered: Counter[str]
    seconds: float
    interrupted: bool
    checkpoint: Checkpoint

    @property
    def records(self) -> int:
        return self.scored + sum(self.dead_lettered.values())

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


# -- the Kafka edge -------------------------------------------------------------------------
def _load_model(settings: ReplaySettings, version: str | None) -> Any:
    from forestream.registry.store import normalize_version, signing_key_from_env
    from forestream.worker.models import ActiveModel, warm_up

    store = settings.open_store()
    name = settings.model_name
    if version is None:
        version = store.served(name)
        if version is None:
            raise UserError(
                f"model {name!r} has no promoted version in {settings.model_store}: "
                "pass --model-version or promote one"
            )
    pipeline, meta = store.load_verified(
        name, normalize_version(version), signing_key=signing_key_from_env()
    )
    try:  # the live worker's checks too: a mislabelling artifact must not backfill a topic
        warm_up(pipeline, meta)
    except Exception as exc:
        raise UserError(
            f"model {name} {meta.version} cannot be served: {type(exc).__name__}: {exc}"
        ) from None
    return ActiveModel(meta.version, meta.artifact_sha256, pipeline, meta)


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
    )


def replay(
    settings: ReplaySettings,
    checkpoint: Checkpoint,
    model: Any,
    checkpoint_path: Path,
    on_progress: Callable[[int], object] | None = None,
) -> ReplayResult:
    """Score every record of ``checkpoint.ranges``; stop early (cleanly) on SIGINT/SIGTERM.

    The checkpoint's guarantee decides how (``settings.guarantee`` is the new replays' only).
    """
    from forestream.edge.errors import ProducerFenced
    from forestream.runtime.shutdown import install as install_shutdown_watchdog

    run = _Run(settings, checkpoint, model, checkpoint_path, on_progress)
    # SIGINT/SIGTERM stop after the batch in hand; a broker that never answers cannot hold us
    # past the watchdog's grace (the checkpoint then lags by at most that batch)
    watchdog = install_shutdown_watchdog(run.request_stop, run.abandoned)
    started = time.monotonic()
    try:
        run.open()
        run.loop()
    except ProducerFenced:
        raise _fenced(checkpoint, checkpoint_path, settings.transaction_timeout_ms) from None
    finally:
        run.close()
        watchdog.uninstall()
    checkpoint.save(checkpoint_path)
    return ReplayResult(
        scored=run.scored,
        dead_lettered=run.dead,
        seconds=time.monotonic() - started,
        interrupted=checkpoint.remaining() > 0,
        checkpoint=checkpoint,
    )


def _fenced(checkpoint: Checkpoint, path: Path, timeout_ms: int) -> ProducerFenced:
    from forestream.edge.errors import ProducerFenced

    return ProducerFenced(
        f"fenced: transactional id {checkpoint.transactional_id!r} was taken over, by another "
        f"process of this replay (`forestream replay --resume {path}` started while it ran?) "
        "or by the coordinator, which aborts a transaction left open past "
        f"FORESTREAM_TRANSACTION_TIMEOUT_MS ({timeout_ms} ms); this replay stops and its last "
        f"batch is void. If no other replay of {path} runs, resume it: forestream replay "
        f"--resume {path}"
    )


class _Run:
    """One replay run: its reader, its producer and its progress, under either guarantee."""

    def __init__(
        self,
        settings: ReplaySettings,
        checkpoint: Checkpoint,
        model: Any,
        path: Path,
        on_progress: Callable[[int], object] | None,
    ) -> None:
        self.settings = settings
        self.kafka = settings.kafka()
        self.checkpoint = checkpoint
        self.model = model
        self.path = path
        self.on_progress = on_progress
        self.stop_requested = False
        self.scored = 0
        self.dead: Counter[str] = Counter()
        self.todo: dict[int, TopicPartition] = {}
        """Partitions with records left to score."""
        self.consumer: PartitionReader | None = None
        self.producer: AckingProducer | None = None
        self.publisher: AckedPublisher | None = None
        # exactly-once
        self.reader: GroupOffsetsReader | None = None
        """The consumer, whose group's committed offsets are the replay's progress."""
        self.txn: TransactionalProducer | None = None
        self.unsettled = checkpoint.exactly_once
        """The producer must be (re)built and the partitions sought to the group's committed
        offsets before the next transaction: at start (a resume's predecessor may have left a
        transaction open) and after a transaction whose outcome is unknown."""
        self.settled_before = False
        """Every settle after the first builds a new reader as well as a new producer."""
        self.failures = 0
        self.retry_at = 0.0
        from forestream.runtime.logs import RateLimited

        self._warn = RateLimited(10.0)

    def request_stop(self, _signum: int) -> None:
        self.stop_requested = True

    def abandoned(self) -> dict[str, object]:
        """What a hard exit leaves: the batch past the checkpoint, re-read on resume."""
        return {
            "remaining_records": self.checkpoint.remaining(),
            "resume": f"forestream replay --resume {self.path}",
        }

    # -- clients -------------------------------------------------------------------------------

    def open(self) -> None:
        from forestream.edge.factory import (
            TopicSpec,
            acking_producer,
            ensure_topics,
            partition_reader,
        )
        from forestream.worker.processing import AckedPublisher

        c = self.checkpoint
        partitions = max(c.ranges, default=0) + 1
        ensure_topics(
            self.kafka, [TopicSpec(c.output_topic, partitions), TopicSpec(c.dlq_topic, 1)]
        )
        if c.exactly_once:
            self.reader = self.consumer = self._group_offsets_reader()
        else:
            self.consumer = partition_reader(
                self.kafka,
                client_id="forestream-replay",
                max_poll_records=self.settings.replay_max_batch,
            )
            self.producer = acking_producer(self.kafka, client_id="forestream-replay", linger_ms=20)
            self.publisher = AckedPublisher(self.producer, give_up=lambda: self.stop_requested)

    def _group_offsets_reader(self) -> GroupOffsetsReader:
        from forestream.edge.factory import group_offsets_reader

        assert self.checkpoint.group is not None
        return group_offsets_reader(
            self.kafka,
            group=self.checkpoint.group,
            client_id="forestream-replay",
            max_poll_records=self.settings.replay_max_batch,
        )

    def _replace_reader(self) -> None:
        """A fresh reader for the partitions left, the old one closed. A librdkafka client
        can lose every broker for good after a broker pause (a metadata answer listing no
        broker drops them all and nothing re-bootstraps: librdkafka#5301), and then never
        answers ``committed`` again; a new client bootstraps afresh."""
        from forestream.edge.factory import rebuilt

        old, new = self.reader, rebuilt(self._group_offsets_reader)
        self.reader = self.consumer = new
        if old is not None:
            old.close()
        new.assign(list(self.todo.values()))

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close(10)
        if self.txn is not None:
            self.txn.close(5)
        if self.consumer is not None:
            self.consumer.close()

    def _transactional_producer(self) -> TransactionalProducer:
        from forestream.edge.factory import transactional_producer
        from forestream.worker.transactions import TXN_INIT_BLOCK_MS

        assert self.checkpoint.transactional_id is not None
        return transactional_producer(
            self.kafka,
            client_id="forestream-replay-txn",
            transactional_id=self.checkpoint.transactional_id,
            transaction_timeout_ms=self.settings.transaction_timeout_ms,
            max_block_ms=TXN_INIT_BLOCK_MS,
        )

    # -- the loop ------------------------------------------------------------------------------

    def loop(self) -> None:
        c = self.checkpoint
        assert self.consumer is not None
        self.todo = {
            p: TopicPartition(c.input_topic, p) for p, (nxt, end) in c.ranges.items() if nxt < end
        }
        self.consumer.assign(list(self.todo.values()))
        self._seek_to_checkpoint()
        c.save(self.path)  # exactly-once: it names the group and the transactional id from now
        while self.todo and not self.stop_requested:
            if c.exactly_once and not self._ready_for_transactions():
                continue
            try:
                polled = self.consumer.poll_batch(self.settings.replay_max_batch, 0.5)
            except TransientKafkaError as exc:  # the broker away: it comes back, or ^C
                self._warn_rate_limited("poll_failed", exc)
                time.sleep(_POLL_BACKOFF_S)
                continue
            batch = [r for r in polled if r.offset < c.ranges[r.partition][1]]
            if batch:
                if c.exactly_once:
                    if not self._commit_in_transaction(batch):
                        continue  # read again, from the batch's first or the committed offsets
                elif not self._publish(batch):
                    break  # interrupted while the broker was away: not checkpointed
            self._close_finished()
            c.save(self.path)
            if self.on_progress is not None and batch:
                self.on_progress(len(batch))

    def _seek_to_checkpoint(self) -> None:
        assert self.consumer is not None
        for p, tp in self.todo.items():
            self.consumer.seek(tp, self.checkpoint.ranges[p][0])

    def _close_finished(self) -> None:
        """A position at or past the end also closes a partition whose last offsets hold no
        record (transaction markers, compaction): waiting for them would never end."""
        assert self.consumer is not None
        for p, tp in list(self.todo.items()):
            nxt, end = self.checkpoint.ranges[p]
            if nxt >= end or self.consumer.position(tp) >= end:
                self.checkpoint.ranges[p] = (end, end)
                del self.todo[p]
                self.consumer.pause([tp])

    def _score(self, batch: list[InputRecord]) -> ProcessedBatch:
        from forestream.worker.processing import process_records

        c = self.checkpoint
        return process_records(
            batch,
            self.model,
            output_topic=c.output_topic,
            dlq_topic=c.dlq_topic,
            max_record_bytes=self.settings.max_record_bytes,
        )

    def _advance(self, batch: list[InputRecord], processed: ProcessedBatch) -> None:
        from forestream.worker.cycle import next_offsets

        self.scored += processed.predicted
        self.dead.update(processed.dead_lettered)
        for (_, partition), offset in next_offsets(batch).items():
            nxt, end = self.checkpoint.ranges[partition]
            self.checkpoint.ranges[partition] = (max(nxt, offset), end)

    # -- at-least-once -------------------------------------------------------------------------

    def _publish(self, batch: list[InputRecord]) -> bool:
        assert self.publisher is not None
        processed = self._score(batch)
        if not self.publisher.publish(processed.outgoing):
            return False
        self._advance(batch, processed)
        return True

    # -- exactly-once --------------------------------------------------------------------------

    def _ready_for_transactions(self) -> bool:
        """Past the backoff of a failed transaction, and settled: False means wait (briefly,
        so that a stop request is seen)."""
        wait_s = self.retry_at - time.monotonic()
        if wait_s > 0:
            time.sleep(min(wait_s, 0.1))
            return False
        if self.unsettled:
            try:
                self._settle()
            except TransientKafkaError as exc:
                self._failed("transaction_settle_failed", exc)
                return False
        return True

    def _settle(self) -> None:
        """Replace the producer (its successor fences any earlier one with this transactional
        id, a resumed replay's predecessor included, and completes or aborts the transaction
        it left open), then go on from the group's committed offsets. A settle after the
        first follows a transaction or a settle that failed: the reader is replaced too, so
        that no retry waits on a client that lost the cluster."""
        from forestream.worker.transactions import replace_producer

        c = self.checkpoint
        new_reader = self.settled_before
        self.settled_before = True
        old, self.txn = self.txn, None
        self.txn = replace_producer(old, self._transactional_producer)
        if new_reader:  # after the producer: the cluster has just answered it
            self._replace_reader()
        assert self.reader is not None
        committed = self.reader.committed(list(self.todo.values()), timeout_s=_COMMITTED_TIMEOUT_S)
        before = c.remaining()
        c.ranges.update(
            settled_ranges(
                {p: c.ranges[p] for p in self.todo},
                {tp.partition: o for tp, o in committed.items()},
            )
        )
        self._seek_to_checkpoint()
        self.unsettled = False
        _log().info(
            "replay_settled",
            transactional_id=c.transactional_id,
            group=c.group,
            next_offsets=c.offsets_text(),
            already_committed=before - c.remaining(),
            new_reader=new_reader,
        )

    def _commit_in_transaction(self, batch: list[InputRecord]) -> bool:
        """Score the batch and commit its outputs and next-offsets in one transaction; False
        when it did not commit (or may not have): the batch is read again."""
        from forestream.worker.cycle import next_offsets
        from forestream.worker.transactions import TXN_TIMEOUT_S, transact

        assert self.txn is not None and self.reader is not None
        processed = self._score(batch)
        try:
            transact(
                self.txn,
                processed.outgoing,
                next_offsets(batch),
                self.reader.group_metadata,
                timeout_s=TXN_TIMEOUT_S,
                topic=self.checkpoint.output_topic,
            )
        except TransactionAborted as exc:  # nothing of it counts
            self._failed("transaction_aborted", exc)
            self._seek_to_checkpoint()
            return False
        except TransientKafkaError as exc:  # settled by the next producer, whichever way
            self._failed("transaction_outcome_unknown", exc)
            self.unsettled = True
            return False
        self.failures = 0
        self._advance(batch, processed)
        return True

    def _failed(self, event: str, exc: Exception) -> None:
        """A transaction (or settling one) failed: retry after a backoff."""
        from forestream.worker.transactions import retry_backoff_s

        self.failures += 1
        self._warn_rate_limited(event, exc, failures_in_a_row=self.failures)
        self.retry_at = time.monotonic() + retry_backoff_s(self.failures)

    def _warn_rate_limited(self, event: str, exc: Exception, **fields: object) -> None:
        if self._warn.ready():
            _log().warning(
                event,
                error=str(exc)[:300],
                suppressed=self._warn.take_suppressed(),
                **fields,
            )


_COMMITTED_TIMEOUT_S = 5.0
"""Bound on asking the group's committed offsets (retried with backoff past it)."""
_POLL_BACKOFF_S = 0.5


def _log() -> Any:
    import structlog

    return structlog.get_logger("forestream.replay")


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


def _default_checkpoint_path(output_topic: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in output_topic)
    return CHECKPOINT_DIR / f"{safe}.json"


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay_command(
        # replay's own option, not the shared OutputTopicOpt: FORESTREAM_OUTPUT_TOPIC names the
        # live predictions topic, which is exactly where a replay must not write by default
        output_topic: Annotated[
            str | None,
            typer.Option(
                "--output-topic",
                help="where the re-scored records go (required; not read from "
                "FORESTREAM_OUTPUT_TOPIC, which names the live topic)",
                show_default=False,
            ),
        ] = None,
        from_offset: Annotated[
            str | None,
            typer.Option("--from-offset", help="first offset: N, or P:N,P:N per partition"),
        ] = None,
        to_offset: Annotated[
            str | None,
            typer.Option("--to-offset", help="end offset, exclusive: N, or P:N,P:N"),
        ] = None,
        from_time: Annotated[
            str | None,
            typer.Option("--from-time", help="first record time: ISO 8601 or epoch ms"),
        ] = None,
        to_time: Annotated[
            str | None,
            typer.Option("--to-time", help="end time, exclusive: ISO 8601 or epoch ms"),
        ] = None,
        partitions: Annotated[
            str | None, typer.Option("--partitions", help="only these partitions, e.g. 0,2")
        ] = None,
        model_version: Annotated[
            str | None,
            typer.Option("--model-version", help="pin a version (default: the promoted one)"),
        ] = None,
        into_live: Annotated[
            bool,
            typer.Option(
                "--into-live",
                help="allow writing into the live predictions topic "
                "(FORESTREAM_OUTPUT_TOPIC, default forestream.predictions)",
            ),
        ] = False,
        dlq_topic: Annotated[
            str | None,
            typer.Option("--dlq-topic", help="dead letters of the replay (default <output>.dlq)"),
        ] = None,
        max_batch: Annotated[
            int | None,
            typer.Option("--max-batch", help="records per batch [env FORESTREAM_REPLAY_MAX_BATCH]"),
        ] = None,
        checkpoint: Annotated[
            Path | None,
            typer.Option("--checkpoint", help="progress file (default .forestream/replay/…)"),
        ] = None,
        guarantee: Annotated[
            str | None,
            typer.Option(
                "--guarantee",
                help="at-least-once (the checkpoint is saved once a batch is acknowledged: an "
                "interruption may score one batch twice) or exactly-once (each batch's outputs "
                "and input offsets in one transaction, the offsets committed to a consumer "
                "group of the replay's own; read the outputs with "
                "isolation.level=read_committed) [env FORESTREAM_GUARANTEE; default "
                "at-least-once; a resumed replay keeps its checkpoint's]",
                show_default=False,
            ),
        ] = None,
        resume: Annotated[
            Path | None,
            typer.Option(
                "--resume",
                help="continue an interrupted replay from its checkpoint (which fixes its "
                "topics, model and range)",
            ),
        ] = None,
        input_topic: InputTopicOpt = None,
        store: StoreOpt = None,
        name: ModelNameOpt = None,
        bootstrap_servers: BootstrapOpt = None,
        log_format: LogFormatOpt = None,
    ) -> None:
        """Re-score a bounded range of the input topic into another topic (a backfill)."""
        from forestream.runtime.logs import checked_log_format, configure_logging
        from forestream.runtime.settings import load_settings

        settings = load_settings(
            ReplaySettings,
            bootstrap_servers=bootstrap_servers,
            input_topic=input_topic,
            model_store=store,
            model_name=name,
            replay_max_batch=max_batch,
            guarantee=guarantee,
            log_format=log_format,
        )
        configure_logging(checked_log_format(settings.log_format))
        if resume is not None:
            check_resume_flags(
                resume,
                {
                    "--input-topic": input_topic,
                    "--output-topic": output_topic,
                    "--dlq-topic": dlq_topic,
                    "--into-live": into_live,
                    "--store": store,
                    "--name": name,
                    "--model-version": model_version,
                    "--from-offset": from_offset,
                    "--to-offset": to_offset,
                    "--from-time": from_time,
                    "--to-time": to_time,
                    "--partitions": partitions,
                    "--checkpoint": checkpoint,
                    "--guarantee": guarantee,
                },
            )
            state = Checkpoint.load(resume)
            try:
                check_topics(state.input_topic, state.output_topic, state.dlq_topic)
            except UserError as exc:
                raise UserError(f"--resume {resume}: {exc}") from None
            settings = settings.model_copy(
                update={
                    "input_topic": state.input_topic,
                    "model_store": state.model_store,
                    "model_name": state.model_name,
                }
            )
            model = _load_model(settings, state.model_version)
            from forestream.edge.factory import require_reachable

            require_reachable(settings.kafka())
            path = resume
        else:
            if output_topic is None:
                raise UserError("--output-topic is required: where the re-scored records go")
            if dlq_topic is None:
                dlq, dlq_flag = f"{output_topic}.dlq", "the default --dlq-topic (<output>.dlq)"
            else:
                dlq, dlq_flag = dlq_topic, "--dlq-topic"
            check_topics(settings.input_topic, output_topic, dlq, dlq_flag)
            if output_topic == settings.output_topic and not into_live:
                raise UserError(
                    f"--output-topic {output_topic!r} is the live predictions topic: "
                    "pass --into-live if you mean to write there"
                )
            flags = parse_range(from_offset, to_offset, from_time, to_time)
            path = checkpoint or _default_checkpoint_path(output_topic)
            refuse_unfinished(path)
            model = _load_model(settings, model_version)
            from forestream.edge.factory import partition_reader, require_reachable

            require_reachable(settings.kafka())
            probe = partition_reader(settings.kafka(), client_id="forestream-replay-probe")
            try:
                state = resolve_checkpoint(
                    probe,
                    settings,
                    model.version,
                    output_topic,
                    dlq,
                    partitions,
                    flags,
                    settings.guarantee,
                )
            finally:
                probe.close()
        result = _run_with_progress(settings, state, model, path)
        _print_result(result, path)
        if result.interrupted:
            raise typer.Exit(130)


def _run_with_progress(
    settings: ReplaySettings, state: Checkpoint, model: Any, path: Path
) -> ReplayResult:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:,.0f} rec/s" if task.speed else "- rec/s")

    with Progress(
        TextColumn(f"replay {state.input_topic} with {model.version}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _RateColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as progress:
        task = progress.add_task("replay", total=state.remaining())
        return replay(settings, state, model, path, lambda n: progress.advance(task, n))


def _print_result(result: ReplayResult, path: Path) -> None:
    dead = ", ".join(f"{k} {v}" for k, v in sorted(result.dead_lettered.items())) or "none"
    how = " (exactly-once: read it with isolation.level=read_committed)"
    typer.echo(
        f"replayed {result.records} records with {result.checkpoint.model_version}: "
        f"{result.scored} scored, dead-lettered: {dead}; "
        f"{result.seconds:.1f} s, {result.rate:,.0f} rec/s "
        f"-> {result.checkpoint.output_topic}{how if result.checkpoint.exactly_once else ''}"
    )
    if result.interrupted:
        typer.echo(
            f"interrupted with {result.checkpoint.remaining()} records left; next offsets "
            f"{result.checkpoint.offsets_text()}. Resume with: forestream replay --resume {path}",
            err=True,
        )
