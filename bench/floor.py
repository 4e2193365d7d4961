"""(d) on confluent: the worker against the passthrough's latency floor, in alternating pairs.

Issue #24's target is p99 at the offered load <= 1.5x the passthrough's p99 of the same run.
On shared cores the floor itself moves by half from minute to minute (13 ms in one run, 18 in
the next), so one worker run against one passthrough run minutes apart measured the neighbours
as much as the worker. Here each pair runs the two back to back, the order alternating (worker
first, then passthrough first, ...), each on fresh topics; the figure is the median of the
pairs' p99 ratios, every pair listed beside it. A pair's runs are shorter than one long run
was (``--latency-seconds`` split over the pairs), so ``make bench`` takes about as long.

``python -m bench.floor [--pairs 3] [--latency-rate 1000] [--seconds 7]`` runs this alone
(``--seconds`` per run) and prints the rows, no results file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.throughput import Failed, Latency, WorkerTopics

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


def one_side(
    bootstrap: str,
    wt: WorkerTopics,
    store: Path,
    tag: str,
    log: Path,
    kind: str,
    values: list[bytes],
    rate: float,
    seconds: float,
) -> Latency:
    """One side of one pair on confluent, on its own topics: the worker, or (a)'s loop."""
    from bench.throughput import offered_load_latency, start_passthrough, start_worker

    def start(n: int) -> Any:
        if kind == "worker":
            return start_worker(bootstrap, wt, store, f"{tag}.g", log, client="confluent")
        return start_passthrough(bootstrap, wt.input, wt.output, n, f"{tag}.g", log, "confluent")

    return offered_load_latency(bootstrap, wt.input, wt.output, values, rate, seconds, start, log)


def main(argv: list[str] | None = None) -> int:
    import uuid

    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--pairs", type=int, default=3, help="worker / passthrough pairs [3]")
    parser.add_argument("--latency-rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=7.0, help="each run's offered load [7]")
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--bootstrap-servers")
    a = parser.parse_args(argv)
    if a.pairs < 1 or a.latency_rate * a.seconds < 1 or a.partitions < 1:
        parser.error("--pairs >= 1, --partitions >= 1, at least one record offered")
    from bench.throughput import WorkerTopics, broker, say
    from bench.workload import announce_promotion, make_workload
    from forestream.edge.factory import TopicSpec, admin_client, ensure_topics
    from forestream.registry.local import LocalModelStore

    load = [os.getloadavg()]
    prefix = f"bench.floor.{uuid.uuid4().hex[:8]}"
    made: list[str] = [f"{prefix}.models"]
    with broker(a.bootstrap_servers) as bootstrap, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = LocalModelStore(work / "models")
        workload = make_workload(20_000, 30, a.trees, 10_000, store)
        announce_promotion(bootstrap, made[0], workload.metadata)

        def run(kind: str, pair: int) -> Latency:
            tag = f"{prefix}.{pair}.{kind}"
            wt = WorkerTopics(f"{tag}.in", f"{tag}.out", f"{tag}.dlq", made[0])
            made.extend([wt.input, wt.output, wt.dlq])
            ensure_topics(bootstrap, [TopicSpec(t, a.partitions) for t in made[-3:]])
            return one_side(bootstrap, wt, store.root, tag, work / f"{tag}.log", kind,
                            workload.values, a.latency_rate, a.seconds)  # fmt: skip

        try:
            res = measure(run, a.pairs, say, lambda: os.getloadavg()[0])
        finally:
            admin = admin_client(bootstrap)
            admin.delete_topics(made, timeout_ms=30_000)
            admin.close()
    load.append(os.getloadavg())
    print(f"load {load[0][0]:.1f} -> {load[1][0]:.1f}; nproc {os.cpu_count()}")
    for kind in KINDS:
        runs = getattr(res, kind)
        shown = ", ".join(
            f"{x.percentile('created', 50):.0f} / {x.percentile('created', 99):.0f}" for x in runs
        )
        print(f"{kind} p50 / p99 per run: {shown} ms")
    for row in rows(res):
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    from bench import floor  # its classes, not a second copy's (see bench.throughput)

    sys.exit(floor.main())
