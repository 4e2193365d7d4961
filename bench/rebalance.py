"""The pause a group rebalance costs the workers already running, when a third one joins.

``python -m bench.rebalance [--rate 1000] [--partitions 6] [--seconds 30]``: two workers share
the input at a steady offered rate; a third joins halfway. Each output carries its source
partition, so the gaps between consecutive outputs of a partition show how long it was not
scored. Partitions the third worker took moved; the others stayed with their owner, and a
rebalance that stops nobody (cooperative-sticky on librdkafka) leaves their gaps as before the
join, where an eager one (kafka-python: every member gives everything back, then rejoins)
stops them all. Figures per client, in one run; rates and gaps are measured from CreateTimes
(input stamped by this process, output by the worker's producer).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bench.throughput import (
    CLIENTS,
    BenchFailed,
    WorkerTopics,
    broker,
    machine,
    read_all,
    start_worker,
    stop_worker,
    worker_died,
)
from forestream.edge.interface import KafkaClient
from forestream.worker.assignment_log import ownership_changes, partition_number

RESULTS = Path(__file__).resolve().parent / "results" / "rebalance.md"


@dataclass(frozen=True)
class Pause:
    """The gaps one membership change (a worker joining, or leaving) left in the outputs."""

    moved: list[int]
    """Partitions whose owner changed."""
    stayed_ms: float | None
    """Largest gap, in the change's window, of partitions that kept their owner (None: none
    did): what the change cost the workers that were not part of it."""
    moved_ms: float | None
    """Largest gap, in the change's window, of partitions that moved."""


@dataclass(frozen=True)
class Result:
    client: str
    before_ms: float
    """Largest gap between outputs of any partition in the seconds before the join."""
    join: Pause
    leave: Pause
    outputs: int


def offer(bootstrap: str, topic: str, values: list[bytes], rate: float, seconds: float) -> int:
    """Send at ``rate`` rec/s for ``seconds`` (in this thread); returns how many were sent."""
    from forestream.edge.factory import make_producer
    from forestream.producer.pacing import RateSchedule

    producer = make_producer(bootstrap)
    schedule = RateSchedule(rate=rate, start=time.monotonic())
    count = int(rate * seconds)
    try:
        for i in range(count):
            wait = schedule.wait_s(time.monotonic())
            if wait > 0.0005:
                time.sleep(wait)
            producer.send(topic, key=f"r-{i}".encode(), value=values[i % len(values)])
            schedule.mark_sent()
        producer.flush()
    finally:
        producer.close(timeout=10)
    return count


def ownership(log_path: Path) -> list[tuple[float, set[int]]]:
    """(time in ms, partitions owned from then on) for each change a worker's log reports."""
    return [
        (at * 1000, {partition_number(name) for name in owned})
        for at, owned in ownership_changes(log_path)
    ]


def owner_at(logs: list[Path], partition: int, at_ms: float) -> int | None:
    """Which worker (index into ``logs``) owned ``partition`` at ``at_ms``."""
    for index, log in enumerate(logs):
        owned: set[int] = set()
        for when, now_owned in ownership(log):
            if when > at_ms:
                break
            owned = now_owned
        if partition in owned:
            return index
    return None


def largest_gap(stamps: list[int], start_ms: float, end_ms: float) -> float:
    """The longest time between consecutive outputs within [start, end] (ms)."""
    inside = sorted(t for t in stamps if start_ms <= t <= end_ms)
    return max((b - a for a, b in itertools.pairwise(inside)), default=0.0)


def wait_for_ownership(logs: list[Path], partitions: int, timeout_s: float) -> None:
    """Until the workers writing ``logs`` own every partition between them (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        owned: set[int] = set()
        for log in logs:
            changes = ownership(log) if log.exists() else []
            if changes:
                owned |= changes[-1][1]
        if len(owned) >= partitions:
            return
        if time.monotonic() > deadline:
            raise BenchFailed(f"the workers owned {sorted(owned)} of {partitions} partitions "
                              f"after {timeout_s:.0f}s")  # fmt: skip
        time.sleep(0.2)


def wait_for_assignment(log: Path, timeout_s: float) -> None:
    """Until the worker writing ``log`` owns some partition (it has joined)."""
    deadline = time.monotonic() + timeout_s
    while not any(owned for _at, owned in (ownership(log) if log.exists() else [])):
        if time.monotonic() > deadline:
            raise BenchFailed(f"the joining worker owned nothing after {timeout_s:.0f}s")
        time.sleep(0.2)


def pause_of(
    stamps: dict[int, list[int]], logs: list[Path], partitions: int, start_ms: float,
    end_ms: float,
) -> Pause:  # fmt: skip
    """The gaps in ``[start_ms, end_ms]``, split by whether a partition changed owner there."""
    moved = {
        p for p in range(partitions) if owner_at(logs, p, start_ms) != owner_at(logs, p, end_ms)
    }
    stayed = [largest_gap(stamps[p], start_ms, end_ms) for p in range(partitions) if p not in moved]
    went = [largest_gap(stamps[p], start_ms, end_ms) for p in moved]
    return Pause(sorted(moved), max(stayed, default=None), max(went, default=None))


def measure(
    client: KafkaClient, bootstrap: str, store: Path, values: list[bytes], models: str,
    partitions: int, rate: float, seconds: float, work: Path,
) -> Result:  # fmt: skip
    """Two workers share the load; a third joins at a third of it, the first leaves (SIGTERM)
    at two thirds. Each change's window runs until the next one (the last: the load's end)."""
    from forestream.edge.factory import TopicSpec, ensure_topics

    tag = f"bench.rebalance.{uuid.uuid4().hex[:8]}.{client}"
    topics = WorkerTopics(f"{tag}.in", f"{tag}.out", f"{tag}.dlq", models)
    ensure_topics(bootstrap, [TopicSpec(t, partitions) for t in (topics.input, topics.output)])
    group = f"{tag}.group"
    logs = [work / f"{client}-{i}.log" for i in range(3)]
    procs = [start_worker(bootstrap, topics, store, group, logs[i], client=client) for i in (0, 1)]
    sent: list[int] = []
    try:
        wait_for_ownership(logs[:2], partitions, timeout_s=180)
        started = time.monotonic()
        sender = threading.Thread(
            target=lambda: sent.append(offer(bootstrap, topics.input, values, rate, seconds)),
            daemon=True,
        )
        sender.start()
        time.sleep(max(started + seconds / 3 - time.monotonic(), 0))
        join_ms = time.time() * 1000
        procs.append(start_worker(bootstrap, topics, store, group, logs[2], client=client))
        # it loads its model before it asks to join: the change starts when it is in
        wait_for_assignment(logs[2], timeout_s=seconds / 3 + 60)
        time.sleep(max(started + 2 * seconds / 3 - time.monotonic(), 3.0))
        leave_ms = time.time() * 1000
        procs[0].send_signal(signal.SIGTERM)
        sender.join(timeout=seconds + 60)
        load_end_ms = time.time() * 1000
        if not sent:
            raise BenchFailed("the offered load did not finish")
        stamps: dict[int, list[int]] = defaultdict(list)

        def keep(record: object) -> None:
            prediction = json.loads(record.value)  # type: ignore[attr-defined]
            stamps[prediction["source"]["partition"]].append(record.timestamp)  # type: ignore[attr-defined]

        for proc, log in zip(procs[1:], logs[1:], strict=True):
            if proc.poll() not in (None, 0):
                raise worker_died(proc, log)
        if procs[0].wait(timeout=30) != 0:
            raise worker_died(procs[0], logs[0])
        read_all(bootstrap, topics.output, sent[0], 120, keep)
    finally:
        for proc in procs:
            stop_worker(proc)
    before = max(largest_gap(stamps[p], join_ms - 5000, join_ms) for p in range(partitions))
    return Result(
        client,
        before,
        join=pause_of(stamps, logs, partitions, join_ms, leave_ms),
        leave=pause_of(stamps, logs, partitions, leave_ms, load_end_ms - 500),
        outputs=sum(map(len, stamps.values())),
    )


def main(argv: list[str] | None = None) -> int:
    import os

    from bench.workload import announce_promotion, make_workload
    from forestream.registry.local import LocalModelStore

    parser = argparse.ArgumentParser(
        prog="python -m bench.rebalance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="offered rec/s [1000]")
    parser.add_argument("--partitions", type=int, default=6, help="input partitions [6]")
    parser.add_argument("--seconds", type=float, default=45.0, help="offered-load span [45]")
    parser.add_argument("--bootstrap-servers", help="broker (default: the local one, or start one)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"markdown [{RESULTS}]")
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help=f"comma-separated [{','.join(CLIENTS)}]"
    )
    parser.add_argument("--keep-logs", type=Path, help="copy the workers' logs into this folder")
    a = parser.parse_args(argv)
    clients = [c.strip() for c in a.clients.split(",") if c.strip()]
    if not clients or any(c not in CLIENTS for c in clients):
        print(f"error: --clients takes some of {', '.join(CLIENTS)}", file=sys.stderr)
        return 2
    if a.rate <= 0 or a.partitions < 3 or a.seconds < 15:
        print("error: --rate > 0, --partitions >= 3 and --seconds >= 15", file=sys.stderr)
        return 2
    load = [os.getloadavg()]
    results: list[Result] = []
    with broker(a.bootstrap_servers) as bootstrap, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = LocalModelStore(work / "models")
        workload = make_workload(5000, 30, 100, 4000, store)
        models = f"bench.rebalance.{uuid.uuid4().hex[:8]}.models"
        announce_promotion(bootstrap, models, workload.metadata)
        for client in clients:
            print(f"[{time.strftime('%H:%M:%S')}] {client}: 2 workers, a third joins, one leaves",
                  file=sys.stderr, flush=True)  # fmt: skip
            results.append(measure(client, bootstrap, store.root, workload.values, models,
                                   a.partitions, a.rate, a.seconds, work))  # fmt: skip
        if a.keep_logs is not None:
            a.keep_logs.mkdir(parents=True, exist_ok=True)
            for log_file in work.glob("*.log"):
                shutil.copy(log_file, a.keep_logs / log_file.name)
    load.append(os.getloadavg())
    lines = [
        f"# Rebalance pause ({time.strftime('%Y-%m-%dT%H:%M:%S%z')})",
        "",
        f"Machine: {machine()}; load average (1/5/15 min) "
        + " -> ".join("/".join(f"{x:.1f}" for x in la) for la in load)
        + f". {a.rate:,.0f} rec/s offered over {a.partitions} partitions for {a.seconds:g} s; "
        "a third worker joins two at a third of it, the first leaves (SIGTERM) at two thirds. "
        "Largest gap between consecutive outputs of a partition in each window.",
        "",
        "| client | gap before | join: moved | join: gap of those that stayed | join: gap of "
        "those moved | leave: moved | leave: gap of those that stayed | leave: gap of those "
        "moved |",
        "|---|---:|---|---:|---:|---|---:|---:|",
    ]

    def ms(value: float | None) -> str:
        return "none stayed" if value is None else f"{value:,.0f} ms"

    def cells(pause: Pause) -> str:
        moved = ", ".join(map(str, pause.moved)) or "none"
        return f"{moved} | {ms(pause.stayed_ms)} | {ms(pause.moved_ms)}"

    for r in results:
        lines.append(f"| {r.client} | {ms(r.before_ms)} | {cells(r.join)} | {cells(r.leave)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
