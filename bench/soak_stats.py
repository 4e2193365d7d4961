"""The soak's arithmetic, apart from any broker: /proc parsers, the end-of-run accounting, the
growth of a sampled series after warm-up, and the chart. :mod:`bench.soak` runs the soak.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# -- /proc -------------------------------------------------------------------------------------


def parse_status(text: str) -> dict[str, int]:
    """``VmRSS`` (kB) and ``Threads`` of a ``/proc/PID/status`` text; absent fields are left
    out (a zombie has no ``VmRSS``)."""
    fields = {"VmRSS": "rss_kb", "Threads": "threads"}
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in fields and value.split():
            found[fields[name]] = int(value.split()[0])
    return found


def process_sample(pid: int, proc: Path = Path("/proc")) -> dict[str, float] | None:
    """RSS (MB), open file descriptors and threads of ``pid``; None once it is gone."""
    try:
        status = parse_status((proc / str(pid) / "status").read_text())
        fds = len(os.listdir(proc / str(pid) / "fd"))
    except OSError:
        return None
    if "rss_kb" not in status or "threads" not in status:
        return None
    return {
        "rss_mb": status["rss_kb"] / 1024,
        "fds": float(fds),
        "threads": float(status["threads"]),
    }


def lag_by_partition(committed: dict[int, int | None], ends: dict[int, int]) -> dict[int, int]:
    """End offset minus the group's committed offset per partition (all of it if nothing is
    committed yet); never negative."""
    return {p: max(0, end - (committed.get(p) or 0)) for p, end in ends.items()}


# -- accounting --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accounting:
    inputs: int
    """Distinct input keys on the input topic."""
    input_duplicates: int
    """Input records beyond one per key (the feeder's own retries, if any)."""
    malformed_inputs: int
    predictions: int
    dead_letters: int
    answered_once: int
    """Input keys with exactly one prediction or dead letter."""
    unaccounted: int
    """Input keys with neither: the failure the soak exists to catch."""
    duplicated_keys: int
    duplicate_records: int
    """Outputs beyond the first per key (at-least-once redelivery)."""
    both: int
    """Keys with a prediction and a dead letter."""
    unknown: int
    """Output keys that are not on the input topic."""
    malformed_predicted: int
    valid_dead_lettered: int

    @property
    def ok(self) -> bool:
        return self.unaccounted == 0 and self.unknown == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def account(
    inputs: np.ndarray, predictions: np.ndarray, dead: np.ndarray, malformed: np.ndarray
) -> Accounting:
    """Every input key must have one prediction or one dead letter. Keys are non-negative
    integers; ``malformed`` is the sorted array of keys fed as malformed records."""
    size = int(max([a.max() + 1 for a in (inputs, predictions, dead) if a.size] or [0]))
    fed = np.bincount(inputs, minlength=size)
    pred = np.bincount(predictions, minlength=size)
    dlq = np.bincount(dead, minlength=size)
    bad = np.zeros(size, dtype=bool)
    bad[malformed[malformed < size]] = True
    out = pred + dlq
    present = fed > 0
    extra = out[present & (out > 1)] - 1
    return Accounting(
        inputs=int(present.sum()),
        input_duplicates=int((fed[present] - 1).sum()),
        malformed_inputs=int((present & bad).sum()),
        predictions=int(predictions.size),
        dead_letters=int(dead.size),
        answered_once=int((present & (out == 1)).sum()),
        unaccounted=int((present & (out == 0)).sum()),
        duplicated_keys=int(extra.size),
        duplicate_records=int(extra.sum()),
        both=int(((pred > 0) & (dlq > 0)).sum()),
        unknown=int((~present & (out > 0)).sum()),
        malformed_predicted=int((bad & (pred > 0)).sum()),
        valid_dead_lettered=int((present & ~bad & (dlq > 0)).sum()),
    )


def duplicated_keys(inputs: np.ndarray, outputs: Sequence[np.ndarray]) -> np.ndarray:
    """The input keys answered more than once."""
    size = int(max([a.max() + 1 for a in (inputs, *outputs) if a.size] or [0]))
    out = sum((np.bincount(a, minlength=size) for a in outputs), np.zeros(size, dtype=np.int64))
    return np.flatnonzero((np.bincount(inputs, minlength=size) > 0) & (out > 1))


def near(times: np.ndarray, events: Sequence[float], within_s: float) -> int:
    """How many of ``times`` fall within ``within_s`` seconds after one of ``events``."""
    hit = np.zeros(times.size, dtype=bool)
    for at in events:
        hit |= (times >= at - 5) & (times <= at + within_s)
    return int(hit.sum())


# -- growth ------------------------------------------------------------------------------------


def window_median(points: Sequence[tuple[float, float]], start: float, end: float) -> float | None:
    values = [v for t, v in points if start <= t < end]
    return float(np.median(values)) if values else None


def growth(
    points: Sequence[tuple[float, float]], warmup_s: float, window_s: float = 60.0
) -> dict[str, float | None]:
    """A series after warm-up: the median of its first ``window_s`` seconds (from ``warmup_s``)
    against the median of its last ``window_s``, the change in %, min, max, and the least-squares
    slope per hour over everything after warm-up. ``points`` are (seconds from start, value)."""
    after = [(t, v) for t, v in points if t >= warmup_s]
    if not after:
        return {"start": None, "end": None, "growth_pct": None, "min": None, "max": None,
                "slope_per_h": None}  # fmt: skip
    last = after[-1][0]
    start = window_median(after, warmup_s, warmup_s + window_s)
    end = window_median(after, last - window_s, last + 1)
    times = np.array([t for t, _ in after])
    values = np.array([v for _, v in after])
    slope = float(np.polyfit(times, values, 1)[0]) * 3600 if len(after) > 2 else None
    return {
        "start": start,
        "end": end,
        "growth_pct": (end - start) / start * 100 if start and end is not None else None,
        "min": float(values.min()),
        "max": float(values.max()),
        "slope_per_h": slope,
    }


def warmup_seconds(minutes: float, warmup_minutes: float) -> float:
    """Warm-up as asked, but never more than a third of the run (a short check run still has
    a window to compare)."""
    return 60 * min(warmup_minutes, minutes / 3)


# -- summary ----------------------------------------------------------------------------------

DUPLICATE_WINDOW_S = 60.0
"""Duplicates whose input was written up to this long after a broker kill count as near it."""


def summarise(result: dict[str, Any]) -> list[str]:
    """Adds the per-worker growth figures to ``result``; returns the failed checks."""
    cfg = result["config"]
    warmup = warmup_seconds(cfg["minutes"], cfg["warmup_minutes"])
    result["warmup_s"] = warmup
    samples = [s for s in result["samples"] if s["t"] >= 0]
    result["workers"] = []
    for w in range(cfg["workers"]):
        series = {
            key: [
                (s["t"], s["workers"][w][key])
                for s in samples
                if s["workers"][w] and key in s["workers"][w]
            ]
            for key in ("rss_mb", "fds", "threads", "lag")
        }
        result["workers"].append({key: growth(pts, warmup) for key, pts in series.items()})
    lags = [s["lag"] for s in samples if s["lag"] is not None and s["t"] >= warmup]
    result["lag"] = {
        "max": max(lags, default=None),
        "p50": float(np.median(lags)) if lags else None,
        "gaps": sum(s["lag"] is None for s in samples),
    }
    failed = []
    acc = result["accounting"]
    if not acc["ok"]:
        failed.append(f"{acc['unaccounted']} inputs unaccounted, {acc['unknown']} unknown outputs")
    if result["drain_s"] is None:
        failed.append(f"the group did not drain in {cfg['drain_timeout']:.0f} s")
    if result["worker_exits"]:
        failed.append(f"workers exited: {result['worker_exits']}")
    bad = [p for p in result["promotions"] if "error" in p or None in p.get("served_s", [None])]
    if bad:
        failed.append(f"{len(bad)} promotions failed or not served by every worker")
    return failed


def report(result: dict[str, Any], failed: list[str]) -> None:
    acc, cfg = result["accounting"], result["config"]

    def fig(v: float | None, f: str = ".1f") -> str:
        return "-" if v is None else format(v, f)

    print(
        f"\nsoak, {cfg['minutes']:g} min, {cfg['workers']} workers ({cfg['guarantee']}) on "
        f"{result['machine']}"
    )
    cap = result["capacity_rec_s"]
    print(
        f"  capacity {fig(cap, ',.0f')} rec/s; offered {cfg['rate']:,.0f} rec/s, achieved "
        f"{result['fed']['achieved_rec_s']:,.0f}; {result['fed']['records']:,} records fed"
    )
    served = [t for p in result["promotions"] for t in p.get("served_s", []) if t is not None]
    commands = [p["command_s"] for p in result["promotions"] if "command_s" in p]
    print(
        f"  promotions {len(result['promotions'])} (command median "
        f"{fig(float(np.median(commands)) if commands else None, '.2f')} s; new version in use "
        f"median {fig(float(np.median(served)) if served else None, '.2f')} s, max "
        f"{fig(max(served, default=None), '.2f')} s after the command started), broker kills "
        f"{len(result['broker_restarts'])} (down "
        f"{', '.join(str(r['down_s']) for r in result['broker_restarts']) or '-'} s); "
        f"drained in {result['drain_s']} s"
    )
    print(f"  after {result['warmup_s'] / 60:g} min warm-up:")
    for w, g in enumerate(result["workers"]):
        r, f, t = g["rss_mb"], g["fds"], g["threads"]
        print(
            f"    worker {w}: RSS {fig(r['start'])} -> {fig(r['end'])} MB "
            f"({fig(r['growth_pct'], '+.2f')} %, max {fig(r['max'])}), fds {fig(f['start'], '.0f')}"
            f" -> {fig(f['end'], '.0f')} (range {fig(f['min'], '.0f')}-{fig(f['max'], '.0f')}), "
            f"threads {fig(t['start'], '.0f')} -> {fig(t['end'], '.0f')} "
            f"(range {fig(t['min'], '.0f')}-{fig(t['max'], '.0f')})"
        )
    lag = result["lag"]
    print(
        f"  group lag: median {fig(lag['p50'], '.0f')}, max {fig(lag['max'], '.0f')} records "
        f"({lag['gaps']} samples while the broker was down)"
    )
    print(
        f"  accounting: {acc['inputs']:,} inputs ({acc['malformed_inputs']:,} malformed), "
        f"{acc['predictions']:,} predictions, {acc['dead_letters']:,} dead letters; "
        f"{acc['answered_once']:,} answered once, {acc['unaccounted']} unaccounted, "
        f"{acc['duplicated_keys']:,} keys duplicated ({acc['duplicate_records']:,} records, "
        f"{result['duplicates_near_restarts']:,} within {DUPLICATE_WINDOW_S:.0f} s of a kill), "
        f"{acc['unknown']} unknown, {acc['malformed_predicted']} malformed predicted, "
        f"{acc['valid_dead_lettered']} valid dead-lettered"
    )
    print("  verdict: " + ("PASS" if not failed else "FAIL: " + "; ".join(failed)))


# -- chart -------------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> None:
    """RSS, fds, threads per worker and the group's lag over time; promotions dotted, broker
    kills red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    fig, axes = plt.subplots(4, 1, figsize=(8, 7.5), sharex=True, dpi=90)
    panels = (("rss_mb", "RSS (MB)"), ("fds", "open fds"), ("threads", "threads"))
    for ax, (key, label) in zip(axes, panels, strict=False):
        for w in range(result["config"]["workers"]):
            pts = [(s["t"] / 60, s["workers"][w][key]) for s in samples if s["workers"][w]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, label=f"worker {w}")
        ax.set_ylabel(label)
    lag = [(s["t"] / 60, s["lag"]) for s in samples if s["lag"] is not None]
    axes[3].plot([p[0] for p in lag], [p[1] for p in lag], lw=1, color="black")
    axes[3].set_ylabel("group lag (records)")
    axes[3].set_xlabel("minutes")
    axes[0].legend(loc="lower right", fontsize=8)
    for ax in axes:
        for p in result["promotions"]:
            ax.axvline(p["t"] / 60, color="grey", ls=":", lw=0.8)
        for r in result["broker_restarts"]:
            ax.axvline(r["t"] / 60, color="red", ls="--", lw=0.9)
        ax.axvline(result["fed"]["seconds"] / 60, color="black", ls="-.", lw=0.9)
        ax.grid(alpha=0.3)
    cfg = result["config"]
    fig.suptitle(
        f"soak: {cfg['minutes']:g} min, {cfg['workers']} workers, {cfg['rate']:,.0f} rec/s offered "
        f"({cfg['guarantee']})\ndotted: promotion; red: broker SIGKILL; dash-dot: feed stops",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
