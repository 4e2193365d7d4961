"""The adaptive micro-batch window against the fixed one, side by side in one run.

``python -m bench.window [--reps 3] [--client confluent] [--records 50000]
[--latency-rate 1000] [--latency-seconds 15]``: per repetition, in alternating order, the
worker with ``FORESTREAM_ADAPTIVE_WINDOW=true`` and ``=false`` through
:mod:`bench.throughput`'s phase (d) (latency at a fixed offered load, input CreateTime ->
prediction CreateTime) and phase (c) (records/s from a full topic), plus (d)'s passthrough: the
floor the client alone imposes at that load. Figures move with the host's load, so only the
ratios within one run mean anything; nothing is written but the table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.throughput import (
    Latency,
    WorkerTopics,
    broker,
    fill_topic,
    mean_batch,
    offered_load_latency,
    pipelined_by_default,
    say,
    start_passthrough,
    start_worker,
    worker_throughput,
)
from forestream.edge.interface import KafkaClient

VARIANTS = ("adaptive", "fixed")


@contextlib.contextmanager
def adaptive_window(on: bool) -> Iterator[None]:
    """The worker subprocesses inherit this process's environment."""
    before = os.environ.get("FORESTREAM_ADAPTIVE_WINDOW")
    os.environ["FORESTREAM_ADAPTIVE_WINDOW"] = str(on).lower()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FORESTREAM_ADAPTIVE_WINDOW", None)
        else:
            os.environ["FORESTREAM_ADAPTIVE_WINDOW"] = before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.window", description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--client", choices=("confluent", "kafka-python"), default="confluent")
    parser.add_argument("--records", type=int, default=50_000, help="records of phase (c)")
    parser.add_argument("--latency-rate", type=float, default=1000.0)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--bootstrap-servers")
    a = parser.parse_args(argv)
    client: KafkaClient = a.client
    from bench.workload import announce_promotion, make_workload
    from forestream.edge.factory import TopicSpec, ensure_topics
    from forestream.registry.local import LocalModelStore

    p = f"bench.window.{uuid.uuid4().hex[:8]}"
    lat: dict[str, list[Latency]] = {v: [] for v in (*VARIANTS, "passthrough")}
    rate: dict[str, list[float]] = {v: [] for v in VARIANTS}
    batch: dict[str, list[float]] = {v: [] for v in VARIANTS}
    load = [os.getloadavg()]
    with broker(a.bootstrap_servers) as bootstrap, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = LocalModelStore(work / "models")
        workload = make_workload(a.records, 30, 100, 10_000, store)
        announce_promotion(bootstrap, f"{p}.models", workload.metadata)
        ensure_topics(bootstrap, [TopicSpec(f"{p}.in", 4)])
        fill_topic(bootstrap, f"{p}.in", workload.values, "b")

        def topics(tag: str, source: str) -> WorkerTopics:
            ensure_topics(bootstrap, [TopicSpec(t, 4) for t in (source, f"{p}.{tag}.out")])
            return WorkerTopics(source, f"{p}.{tag}.out", f"{p}.{tag}.dlq", f"{p}.models")

        for rep in range(a.reps):
            for variant in VARIANTS if rep % 2 == 0 else reversed(VARIANTS):
                tag, log = f"{variant}.{rep}", work / f"{variant}.{rep}.log"
                with adaptive_window(variant == "adaptive"):
                    wt = topics(f"{tag}.lat", f"{p}.{tag}.lat.in")
                    lat[variant].append(
                        offered_load_latency(
                            bootstrap,
                            wt.input,
                            wt.output,
                            workload.values,
                            a.latency_rate,
                            a.latency_seconds,
                            lambda _, wt=wt, log=log, tag=tag: start_worker(
                                bootstrap, wt, store.root, f"{p}.{tag}.lat", log, client=client
                            ),
                            log,
                        )
                    )
                    batch[variant].append(mean_batch(log) or 0.0)
                    span, _ = worker_throughput(
                        bootstrap,
                        topics(f"{tag}.c", f"{p}.in"),
                        store.root,
                        a.records,
                        f"{p}.{tag}.c",
                        work / f"{tag}.c.log",
                        client,
                        pipeline=pipelined_by_default(client),
                    )
                    rate[variant].append(span.rate)
                done = lat[variant][-1]
                say(
                    f"rep {rep} {variant}: p50/p99 {done.percentile('created', 50):.1f}/"
                    f"{done.percentile('created', 99):.1f} ms, batch {batch[variant][-1]:.1f}, "
                    f"{rate[variant][-1]:,.0f} rec/s"
                )
            src, dst = f"{p}.pass.{rep}.in", f"{p}.pass.{rep}.out"
            ensure_topics(bootstrap, [TopicSpec(src, 4), TopicSpec(dst, 4)])
            log = work / f"pass.{rep}.log"
            lat["passthrough"].append(
                offered_load_latency(
                    bootstrap,
                    src,
                    dst,
                    workload.values,
                    a.latency_rate,
                    a.latency_seconds,
                    lambda n, src=src, dst=dst, log=log, rep=rep: start_passthrough(
                        bootstrap, src, dst, n, f"{p}.pass.{rep}", log, client
                    ),
                    log,
                )
            )
            floor = lat["passthrough"][-1]
            say(
                f"rep {rep} passthrough: p50/p99 {floor.percentile('created', 50):.1f}/"
                f"{floor.percentile('created', 99):.1f} ms"
            )
    load.append(os.getloadavg())
    print(
        f"client {client}; {a.latency_rate:g} rec/s for {a.latency_seconds:g} s; "
        f"load {load[0][0]:.1f} -> {load[1][0]:.1f}; nproc {os.cpu_count()}"
    )
    print(
        "| rep | adaptive p50/p99 | fixed p50/p99 | passthrough p50/p99 | adaptive p99 / floor "
        "| fixed p99 / floor | batch adaptive/fixed | rec/s adaptive/fixed (ratio) |"
    )
    print("|---|---|---|---|---:|---:|---|---|")
    for rep in range(a.reps):
        ad, fx, pt = (lat[v][rep] for v in (*VARIANTS, "passthrough"))

        def pp(x: Latency) -> str:
            return f"{x.percentile('created', 50):.1f} / {x.percentile('created', 99):.1f}"

        floor99 = pt.percentile("created", 99)
        ra, rf = rate["adaptive"][rep], rate["fixed"][rep]
        print(
            f"| {rep} | {pp(ad)} | {pp(fx)} | {pp(pt)} | "
            f"{ad.percentile('created', 99) / floor99:.2f} | "
            f"{fx.percentile('created', 99) / floor99:.2f} | "
            f"{batch['adaptive'][rep]:.1f} / {batch['fixed'][rep]:.1f} | "
            f"{ra:,.0f} / {rf:,.0f} ({ra / rf:.2f}) |"
        )
    med = {v: statistics.median(rate[v]) for v in VARIANTS}
    print(
        f"median rec/s: adaptive {med['adaptive']:,.0f}, fixed {med['fixed']:,.0f} "
        f"({med['adaptive'] / med['fixed']:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
