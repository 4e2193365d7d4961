"""``forestream replay``: re-score a bounded range of an input topic, for backfills.

It reads with ``assign`` (no consumer group, so the live workers' offsets are never touched),
fixes the end offsets when it starts (records that arrive later are not part of the range), and
pushes every batch through the same :func:`worker.processing.process_records` and
:class:`worker.processing.AckedPublisher` as the live worker: one code path for validation, the
DLQ and scoring. Progress is checkpointed to a file after every acknowledged batch, so an
interrupted replay resumes where it stopped instead of starting over.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import Field

from contracts.cli_options import (
    BootstrapOpt,
    InputTopicOpt,
    LogFormatOpt,
    ModelNameOpt,
    StoreOpt,
)
from contracts.edge import PartitionReader, TopicPartition
from contracts.errors import UserError
from contracts.settings import CommonSettings, illegal_topic_name

CHECKPOINT_DIR = Path(".forestream/replay")


class ReplaySettings(CommonSettings):
    """Replay reads far more than it waits, so its batches are bigger than the live worker's."""

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


@dataclass
class Checkpoint:
    """Where a replay is: enough to resume it with the same topics and model."""

    input_topic: str
    output_topic: str
    dlq_topic: str
    model_store: str
    model_name: str
    model_version: str
    ranges: dict[int, tuple[int, int]]
    """partition -> (next offset to read, end offset, exclusive)."""

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        body = {
            "input_topic": self.input_topic,
            "output_topic": self.output_topic,
            "dlq_topic": self.dlq_topic,
            "model_store": self.model_store,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "ranges": {str(p): list(r) for p, r in self.ranges.items()},
        }
        tmp.write_text(json.dumps(body, indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        try:
            body = json.loads(path.read_text())
            return cls(
                input_topic=body["input_topic"],
                output_topic=body["output_topic"],
                dlq_topic=body["dlq_topic"],
                model_store=body["model_store"],
                model_name=body["model_name"],
                model_version=body["model_version"],
                ranges={int(p): (int(r[0]), int(r[1])) for p, r in body["ranges"].items()},
            )
        except FileNotFoundError:
            raise UserError(f"--resume: no checkpoint file {path}") from None
        except (ValueError, KeyError, TypeError, IndexError):
            raise UserError(f"--resume: {path} is not a replay checkpoint") from None

    def remaining(self) -> int:
        return sum(end - nxt for nxt, end in self.ranges.values())

    def offsets_text(self) -> str:
        return ",".join(f"{p}:{nxt}" for p, (nxt, _end) in sorted(self.ranges.items()))


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
    from contracts.model_store import normalize_version, signing_key_from_env
    from worker.models import ActiveModel, warm_up

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
    from contracts.model_store import is_uri

    return location if is_uri(location) else str(Path(location).resolve())


def resolve_checkpoint(
    consumer: PartitionReader,
    settings: ReplaySettings,
    model_version: str,
    output_topic: str,
    dlq_topic: str,
    partitions_spec: str | None,
    flags: RangeFlags,
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
    return Checkpoint(
        input_topic=topic,
        output_topic=output_topic,
        dlq_topic=dlq_topic,
        model_store=store_checkpoint_location(settings.model_store),
        model_name=settings.model_name,
        model_version=model_version,
        ranges=bounded_range(partitions, beginning, end, start, stop),
    )


def replay(
    settings: ReplaySettings,
    checkpoint: Checkpoint,
    model: Any,
    checkpoint_path: Path,
    on_progress: Any = None,
) -> ReplayResult:
    """Score every record of ``checkpoint.ranges``; stop early (cleanly) on SIGINT/SIGTERM."""
    from contracts.kafka_io import TopicSpec, acking_producer, ensure_topics, partition_reader
    from contracts.shutdown import install as install_shutdown_watchdog
    from worker.cycle import next_offsets
    from worker.processing import AckedPublisher, process_records

    stop_requested = False

    def request_stop(_signum: int) -> None:
        nonlocal stop_requested
        stop_requested = True

    def abandoned() -> dict[str, object]:
        """What a hard exit leaves: the batch past the checkpoint, re-scored on resume."""
        return {
            "remaining_records": checkpoint.remaining(),
            "resume": f"forestream replay --resume {checkpoint_path}",
        }

    # SIGINT/SIGTERM stop after the batch in hand; a broker that never answers cannot hold us
    # past the watchdog's grace (the checkpoint then lags by at most that batch)
    watchdog = install_shutdown_watchdog(request_stop, abandoned)
    kafka = settings.kafka()
    partitions = max(checkpoint.ranges, default=0) + 1
    try:
        ensure_topics(
            kafka,
            [TopicSpec(checkpoint.output_topic, partitions), TopicSpec(checkpoint.dlq_topic, 1)],
        )
        consumer = partition_reader(
            kafka, client_id="forestream-replay", max_poll_records=settings.replay_max_batch
        )
        producer = acking_producer(kafka, client_id="forestream-replay", linger_ms=20)
    except BaseException:
        watchdog.uninstall()
        raise
    publisher = AckedPublisher(producer, give_up=lambda: stop_requested)
    scored = 0
    dead: Counter[str] = Counter()
    started = time.monotonic()
    try:
        todo = {p: r for p, r in checkpoint.ranges.items() if r[0] < r[1]}
        tps = {p: TopicPartition(checkpoint.input_topic, p) for p in todo}
        consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            consumer.seek(tp, todo[p][0])
        while todo and not stop_requested:
            polled = consumer.poll_batch(settings.replay_max_batch, 0.5)
            batch = [r for r in polled if r.offset < checkpoint.ranges[r.partition][1]]
            if batch:
                processed = process_records(
                    batch,
                    model,
                    output_topic=checkpoint.output_topic,
                    dlq_topic=checkpoint.dlq_topic,
                    max_record_bytes=settings.max_record_bytes,
                )
                if not publisher.publish(processed.outgoing):
                    break  # interrupted while the broker was away: this batch is not checkpointed
                scored += processed.predicted
                dead.update(processed.dead_lettered)
                for (_, partition), offset in next_offsets(batch).items():
                    nxt, end = checkpoint.ranges[partition]
                    checkpoint.ranges[partition] = (max(nxt, offset), end)
            # a position at or past the end also closes a partition whose last offsets hold no
            # record (transaction markers, compaction): waiting for them would never end
            for p in list(todo):
                nxt, end = checkpoint.ranges[p]
                if nxt >= end or consumer.position(tps[p]) >= end:
                    checkpoint.ranges[p] = (end, end)
                    del todo[p]
                    consumer.pause([tps[p]])
            checkpoint.save(checkpoint_path)
            if on_progress is not None and batch:
                on_progress(len(batch))
    finally:
        producer.close(10)
        consumer.close()
        watchdog.uninstall()
    checkpoint.save(checkpoint_path)
    return ReplayResult(
        scored=scored,
        dead_lettered=dead,
        seconds=time.monotonic() - started,
        interrupted=checkpoint.remaining() > 0,
        checkpoint=checkpoint,
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
        from contracts.logs import checked_log_format, configure_logging
        from contracts.settings import load_settings

        settings = load_settings(
            ReplaySettings,
            bootstrap_servers=bootstrap_servers,
            input_topic=input_topic,
            model_store=store,
            model_name=name,
            replay_max_batch=max_batch,
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
            from contracts.kafka_io import require_reachable

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
            model = _load_model(settings, model_version)
            from contracts.kafka_io import partition_reader, require_reachable

            require_reachable(settings.kafka())
            probe = partition_reader(settings.kafka(), client_id="forestream-replay-probe")
            try:
                state = resolve_checkpoint(
                    probe, settings, model.version, output_topic, dlq, partitions, flags
                )
            finally:
                probe.close()
            path = checkpoint or _default_checkpoint_path(output_topic)
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
    typer.echo(
        f"replayed {result.records} records with {result.checkpoint.model_version}: "
        f"{result.scored} scored, dead-lettered: {dead}; "
        f"{result.seconds:.1f} s, {result.rate:,.0f} rec/s "
        f"-> {result.checkpoint.output_topic}"
    )
    if result.interrupted:
        typer.echo(
            f"interrupted with {result.checkpoint.remaining()} records left; next offsets "
            f"{result.checkpoint.offsets_text()}. Resume with: forestream replay --resume {path}",
            err=True,
        )
