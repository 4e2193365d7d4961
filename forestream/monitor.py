"""``forestream monitor``: a live terminal view of the workers' DriftReports.

Each worker publishes a cumulative :class:`forestream.wire.messages.DriftReport` to the monitoring
topic
at a fixed interval (key = worker id), so the newest report per worker is the whole state:
this command keeps exactly that and redraws one table. It only reads (no consumer group, no
commits), so any number of monitors can watch a running deployment.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import Field

from forestream.edge.interface import TopicPartition
from forestream.runtime.cli_options import BootstrapOpt, MonitoringTopicOpt
from forestream.runtime.settings import CommonSettings

if TYPE_CHECKING:
    from rich.console import Console, JustifyMethod
    from rich.table import Table

    from forestream.edge.factory import Target
    from forestream.edge.interface import InputRecord, PartitionReader
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


def register(app: typer.Typer) -> None:
    """Add ``monitor`` to ``app``."""
    app.command("monitor")(monitor)


class ReportBoard:
    """The newest report per worker; malformed reports are counted, not fatal. The
    evaluators' count records share the topic and are passed over."""

    def __init__(self) -> None:
        self.latest: dict[str, DriftReport] = {}
        self.malformed = 0

    def add(self, value: bytes | None) -> None:
        from pydantic import ValidationError

        from forestream.wire.messages import DriftReport

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

    def add_polled(self, records: Iterable[InputRecord]) -> None:
        """Every record of one poll."""
        for record in records:
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
    kafka: Target, topic: str, backlog: int
) -> tuple[PartitionReader, dict[TopicPartition, int]]:
    """A group-less reader positioned ``backlog`` reports before each partition's end."""
    from forestream.edge.factory import partition_reader

    consumer = partition_reader(kafka, client_id="forestream-monitor")
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions(topic))]
    consumer.assign(tps)
    begin = consumer.beginning_offsets(tps)
    end = consumer.end_offsets(tps)
    for tp in tps:
        consumer.seek(tp, max(begin[tp], end[tp] - backlog))
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
) -> None:
    """Live table of throughput, DLQ, latency, drift and online accuracy per worker."""
    from rich.console import Console

    from forestream.errors import UserError
    from forestream.runtime.settings import load_settings

    s = load_settings(
        MonitorSettings,
        bootstrap_servers=bootstrap_servers,
        monitoring_topic=monitoring_topic,
        monitor_refresh_s=refresh,
    )
    from forestream.edge.factory import require_reachable

    require_reachable(s.kafka())
    console = Console() if Console().is_terminal else Console(width=200)
    board = ReportBoard()
    if once:
        if not _topic_exists(s.kafka(), s.monitoring_topic):
            raise UserError(
                f"monitoring topic {s.monitoring_topic!r} does not exist on "
                f"{s.bootstrap_servers}: no worker has published a report there yet"
            )
        _read_to_end(board, s)
        console.print(render(board, s.monitoring_topic, _now_ms(), s.monitor_stale_s))
        return
    from forestream.runtime.shutdown import install

    def interrupt(_signum: int) -> None:
        raise KeyboardInterrupt  # SIGTERM ends the view as Ctrl-C does

    # Ctrl-C is how a live view ends; the watchdog bounds a close on a broker that never answers
    # (nothing is abandoned: the monitor only reads, with no group and no commits)
    with contextlib.suppress(KeyboardInterrupt), install(interrupt):
        _live(board, s, console)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _read_to_end(board: ReportBoard, s: MonitorSettings, timeout_s: float = 30.0) -> None:
    consumer, end = _open(s.kafka(), s.monitoring_topic, s.monitor_backlog)
    try:
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < offset for tp, offset in end.items()):
            if time.monotonic() > deadline:
                break  # show what arrived rather than nothing
            board.add_polled(consumer.poll_batch(2000, 0.2))
    finally:
        consumer.close()


def _live(board: ReportBoard, s: MonitorSettings, console: Console) -> None:
    from rich.live import Live

    consumer: PartitionReader | None = None
    redraw_at = 0.0
    with Live(
        render(board, s.monitoring_topic, _now_ms(), s.monitor_stale_s),
        console=console,
        auto_refresh=False,
    ) as live:
        try:
            while True:
                if consumer is None:
                    if _topic_exists(s.kafka(), s.monitoring_topic):
                        consumer, _ = _open(s.kafka(), s.monitoring_topic, s.monitor_backlog)
                    else:
                        time.sleep(s.monitor_refresh_s)
                else:
                    board.add_polled(consumer.poll_batch(2000, 0.2))
                if time.monotonic() >= redraw_at:
                    table = render(board, s.monitoring_topic, _now_ms(), s.monitor_stale_s)
                    if consumer is None:
                        table.caption = f"waiting for topic {s.monitoring_topic!r}"
                    live.update(table, refresh=True)
                    redraw_at = time.monotonic() + s.monitor_refresh_s
        finally:
            if consumer is not None:
                consumer.close()
