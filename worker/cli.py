"""``forestream worker``: registered on the ``forestream`` app by ``forestream.cli``.

Heavy imports (kafka, pandas, sklearn) happen inside the command, so ``forestream --help``
stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from forestream.runtime.cli_options import (
    AllowUnsignedOpt,
    AllowVersionMismatchOpt,
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
    SchemaRegistryWaitOpt,
    ShadowTopicOpt,
    StoreOpt,
    VerifyKeyOpt,
)

if TYPE_CHECKING:
    from forestream.registry.signing import Trust
    from forestream.worker.settings import WorkerSettings


def register(app: typer.Typer) -> None:
    """Add ``worker`` to ``app``."""
    app.command("worker")(worker)


def _without_processes(argv: list[str]) -> list[str]:
    """The child command line: ours minus ``--processes K`` (children run one process each)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            out.append(arg)
    return out


def worker(
    bootstrap_servers: BootstrapOpt = None,
    input_topic: InputTopicOpt = None,
    output_topic: OutputTopicOpt = None,
    dlq_topic: DlqTopicOpt = None,
    shadow_topic: ShadowTopicOpt = None,
    shadow_share: Annotated[
        float | None,
        typer.Option(
            "--shadow-share",
            help="share of each batch a shadow candidate (`models shadow`) scores, chosen by "
            "key hash, 0 < share <= 1 [env FORESTREAM_SHADOW_SHARE; default: 1.0]",
            show_default=False,
        ),
    ] = None,
    models_topic: ModelsTopicOpt = None,
    labels_topic: LabelsTopicOpt = None,
    monitoring_topic: MonitoringTopicOpt = None,
    store: StoreOpt = None,
    name: ModelNameOpt = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            help="consumer group [env FORESTREAM_GROUP; default forestream-workers]",
            show_default=False,
        ),
    ] = None,
    max_batch: Annotated[
        int | None,
        typer.Option(
            "--max-batch",
            help="a micro-batch closes at this many records [env FORESTREAM_MAX_BATCH; "
            "default 1000]",
            show_default=False,
        ),
    ] = None,
    max_wait_ms: Annotated[
        int | None,
        typer.Option(
            "--max-wait-ms",
            help="...or this many ms after its first record [env FORESTREAM_MAX_WAIT_MS; "
            "default 20]",
            show_default=False,
        ),
    ] = None,
    adaptive_window: Annotated[
        bool | None,
        typer.Option(
            "--adaptive-window/--no-adaptive-window",
            help="close a small batch as soon as the input is drained instead of waiting out "
            "--max-wait-ms [env FORESTREAM_ADAPTIVE_WINDOW; default on]",
            show_default=False,
        ),
    ] = None,
    max_records: Annotated[
        int | None,
        typer.Option(
            "--max-records",
            help="exit 0 after this many input records (demos, tests)",
            show_default=False,
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="serve /metrics, /healthz, /readyz on this port (+ worker index: set by "
            "--processes, or claimed under exactly-once) [env FORESTREAM_METRICS_PORT; "
            "default: no endpoint]",
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(
            "--metrics-host",
            help="address the metrics/health endpoint listens on (0.0.0.0: every interface) "
            "[env FORESTREAM_METRICS_HOST; default 127.0.0.1]",
            show_default=False,
        ),
    ] = None,
    drift_window: Annotated[
        int | None,
        typer.Option(
            "--drift-window",
            help="records in the drift / latency / online-accuracy window "
            "[env FORESTREAM_DRIFT_WINDOW; default 10000]",
            show_default=False,
        ),
    ] = None,
    fleet_window_s: Annotated[
        float | None,
        typer.Option(
            "--fleet-window-s",
            help="seconds per window of the bin and predicted-class counts in monitoring "
            "reports, merged across workers for fleet drift [env FORESTREAM_FLEET_WINDOW_S; "
            "default 60]",
            show_default=False,
        ),
    ] = None,
    report_interval_s: Annotated[
        float | None,
        typer.Option(
            "--report-interval-s",
            help="seconds between monitoring reports [env FORESTREAM_REPORT_INTERVAL_S; "
            "default 10]",
            show_default=False,
        ),
    ] = None,
    model_cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--model-cache-dir",
            help="keep loaded artifacts here by sha256 (restarts and rollbacks skip the store) "
            "[env FORESTREAM_MODEL_CACHE_DIR; default .forestream/model-cache for a URI store]",
            show_default=False,
        ),
    ] = None,
    pipeline: Annotated[
        bool | None,
        typer.Option(
            "--pipeline/--no-pipeline",
            help="score the next batch while the previous one is acknowledged, commit without "
            "waiting [env FORESTREAM_PIPELINE; default: on, off under exactly-once]",
            show_default=False,
        ),
    ] = None,
    rebuild_without_broker_s: Annotated[
        float | None,
        typer.Option(
            "--rebuild-after-s",
            help="confluent client: replace the group consumer once its client has heard from "
            "no broker this long, and rejoin the group (librdkafka#5301); what it held "
            "uncommitted is re-read [env FORESTREAM_REBUILD_WITHOUT_BROKER_S; default 60]",
            show_default=False,
        ),
    ] = None,
    guarantee: Annotated[
        str | None,
        typer.Option(
            "--guarantee",
            help="at-least-once (offsets committed after the outputs are acknowledged) or "
            "exactly-once (outputs and offsets in one transaction per batch; read the outputs "
            "with isolation.level=read_committed) [env FORESTREAM_GUARANTEE; default "
            "at-least-once]",
            show_default=False,
        ),
    ] = None,
    transactional_id: Annotated[
        str | None,
        typer.Option(
            "--transactional-id",
            help="exactly-once: this worker's transactional.id, unique among live workers "
            "[env FORESTREAM_TRANSACTIONAL_ID; default forestream-<group>-<host>-<worker index>, "
            "the lowest index free on this host unless FORESTREAM_WORKER_INDEX is set]",
            show_default=False,
        ),
    ] = None,
    input_format: Annotated[
        str | None,
        typer.Option(
            "--input-format",
            help="json, or the Confluent wire format with a Schema Registry: avro, json-schema, "
            "protobuf (FORESTREAM_SCHEMA_REGISTRY_URL required) [env FORESTREAM_INPUT_FORMAT; "
            "default json]",
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        str | None,
        typer.Option(
            "--output-format",
            help="predictions as json, or avro in the Confluent wire format, the schema "
            "registered at start as <output topic>-value (FORESTREAM_SCHEMA_REGISTRY_URL "
            "required; dead letters keep the input's bytes) [env FORESTREAM_OUTPUT_FORMAT; "
            "default json]",
            show_default=False,
        ),
    ] = None,
    schema_registry_url: SchemaRegistryUrlOpt = None,
    schema_registry_wait_s: SchemaRegistryWaitOpt = None,
    follow_labels: Annotated[
        bool | None,
        typer.Option(
            "--follow-labels/--no-follow-labels",
            help="read every labels partition and join it to this worker's predictions for "
            "the online accuracy in its own reports; `forestream evaluate` does it for the "
            "fleet, reading each label once [env FORESTREAM_FOLLOW_LABELS; default off]",
            show_default=False,
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            help="run K worker processes in the same group on this machine (one core each)",
            show_default=False,
        ),
    ] = None,
    verify_key: VerifyKeyOpt = None,
    allow_unsigned: AllowUnsignedOpt = None,
    allow_version_mismatch: AllowVersionMismatchOpt = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Score the input topic with the promoted model: predictions out, bad records to the DLQ."""
    from forestream.worker.process_memory import fix_mmap_threshold, limit_malloc_arenas

    limit_malloc_arenas()  # before any client starts a thread
    fix_mmap_threshold()
    from forestream.edge.factory import require_reachable
    from forestream.runtime.logs import checked_log_format, configure_logging
    from forestream.runtime.settings import load_settings
    from forestream.worker.settings import WorkerSettings

    settings = load_settings(
        WorkerSettings,
        bootstrap_servers=bootstrap_servers,
        input_topic=input_topic,
        output_topic=output_topic,
        dlq_topic=dlq_topic,
        shadow_topic=shadow_topic,
        shadow_share=shadow_share,
        models_topic=models_topic,
        labels_topic=labels_topic,
        monitoring_topic=monitoring_topic,
        model_store=store,
        model_name=name,
        group=group,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        adaptive_window=adaptive_window,
        max_records=max_records,
        pipeline=pipeline,
        rebuild_without_broker_s=rebuild_without_broker_s,
        guarantee=guarantee,
        transactional_id=transactional_id,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        verify_key_file=verify_key,
        allow_unsigned=allow_unsigned,
        allow_version_mismatch=allow_version_mismatch,
        drift_window=drift_window,
        fleet_window_s=fleet_window_s,
        report_interval_s=report_interval_s,
        model_cache_dir=model_cache_dir,
        input_format=input_format,
        output_format=output_format,
        schema_registry_url=schema_registry_url,
        schema_registry_wait_s=schema_registry_wait_s,
        follow_labels=follow_labels,
        log_format=log_format,
    )
    configure_logging(checked_log_format(settings.log_format))
    settings.check_distinct_topics()
    settings.require_verification()
    trust = settings.trust()  # an unreadable or wrong key ends the start in one line
    if processes not in (None, 1) and settings.transactional_id is not None:
        from forestream.errors import UserError

        raise UserError(
            "--transactional-id names one producer: with --processes the children would "
            "fence each other; leave it unset (each child gets its own, by worker index)"
        )
    from forestream.runtime.shutdown import EarlyStop

    early_stop = EarlyStop().install()  # until the worker's own handlers: no death mid start-up
    require_reachable(settings.kafka())

    if processes is not None and processes != 1:
        from forestream.worker.supervisor import supervise

        argv = [sys.executable, "-m", "forestream.cli", *_without_processes(sys.argv[1:])]
        raise typer.Exit(supervise(argv, processes))

    if settings.forest_engine == "auto":
        _load_forest_kernel()
    import structlog

    from forestream.worker.health import start_telemetry
    from forestream.worker.loop import run_worker
    from forestream.worker.models import ModelFollower, store_loader
    from forestream.worker.monitoring import StreamMonitoring, worker_id

    log = structlog.get_logger("forestream.worker")
    settings = _claim_index(log, settings)
    port = settings.metrics_port
    if port is not None and port != 0:
        port += settings.worker_index  # K processes on one host (or claims): one port each
    telemetry = start_telemetry(port, host=settings.metrics_host)
    telemetry.health.set_trust(
        allow_unsigned=trust.allow_unsigned, allow_version_mismatch=trust.allow_version_mismatch
    )
    _announce_trust(log, trust, settings)
    if telemetry.server is not None:
        log.info(
            "metrics_serving",
            host=telemetry.server.host,
            port=telemetry.server.port,
            paths=["/metrics", "/healthz", "/readyz"],
        )
    try:
        follower = ModelFollower(
            settings.kafka(),
            settings.models_topic,
            settings.model_name,
            store_loader(
                settings.open_store(), settings.model_name, settings.cache_dir(), trust=trust
            ),
            on_load_failure=telemetry.metrics.record_reload_failure,
            rebuild_without_broker_s=settings.rebuild_without_broker_s,
            on_client_rebuilt=telemetry.metrics.record_client_rebuild,
            compiled=settings.forest_engine == "auto",
        )
        code = run_worker(
            settings,
            follower,
            telemetry=telemetry,
            early_stop=early_stop,
            monitoring=lambda running: StreamMonitoring(
                kafka=settings.kafka(),
                model_name=settings.model_name,
                monitoring_topic=settings.monitoring_topic,
                labels_topic=settings.labels_topic if settings.follow_labels else None,
                worker_id=worker_id(settings.worker_index),
                reference_for=running.serving.reference_for,
                drift_window=settings.drift_window,
                drift_threshold=settings.drift_threshold,
                drift_min_records=settings.drift_min_records,
                fleet_window_s=settings.fleet_window_s,
                report_interval_s=settings.report_interval_s,
                registry=telemetry.metrics.registry,
                rebuild_without_broker_s=settings.rebuild_without_broker_s,
                on_client_rebuilt=telemetry.metrics.record_client_rebuild,
            ),
        )
    finally:
        telemetry.stop()
    raise typer.Exit(code)


def _load_forest_kernel() -> None:
    """Load the compiled forest's kernel before pandas, sklearn and the model: loading it makes
    ~50 MB of ``libllvmlite.so`` resident for a moment (the module gives it back at once), and
    on top of a loaded model that moment was the worker's peak RSS (322 MB; 274 MB once
    scoring). A kernel that cannot load is left to the engine's choice, which falls back and
    says why."""
    try:
        from forestream.worker import compiled_forest  # noqa: F401  (loads the kernel)
    except Exception:  # reported where the engine is chosen, which falls back
        return


def _claim_index(log: Any, settings: WorkerSettings) -> WorkerSettings:
    """Exactly-once with a default transactional id: the lowest worker index free on this host,
    held until the process ends, so workers started by hand do not fence each other. An index
    given explicitly (``--processes`` sets one per child) is locked too, for hand-started
    workers to skip, but kept even if another process holds it."""
    if not settings.exactly_once or settings.transactional_id is not None:
        return settings
    from forestream.worker.index_claim import claim_lowest, hold, lock_dir, try_claim

    directory = lock_dir(settings.index_lock_dir)
    if "worker_index" in settings.model_fields_set:
        claim = try_claim(directory, settings.group, settings.worker_index)
        if claim is None:
            log.warning(
                "worker_index_in_use",
                worker_index=settings.worker_index,
                message="another live worker on this host holds this index: the two share a "
                "transactional id and the later one fences the earlier",
            )
        else:
            hold(claim)
        return settings
    claim = hold(claim_lowest(directory, settings.group))
    settings = settings.model_copy(update={"worker_index": claim.index})
    log.info(
        "worker_index_claimed",
        worker_index=claim.index,
        lock_file=str(claim.path),
        transactional_id=settings.transactional_id_or_default(),
    )
    return settings


def _announce_trust(log: Any, trust: Trust, settings: WorkerSettings) -> None:
    """What this worker accepts, once at start; an opt-out is a warning nobody can miss."""
    from forestream.registry.signing import key_id

    if trust.allow_unsigned:
        log.warning(
            "UNSIGNED_MODELS_ALLOWED",
            message="--allow-unsigned: this worker serves models nobody signed; anyone who can "
            "write the store can run code here",
            verify_key=str(settings.verify_key_file) if settings.verify_key_file else None,
        )
    if trust.allow_version_mismatch:
        log.warning(
            "SKLEARN_VERSION_MISMATCH_ALLOWED",
            message="--allow-version-mismatch: models pickled by another scikit-learn "
            "major.minor are loaded",
        )
    if trust.verify_key is not None:
        log.info(
            "model_signatures_required",
            verify_key=str(settings.verify_key_file),
            key_id=key_id(trust.verify_key),
        )
