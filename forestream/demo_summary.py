"""The demo's summary: the numbers it prints (:func:`summarize`, pure over what it observed)
and the table they are printed in."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forestream.demo import Demo


def summarize(demo: Demo, elapsed_s: float, exit_codes: list[int | None]) -> dict[str, Any]:
    """The numbers the summary table shows; pure over what the demo observed."""
    import numpy as np

    seen = demo.observed
    latencies = np.asarray(seen.latencies_ms or [0])
    online: dict[str, dict[str, float]] = defaultdict(lambda: {"labelled": 0, "correct": 0.0})
    for report in seen.reports.values():
        for version, acc in (report.get("online") or {}).items():
            if acc.get("accuracy") is not None and acc.get("labelled"):
                online[version]["labelled"] += acc["labelled"]
                online[version]["correct"] += acc["accuracy"] * acc["labelled"]
    span_s = ((seen.last_ms or 0) - (seen.first_ms or 0)) / 1000
    return {
        "records_in": demo.sent,
        "malformed_sent": dict(demo.sent_bad),
        "predictions": sum(seen.predictions_by_version.values()),
        "distinct_predicted_keys": len(seen.prediction_keys),
        "dead_letters": dict(seen.dead_letters_by_reason),
        "unaccounted": max(0, demo.sent - demo.accounted()),
        "throughput_rps": round(len(seen.prediction_keys) / span_s, 1) if span_s > 0 else 0.0,
        "latency_p50_ms": float(np.percentile(latencies, 50)),
        "latency_p99_ms": float(np.percentile(latencies, 99)),
        "versions_served": dict(seen.predictions_by_version),
        "version_order": seen.version_order,
        "drift_flags": sorted(seen.drift_flags),
        "online_accuracy": {
            v: {"labelled": int(a["labelled"]), "accuracy": round(a["correct"] / a["labelled"], 3)}
            for v, a in sorted(online.items())
            if a["labelled"]
        },
        "labels_sent": demo.labels_sent,
        "worker_exit_codes": exit_codes,
        "elapsed_s": round(elapsed_s, 1),
        "logs": str(demo.dir),
        "reader_error": demo.reader_error,
    }


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="forestream demo: summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    dlq = ", ".join(f"{k} {v}" for k, v in sorted(summary["dead_letters"].items())) or "none"
    online = ", ".join(
        f"{v} {a['accuracy']:.3f} ({a['labelled']} labels)"
        for v, a in summary["online_accuracy"].items()
    )
    rows = [
        ("records in", f"{summary['records_in']:,}"),
        (
            "predictions",
            f"{summary['predictions']:,} ({summary['distinct_predicted_keys']:,} keys)",
        ),
        ("dead letters", dlq),
        ("unaccounted", str(summary["unaccounted"])),
        ("throughput", f"{summary['throughput_rps']:,} rec/s (the offered rate)"),
        (
            "latency p50 / p99",
            f"{summary['latency_p50_ms']:.0f} / {summary['latency_p99_ms']:.0f} ms",
        ),
        ("versions served", ", ".join(f"{v} {n:,}" for v, n in summary["versions_served"].items())),
        ("drift flags", ", ".join(summary["drift_flags"]) or "none"),
        ("online accuracy", online or "no labels joined"),
        ("workers exited", ", ".join(str(c) for c in summary["worker_exit_codes"])),
        ("elapsed", f"{summary['elapsed_s']} s"),
        ("logs", summary["logs"]),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
