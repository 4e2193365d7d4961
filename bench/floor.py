"""(d) on confluent: the worker against the passthrough's latency floor, in alternating pairs.

Issue #24's target is p99 at the offered load <= 1.5x the passthrough's p99 of the same run.
On shared cores the floor itself moves by half from minute to minute (13 ms in one run, 18 in
the next), so one worker run against one passthrough run minutes apart measured the neighbours
as much as the worker. Here each pair runs the two back to back, the order alternating (worker
first, then passthrough first, ...), each on fresh topics; the figure is the median of the
pairs' p99 ratios, every pair listed beside it. A pair's runs are shorter than one long run
was (``--latency-seconds`` split over the pairs), so ``make bench`` takes about as long.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.throughput import Failed, Latency

KINDS = ("worker", "passthrough")
TARGET = 1.5
"""Worker p99 over the passthrough's p99 at the offered load (issue #24)."""


@dataclass
class FloorResult:
    worker: list[Latency] = field(default_factory=list)
    passthrough: list[Latency] = field(default_factory=list)
    """Pair ``i`` is ``(worker[i], passthrough[i])``."""
    load: list[float] = field(default_factory=list)
    """The 1-minute load average after each pair."""

    def ratios(self) -> list[float]:
        return [
            w.percentile("created", 99) / p.percentile("created", 99)
            for w, p in zip(self.worker, self.passthrough, strict=True)
        ]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios())


def order(pair: int) -> tuple[str, str]:
    """Worker first in even pairs, passthrough first in odd ones: neither always runs on the
    heels of the other's process."""
    return KINDS if pair % 2 == 0 else (KINDS[1], KINDS[0])


def measure(
    run: Callable[[str, int], Latency],
    pairs: int,
    say: Callable[[str], None],
    load: Callable[[], float],
) -> FloorResult:
    """``run(kind, pair)`` offers the load to one fresh ``kind`` process ("worker" or
    "passthrough") on topics of its own, and times it."""
    res = FloorResult()
    for pair in range(pairs):
        for kind in order(pair):
            lat = run(kind, pair)
            getattr(res, kind).append(lat)
            say(
                f"(d) pair {pair} {kind}: p50/p99 {lat.percentile('created', 50):.1f}"
                f"/{lat.percentile('created', 99):.1f} ms"
            )
        res.load.append(load())
    return res


def pooled(runs: list[Latency]) -> Latency:
    """All records of ``runs`` as one run (the same offered rate), for the p50 / p99 rows."""
    from bench.throughput import Latency

    return Latency(
        runs[0].offered_rate,
        statistics.fmean(r.achieved_rate for r in runs),
        sum(r.records for r in runs),
        [x for r in runs for x in r.created_ms],
        [x for r in runs for x in r.received_ms],
    )


def rows(res: FloorResult | Failed | None) -> list[tuple[str, str, str]]:
    """The ratio row: median of the pairs, each pair's p99s and load listed."""
    from bench.throughput import Failed, verdict

    name = "(d) worker / passthrough p99, confluent"
    if res is None:
        return []
    if isinstance(res, Failed):
        return [(name, "n/a", res.reason)]
    pairs = "; ".join(
        f"{w.percentile('created', 99):.0f} / {p.percentile('created', 99):.0f} ms "
        f"({r:.2f}x, load {load:.1f})"
        for w, p, r, load in zip(res.worker, res.passthrough, res.ratios(), res.load, strict=True)
    )
    return [
        (
            name,
            f"{res.ratio:.2f}x",
            f"median of {len(res.worker)} pairs run back to back, order alternated, fresh "
            f"topics each (worker / passthrough p99, ratio, 1-min load after the pair: "
            f"{pairs}); target <= {TARGET:g}x (#24): " + verdict(res.ratio <= TARGET),
        )
    ]


def figures(res: FloorResult) -> dict[str, object]:
    """The pairs for the results file: raw p50 / p99 of every run."""

    def runs(lats: list[Latency]) -> list[dict[str, float]]:
        return [
            {"p50_ms": x.percentile("created", 50), "p99_ms": x.percentile("created", 99)}
            for x in lats
        ]

    return {
        "worker": runs(res.worker),
        "passthrough": runs(res.passthrough),
        "load": res.load,
        "ratios": res.ratios(),
        "p99_ratio": res.ratio,
    }
