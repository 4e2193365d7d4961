"""The ``forestream replay`` command: flags or a checkpoint in, a progress bar, a result line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from forestream.errors import UserError
from forestream.runtime.cli_options import (
    AllowUnsignedOpt,
    AllowVersionMismatchOpt,
    BootstrapOpt,
    InputTopicOpt,
    LogFormatOpt,
    ModelNameOpt,
    SchemaRegistryUrlOpt,
    SchemaRegistryWaitOpt,
    StoreOpt,
    VerifyKeyOpt,
)
from forestream.worker.replay.checkpoint import (
    Checkpoint,
    default_checkpoint_path,
    refuse_unfinished,
    resolve_checkpoint,
)
from forestream.worker.replay.flags import (
    ReplaySettings,
    check_formats,
    check_resume_flags,
    check_topics,
    parse_range,
)

if TYPE_CHECKING:  # the run's side is imported when a replay runs: `--help` stays fast
    from forestream.worker.replay.run import ReplayResult
    from forestream.worker.scoring import PredictionEncoder


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
        input_format: Annotated[
            str | None,
            typer.Option(
                "--input-format",
                help="how the input topic is written, as the worker's flag: json, avro, "
                "json-schema, protobuf (FORESTREAM_SCHEMA_REGISTRY_URL required but for json) "
                "[env FORESTREAM_INPUT_FORMAT; default json; a resumed replay keeps its "
                "checkpoint's]",
                show_default=False,
            ),
        ] = None,
        output_format: Annotated[
            str | None,
            typer.Option(
                "--output-format",
                help="predictions as json, or avro (the schema registered as <output "
                "topic>-value) [env FORESTREAM_OUTPUT_FORMAT; default json; a resumed replay "
                "keeps its checkpoint's]",
                show_default=False,
            ),
        ] = None,
        schema_registry_url: SchemaRegistryUrlOpt = None,
        schema_registry_wait_s: SchemaRegistryWaitOpt = None,
        input_topic: InputTopicOpt = None,
        store: StoreOpt = None,
        name: ModelNameOpt = None,
        bootstrap_servers: BootstrapOpt = None,
        verify_key: VerifyKeyOpt = None,
        allow_unsigned: AllowUnsignedOpt = None,
        allow_version_mismatch: AllowVersionMismatchOpt = None,
        log_format: LogFormatOpt = None,
    ) -> None:
        """Re-score a bounded range of the input topic into another topic (a backfill)."""
        from forestream.runtime.logs import checked_log_format, configure_logging
        from forestream.runtime.settings import load_settings
        from forestream.worker.replay.run import load_model

        settings = load_settings(
            ReplaySettings,
            bootstrap_servers=bootstrap_servers,
            input_topic=input_topic,
            model_store=store,
            model_name=name,
            replay_max_batch=max_batch,
            guarantee=guarantee,
            input_format=input_format,
            output_format=output_format,
            schema_registry_url=schema_registry_url,
            schema_registry_wait_s=schema_registry_wait_s,
            verify_key_file=verify_key,
            allow_unsigned=allow_unsigned,
            allow_version_mismatch=allow_version_mismatch,
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
                    "--input-format": input_format,
                    "--output-format": output_format,
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
                    "input_format": state.input_format,
                    "output_format": state.output_format,
                }
            )
            try:
                check_formats(state.input_format, state.output_format, settings.schema_registry_url)
            except UserError as exc:
                raise UserError(f"--resume {resume}: {exc}") from None
            model = load_model(settings, state.model_version)
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
            path = checkpoint or default_checkpoint_path(output_topic)
            refuse_unfinished(path)
            model = load_model(settings, model_version)
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
        from forestream.worker.serving import output_encoder

        encode = output_encoder(settings, state.output_topic)  # Avro: registered before any read
        result = _run_with_progress(settings, state, model, path, encode)
        _print_result(result, path)
        if result.interrupted:
            raise typer.Exit(130)


def _run_with_progress(
    settings: ReplaySettings,
    state: Checkpoint,
    model: Any,
    path: Path,
    encode: PredictionEncoder,
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

    from forestream.worker.replay.run import replay

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
        return replay(
            settings, state, model, path, lambda n: progress.advance(task, n), encode=encode
        )


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
