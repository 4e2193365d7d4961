"""(i) What shadow scoring costs the served path: latency with and without a candidate.

``python -m bench.shadow [--reps 3] [--latency-rate 1000] [--latency-seconds 10]
[--share 1.0]``: the worker on confluent at phase (d)'s offered rate, in paired runs that
alternate (without, with; then with, without; ...), each on fresh topics. The two variants
differ only in their models topic: both announce the same promoted version, one also a
candidate (``models shadow``, a second forest trained the same way on another seed), which the
worker has loaded (``shadow_in_use``) before the clock starts. Reported: p50 / p99 of
input CreateTime -> prediction CreateTime per run, the ratio of the p99 medians (target
<= 1.2x, issue #26), the candidate's predictions on the shadow topic against the records
offered (about the configured share), and ``forestream_shadow_skipped_total`` read from the
worker's ``/metrics`` before it stops. Both variants serve ``/metrics`` alike. Within ``make
bench`` this is phase (i); alone it prints the rows, no results file.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.throughput import Failed, Latency

VARIANTS = ("without", "with")
TARGET = 1.2
"""p99 with a shadow candidate over p99 without, at the same offered rate (issue #26)."""
CANDIDATE_SEED = 1


@dataclass
class ShadowResult:
    share: float
    latency: dict[str, list[Latency]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    shadowed: list[int] = field(default_factory=list)
    """Per run with the candidate: its predictions of timed records on the shadow topic."""
    offered: list[int] = field(default_factory=list)
    skipped: list[dict[str, float] | None] = field(default_factory=list)
    """Per run with the candidate: batches whose shadow work was skipped, by reason (None:
    ``/metrics`` was not readable)."""

    def median(self, variant: str, q: float) -> float:
        return statistics.median(x.percentile("created", q) for x in self.latency[variant])

    @property
    def ratio(self) -> float:
        return self.median("with", 99) / self.median("without", 99)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_skipped(port: int) -> dict[str, float] | None:
    """``forestream_shadow_skipped_total`` by reason on the worker's ``/metrics`` (None: not
    readable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    found = re.findall(r'^forestream_shadow_skipped_total\{reason="(\w+)"\} (\S+)$', text, re.M)
    return {reason: float(value) for reason, value in found} or None


def await_shadow(proc: Any, log: Path, timeout_s: float = 180.0) -> None:
    """Return once the worker logged that the candidate is loaded (it scores from then on)."""
    from bench.throughput import BenchFailed, first_error, stop_worker, worker_died

    deadline = time.monotonic() + timeout_s
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if '"shadow_in_use"' in text:
            return
        if proc.poll() is not None:
            raise worker_died(proc, log)
        failed = '"shadow_load_failed"' in text
        if failed or time.monotonic() > deadline:
            stop_worker(proc)
            raise BenchFailed(
                (first_error(log) if failed else None)
                or f"the worker did not load the shadow candidate in {timeout_s:.0f}s"
            )
        time.sleep(0.2)


def count_keys(bootstrap: str, topic: str, prefix: bytes) -> int:
    from bench.throughput import read_all, topic_size

    seen: list[int] = []
    size = topic_size(bootstrap, topic)
    read_all(bootstrap, topic, size, 120, lambda r: seen.append(r.key.startswith(prefix)))
    return sum(seen)


def run_once(
    bootstrap: str,
    values: list[bytes],
    store: Path,
    wt: Any,
    log: Path,
    rate: float,
    seconds: float,
    share: float,
    shadow: bool,
) -> tuple[Latency, dict[str, float] | None]:
    """One worker at the offered rate: its latency and, read before it stops, its skipped
    shadow batches. With ``shadow``, the clock starts once the candidate is loaded."""
    from bench.throughput import offered_load_latency, start_worker

    port = free_port()
    env = {"FORESTREAM_SHADOW_SHARE": str(share), "FORESTREAM_METRICS_PORT": str(port)}
    skipped: list[dict[str, float] | None] = []

    def start(_: int) -> Any:
        proc = start_worker(bootstrap, wt, store, f"{wt.input}.g", log, client="confluent", env=env)
        if shadow:
            await_shadow(proc, log)
        return proc

    def read_skipped() -> None:
        skipped.append(scrape_skipped(port))

    lat = offered_load_latency(
        bootstrap, wt.input, wt.output, values, rate, seconds, start, log, read_skipped
    )
    return lat, skipped[0] if skipped else None


def measure(
    bootstrap: str,
    workload: Any,
    store: Any,
    prefix: str,
    work: Path,
    rate: float,
    seconds: float,
    reps: int,
    share: float,
    say: Callable[[str], None],
) -> ShadowResult:
    """Phase (i) on the broker at ``bootstrap`` with ``workload``'s promoted model in
    ``store``; deletes the topics it made."""
    from bench.throughput import WorkerTopics
    from bench.workload import MODEL_NAME, announce_promotion, make_workload
    from forestream.edge.factory import TopicSpec, admin_client, ensure_topics
    from forestream.registry.announce import ModelsTopic
    from forestream.wire.messages import ServingRef, ShadowEvent, shadow_key

    meta = workload.metadata
    say(f"(i) training the candidate (seed {CANDIDATE_SEED})")
    candidate = make_workload(
        0, meta.params["features"], meta.params["n_estimators"], meta.data_rows, store,
        seed=CANDIDATE_SEED, promote=False,
    ).metadata  # fmt: skip
    models = {v: f"{prefix}.{v}.models" for v in VARIANTS}
    for topic in models.values():
        announce_promotion(bootstrap, topic, meta)
    ref = ServingRef(
        version=candidate.version, sha256=candidate.artifact_sha256, signature=candidate.signature
    )
    event = ShadowEvent(name=MODEL_NAME, shadow=ref, at=int(time.time() * 1000))
    with ModelsTopic(bootstrap, models["with"]) as announced:
        announced.put(shadow_key(MODEL_NAME), event.model_dump_json().encode())

    res = ShadowResult(share)
    made = list(models.values())
    try:
        for rep in range(reps):
            for variant in VARIANTS if rep % 2 == 0 else reversed(VARIANTS):
                tag = f"{prefix}.{variant}.{rep}"
                wt = WorkerTopics(f"{tag}.in", f"{tag}.out", f"{tag}.dlq", models[variant])
                made += [wt.input, wt.output, wt.dlq, f"{wt.output}.shadow"]
                ensure_topics(bootstrap, [TopicSpec(t, 4) for t in made[-4:]])
                lat, skipped = run_once(
                    bootstrap, workload.values, store.root, wt, work / f"i-{tag}.log", rate,
                    seconds, share, variant == "with",
                )  # fmt: skip
                res.latency[variant].append(lat)
                note = ""
                if variant == "with":
                    res.shadowed.append(count_keys(bootstrap, f"{wt.output}.shadow", b"lat-"))
                    res.offered.append(lat.records)
                    res.skipped.append(skipped)
                    note = f", shadowed {res.shadowed[-1]:,} of {lat.records:,}"
                say(
                    f"(i) rep {rep} {variant} shadow: p50/p99 {lat.percentile('created', 50):.1f}"
                    f"/{lat.percentile('created', 99):.1f} ms{note}"
                )
    finally:
        with contextlib.suppress(Exception):  # best effort: leave the shared broker tidy
            admin = admin_client(bootstrap)
            admin.delete_topics(sorted(set(made)), timeout_ms=30_000)
            admin.close()
    return res


def rows(res: ShadowResult | Failed | None) -> list[tuple[str, str, str]]:
    """(i)'s table rows: served p50 / p99 without and with the candidate, and their ratio."""
    from bench.throughput import Failed, verdict

    name = "(i) served latency, confluent"
    if res is None:
        return []
    if isinstance(res, Failed):
        return [(name, "not run", res.reason)]
    n = len(res.latency["without"])
    out = []
    for variant in VARIANTS:
        runs = res.latency[variant]
        p99s = ", ".join(f"{x.percentile('created', 99):.0f}" for x in runs)
        note = (
            f"{len(runs)} run(s), medians, at {runs[0].offered_rate:,.0f} rec/s offered "
            f"(p99 per run: {p99s} ms)"
        )
        if variant == "with":
            shadowed, offered = sum(res.shadowed), sum(res.offered)
            note += (
                f"; shadow topic holds {shadowed:,} of {offered:,} timed records "
                f"({shadowed / max(offered, 1):.0%}, share {res.share:g}); skipped batches "
                f"(forestream_shadow_skipped_total): {skipped_note(res.skipped)}"
            )
        out.append(
            (
                f"{name}, {variant} shadow p50 / p99",
                f"{res.median(variant, 50):.0f} / {res.median(variant, 99):.0f} ms",
                note,
            )
        )
    out.append(
        (
            "(i) p99 with / without shadow",
            f"{res.ratio:.2f}x",
            f"median p99s, {n} pair(s) of runs, order alternated, only the announced candidate "
            f"differs; target <= {TARGET:g}x: " + verdict(res.ratio <= TARGET),
        )
    )
    return out


def skipped_note(runs: list[dict[str, float] | None]) -> str:
    if any(r is None for r in runs):
        return "unread"
    total: dict[str, float] = {}
    for run in runs:
        for reason, n in (run or {}).items():
            total[reason] = total.get(reason, 0.0) + n
    shown = ", ".join(f"{reason} {n:,.0f}" for reason, n in total.items() if n)
    return f"{sum(total.values()):,.0f}" + (f" ({shown})" if shown else "")


def figures(res: ShadowResult) -> dict[str, object]:
    """(i) in ``results_json``."""
    return {
        "share": res.share,
        "p99_ms": {v: [x.percentile("created", 99) for x in res.latency[v]] for v in VARIANTS},
        "p50_ms": {v: [x.percentile("created", 50) for x in res.latency[v]] for v in VARIANTS},
        "p99_ratio": res.ratio,
        "target": TARGET,
        "shadowed": res.shadowed,
        "offered": res.offered,
        "skipped_batches": res.skipped,
    }


def main(argv: list[str] | None = None) -> int:
    import os
    import tempfile
    import uuid

    parser = argparse.ArgumentParser(prog="python -m bench.shadow", description=__doc__)
    parser.add_argument("--reps", type=int, default=3, help="runs of each variant [3]")
    parser.add_argument("--latency-rate", type=float, default=1000.0)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--share", type=float, default=1.0, help="--shadow-share [1.0]")
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--bootstrap-servers")
    parser.add_argument("--logs", type=Path, help="keep the workers' logs here")
    a = parser.parse_args(argv)
    if a.reps < 1 or a.latency_rate * a.latency_seconds < 1 or not 0 < a.share <= 1:
        parser.error("--reps >= 1, at least one record offered, 0 < --share <= 1")
    from bench.throughput import broker, say
    from bench.workload import make_workload
    from forestream.registry.local import LocalModelStore

    load = [os.getloadavg()]
    with broker(a.bootstrap_servers) as bootstrap, tempfile.TemporaryDirectory() as tmp:
        store = LocalModelStore(Path(tmp) / "models")
        workload = make_workload(20_000, 30, a.trees, 10_000, store)
        if a.logs:
            a.logs.mkdir(parents=True, exist_ok=True)
        res = measure(
            bootstrap, workload, store, f"bench.shadow.{uuid.uuid4().hex[:8]}", a.logs or Path(tmp),
            a.latency_rate, a.latency_seconds, a.reps, a.share, say,
        )  # fmt: skip
    load.append(os.getloadavg())
    print(f"load {load[0][0]:.1f} -> {load[1][0]:.1f}; nproc {os.cpu_count()}")
    for row in rows(res):
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    from bench import shadow  # its classes, not a second copy's (see bench.throughput)

    sys.exit(shadow.main())
