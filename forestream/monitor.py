"""``forestream monitor``: a live terminal view of the workers and of the fleet.

Each worker publishes a cumulative :class:`forestream.wire.messages.DriftReport` to the monitoring
topic at a fixed interval (key = worker id), so the newest report per worker is the state of
the first table. The second, the fleet's (:mod:`forestream.fleet.board`), sums what the
evaluators and workers published over the last ``monitor_horizon_s`` (counts, window counts)
and follows the models topic (served version, shadow candidate, decisions by rule). It only
reads (no consumer group, no commits), so any number of monitors can watch a deployment.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import Field

from forestream.edge.interface import TopicPartition
from forestream.runtime.cli_options import (
    BootstrapOpt,
    ModelNameOpt,
    ModelsTopicOpt,
    MonitoringTopicOpt,
    StoreOpt,
)
from forestream.runtime.settings import CommonSettings

if TYPE_CHECKING:
    from rich.console import Console, Group, JustifyMethod
    from rich.table import Table

    from forestream.edge.factory import Target
    from forestream.edge.interface import InputRecord, PartitionReader
    from forestream.fleet.board import FleetBoard
    from forestream.wire.messages import DriftReport

TOP_DRIFTING = 3


class MonitorSettings(CommonSettings):
    """What ``forestream monitor`` needs beyond broker address and topic names."""

    monitor_refresh_s: float = Field(default=2.0, gt=0)
    """How often the live table is redrawn."""
    monitor_backlog: int = Field(default=1_000, ge=1)
    """Start this many reports before the end of each partition: enough for every worker."""
    monitor_stale_s: float = Field(default=60.0, gt=0)
    """A worker whose newest report is older than this is shown as stale."""
    monitor_horizon_s: float = Field(default=3600.0, gt=0)
    """The fleet view sums the counts published this far back (the evaluators' deltas and the
    workers' window counts): accuracy and drift of the fleet over the last hour by default."""


def register(app: typer.Typer) -> None:
    """Add ``monitor`` to ``app``."""
    app.command("monitor")(monitor)


class ReportBoard:
    """The newest report per worker; malformed reports are counted, not fatal. The
    evaluators' count records share the topic and are passed over."""

    def __init__(self, fleet: FleetBoard | None = None) -> None:
        self.latest: dict[str, DriftReport] = {}
        self.malformed = 0
        self.fleet = fleet
        """Fed every monitoring value and models record too, when given."""

    def add(self, value: bytes | None) -> None:
        from pydantic import ValidationError

        from forestream.wire.messages import DriftReport

        if self.fleet is not None:
            self.fleet.add_monitoring(value)
        if value and (b'"kind":"evaluation_counts"' in value or b'"kind":"shadow_counts"' in value):
            return  # an evaluator's counts (forestream evaluate), not a worker's report
        try:
            report = DriftReport.model_validate_json(value or b"")
        except ValidationError:
            self.malformed += 1
            return
        held = self.latest.get(report.worker_id)
        if held is None or report.at >= held.at:
            self.latest[report.worker_id] = report

    def add_polled(self, records: Iterable[InputRecord], models_topic: str | None = None) -> None:
        """Every record of one poll; those of ``models_topic`` go to the fleet view only."""
        for record in records:
            if record.topic == models_topic:
                if self.fleet is not None:
                    self.fleet.add_models(record.key, record.value)
            else:
                self.add(record.value)


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _dlq_cell(report: DriftReport) -> str:
    dead = sum(report.dead_lettered.values())
    if not dead:
        return "0"
    share = dead / max(report.records_in, 1)
    reasons = sorted(report.dead_lettered.items(), key=lambda kv: -kv[1])
    return f"{dead} ({share:.1%}): " + ", ".join(f"{code} {n}" for code, n in reasons)


def _drift_cell(report: DriftReport) -> str:
    top = sorted(report.features.items(), key=lambda kv: -kv[1].psi)[:TOP_DRIFTING]
    if not top:
        return "-"
    return ", ".join(
        f"[bold red]{name} {d.psi:.2f}![/]" if d.drifting else f"{name} {d.psi:.2f}"
        for name, d in top
    )


def _online_cell(report: DriftReport) -> str:
    parts = [
        f"{version}: acc {acc.accuracy:.3f} F1 {acc.macro_f1:.3f} (n={acc.labelled})"
        for version, acc in report.online.items()
        if acc.accuracy is not None and acc.macro_f1 is not None
    ]
    return "\n".join(parts) or "-"


def render(board: ReportBoard, topic: str, now_ms: int, stale_s: float) -> Table:
    """One table: a row per worker, then the totals. Pure: easy to test and to redraw."""
    from rich.table import Table

    table = Table(title=f"forestream monitor — {topic}", title_justify="left", expand=False)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("worker", "left"),
        ("model", "left"),
        ("rec/s", "right"),
        ("in", "right"),
        ("predicted", "right"),
        ("DLQ", "left"),
        ("p50 ms", "right"),
        ("p99 ms", "right"),
        ("top PSI (window)", "left"),
        ("online accuracy", "left"),
        ("age", "right"),
    )
    for header, justify in columns:
        table.add_column(header, justify=justify)
    reports = sorted(board.latest.values(), key=lambda r: r.worker_id)
    fresh = []
    for r in reports:
        age_s = max(now_ms - r.at, 0) / 1000
        stale = age_s > stale_s
        if not stale:
            fresh.append(r)
        table.add_row(
            r.worker_id,
            f"{r.model_name}@{r.model_version or '-'}",
            f"{r.throughput:,.0f}",
            f"{r.records_in:,}",
            f"{r.predicted:,}",
            _dlq_cell(r),
            _fmt_ms(r.latency_p50_ms),
            _fmt_ms(r.latency_p99_ms),
            _drift_cell(r),
            _online_cell(r),
            f"{age_s:.0f}s" + (" stale" if stale else ""),
            style="dim" if stale else None,
        )
    if reports:
        dead = sum(sum(r.dead_lettered.values()) for r in reports)
        records = sum(r.records_in for r in reports)
        table.add_section()
        table.add_row(
            f"{len(reports)} workers",
            "",
            f"{sum(r.throughput for r in fresh):,.0f}",
            f"{records:,}",
            f"{sum(r.predicted for r in reports):,}",
            f"{dead} ({dead / max(records, 1):.1%})",
            style="bold",
        )
    table.caption = (
        "no reports yet" if not reports else "! = PSI at or above the drift threshold"
    ) + (f"; {board.malformed} malformed reports skipped" if board.malformed else "")
    return table


def _open(
    kafka: Target, s: MonitorSettings, with_models: bool
) -> tuple[PartitionReader, dict[TopicPartition, int]]:
    """A group-less reader on the monitoring topic, from ``monitor_backlog`` reports before
    each partition's end or ``monitor_horizon_s`` back, whichever is earlier (every worker's
    newest report, and the fleet's counts), and on the whole models topic (compacted)."""
    from forestream.edge.factory import partition_reader

    consumer = partition_reader(kafka, client_id="forestream-monitor")
    tps = [
        TopicPartition(s.monitoring_topic, p)
        for p in sorted(consumer.partitions(s.monitoring_topic))
    ]
    models = (
        [TopicPartition(s.models_topic, p) for p in sorted(consumer.partitions(s.models_topic))]
        if with_models
        else []
    )
    consumer.assign(tps + models)
    begin = consumer.beginning_offsets(tps + models)
    end = consumer.end_offsets(tps + models)
    since = consumer.offsets_for_times(tps, _now_ms() - int(s.monitor_horizon_s * 1000))
    for tp in tps:
        horizon = since.get(tp)
        start = max(begin[tp], end[tp] - s.monitor_backlog)
        consumer.seek(tp, min(start, end[tp] if horizon is None else max(horizon, begin[tp])))
    for tp in models:
        consumer.seek(tp, begin[tp])
    return consumer, end


def _topic_exists(kafka: Target, topic: str) -> bool:
    """Asked without touching the topic: a metadata request for it could auto-create it."""
    from forestream.edge.factory import partition_reader

    probe = partition_reader(kafka, client_id="forestream-monitor-probe")
    try:
        return topic in probe.topics()
    finally:
        probe.close()


def monitor(
    bootstrap_servers: BootstrapOpt = None,
    monitoring_topic: MonitoringTopicOpt = None,
    models_topic: ModelsTopicOpt = None,
    name: ModelNameOpt = None,
    store: StoreOpt = None,
    once: Annotated[
        bool,
        typer.Option("--once", help="print one snapshot of what is on the topic now, then exit"),
    ] = False,
    refresh: Annotated[
        float | None,
        typer.Option(
            "--refresh",
            help="seconds between redraws [env FORESTREAM_MONITOR_REFRESH_S; default 2]",
            show_default=False,
        ),
    ] = None,
    horizon: Annotated[
        float | None,
        typer.Option(
            "--horizon-s",
            help="how far back the fleet view sums counts and drift "
            "[env FORESTREAM_MONITOR_HORIZON_S; default 3600]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Live tables: per worker (throughput, DLQ, latency, drift) and for the fleet (per version:
    accuracy, macro F1, labels, shadow agreement, drift flags, decisions by rule)."""
    from rich.console import Console

    from forestream.errors import UserError
    from forestream.runtime.settings import load_settings

    s = load_settings(
        MonitorSettings,
        bootstrap_servers=bootstrap_servers,
        monitoring_topic=monitoring_topic,
        models_topic=models_topic,
        model_name=name,
        model_store=store,
        monitor_refresh_s=refresh,
        monitor_horizon_s=horizon,
    )
    from forestream.edge.factory import require_reachable

    require_reachable(s.kafka())
    console = Console() if Console().is_terminal else Console(width=200)
    board = ReportBoard(_fleet_board(s))
    if once:
        if not _topic_exists(s.kafka(), s.monitoring_topic):
            raise UserError(
                f"monitoring topic {s.monitoring_topic!r} does not exist on "
                f"{s.bootstrap_servers}: no worker has published a report there yet"
            )
        _read_to_end(board, s)
        console.print(_view(board, s))
        return
    from forestream.runtime.shutdown import install

    def interrupt(_signum: int) -> None:
        raise KeyboardInterrupt  # SIGTERM ends the view as Ctrl-C does

    # Ctrl-C is how a live view ends; the watchdog bounds a close on a broker that never answers
    # (nothing is abandoned: the monitor only reads, with no group and no commits)
    with contextlib.suppress(KeyboardInterrupt), install(interrupt):
        _live(board, s, console)


def _fleet_board(s: MonitorSettings) -> FleetBoard:
    """Drift needs each version's reference bins: read from the store, when it can be."""
    from forestream.errors import ForestreamError
    from forestream.fleet.board import FleetBoard
    from forestream.fleet.drift import store_metadata
    from forestream.registry.open import open_store

    try:
        metadata_for = store_metadata(open_store(s.model_store), s.model_name)
    except ForestreamError:
        metadata_for = lambda _version: None  # noqa: E731 - no store here: counts only
    return FleetBoard(s.model_name, metadata_for)


def _view(board: ReportBoard, s: MonitorSettings, waiting: str | None = None) -> Group:
    from rich.console import Group

    from forestream.fleet.board import render_fleet

    workers = render(board, s.monitoring_topic, _now_ms(), s.monitor_stale_s)
    if waiting is not None:
        workers.caption = waiting
    tables = [workers]
    if board.fleet is not None:
        tables.append(render_fleet(board.fleet, s.model_name))
    return Group(*tables)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _read_to_end(board: ReportBoard, s: MonitorSettings, timeout_s: float = 30.0) -> None:
    consumer, end = _open(s.kafka(), s, with_models=True)
    try:
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < offset for tp, offset in end.items()):
            if time.monotonic() > deadline:
                break  # show what arrived rather than nothing
            board.add_polled(consumer.poll_batch(2000, 0.2), s.models_topic)
    finally:
        consumer.close()


def _live(board: ReportBoard, s: MonitorSettings, console: Console) -> None:
    from rich.live import Live

    consumer: PartitionReader | None = None
    redraw_at = 0.0
    with Live(_view(board, s), console=console, auto_refresh=False) as live:
        try:
            while True:
                if consumer is None:
                    if _topic_exists(s.kafka(), s.monitoring_topic):
                        consumer, _ = _open(s.kafka(), s, with_models=True)
                    else:
                        time.sleep(s.monitor_refresh_s)
                else:
                    board.add_polled(consumer.poll_batch(2000, 0.2), s.models_topic)
                if time.monotonic() >= redraw_at:
                    waiting = None if consumer else f"waiting for topic {s.monitoring_topic!r}"
                    view = _view(board, s, waiting)
                    live.update(view, refresh=True)
                    redraw_at = time.monotonic() + s.monitor_refresh_s
        finally:
            if consumer is not None:
                consumer.close()
