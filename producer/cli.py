"""``forestream produce`` and ``forestream topics create``: feed the input topic, make topics."""

from __future__ import annotations

import contextlib
import sys
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from forestream.errors import UserError
from forestream.runtime.cli_options import (
    BootstrapOpt,
    DlqTopicOpt,
    InputTopicOpt,
    LabelsTopicOpt,
    LogFormatOpt,
    ModelNameOpt,
    ModelsTopicOpt,
    MonitoringTopicOpt,
    OutputTopicOpt,
    SchemaRegistryUrlOpt,
    ShadowTopicOpt,
    StoreOpt,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from typing import Any

    from forestream.edge.interface import AckingProducer
    from forestream.producer.sending import SendStats
    from forestream.producer.settings import ProducerSettings

PartitionsOpt = Annotated[
    int | None,
    typer.Option(
        "--partitions",
        help="partitions of topics created here [env FORESTREAM_PARTITIONS; default 4]",
        show_default=False,
    ),
]

topics_app = typer.Typer(help="Manage the project's Kafka topics.", no_args_is_help=True)


def produce(
    data: Annotated[
        Path | None, typer.Option("--data", help="CSV file: one record per row")
    ] = None,
    synthetic: Annotated[
        int | None,
        typer.Option("--synthetic", help="send N synthetic records matching a model's schema"),
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="target column to drop if present")
    ] = None,
    drop: Annotated[
        list[str] | None, typer.Option("--drop", help="column to leave out (repeatable)")
    ] = None,
    key_column: Annotated[
        str | None,
        typer.Option("--key-column", help="column used as record key (default <run-id>-<n>)"),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option("--rate", help="records/s, 0 = as fast as possible [env FORESTREAM_RATE]"),
    ] = None,
    count: Annotated[int | None, typer.Option("--count", help="stop after N records")] = None,
    loop: Annotated[bool, typer.Option("--loop", help="restart the CSV at its end")] = False,
    malformed_share: Annotated[
        float | None,
        typer.Option(
            "--malformed-share",
            help="share of deliberately bad records, one of each kind in turn (0 <= p < 1)",
        ),
    ] = None,
    shift: Annotated[
        list[str] | None,
        typer.Option("--shift", help="FEATURE=K: shift a numeric feature by K std (repeatable)"),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", min=0, max=2**32 - 1, help="seed of synthetic/bad records")
    ] = 0,
    version: Annotated[
        str | None, typer.Option("--version", help="model version (default: the served one)")
    ] = None,
    value_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="json, or avro: the Confluent wire format with the latest schema of "
            "<input topic>-value in FORESTREAM_SCHEMA_REGISTRY_URL (see `models "
            "register-schema`) [env FORESTREAM_VALUE_FORMAT; default json]",
            show_default=False,
        ),
    ] = None,
    store: StoreOpt = None,
    name: ModelNameOpt = None,
    partitions: PartitionsOpt = None,
    bootstrap_servers: BootstrapOpt = None,
    input_topic: InputTopicOpt = None,
    schema_registry_url: SchemaRegistryUrlOpt = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Send feature records to the input topic: a CSV file or synthetic records."""
    from forestream.producer.settings import ProducerSettings
    from forestream.runtime.logs import checked_log_format
    from forestream.runtime.settings import load_settings

    settings = load_settings(
        ProducerSettings,
        bootstrap_servers=bootstrap_servers,
        input_topic=input_topic,
        model_store=store,
        model_name=name,
        partitions=partitions,
        rate=rate,
        malformed_share=malformed_share,
        value_format=value_format,
        schema_registry_url=schema_registry_url,
        log_format=log_format,
    )
    if (data is None) == (synthetic is None):
        raise UserError("pass exactly one of --data FILE.csv or --synthetic N")
    if synthetic is not None and synthetic < 1:
        raise UserError("--synthetic N needs N >= 1")
    if count is not None and count < 1:
        raise UserError("--count needs a value >= 1")
    if data is None:
        csv_only = {"--loop": loop, "--key-column": key_column, "--target": target, "--drop": drop}
        given = [flag for flag, value in csv_only.items() if value]
        if given:
            raise UserError(f"{given[0]} only applies to --data")
    checked_log_format(settings.log_format)
    _run_produce(settings, data, synthetic, target, drop or [], key_column, count, loop,
                 shift or [], seed, version)  # fmt: skip


def _run_produce(
    settings: ProducerSettings,
    data: Path | None,
    synthetic: int | None,
    target: str | None,
    drop: list[str],
    key_column: str | None,
    count: int | None,
    loop: bool,
    shift_specs: list[str],
    seed: int,
    version: str | None,
) -> None:
    import structlog

    from forestream.edge.factory import TopicSpec, acking_producer, ensure_topics, require_reachable
    from forestream.producer.encoding import encode_row
    from forestream.producer.malformed import MalformedMixer
    from forestream.producer.sending import (
        SendStats,
        expected_total,
        make_oversize_producer,
        record_stream,
        send_records,
    )
    from forestream.producer.sources import load_csv, load_model_inputs, parse_shifts
    from forestream.producer.synthetic import synthetic_rows
    from forestream.runtime.logs import checked_log_format, configure_logging

    configure_logging(checked_log_format(settings.log_format))
    require_reachable(settings.kafka())
    log = structlog.get_logger("forestream.producer")
    shifts = parse_shifts(shift_specs)
    run_id = uuid.uuid4().hex[:8]

    if data is not None:
        source = load_csv(data, target, drop, key_column)
        if shifts:
            source.shift(shifts)
        rows = source.stream(loop)
        required, numeric = source.complete, [c for c in source.numeric if c in source.complete]
        valid_rows: int | None = None if loop else len(source.rows)
        origin = str(data)
    else:
        if synthetic is None:  # produce() checked that exactly one of the two is given
            raise ValueError("pass exactly one of data or synthetic")
        model = load_model_inputs(
            settings.model_store,
            settings.model_name,
            version,
            endpoint_url=settings.s3_endpoint_url,
        )
        for feature_name in shifts:
            if feature_name not in model.schema.names:
                raise UserError(f"--shift: model has no feature {feature_name!r}")
            if model.schema.feature(feature_name).kind != "numeric":
                raise UserError(f"--shift: feature {feature_name!r} is not numeric")
        required = [f.name for f in model.schema.features if not f.missing_seen]
        numeric = [f.name for f in model.schema.features if f.kind == "numeric" and
                   not f.missing_seen]  # fmt: skip
        rows = (
            (None, row)
            for row in synthetic_rows(model.schema, model.reference, synthetic, seed, shifts)
        )
        valid_rows = synthetic
        origin = f"synthetic:{model.name}@{model.version}"

    mixer = MalformedMixer(settings.malformed_share, required, numeric, seed) if (
        settings.malformed_share > 0) else None  # fmt: skip
    # bad records are added between rows, so a finite source sends more than its rows;
    # only --count cuts the stream (never a row of the file)
    natural = expected_total(valid_rows, settings.malformed_share)
    total = natural if count is None else min(count, natural or count)
    topic = settings.input_topic
    encode = _avro_encoder(settings) if settings.value_format == "avro" else None
    ensure_topics(settings.kafka(), [TopicSpec(topic, settings.partitions)])
    producer = acking_producer(
        settings.kafka(), client_id="forestream-producer", max_block_ms=15_000
    )
    log.info(
        "producing",
        run_id=run_id,
        topic=topic,
        source=origin,
        rate=settings.rate,
        kafka_client=settings.kafka_client,
    )

    def oversize_producer() -> AckingProducer:
        return make_oversize_producer(settings.kafka(), max_block_ms=15_000)

    stats = SendStats()
    try:
        with _progress(total) as advance, _stop_requested(stats) as stop:
            send_records(
                producer,
                topic,
                record_stream(rows, run_id, mixer, encode or encode_row),
                rate=settings.rate,
                count=count,
                oversize_producer=oversize_producer,
                on_sent=advance,
                should_stop=stop.is_set,
                stats=stats,
            )
    finally:
        producer.close(5)
    if stats.malformed:
        log.info("malformed records sent", **dict(stats.malformed))
    typer.echo(stats.summary())


def _avro_encoder(settings: ProducerSettings) -> Callable[[Mapping[str, Any]], bytes]:
    """Rows to Avro with the subject's latest schema; a row it refuses ends the run in one
    line (what was sent before it stays sent)."""
    from forestream.producer.registered import latest_avro_encoder

    registered = latest_avro_encoder(settings.schema_registry(), settings.input_topic)
    subject, version, encode = registered.subject, registered.version, registered.encode
    sent = 0

    def checked(row: Mapping[str, Any]) -> bytes:
        nonlocal sent
        try:
            value = encode(row)
        except ValueError as exc:
            raise UserError(
                f"row {sent + 1} does not fit {subject} version {version}, stopped after "
                f"{sent} records: {exc}"
            ) from None
        sent += 1
        return value

    return checked


@contextlib.contextmanager
def _stop_requested(stats: SendStats) -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set an event instead of killing us: sending stops, acks are awaited.

    ``--loop`` runs until stopped, so a stop is the normal end of a run, not a failure. A
    broker that never acknowledges cannot hold us past the watchdog's grace: its exit line
    says how many sent records were never confirmed (those may be missing from the topic).
    """
    from forestream.runtime.shutdown import install

    def abandoned() -> dict[str, int]:
        sent, acknowledged = stats.sent, stats.acknowledged_now()
        return {"sent": sent, "acknowledged": acknowledged, "unconfirmed": sent - acknowledged}

    stop = threading.Event()
    with install(lambda _signum: stop.set(), abandoned):
        yield stop


@contextlib.contextmanager
def _progress(total: int | None) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr when it is a terminal; nothing when piped or logged."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("producing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("produce", total=total)
        yield lambda n: progress.advance(task, n)


@topics_app.command("create")
def topics_create(
    partitions: PartitionsOpt = None,
    bootstrap_servers: BootstrapOpt = None,
    input_topic: InputTopicOpt = None,
    output_topic: OutputTopicOpt = None,
    dlq_topic: DlqTopicOpt = None,
    shadow_topic: ShadowTopicOpt = None,
    labels_topic: LabelsTopicOpt = None,
    monitoring_topic: MonitoringTopicOpt = None,
    models_topic: ModelsTopicOpt = None,
    replication_factor: Annotated[
        int | None,
        typer.Option(
            "--replication-factor",
            min=1,
            max=32767,
            help="replicas per partition of topics created here [env "
            "FORESTREAM_REPLICATION_FACTOR; default: the broker's default.replication.factor]",
            show_default=False,
        ),
    ] = None,
    min_insync_replicas: Annotated[
        int | None,
        typer.Option(
            "--min-insync-replicas",
            min=1,
            max=32767,
            help="min.insync.replicas of topics created here (acks=all needs that many) "
            "[env FORESTREAM_MIN_INSYNC_REPLICAS; default: the broker's]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create every missing project topic; existing ones are left as they are.

    Input, output, DLQ and labels get --partitions; monitoring 1; models 1, compacted.
    """
    from forestream.edge.factory import (
        TopicSpec,
        ensure_topics,
        models_topic_spec,
        require_reachable,
        topic_partitions,
    )
    from forestream.producer.settings import ProducerSettings
    from forestream.runtime.settings import load_settings

    s = load_settings(
        ProducerSettings,
        partitions=partitions,
        bootstrap_servers=bootstrap_servers,
        input_topic=input_topic,
        output_topic=output_topic,
        dlq_topic=dlq_topic,
        shadow_topic=shadow_topic,
        labels_topic=labels_topic,
        monitoring_topic=monitoring_topic,
        models_topic=models_topic,
        replication_factor=replication_factor,
        min_insync_replicas=min_insync_replicas,
    )
    specs = [
        TopicSpec(s.input_topic, s.partitions),
        TopicSpec(s.output_topic, s.partitions),
        TopicSpec(s.dlq_topic, s.partitions),
        TopicSpec(s.shadow_topic_or_default(), s.partitions),
        TopicSpec(s.labels_topic, s.partitions),
        TopicSpec(s.monitoring_topic, 1),
        # one partition: every worker reads the registry's events in the order they happened
        models_topic_spec(s.models_topic),
    ]
    s.check_distinct_topics()
    require_reachable(s.kafka())
    existing = set(topic_partitions(s.kafka(), [spec.name for spec in specs]))
    ensure_topics(s.kafka(), specs)
    actual = topic_partitions(s.kafka(), [spec.name for spec in specs])
    for spec in specs:
        # say what is there, not what was asked for: an existing topic keeps its layout
        count = actual.get(spec.name, 0)
        layout = f"{count} partition{'' if count == 1 else 's'}"
        if spec.name in existing:
            typer.echo(f"{spec.name}: exists, {layout} (kept)")
        else:
            typer.echo(f"{spec.name}: created, {layout}{', compacted' if spec.configs else ''}")


def register(app: typer.Typer) -> None:
    """Add ``produce`` and ``topics create`` to ``app``."""
    app.command("produce")(produce)
    app.add_typer(topics_app, name="topics")
