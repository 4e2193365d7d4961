"""The demo's summary: the numbers it prints (:func:`summarize`, pure over what it observed)
and the table they are printed in."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forestream.demo import Demo


def summarize(
    demo: Demo, elapsed_s: float, exit_codes: list[int | None], evaluator_code: int | None
) -> dict[str, Any]:
    """The numbers the summary table shows; pure over what the demo observed."""
    import numpy as np

    from forestream.fleet.counts import accuracy_of, labelled_of, macro_f1_of

    seen = demo.observed
    latencies = np.asarray(seen.latencies_ms or [0])
    fleet = seen.fleet
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
            version: {
                "labelled": labelled_of(matrix),
                "accuracy": _rounded(accuracy_of(matrix)),
                "macro_f1": _rounded(macro_f1_of(matrix)),
            }
            for version in sorted(fleet.windows)
            if labelled_of(matrix := fleet.version(version))
        },
        "shadow": {
            f"{candidate} vs {served}": {
                "labelled": totals.labelled,
                "agreement": _rounded(totals.agreement),
                "candidate_accuracy": _rounded(accuracy_of(totals.candidate)),
                "served_accuracy": _rounded(accuracy_of(totals.served)),
            }
            for (candidate, served), totals in sorted(fleet.shadow.items())
        },
        "decisions": [_decision(event) for event in seen.decisions],
        "labels_sent": demo.labels_sent,
        "worker_exit_codes": exit_codes,
        "evaluator_exit_code": evaluator_code,
        "elapsed_s": round(elapsed_s, 1),
        "logs": str(demo.dir),
        "reader_error": demo.reader_error,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _decision(event: dict[str, Any]) -> dict[str, Any]:
    """What a rule decided, from its models-topic event: the change and its evidence."""
    decision = event["decision"]
    return {
        "kind": event["kind"],
        "version": event["version"],
        "by": decision.get("by"),
        "rule": decision.get("rule"),
        "evidence": decision.get("evidence", {}),
    }


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="forestream demo: summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    dlq = ", ".join(f"{k} {v}" for k, v in sorted(summary["dead_letters"].items())) or "none"
    online = ", ".join(
        f"{v} {a['accuracy']:.3f}, macro F1 {a['macro_f1']:.3f} ({a['labelled']:,} labels)"
        for v, a in summary["online_accuracy"].items()
    )
    shadow = "; ".join(
        f"{pair}: agreement {s['agreement']}, accuracy {s['candidate_accuracy']} vs "
        f"{s['served_accuracy']} on the same {s['labelled']:,} records"
        for pair, s in summary["shadow"].items()
    )
    decisions = "; ".join(
        f"{d['version']} {d['kind']} by rule ({_evidence(d['evidence'])})"
        for d in summary["decisions"]
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
        ("shadow", shadow or "no labelled shadow records"),
        ("decision", decisions or "none: the rule did not hold"),
        ("workers exited", ", ".join(str(c) for c in summary["worker_exit_codes"])),
        ("evaluator exited", str(summary["evaluator_exit_code"])),
        ("elapsed", f"{summary['elapsed_s']} s"),
        ("logs", summary["logs"]),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def _evidence(evidence: dict[str, Any]) -> str:
    return ", ".join(
        f"{name} {value:.3f}" if isinstance(value, float) else f"{name} {value}"
        for name, value in evidence.items()
    )
