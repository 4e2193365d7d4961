"""Promotion under load: how long ``forestream models promote`` takes, and when each worker's
first prediction by the new version comes, with real workers scoring a steady stream.

``python -m bench.promotion [--workers 2] [--rate 1500] [--cycles 4] [--trees 100]
[--features 30] [--partitions 4]`` (also run by ``python -m bench.reload --under-load``)

Real ``forestream worker`` subprocesses in one group share the input topic; a paced producer
offers ``--rate`` rec/s; every output is read back. Each cycle runs the real
``forestream models promote`` CLI (alternating two versions) and reports:

- ``command``: the CLI's wall time, process start to exit;
- per worker, ``first``: the first prediction (its CreateTime, stamped when the worker sends it)
  by the new version on a partition that worker owns, in seconds after the command *returned*
  (negative: workers served it before the command had exited);
- where the time went, from the workers' JSON logs: event seen by the follower, load done
  (verification, unpickling, warm-up), first batch on the new version (``model_swapped``).

At the end: inputs without an output (lost), and per source partition how often the version
changed (once per cycle if no batch went back to an older version).
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from forestream.worker import assignment_log
from forestream.worker.assignment_log import log_events, log_time, partition_number

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Output:
    """One prediction as read back: where its input was, the version, when it was sent."""

    partition: int
    offset: int
    version: str
    created_ms: int


@dataclass
class Reader:
    """Reads the predictions topic from the beginning on a thread until stopped."""

    bootstrap: str
    topic: str
    outputs: list[Output] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Reader:
        self._thread = threading.Thread(target=self._run, name="reader", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        from kafka import TopicPartition

        from forestream.edge.factory import make_consumer

        consumer = make_consumer(self.bootstrap, max_poll_records=5000)
        try:
            partitions: set[int] = set()
            while not partitions and not self._stop.is_set():
                partitions = consumer.partitions_for_topic(self.topic)
                time.sleep(0.1)
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=200).values():
                    for r in records:
                        body = json.loads(r.value)
                        source = body["source"]
                        self.outputs.append(
                            Output(
                                source["partition"],
                                source["offset"],
                                body["model_version"],
                                r.timestamp,
                            )
                        )
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


@dataclass
class Feeder:
    """Offers ``rate`` rec/s (anchored schedule, no drift) until stopped."""

    bootstrap: str
    topic: str
    values: list[bytes]
    rate: float
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Feeder:
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        from forestream.edge.factory import make_producer
        from forestream.producer.pacing import RateSchedule

        producer = make_producer(self.bootstrap)
        schedule = RateSchedule(rate=self.rate, start=time.monotonic())
        try:
            while not self._stop.is_set():
                wait = schedule.wait_s(time.monotonic())
                if wait > 0.001:
                    time.sleep(wait)
                value = self.values[self.sent % len(self.values)]
                producer.send(self.topic, key=f"k-{self.sent}".encode(), value=value)
                self.sent += 1
                schedule.mark_sent()
            producer.flush(timeout=30)
        finally:
            producer.close(timeout=10)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


def owned_partitions(log: Path) -> set[int]:
    return {partition_number(name) for name in assignment_log.owned_partitions(log)}


def wait_balanced(procs: list[subprocess.Popen[bytes]], logs: list[Path], partitions: int) -> None:
    deadline = time.monotonic() + 90
    while True:
        owned = [owned_partitions(log) for log in logs]
        union = set().union(*owned)
        if all(owned) and len(union) == partitions == sum(len(o) for o in owned):
            return
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                raise SystemExit(f"a worker exited ({proc.returncode}): {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"workers not balanced after 90 s: {owned}")
        time.sleep(0.2)


def cli(*args: str) -> tuple[float, str]:
    """Run ``forestream <args>``; returns (wall seconds, stdout) or exits with its stderr."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "forestream", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"forestream {' '.join(args[:3])} failed: {done.stderr.strip()}")
    return elapsed, done.stdout


@dataclass
class Cycle:
    version: str
    command_s: float
    first_s: list[float]
    """Per worker: first prediction by ``version`` minus the command's return, seconds."""
    seen_s: list[float]
    loaded_s: list[float]
    load_s: list[float]
    swapped_s: list[float]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.promotion",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=1500.0, help="offered rec/s")
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--bootstrap-servers", help="broker (default: the local one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


def run(args: argparse.Namespace) -> list[Cycle]:
    from bench.throughput import broker
    from bench.workload import MODEL_NAME, make_workload
    from forestream.edge.factory import TopicSpec, ensure_topics
    from forestream.registry.local import LocalModelStore

    with (
        tempfile.TemporaryDirectory(prefix="forestream-bench-promotion-") as tmp,
        broker(args.bootstrap_servers) as bootstrap,
    ):
        store_dir = Path(tmp) / "store"
        store = LocalModelStore(store_dir)
        print(f"training 2 versions: {args.trees} trees, {args.features} features ...")
        first = make_workload(20000, args.features, args.trees, 5000, store, seed=0)
        make_workload(10, args.features, args.trees, 5000, store, seed=1)
        values = first.values
        del first
        run_id = uuid.uuid4().hex[:8]
        topics = {k: f"bench.promotion.{run_id}.{k}" for k in ("in", "out", "dlq", "models")}
        ensure_topics(bootstrap, [TopicSpec(topics["in"], args.partitions)])
        registry = [
            "--store", str(store_dir), "--name", MODEL_NAME,
            "--bootstrap-servers", bootstrap, "--models-topic", topics["models"],
        ]  # fmt: skip
        idle_s, _ = cli("models", "promote", "v1", *registry)
        print(f"`models promote v1` with no load: {idle_s:.2f} s")

        worker = [
            sys.executable, "-m", "forestream", "worker",
            "--bootstrap-servers", bootstrap,
            "--input-topic", topics["in"], "--output-topic", topics["out"],
            "--dlq-topic", topics["dlq"], "--models-topic", topics["models"],
            "--labels-topic", f"bench.promotion.{run_id}.labels",
            "--monitoring-topic", f"bench.promotion.{run_id}.monitoring",
            "--store", str(store_dir), "--name", MODEL_NAME,
            "--group", f"bench.promotion.{run_id}", "--log-format", "json",
        ]  # fmt: skip
        procs: list[subprocess.Popen[bytes]] = []
        logs: list[Path] = []
        reader = Reader(bootstrap, topics["out"]).start()
        feeder = Feeder(bootstrap, topics["in"], values, args.rate)
        cycles: list[Cycle] = []
        try:
            for i in range(args.workers):  # one at a time: each joins a settled group
                logs.append(Path(tmp) / f"worker-{i}.log")
                with logs[-1].open("wb") as sink:
                    procs.append(
                        subprocess.Popen(
                            worker,
                            stdout=sink,
                            stderr=subprocess.STDOUT,
                            cwd=ROOT,
                            stdin=subprocess.DEVNULL,
                        )
                    )
                wait_balanced(procs, logs, args.partitions)
            feeder.start()
            print(f"{args.workers} workers, {args.partitions} partitions, {args.rate:.0f} rec/s")
            time.sleep(8.0)  # steady state: batches flowing, caches warm
            owners = [owned_partitions(log) for log in logs]
            for cycle in range(args.cycles):
                target = "v2" if cycle % 2 == 0 else "v1"
                cycles.append(promote(target, registry, reader, logs, owners))
                time.sleep(3.0)
            feeder.stop()
            lost, switches = integrity(bootstrap, topics["in"], reader, args.partitions)
        finally:
            feeder.stop()
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            reader.stop()
        report(cycles, args, feeder.sent, lost, switches)
        return cycles


def promote(
    target: str, registry: list[str], reader: Reader, logs: list[Path], owners: list[set[int]]
) -> Cycle:
    started = time.time()
    command_s, _ = cli("models", "promote", target, *registry)
    returned = started + command_s
    deadline = time.monotonic() + 60
    first: list[float | None] = [None] * len(logs)
    while None in first:
        if time.monotonic() > deadline:
            raise SystemExit(f"{target} not served by every worker 60 s after the command")
        for i, parts in enumerate(owners):
            if first[i] is None:
                times = [
                    o.created_ms / 1000
                    for o in list(reader.outputs)
                    if o.partition in parts and o.version == target
                ]
                times = [t for t in times if t > started]
                if times:
                    first[i] = min(times)
        time.sleep(0.1)
    time.sleep(0.5)  # the log lines of the swap are written

    def after(event: str, match: str = "version") -> list[float]:
        out = []
        for log in logs:
            lines = [e for e in log_events(log, event) if e.get(match) == target]
            lines = [e for e in lines if log_time(e) >= started - 1]
            out.append(log_time(lines[0]) - returned if lines else float("nan"))
        return out

    loads = []
    for log in logs:
        lines = [e for e in log_events(log, "model_in_use") if e.get("version") == target]
        loads.append(float(lines[-1].get("load_s", "nan")) if lines else float("nan"))
    return Cycle(
        target,
        command_s,
        [t - returned for t in first if t is not None],
        after("model_promotion_seen"),
        after("model_in_use"),
        loads,
        after("model_swapped"),
    )


def integrity(
    bootstrap: str, topic: str, reader: Reader, partitions: int
) -> tuple[int, dict[int, int]]:
    """Inputs without an output once the stream drained, and version changes per partition."""
    from kafka import TopicPartition

    from forestream.edge.factory import make_consumer

    consumer = make_consumer(bootstrap)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        consumer.close()
    wanted = {(tp.partition, o) for tp, end in ends.items() for o in range(end)}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if wanted <= {(o.partition, o.offset) for o in list(reader.outputs)}:
            break
        time.sleep(0.5)
    first: dict[tuple[int, int], str] = {}
    for o in list(reader.outputs):
        first.setdefault((o.partition, o.offset), o.version)
    lost = len(wanted - first.keys())
    by_partition: dict[int, list[str]] = defaultdict(list)
    for (p, _offset), version in sorted(first.items()):
        by_partition[p].append(version)
    switches = {p: sum(a != b for a, b in itertools.pairwise(vs)) for p, vs in by_partition.items()}
    return lost, switches


def report(
    cycles: list[Cycle], args: argparse.Namespace, sent: int, lost: int, switches: dict[int, int]
) -> None:
    def fmt(values: list[float]) -> str:
        return " / ".join(f"{v:+.2f}" for v in values)

    print(
        "cycle  to   command_s  first new prediction after return, per worker (s)  "
        "seen / loaded / first batch (s after return)"
    )
    for i, c in enumerate(cycles, start=1):
        print(
            f"{i:>5}  {c.version:<4} {c.command_s:9.2f}  {fmt(c.first_s):>48}  "
            f"{fmt(c.seen_s)} | {fmt(c.loaded_s)} (load {fmt(c.load_s)}) | {fmt(c.swapped_s)}"
        )
    commands = [c.command_s for c in cycles]
    firsts = [f for c in cycles for f in c.first_s]
    print(
        f"command: median {statistics.median(commands):.2f} s, max {max(commands):.2f} s; "
        f"first new prediction after return: median {statistics.median(firsts):+.2f} s, "
        f"max {max(firsts):+.2f} s"
    )
    print(
        f"records offered {sent}, lost {lost}; version changes per source partition "
        f"{dict(sorted(switches.items()))} (expected {len(cycles)} each)"
    )


if __name__ == "__main__":
    main()
