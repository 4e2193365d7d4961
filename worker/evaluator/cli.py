"""``forestream evaluate``: registered on the ``forestream`` app by ``forestream.cli``."""

from __future__ import annotations

from typing import Annotated

import typer

from forestream.runtime.cli_options import (
    AllowUnsignedOpt,
    BootstrapOpt,
    LabelsTopicOpt,
    LogFormatOpt,
    ModelNameOpt,
    ModelsTopicOpt,
    MonitoringTopicOpt,
    OutputTopicOpt,
    ShadowTopicOpt,
    StoreOpt,
    VerifyKeyOpt,
)


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` to ``app``."""
    app.command("evaluate")(evaluate)


def evaluate(
    bootstrap_servers: BootstrapOpt = None,
    output_topic: OutputTopicOpt = None,
    labels_topic: LabelsTopicOpt = None,
    monitoring_topic: MonitoringTopicOpt = None,
    shadow_topic: ShadowTopicOpt = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            help="the evaluators' consumer group [env FORESTREAM_EVALUATOR_GROUP; default "
            "forestream-evaluator]",
            show_default=False,
        ),
    ] = None,
    max_pending: Annotated[
        int | None,
        typer.Option(
            "--max-pending",
            help="per partition, predictions waiting for a label (and labels for a prediction) "
            "beyond this many are evicted, oldest first [env FORESTREAM_EVALUATOR_MAX_PENDING; "
            "default 100000]",
            show_default=False,
        ),
    ] = None,
    max_wait_s: Annotated[
        float | None,
        typer.Option(
            "--max-wait-s",
            help="a record waits at most this long for its other half, in record time "
            "[env FORESTREAM_EVALUATOR_MAX_WAIT_S; default 3600]",
            show_default=False,
        ),
    ] = None,
    window_s: Annotated[
        float | None,
        typer.Option(
            "--window-s",
            help="counts are kept per window of this length, by the label's timestamp "
            "[env FORESTREAM_EVALUATION_WINDOW_S; default 60]",
            show_default=False,
        ),
    ] = None,
    publish_interval_s: Annotated[
        float | None,
        typer.Option(
            "--publish-interval-s",
            help="how often counts are published, then offsets committed "
            "[env FORESTREAM_EVALUATOR_PUBLISH_INTERVAL_S; default 5]",
            show_default=False,
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="serve Prometheus /metrics (reads, joins, evictions and bad records by "
            "reason) on this port [env FORESTREAM_EVALUATOR_METRICS_PORT; default: none]",
            show_default=False,
        ),
    ] = None,
    guarantee: Annotated[
        str | None,
        typer.Option(
            "--guarantee",
            help="at-least-once (offsets committed after the counts are acknowledged) or "
            "exactly-once (counts and offsets in one transaction; read the monitoring topic "
            "with isolation.level=read_committed) [env FORESTREAM_GUARANTEE; default "
            "at-least-once]",
            show_default=False,
        ),
    ] = None,
    promote_policy: Annotated[
        str | None,
        typer.Option(
            "--promote-policy",
            help="promote a shadow candidate when this rule holds, e.g. 'labelled>=2000 and "
            "accuracy>=served and agreement>=0.9', or a .toml policy file that adds a rollback "
            "guard (docs/evaluator.md) [env FORESTREAM_EVALUATOR_PROMOTE_POLICY; default: "
            "never promotes]",
            show_default=False,
        ),
    ] = None,
    name: ModelNameOpt = None,
    store: StoreOpt = None,
    models_topic: ModelsTopicOpt = None,
    verify_key: VerifyKeyOpt = None,
    allow_unsigned: AllowUnsignedOpt = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Join labels to predictions by key, fleet-wide: publish mergeable confusion counts per
    model version and window to the monitoring topic (at-least-once; see docs/evaluator.md).
    When the shadow topic exists, labels are joined with shadow records too: candidate and
    served version compared on the same records."""
    import structlog

    from forestream.edge.factory import require_reachable, topic_partitions
    from forestream.runtime.logs import checked_log_format, configure_logging
    from forestream.runtime.settings import load_settings
    from forestream.worker.evaluator.service import (
        Evaluator,
        check_co_partitioned,
        shadow_topic_to_read,
    )
    from forestream.worker.evaluator.settings import EvaluatorSettings

    settings = load_settings(
        EvaluatorSettings,
        bootstrap_servers=bootstrap_servers,
        output_topic=output_topic,
        labels_topic=labels_topic,
        monitoring_topic=monitoring_topic,
        shadow_topic=shadow_topic,
        evaluator_group=group,
        evaluator_max_pending=max_pending,
        evaluator_max_wait_s=max_wait_s,
        evaluation_window_s=window_s,
        evaluator_publish_interval_s=publish_interval_s,
        evaluator_metrics_port=metrics_port,
        guarantee=guarantee,
        evaluator_promote_policy=promote_policy,
        model_name=name,
        model_store=store,
        models_topic=models_topic,
        verify_key_file=verify_key,
        allow_unsigned=allow_unsigned,
        log_format=log_format,
    )
    configure_logging(checked_log_format(settings.log_format))
    log = structlog.get_logger("forestream.evaluator")
    policy = None
    if settings.evaluator_promote_policy is not None:
        from forestream.fleet.policy import load_policy

        policy = load_policy(settings.evaluator_promote_policy)  # a mistake: one line, exit 2
        settings.require_verification()
    settings.check_distinct_topics()
    kafka = settings.kafka()
    require_reachable(kafka)
    counts = topic_partitions(
        kafka, [settings.output_topic, settings.labels_topic, settings.shadow_topic_or_default()]
    )
    check_co_partitioned(
        counts, settings.output_topic, settings.labels_topic, settings.bootstrap_servers
    )
    shadow = shadow_topic_to_read(counts, settings)
    if shadow is None:
        log.info(
            "evaluator_without_shadow",
            shadow_topic=settings.shadow_topic_or_default(),
            reason="the topic does not exist: no shadow comparison this run",
        )
    evaluator = Evaluator(settings, shadow_topic=shadow, policy=policy)
    if settings.evaluator_metrics_port is not None:
        from forestream.worker.evaluator.metrics import serve_metrics

        serve_metrics(evaluator, settings.evaluator_metrics_port, settings.metrics_host)
    evaluator.run()
