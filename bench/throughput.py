"""Records/s and end-to-end latency of the worker, side by side with its ceiling and its floor.

``python -m bench.throughput [--records 200000] [--features 30] [--trees 100]
[--latency-rate 1000] [--latency-seconds 20]`` (``--quick`` for a short check run):

(a) passthrough: consume -> produce with the worker's client settings and batching, no model:
    the ceiling of each Kafka client (kafka-python, and librdkafka through confluent-kafka);
(b) naive: per record decode, ``predict_proba`` on one row, produce (on a subset: it is slow);
(c) worker: ``forestream worker`` as a subprocess, once per client
    (``FORESTREAM_KAFKA_CLIENT``); (a), (c) and (e) are all measured from the first to the last
    output record's CreateTime, so they share one ruler;
(d) latency at a fixed offered load: input CreateTime -> prediction CreateTime (stamped by the
    worker's producer when it sends the prediction, i.e. after scoring, before the broker ack),
    plus input CreateTime -> the moment this process received the prediction (includes the
    output's delivery; the two clocks are the same host clock); the same load through (a)'s
    loop in its own process gives the floor the client alone imposes. On confluent, whose
    target is relative to that floor (p99 <= 1.5x, #24), worker and passthrough run as
    ``--latency-pairs`` back-to-back pairs, order alternating, ``--latency-seconds`` split
    over them: the median of the pairs' p99 ratios, every pair listed (:mod:`bench.floor`);
    its p50 / p99 rows pool each side's runs;
(e) reference: the confluent-kafka scoring loop a user would write by hand
    (:mod:`bench.reference_confluent`), what the worker on confluent is worth against;
(f) exactly-once: (c) and (d) again with ``--guarantee exactly-once`` (a transaction per
    micro-batch), latency timed to when ``read_committed`` readers can see the prediction;
(g) the forest alone, per engine: sklearn's ``predict_proba``, the worker's tree-by-tree
    sklearn path and the compiled forest, µs per record at batch 1 / 100 / 1,000 on one
    thread, with each one's parity with ``predict_proba`` (:mod:`bench.engines`);
(h) Avro input: (c) on kafka-python again with the same records as Avro (a Schema Registry of
    the run's own), and decode µs per record, JSON vs Avro, in the worker's batch path
    (:mod:`bench.avro`; ``python -m bench.avro`` runs this phase alone);
(i) shadow scoring: (d) on confluent in paired runs without / with a shadow candidate
    announced, p99 with over p99 without (target <= 1.2x), and the candidate's predictions on
    the shadow topic (:mod:`bench.shadow`; ``python -m bench.shadow`` runs this phase alone).

The worker on confluent, the exactly-once and the shadow phases are allowed to fail (its row
says why); anything else failing fails the run. Every run uses fresh topics (deleted at the
end) and a temporary model store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from bench.avro import AvroResult, avro_figures
from bench.avro import rows as avro_rows
from bench.floor import FloorResult
from bench.floor import figures as floor_figures
from bench.floor import rows as floor_rows
from bench.shadow import ShadowResult
from bench.shadow import figures as shadow_figures
from bench.shadow import rows as shadow_rows
from forestream.edge.interface import KafkaClient
from forestream.errors import UserError
from forestream.exit_codes import exit_code_for

RESULTS = Path(__file__).resolve().parent / "results" / "latest.md"
"""Also written beside it: the same run as JSON (``latest.json``), which ``python -m
bench.report`` turns into the docs' benchmark page and chart."""
WARMUP_RECORDS = 20
MAX_BATCH = 1000
"""The worker's default micro-batch limit; the passthrough batches the same way."""


class BenchFailed(UserError):
    """A phase did not complete (worker died, records missing): no number is better than a
    wrong one. Exit code 1."""

    exit_code = 1


@dataclass(frozen=True)
class Options:
    records: int
    features: int
    trees: int
    latency_rate: float
    latency_seconds: float
    naive_records: int
    train_rows: int
    partitions: int
    bootstrap_servers: str | None
    output: Path
    shadow_reps: int = 3
    """(i)'s runs of each variant: the median of 3 shrugs off one outlier, of 2 it cannot."""
    latency_pairs: int = 3
    """(d) on confluent: worker / passthrough pairs, ``latency_seconds`` split over them."""


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--records", type=int, help="records for (a) and (c) [200000]")
    parser.add_argument("--features", type=int, default=30, help="numeric features [30]")
    parser.add_argument("--trees", type=int, default=100, help="trees of the forest [100]")
    parser.add_argument("--latency-rate", type=float, default=1000.0, help="offered rec/s [1000]")
    parser.add_argument("--latency-seconds", type=float, help="duration of (d) [20]")
    parser.add_argument("--naive-records", type=int, help="records of the naive loop [2000]")
    parser.add_argument("--train-rows", type=int, help="training rows [10000]")
    parser.add_argument("--partitions", type=int, default=4, help="input partitions [4]")
    parser.add_argument("--shadow-reps", type=int, help="(i) runs without / with shadow [3]")
    parser.add_argument(
        "--latency-pairs", type=int, help="(d) worker / passthrough pairs on confluent [3]"
    )
    parser.add_argument("--bootstrap-servers", help="broker (default: the local one, or start one)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"markdown [{RESULTS}]")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short end-to-end check: 20k records, 500 naive, 5 s of latency, 4k training "
        "rows, 2 shadow runs each, 2 latency pairs",
    )
    a = parser.parse_args(argv)

    def pick(given: Any, full: Any, quick: Any) -> Any:
        return given if given is not None else (quick if a.quick else full)

    opts = Options(
        records=pick(a.records, 200_000, 20_000),
        features=a.features,
        trees=a.trees,
        latency_rate=a.latency_rate,
        latency_seconds=pick(a.latency_seconds, 20.0, 5.0),
        naive_records=pick(a.naive_records, 2000, 500),
        train_rows=pick(a.train_rows, 10_000, 4000),
        partitions=a.partitions,
        bootstrap_servers=a.bootstrap_servers,
        output=a.output,
        shadow_reps=pick(a.shadow_reps, 3, 2),
        latency_pairs=pick(a.latency_pairs, 3, 2),
    )
    names = ("records", "features", "trees", "naive_records", "train_rows", "partitions")
    for name in (*names, "shadow_reps", "latency_pairs"):
        if getattr(opts, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if opts.latency_rate * opts.latency_seconds < 1:
        raise UserError("--latency-rate x --latency-seconds must offer at least one record")
    if opts.naive_records > opts.records:
        raise UserError("--naive-records cannot exceed --records (it reads the same topic)")
    return opts


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    records: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class Latency:
    offered_rate: float
    achieved_rate: float
    records: int
    created_ms: list[float]
    """Input CreateTime -> prediction CreateTime, per record."""
    received_ms: list[float]
    """Input CreateTime -> prediction received here, per record."""

    def percentile(self, which: str, q: float) -> float:
        import numpy as np

        values = self.created_ms if which == "created" else self.received_ms
        return float(np.percentile(values, q))


@dataclass(frozen=True)
class Failed:
    """A phase that may fail without failing the run (the worker on confluent, while that
    client is being brought up): the reason stands in its row instead of a number."""

    reason: str


CLIENTS: tuple[KafkaClient, ...] = ("kafka-python", "confluent")
LATENCY_TARGET_MS: dict[str, int] = {"kafka-python": 100, "confluent": 50}
"""p99 at the offered load, default settings (the confluent path is the low-latency one)."""


@dataclass
class Results:
    """Per-client measurements are keyed by ``FORESTREAM_KAFKA_CLIENT``'s value."""

    options: Options
    passthrough: dict[KafkaClient, Throughput] = field(default_factory=dict)
    naive: Throughput | None = None
    worker: dict[KafkaClient, Throughput | Failed] = field(default_factory=dict)
    worker_other: dict[KafkaClient, Throughput | Failed] = field(default_factory=dict)
    """(c) again with pipelining the other way round than the client's default: what it is
    worth on each client (the default is where it was measured to pay)."""
    worker_rss_mb: dict[KafkaClient, float] = field(default_factory=dict)
    """Peak RSS of the worker process in (c)."""
    model_mb: float | None = None
    """What loading the model adds to a Python process's RSS (the RSS target's base)."""
    reference: Throughput | None = None
    """(e) the hand-written confluent-kafka loop."""
    latency: dict[KafkaClient, Latency | Failed] = field(default_factory=dict)
    passthrough_latency: dict[KafkaClient, Latency] = field(default_factory=dict)
    worker_batch: dict[KafkaClient, float | None] = field(default_factory=dict)
    """Mean micro-batch size the worker reported in (c); (d)'s is ``latency_batch``."""
    latency_batch: dict[KafkaClient, float | None] = field(default_factory=dict)
    exactly_once: dict[KafkaClient, Throughput | Failed] = field(default_factory=dict)
    """(f) (c) with ``--guarantee exactly-once``: a transaction per micro-batch."""
    exactly_once_latency: dict[KafkaClient, Latency | Failed] = field(default_factory=dict)
    """(f) (d) with ``--guarantee exactly-once``, timed to when the outputs became readable
    (read back with ``read_committed``, i.e. once their transaction committed)."""
    load: list[tuple[float, float, float]] = field(default_factory=list)
    """1/5/15-minute load averages at the start and the end: the cores may be shared."""
    engines: list[dict[str, Any]] = field(default_factory=list)
    """(g) the forest alone, per engine (:func:`bench.engines.engine_rows`)."""
    avro: AvroResult | Failed | None = None
    """(h) the worker on Avro input and decode per record, JSON vs Avro (:mod:`bench.avro`)."""
    shadow: ShadowResult | Failed | None = None
    """(i) served latency without / with a shadow candidate (:mod:`bench.shadow`)."""
    floor: FloorResult | Failed | None = None
    """(d) on confluent: worker / passthrough pairs (:mod:`bench.floor`); ``latency`` and
    ``passthrough_latency`` then hold each side's runs pooled."""


def say(message: str) -> None:
    """A timestamped progress line on stderr: what every bench command prints as it goes."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- Kafka plumbing ----------------------------------------------------------------------------


def reachable(address: str) -> bool:
    from forestream.edge.factory import admin_client

    try:
        admin_client(address, timeout_s=3.0).close()
    except UserError:
        return False
    return True


@contextlib.contextmanager
def broker(given: str | None) -> Iterator[str]:
    """The given or local broker; if none answers, a temporary one for this run only."""
    from forestream.runtime.settings import default_bootstrap

    address = given or os.environ.get("FORESTREAM_BOOTSTRAP_SERVERS") or default_bootstrap()
    if reachable(address):
        yield address
        return
    if given:
        raise UserError(f"cannot reach Kafka at {given}")
    from forestream.local import kafka as local_kafka

    with tempfile.TemporaryDirectory(prefix="forestream-bench-kafka-") as data_dir:
        print(f"no broker at {address}: starting a temporary one", file=sys.stderr)
        info = local_kafka.start(Path(data_dir))
        try:
            yield info.address
        finally:
            local_kafka.stop(Path(data_dir))


def fill_topic(bootstrap: str, topic: str, values: list[bytes], prefix: str) -> None:
    """Write the input records up front (acks checked), so (a)-(c) only measure consuming."""
    from forestream.edge.factory import acking_producer
    from forestream.producer.sending import OutgoingRecord, send_records

    producer = acking_producer(bootstrap, client_id="bench-fill")
    try:
        send_records(
            producer,
            topic,
            (OutgoingRecord(f"{prefix}-{i}".encode(), v) for i, v in enumerate(values)),
        )
    finally:
        producer.close(10)


def read_all(
    bootstrap: str, topic: str, expected: int, timeout_s: float, on_record: Callable[[Any], None]
) -> int:
    """Feed every record of ``topic`` to ``on_record`` until ``expected`` arrived (bounded)."""
    from kafka import TopicPartition

    from forestream.edge.factory import make_consumer

    consumer = make_consumer(bootstrap, max_poll_records=5000)
    try:
        deadline = time.monotonic() + timeout_s
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        seen = 0
        while seen < expected:
            if time.monotonic() > deadline:
                raise BenchFailed(f"only {seen} of {expected} records on {topic} in {timeout_s}s")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    on_record(record)
                seen += len(records)
        return seen
    finally:
        consumer.close()


def topic_size(bootstrap: str, topic: str) -> int:
    """Records in a fresh topic (its end offsets; nothing was deleted from it)."""
    from kafka import TopicPartition

    from forestream.edge.factory import make_consumer

    consumer = make_consumer(bootstrap)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        return sum(consumer.end_offsets([TopicPartition(topic, p) for p in partitions]).values())
    finally:
        consumer.close()


def output_span(bootstrap: str, topic: str, expected: int, timeout_s: float) -> Throughput:
    """Records/s between the first and last CreateTime on ``topic``, once it is complete.

    Called after the process under test finished (all acked), so a short topic means lost or
    dead-lettered records: fail at once instead of waiting for records that cannot come.
    """
    size = topic_size(bootstrap, topic)
    if size < expected:
        raise BenchFailed(f"{topic} holds {size} records, expected {expected}")
    stamps: list[int] = []
    read_all(bootstrap, topic, expected, timeout_s, lambda r: stamps.append(r.timestamp))
    seconds = (max(stamps) - min(stamps)) / 1000
    # n records span n-1 gaps; with a 1 ms clock the span of a tiny run can be 0
    return Throughput(len(stamps) - 1, max(seconds, 0.001))


def phase_timeout(records: int, floor_s: float = 120.0) -> float:
    """Generous bound for a phase: a stuck phase must fail, a slow machine must not."""
    return max(floor_s, records / 200)


# -- (a) passthrough ---------------------------------------------------------------------------


class Ends(Protocol):
    """The two ends of a passthrough on one client: what differs between the libraries."""

    def poll(self, max_records: int) -> list[Any]: ...
    def forward(self, batch: list[Any]) -> None:
        """Hand every record of ``batch`` to the producer (acks are awaited by ``settle``)."""

    def settle(self) -> None:
        """Return once everything forwarded is acknowledged."""

    def commit(self, batch: list[Any]) -> None:
        """Commit past ``batch`` without waiting for the coordinator."""

    def close(self) -> None: ...


class KafkaPythonEnds:
    def __init__(self, bootstrap: str, source: str, sink: str, group: str) -> None:
        from forestream.edge.factory import make_consumer, make_producer

        self.sink = sink
        self.consumer = make_consumer(bootstrap, source, group_id=group, max_poll_records=MAX_BATCH)
        self.producer = make_producer(bootstrap)
        self.futures: list[Any] = []

    def poll(self, max_records: int) -> list[Any]:
        polled = self.consumer.poll(timeout_ms=200, max_records=max_records)
        return [r for rs in polled.values() for r in rs]

    def forward(self, batch: list[Any]) -> None:
        self.futures = [self.producer.send(self.sink, key=r.key, value=r.value) for r in batch]

    def settle(self) -> None:
        self.producer.flush()
        if any(f.failed() for f in self.futures):
            raise BenchFailed("passthrough: the broker refused records")

    def commit(self, batch: list[Any]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        self.consumer.commit_async(
            {
                TopicPartition(r.topic, r.partition): OffsetAndMetadata(r.offset + 1, "", -1)
                for r in batch
            }
        )

    def close(self) -> None:
        self.producer.close(timeout=10)
        self.consumer.close(autocommit=False)


class ConfluentEnds:
    """librdkafka's ends: ``consume(n, timeout)``, ``produce`` per record, ``flush``."""

    def __init__(self, bootstrap: str, source: str, sink: str, group: str) -> None:
        from bench import confluent_clients

        self.sink = sink
        self.consumer = confluent_clients.make_consumer(bootstrap, source, group)
        self.producer = confluent_clients.make_producer(bootstrap)
        self.refused: list[Any] = []

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.refused.append(err)

    def poll(self, max_records: int) -> list[Any]:
        from bench.confluent_clients import POLL_TIMEOUT_S
        from forestream.edge.confluent import consume_available

        # the client's floor: return with the first records, as kafka-python's poll does
        batch = consume_available(self.consumer, max_records, POLL_TIMEOUT_S)
        for msg in batch:
            if msg.error() is not None:
                raise BenchFailed(f"passthrough: {msg.error()}")
        return batch

    def forward(self, batch: list[Any]) -> None:
        produce = self.producer.produce
        for m in batch:
            produce(self.sink, key=m.key(), value=m.value(), on_delivery=self._delivered)
        self.producer.poll(0)

    def settle(self) -> None:
        if self.producer.flush(60) or self.refused:
            raise BenchFailed(f"passthrough: the broker refused records: {self.refused[:1]}")

    def commit(self, batch: list[Any]) -> None:
        from confluent_kafka import TopicPartition

        ends = {(m.topic(), m.partition()): m.offset() + 1 for m in batch}  # offsets ascend
        self.consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=True
        )

    def close(self) -> None:
        self.producer.flush(10)
        self.consumer.close()


def passthrough(
    bootstrap: str,
    source: str,
    sink: str,
    records: int,
    group: str,
    client: KafkaClient = "kafka-python",
) -> None:
    """The worker's loop without decoding or scoring, pipelined as the worker is: poll batch
    N+1 while N's acks come in, then await them, commit N without waiting, send N+1."""
    ends: Ends = (ConfluentEnds if client == "confluent" else KafkaPythonEnds)(
        bootstrap, source, sink, group
    )
    try:
        taken = done = 0
        out: list[Any] | None = None
        deadline = time.monotonic() + phase_timeout(records)
        while done < records:
            if time.monotonic() > deadline:
                raise BenchFailed(f"passthrough moved {done} of {records} records in time")
            batch = ends.poll(min(MAX_BATCH, records - taken)) if taken < records else []
            taken += len(batch)
            if out is not None:
                ends.settle()
                ends.commit(out)
                done += len(out)
                out = None
            if batch:
                ends.forward(batch)
                out = batch
    finally:
        ends.close()


# -- (b) naive ---------------------------------------------------------------------------------


def naive_loop(
    bootstrap: str,
    source: str,
    sink: str,
    records: int,
    group: str,
    pipeline: Any,
    names: list[str],
) -> Throughput:
    """What a first attempt looks like: each record decoded, scored and sent on its own."""
    import pandas as pd

    from forestream.edge.factory import make_consumer, make_producer

    classes = [str(c) for c in pipeline.classes_]
    consumer = make_consumer(bootstrap, source, group_id=group)
    producer = make_producer(bootstrap)
    try:
        done, started = 0, None
        deadline = time.monotonic() + phase_timeout(records * 50)
        while done < records:
            if time.monotonic() > deadline:
                raise BenchFailed(f"naive loop scored {done} of {records} records in time")
            for batch in consumer.poll(timeout_ms=200).values():
                for r in batch[: records - done]:
                    started = started or time.perf_counter()
                    row = json.loads(r.value)
                    frame = pd.DataFrame([[row[n] for n in names]], columns=names)
                    probabilities = pipeline.predict_proba(frame)[0].tolist()
                    best = max(range(len(classes)), key=probabilities.__getitem__)
                    value = {
                        "prediction": classes[best],
                        "probabilities": dict(zip(classes, probabilities, strict=True)),
                        "model_version": "naive",
                        "source": {"topic": r.topic, "partition": r.partition, "offset": r.offset},
                        "event_time": r.timestamp,
                        "scored_at": int(time.time() * 1000),
                    }
                    producer.send(sink, key=r.key, value=json.dumps(value).encode())
                    done += 1
        producer.flush()
        assert started is not None
        return Throughput(done, time.perf_counter() - started)
    finally:
        producer.close(timeout=10)
        consumer.close(autocommit=False)


# -- (c), (d) the worker -------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerTopics:
    input: str
    output: str
    dlq: str
    models: str


def start_worker(
    bootstrap: str,
    topics: WorkerTopics,
    store: Path,
    group: str,
    log_path: Path,
    max_records: int | None = None,
    client: KafkaClient = "kafka-python",
    pipeline: bool = True,
    guarantee: str = "at-least-once",
    input_format: str | None = "json",
    env: dict[str, str] | None = None,
    wrap: Sequence[str] = (),
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """The worker on ``client``, set explicitly: an inherited setting must not relabel a row.

    ``wrap`` goes before the command (a profiler that runs it as its child); ``cwd`` is where it
    runs, whose checkout ``python -m forestream`` imports first; ``input_format=None`` leaves
    the flag out (its default is JSON; a worker older than the flag does not know it).
    """
    from bench.workload import MODEL_NAME

    cmd = [
        *wrap, sys.executable, "-m", "forestream", "worker",
        "--bootstrap-servers", bootstrap,
        "--input-topic", topics.input, "--output-topic", topics.output,
        "--dlq-topic", topics.dlq, "--models-topic", topics.models,
        "--store", str(store), "--name", MODEL_NAME, "--group", group,
        "--log-format", "json", "--guarantee", guarantee,
        "--transactional-id", f"{group}.tx",
    ]  # fmt: skip
    if input_format is not None:
        cmd += ["--input-format", input_format]
    if max_records is not None:
        cmd += ["--max-records", str(max_records)]
    with log_path.open("ab") as log:
        return subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=cwd,
            env={
                **os.environ,
                "FORESTREAM_KAFKA_CLIENT": client,
                "FORESTREAM_PIPELINE": str(pipeline).lower(),
                **(env or {}),
            },
        )


def worker_died(proc: subprocess.Popen[bytes], log_path: Path) -> BenchFailed:
    tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
    return BenchFailed(
        f"process under test exited with code {proc.returncode}: " + " | ".join(tail)
    )


ERROR_LINE = re.compile(r"^(error:|(\w+\.)*\w+(Error|Exception|Exit)\b)")
"""A plain stderr line that reports an error: the CLI's ``error: ...`` or an exception's line
(a traceback's last line; its frames are indented)."""


def first_error(log_path: Path) -> str | None:
    """The first error a log reports (a JSON event at level error or above, or a plain error
    line), shortened for a table cell."""
    with contextlib.suppress(OSError):
        for line in log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict):
                if str(event.get("level", "")).lower() in ("error", "critical", "fatal"):
                    extra = [f"{k}={v}" for k, v in event.items() if k in ("error", "exc_info")]
                    return " ".join([str(event.get("event", "")), *extra])[:200]
            elif ERROR_LINE.match(line):
                return line.strip()[:200]
    return None


def allowed_to_fail(measure: Callable[[], Any], log_path: Path) -> Any:
    """``measure()``, or a :class:`Failed` saying why it did not finish."""
    try:
        return measure()
    except BenchFailed as exc:
        return Failed(first_error(log_path) or str(exc)[:200])


def mean_batch(log_path: Path) -> float | None:
    """Records per micro-batch from the worker's final summary log line, if it wrote one."""
    with contextlib.suppress(OSError):
        for line in reversed(log_path.read_text(errors="replace").splitlines()):
            with contextlib.suppress(ValueError, AttributeError):
                event = json.loads(line)
                if event.get("event") == "worker_final_summary" and event.get("batches"):
                    return float(event["records_in"]) / float(event["batches"])
    return None


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def pipelined_by_default(client: KafkaClient) -> bool:
    from forestream.worker.settings import WorkerSettings

    return WorkerSettings(kafka_client=client, pipeline=None).pipelined


def peak_rss_mb(pid: int) -> float | None:
    """The process's high-water RSS so far (Linux ``VmHWM``), None once it is gone."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def wait_watching_rss(proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Wait for ``proc`` to exit, sampling its peak RSS (read before it is reaped)."""
    deadline = time.monotonic() + timeout_s
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout_s)
        time.sleep(0.2)
    return peak


def worker_throughput(
    bootstrap: str,
    topics: WorkerTopics,
    store: Path,
    records: int,
    group: str,
    log_path: Path,
    client: KafkaClient = "kafka-python",
    pipeline: bool = True,
    guarantee: str = "at-least-once",
    input_format: str = "json",
    env: dict[str, str] | None = None,
) -> tuple[Throughput, float]:
    """(rate, peak RSS in MB) of one worker scoring ``records`` and exiting."""
    proc = start_worker(
        bootstrap, topics, store, group, log_path, records, client, pipeline, guarantee,
        input_format, env,
    )  # fmt: skip
    try:
        peak = wait_watching_rss(proc, phase_timeout(records, floor_s=300.0))
    except subprocess.TimeoutExpired:
        raise BenchFailed(f"worker did not score {records} records in time") from None
    finally:
        stop_worker(proc)  # no-op once it exited on its own (--max-records)
    if proc.returncode != 0:
        raise worker_died(proc, log_path)
    span = output_span(bootstrap, topics.output, records, timeout_s=phase_timeout(records))
    return span, peak


MODEL_RSS_PROBE = """
import gc, sys
from pathlib import Path
import sklearn.ensemble, pandas, joblib
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
gc.collect(); before = rss()
model = joblib.load(sys.argv[1])
gc.collect(); print(rss() - before)
"""


def model_rss_mb(artifact: Path) -> float:
    """What the model itself adds to a process that already imported sklearn and pandas."""
    out = subprocess.run(
        [sys.executable, "-c", MODEL_RSS_PROBE, str(artifact)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(out.stdout.strip())


def start_passthrough(
    bootstrap: str,
    source: str,
    sink: str,
    records: int,
    group: str,
    log_path: Path,
    client: KafkaClient = "kafka-python",
) -> subprocess.Popen[bytes]:
    """(a)'s loop in its own process, as the worker runs in its own: the latency floor."""
    code = (
        "import sys; from bench.throughput import passthrough; "
        "passthrough(*sys.argv[1:4], int(sys.argv[4]), *sys.argv[5:7])"
    )
    args = [bootstrap, source, sink, str(records), group, client]
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=Path(__file__).resolve().parent.parent,
        )


def offered_load_latency(
    bootstrap: str,
    source: str,
    sink: str,
    values: list[bytes],
    rate: float,
    seconds: float,
    start: Callable[[int], subprocess.Popen[bytes]],
    log_path: Path,
    before_stop: Callable[[], None] | None = None,
) -> Latency:
    """Offer ``rate`` rec/s for ``seconds`` to a warmed-up process; time every output record.

    ``start(records)`` launches the process under test (it may exit after ``records``);
    ``before_stop()``, if given, runs once every output arrived, while it still runs. Each
    input gets an explicit CreateTime, remembered by key, so outputs that do not carry the
    input timestamp (the passthrough's) are timed the same way as predictions.
    """
    from kafka import TopicPartition

    from forestream.edge.factory import make_consumer, make_producer
    from forestream.producer.pacing import RateSchedule

    count = int(rate * seconds)
    consumer = make_consumer(bootstrap)
    tps = [TopicPartition(sink, p) for p in sorted(consumer.partitions_for_topic(sink) or [])]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    producer = make_producer(bootstrap)
    proc = start(WARMUP_RECORDS + count)
    sent_ms: dict[bytes, int] = {}
    created: list[float] = []
    received: list[float] = []
    sent_span: list[float] = []

    def send(key: bytes, i: int) -> None:
        stamp = int(time.time() * 1000)
        sent_ms[key] = stamp
        producer.send(source, key=key, value=values[i % len(values)], timestamp_ms=stamp)

    def offer() -> None:
        schedule = RateSchedule(rate=rate, start=time.monotonic())
        began = time.monotonic()
        for i in range(count):
            wait = schedule.wait_s(time.monotonic())
            if wait > 0.0005:
                time.sleep(wait)
            send(f"lat-{i}".encode(), i)
            schedule.mark_sent()
        producer.flush()
        sent_span.append(time.monotonic() - began)

    def receive(prefix: bytes, expected: int, timeout_s: float) -> int:
        seen = 0
        deadline = time.monotonic() + timeout_s
        while seen < expected:
            if proc.poll() not in (None, 0):
                raise worker_died(proc, log_path)
            if time.monotonic() > deadline:
                raise BenchFailed(f"{seen} of {expected} outputs on {sink} within {timeout_s:.0f}s")
            for batch in consumer.poll(timeout_ms=100).values():
                now_ms = time.time() * 1000
                for r in batch:
                    if not r.key.startswith(prefix):
                        continue
                    seen += 1
                    if prefix == b"lat-":
                        created.append(r.timestamp - sent_ms[r.key])
                        received.append(now_ms - sent_ms[r.key])
        return seen

    try:
        # warm-up: model loaded, group joined, first fetches done before the clock matters
        for i in range(WARMUP_RECORDS):
            send(f"warm-{i}".encode(), i)
        producer.flush()
        receive(b"warm-", WARMUP_RECORDS, timeout_s=180)
        sender = threading.Thread(target=offer, name="offered-load", daemon=True)
        sender.start()
        receive(b"lat-", count, timeout_s=seconds + 120)
        sender.join(timeout=30)
        if before_stop is not None:
            before_stop()
    finally:
        stop_worker(proc)
        producer.close(timeout=10)
        consumer.close()
    achieved = count / sent_span[0] if sent_span and sent_span[0] > 0 else 0.0
    return Latency(rate, achieved, len(created), created, received)


# -- report --------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, " + (
        f"Python {platform.python_version()}"
    )


def table_rows(res: Results) -> list[tuple[str, str, str]]:
    """(measurement, value, note) rows shared by the terminal table and the markdown file."""
    o = res.options
    rows: list[tuple[str, str, str]] = []
    pt, workers = res.passthrough, res.worker
    notes = {
        "kafka-python": f"{o.records:,} records, poll({MAX_BATCH}) -> send; next poll; flush, "
        "commit_async: the client's ceiling, pipelined as the worker is",
        "confluent": f"{o.records:,} records, consume({MAX_BATCH}) -> produce; next consume; "
        "flush, async commit",
    }
    for client, t in pt.items():
        rows.append((f"(a) passthrough, {client}", rate(t), notes[client]))
    if len(pt) == 2:
        rows.append(
            ratio_row(
                "passthrough confluent / kafka-python",
                pt["confluent"],
                pt["kafka-python"],
                "x",
                "the clients' ceilings compared",
            )
        )
    if res.naive:
        rows.append(
            ("(b) naive per-record loop", rate(res.naive),
             f"{res.naive.records:,} records, predict_proba on one row each")
        )  # fmt: skip
    for client, t in workers.items():
        note = f"{o.records:,} records, 1 process, max batch {MAX_BATCH}"
        rows.append(
            (
                f"(c) forestream worker, {client}",
                rate(t),
                note + batch_note(res.worker_batch.get(client)),
            )
        )
        if client in res.worker_other:
            other = res.worker_other[client]
            on = pipelined_by_default(client)
            rows.append((f"(c) worker, {client}, pipelining {'off' if on else 'on'}",
                         rate(other), "not the default: "
                         + ("one batch at a time (score, publish, await acks, commit)" if on
                            else "scoring the next batch while one is acknowledged")))  # fmt: skip
            pipelined, serial = (t, other) if on else (other, t)
            rows.append(ratio_row(f"pipelining gain, {client}", pipelined, serial, "x",
                                  "pipelined / one batch at a time; default "
                                  + ("on" if on else "off")))  # fmt: skip
    if res.reference:
        rows.append(
            ("(e) hand-written confluent-kafka loop", rate(res.reference),
             f"{o.records:,} records, consume({MAX_BATCH}, 0.05) -> DataFrame -> predict_proba "
             "-> produce, flush, commit")
        )  # fmt: skip
    cf, kp = workers.get("confluent"), workers.get("kafka-python")
    if cf and kp:
        rows.append(
            ratio_row(
                "worker confluent / worker kafka-python", cf, kp, "x", "target >= 2.5x", target=2.5
            )
        )
    if cf and res.reference:
        rows.append(
            ratio_row(
                "worker confluent / hand-written loop",
                cf,
                res.reference,
                "x",
                "forestream vs the loop a user would write; target >= 2.5x (#24)",
                target=2.5,
            )
        )
    share_targets: dict[str, float | None] = {"kafka-python": 0.8, "confluent": None}
    for client, t in workers.items():
        if client in pt:
            target = share_targets.get(client)
            rows.append(
                ratio_row(
                    f"worker / passthrough, {client}",
                    t,
                    pt[client],
                    "%",
                    f"target >= {target:.0%}" if target else "no target: the client's ceiling",
                    target=target,
                )
            )
    for client, peak in res.worker_rss_mb.items():
        if res.model_mb is None:
            break
        limit = res.model_mb + 250
        rows.append(
            (f"worker peak RSS, {client}", f"{peak:,.0f} MB",
             f"model adds {res.model_mb:,.0f} MB to a process; target <= model + 250 MB "
             f"= {limit:,.0f} MB: " + verdict(peak <= limit))
        )  # fmt: skip
    if kp and res.naive:
        rows.append(
            ratio_row("worker kafka-python / naive", kp, res.naive, "x", "target >= 50x", target=50)
        )
    for client, lat in res.latency.items():
        name = f"(d) worker latency, {client}"
        if isinstance(lat, Failed):
            rows.append((name, "failed", lat.reason))
            continue
        p99 = lat.percentile("created", 99)
        limit_ms = LATENCY_TARGET_MS[client]
        rows.append(
            (f"{name} p50 / p99", percentiles(lat, "created"),
             f"input CreateTime -> prediction CreateTime at {lat.offered_rate:,.0f} rec/s "
             f"offered ({lat.achieved_rate:,.0f} achieved, {lat.records:,} records"
             f"{batch_note(res.latency_batch.get(client))}); target p99 <= {limit_ms} ms: "
             + verdict(p99 <= limit_ms))
        )  # fmt: skip
        rows.append(
            (f"{name} as received p50 / p99", percentiles(lat, "received"),
             "input CreateTime -> prediction read back by the benchmark")
        )  # fmt: skip
    for client, eos in res.exactly_once.items():
        note = "(c) with --guarantee exactly-once: a transaction per micro-batch"
        rows.append((f"(f) worker exactly-once, {client}", rate(eos), note))
        if client in workers:
            rows.append(ratio_row(f"exactly-once / at-least-once, {client}", eos,
                                  workers[client], "%", "throughput kept"))  # fmt: skip
    for client, lat in res.exactly_once_latency.items():
        name = f"(f) latency exactly-once, {client}"
        if isinstance(lat, Failed):
            rows.append((name, "failed", lat.reason))
            continue
        rows.append(
            (f"{name} p50 / p99", percentiles(lat, "received"),
             f"input CreateTime -> prediction readable to read_committed (transaction "
             f"committed), at {lat.offered_rate:,.0f} rec/s offered")
        )  # fmt: skip
    for client, lat in res.passthrough_latency.items():
        pairs = client == "confluent" and isinstance(res.floor, FloorResult)
        rows.append(
            (f"(d) passthrough latency, {client} p50 / p99", percentiles(lat, "created"),
             "same load through (a)'s loop in its own process: the client's floor"
             + ("; the pairs' runs pooled, as the worker's row above" if pairs else ""))
        )  # fmt: skip
    rows += floor_rows(res.floor)
    rows += engine_table_rows(res.engines)
    rows += avro_rows(res.avro, workers.get("kafka-python"))
    rows += shadow_rows(res.shadow)
    return rows


def engine_table_rows(engines: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(g): µs per record of the forest alone at batch 1 / 100 / 1,000, per engine."""
    from bench.engines import BATCHES

    rows: list[tuple[str, str, str]] = []
    for e in engines:
        name = f"(g) forest per record, {e['engine']}"
        if "error" in e:
            rows.append((name, "not run", e["error"]))
            continue
        figures = " / ".join(f"{e['us_per_record'][str(b)]:.1f}" for b in BATCHES)
        parity = (
            "bit-identical to predict_proba"
            if e["bit_identical"]
            else f"max abs diff {e['max_abs_diff']:.2g} from predict_proba"
        )
        note = f"batch {' / '.join(f'{b:,}' for b in BATCHES)}, one thread's CPU time; {parity}"
        if "compiled" in e["engine"]:
            at_1000 = e["us_per_record"][str(BATCHES[-1])]
            note += f"; target <= 5 µs at 1,000: {verdict(at_1000 <= 5.0)}"
        rows.append((name, f"{figures} µs", note))
    return rows


def rate(t: Throughput | Failed) -> str:
    return "failed" if isinstance(t, Failed) else f"{t.rate:,.0f} rec/s"


def ratio_row(
    name: str,
    num: Throughput | Failed,
    den: Throughput | Failed,
    unit: str,
    note: str,
    target: float | None = None,
) -> tuple[str, str, str]:
    """``num`` / ``den`` as ``unit`` ("x" or "%"), with a verdict when there is a target."""
    if isinstance(num, Failed) or isinstance(den, Failed):
        return name, "n/a", "failed: " + (num if isinstance(num, Failed) else den).reason
    ratio = num.rate / den.rate
    shown = f"{ratio:.0%}" if unit == "%" else f"{ratio:,.2f}x" if ratio < 10 else f"{ratio:,.0f}x"
    if target is not None:
        note += ": " + verdict(ratio >= target)
    return name, shown, note


def load_note(res: Results) -> str:
    """Load averages before/after: on a shared machine they explain more than the code."""
    if not res.load:
        return ""
    shown = " -> ".join("/".join(f"{x:.1f}" for x in load) for load in res.load)
    return f"; load average (1/5/15 min) {shown}"


def percentiles(lat: Latency, which: str) -> str:
    return f"{lat.percentile(which, 50):.0f} / {lat.percentile(which, 99):.0f} ms"


def batch_note(mean: float | None) -> str:
    return f", mean batch {mean:,.0f}" if mean is not None else ""


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def render(res: Results) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    o = res.options
    table = Table(
        title=f"forestream throughput: {o.features} features, RF {o.trees} trees",
        caption=machine() + load_note(res),
    )
    table.add_column("measurement")
    table.add_column("result", justify="right")
    table.add_column("notes")
    for row in table_rows(res):
        table.add_row(*map(escape, row))  # a failure's reason may hold [brackets]
    Console().print(table)


def markdown(res: Results) -> str:
    o = res.options
    lines = [
        f"# Benchmark ({datetime.now(UTC).isoformat(timespec='seconds')})",
        "",
        f"Machine: {machine()}{load_note(res)}. Command: `{command_line(o)}`.",
        "",
        "| measurement | result | notes |",
        "|---|---:|---|",
        *("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table_rows(res)),
        "",
        "Rates of (a), (c) and (e) are output records over the span between the first and the "
        "last output record's CreateTime (stamped by the sending client); (b) is timed in "
        "process. Latencies use the input record's CreateTime; 'CreateTime' rows end at the "
        "output record's CreateTime (set by the worker's producer after scoring, before the "
        "broker's ack), 'as received' rows end when the benchmark's consumer got the output. "
        "kafka-python and confluent rows run the same code with `FORESTREAM_KAFKA_CLIENT` "
        "set accordingly; (e) is `bench/reference_confluent.py`, the confluent-kafka loop a "
        "user would write by hand, on the same client settings.",
    ]
    return "\n".join(lines).rstrip() + "\n"


def command_line(o: Options) -> str:
    return (
        f"python -m bench.throughput --records {o.records} "
        f"--features {o.features} --trees {o.trees} --latency-rate {o.latency_rate:g} "
        f"--latency-seconds {o.latency_seconds:g} --naive-records {o.naive_records} "
        f"--train-rows {o.train_rows} --partitions {o.partitions} --shadow-reps {o.shadow_reps} "
        f"--latency-pairs {o.latency_pairs}"
    )


RESULTS_SCHEMA = 1
"""Version of :func:`results_json`'s layout; ``bench.report`` refuses any other."""


def results_json(res: Results, written_at: datetime | None = None) -> dict[str, object]:
    """The run, machine-readable: what ``bench.report`` renders (see that module)."""
    o = res.options
    throughput: list[dict[str, object]] = []
    latency: list[dict[str, object]] = []

    def add_rate(phase: str, client: str, t: Throughput | Failed | None) -> None:
        if isinstance(t, Throughput):
            throughput.append(
                {"phase": phase, "client": client, "records": t.records, "rate": t.rate}
            )

    def add_latency(phase: str, client: str, lat: Latency | Failed, which: str) -> None:
        if isinstance(lat, Latency):
            latency.append(
                {"phase": phase, "client": client, "offered_rate": lat.offered_rate,
                 "p50_ms": lat.percentile(which, 50), "p99_ms": lat.percentile(which, 99)}
            )  # fmt: skip

    for client, t in res.passthrough.items():
        add_rate("passthrough", client, t)
    add_rate("naive per-record loop", "kafka-python", res.naive)
    for client, w in res.worker.items():
        add_rate("worker", client, w)
    for client, w in res.worker_other.items():
        on = pipelined_by_default(client)
        add_rate(f"worker, pipelining {'off' if on else 'on'}", client, w)
    add_rate("hand-written loop", "confluent", res.reference)
    for client, w in res.exactly_once.items():
        add_rate("worker exactly-once", client, w)
    if isinstance(res.avro, AvroResult):
        add_rate("worker, Avro input", "kafka-python", res.avro.worker)
    for client, lat in res.latency.items():
        add_latency("worker", client, lat, "created")
        add_latency("worker, as received", client, lat, "received")
    for client, lat in res.exactly_once_latency.items():
        add_latency("worker exactly-once", client, lat, "received")
    for client, plat in res.passthrough_latency.items():
        add_latency("passthrough", client, plat, "created")
    if isinstance(res.shadow, ShadowResult):
        for variant in ("without", "with"):  # the first run of each: one bar per phase
            add_latency(f"worker, {variant} shadow", "confluent", res.shadow.latency[variant][0],
                        "created")  # fmt: skip
    when = written_at or datetime.now(UTC)
    return {
        "schema": RESULTS_SCHEMA,
        "written_at": when.isoformat(timespec="seconds"),
        "written_by": "python -m bench.throughput",
        "machine": machine(),
        "load": [list(load) for load in res.load],
        "command": command_line(o),
        "title": f"{o.features} features, RandomForest {o.trees} trees",
        "rows": [{"measurement": m, "result": r, "notes": n} for m, r, n in table_rows(res)],
        "throughput": throughput,
        "latency": latency,
        "engines": res.engines,
        "avro": avro_figures(res.avro) if isinstance(res.avro, AvroResult) else None,
        "shadow": shadow_figures(res.shadow) if isinstance(res.shadow, ShadowResult) else None,
        "floor": floor_figures(res.floor) if isinstance(res.floor, FloorResult) else None,
    }


# -- main ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Every topic of one run: each process under test writes (and, under load, reads) its own."""

    input: str
    models: str
    naive: str
    reference: str
    worker: dict[KafkaClient, WorkerTopics]
    worker_other: dict[KafkaClient, WorkerTopics]
    latency: dict[KafkaClient, WorkerTopics]
    exactly_once: dict[KafkaClient, WorkerTopics]
    exactly_once_latency: dict[KafkaClient, WorkerTopics]
    passthrough: dict[KafkaClient, str]
    latency_passthrough: dict[KafkaClient, tuple[str, str]]
    """(input, output) of (d)'s passthrough."""
    avro: WorkerTopics
    """(h): its own input, the same records as Avro."""

    @classmethod
    def of(cls, prefix: str) -> Layout:
        source, models = f"{prefix}.in", f"{prefix}.models"

        def worker(tag: str, source: str) -> WorkerTopics:
            return WorkerTopics(source, f"{prefix}.{tag}.out", f"{prefix}.{tag}.dlq", models)

        return cls(
            input=source,
            models=models,
            naive=f"{prefix}.naive",
            reference=f"{prefix}.reference",
            worker={c: worker(c, source) for c in CLIENTS},
            worker_other={c: worker(f"{c}.other", source) for c in CLIENTS},
            latency={c: worker(f"{c}.lat", f"{prefix}.{c}.lat.in") for c in CLIENTS},
            exactly_once={c: worker(f"{c}.eos", source) for c in CLIENTS},
            exactly_once_latency={
                c: worker(f"{c}.eos.lat", f"{prefix}.{c}.eos.lat.in") for c in CLIENTS
            },
            passthrough={c: f"{prefix}.{c}.passthrough" for c in CLIENTS},
            latency_passthrough={
                c: (f"{prefix}.{c}.lat.pass.in", f"{prefix}.{c}.lat.pass.out") for c in CLIENTS
            },
            avro=worker("avro", f"{prefix}.avro.in"),
        )

    def all(self) -> list[str]:
        workers = [
            *self.worker.values(), *self.worker_other.values(), *self.latency.values(),
            *self.exactly_once.values(), *self.exactly_once_latency.values(), self.avro,
        ]  # fmt: skip
        return sorted(
            {
                self.input, self.models, self.naive, self.reference,
                *(t for w in workers for t in (w.input, w.output, w.dlq)),
                *self.passthrough.values(),
                *(t for pair in self.latency_passthrough.values() for t in pair),
            }
        )  # fmt: skip


def reference_throughput(
    bootstrap: str, source: str, sink: str, records: int, group: str, artifact: Path, version: str
) -> Throughput:
    """(e): the hand-written confluent-kafka loop, on (a) and (c)'s ruler."""
    from bench.reference_confluent import ReferenceFailed, score_loop

    timeout = phase_timeout(records, floor_s=300.0)
    try:
        score_loop(bootstrap, source, sink, records, group, artifact, version, timeout)
    except ReferenceFailed as exc:
        raise BenchFailed(f"(e) hand-written loop: {exc}") from None
    return output_span(bootstrap, sink, records, timeout_s=phase_timeout(records))


def shown(result: Throughput | Latency | Failed) -> str:
    if isinstance(result, Failed):
        return f"failed: {result.reason}"
    if isinstance(result, Latency):
        return f"p99 {result.percentile('created', 99):.0f} ms"
    return rate(result)


def forest_engines(workload: Any) -> list[dict[str, Any]]:
    """(g) in this process, before the workers start: the forest alone, per engine, on the
    workload's own records (decoded once, float32 as every engine reads them)."""
    import numpy as np

    from bench.engines import engine_rows

    records = [json.loads(v) for v in workload.values[:5000]]
    rows = np.array([[r[n] for n in workload.feature_names] for r in records], dtype=np.float32)
    return engine_rows(workload.pipeline, rows)


def run(opts: Options) -> Results:
    from bench.workload import MODEL_NAME, announce_promotion, make_workload
    from forestream.edge.factory import TopicSpec, admin_client, ensure_topics
    from forestream.registry.local import LocalModelStore
    from forestream.registry.metadata import ARTIFACT

    res = Results(opts)
    res.load.append(os.getloadavg())
    paired: list[str] = []
    """(d)'s pairs' topics, made as they run."""
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench.{run_id}"
    topics = Layout.of(prefix)

    with (
        broker(opts.bootstrap_servers) as bootstrap,
        tempfile.TemporaryDirectory(prefix="forestream-bench-") as tmp,
    ):
        work = Path(tmp)
        try:
            say(f"broker {bootstrap}; training RF {opts.trees} trees on {opts.train_rows} rows")
            store = LocalModelStore(work / "models")
            workload = make_workload(
                opts.records, opts.features, opts.trees, opts.train_rows, store
            )
            announce_promotion(bootstrap, topics.models, workload.metadata)
            # the models topic has its one compacted partition already
            fresh = [t for t in topics.all() if t != topics.models]
            ensure_topics(bootstrap, [TopicSpec(t, opts.partitions) for t in fresh])
            say(f"writing {opts.records:,} input records to {topics.input}")
            fill_topic(bootstrap, topics.input, workload.values, "b")

            for client in CLIENTS:
                say(f"(a) passthrough on {client}")
                sink = topics.passthrough[client]
                passthrough(bootstrap, topics.input, sink, opts.records,
                            f"{prefix}.{client}.pass", client)  # fmt: skip
                res.passthrough[client] = output_span(
                    bootstrap, sink, opts.records, phase_timeout(opts.records)
                )
                say(f"(a) {client}: {shown(res.passthrough[client])}")

            say(f"(b) naive loop on {opts.naive_records:,} records")
            pipeline, _ = store.load_verified(workload.metadata.name, workload.metadata.version)
            res.naive = naive_loop(bootstrap, topics.input, topics.naive, opts.naive_records,
                                   f"{prefix}.naive", pipeline, workload.feature_names)  # fmt: skip
            say(f"(b) {res.naive.rate:,.0f} rec/s")

            say("(g) the forest alone, per engine, batch 1 / 100 / 1,000")
            res.engines = forest_engines(workload)
            for line in engine_table_rows(res.engines):
                say(f"{line[0]}: {line[1]}")

            def worker_phase(client: KafkaClient, default: bool = True) -> Throughput:
                tag = "worker" if default else "other"
                pipeline = pipelined_by_default(client) == default
                span, peak = worker_throughput(
                    bootstrap, (topics.worker if default else topics.worker_other)[client],
                    store.root, opts.records, f"{prefix}.{client}.{tag}",
                    work / f"c-{client}-{tag}.log", client, pipeline,
                )  # fmt: skip
                if default:
                    res.worker_rss_mb[client] = peak
                return span

            def latency_phase(client: KafkaClient, guarantee: str = "at-least-once") -> Latency:
                eos = guarantee == "exactly-once"
                log = work / (f"f-lat-{client}.log" if eos else f"d-{client}.log")
                wt = (topics.exactly_once_latency if eos else topics.latency)[client]
                group = f"{prefix}.{client}.{'eos.' if eos else ''}lat"
                return offered_load_latency(
                    bootstrap, wt.input, wt.output, workload.values, opts.latency_rate,
                    opts.latency_seconds,
                    lambda _: start_worker(bootstrap, wt, store.root, group, log,
                                           client=client, guarantee=guarantee),
                    log,
                )  # fmt: skip

            def floor_run(kind: str, pair: int) -> Latency:
                """(d) on confluent, one side of one pair, on topics of its own."""
                tag = f"{prefix}.confluent.lat.{pair}.{kind}"
                wt = WorkerTopics(f"{tag}.in", f"{tag}.out", f"{tag}.dlq", topics.models)
                paired.extend([wt.input, wt.output, wt.dlq])
                ensure_topics(bootstrap, [TopicSpec(t, opts.partitions) for t in paired[-3:]])
                from bench.floor import one_side

                log = work / ("d-confluent.log" if kind == "worker" else "d-pass-confluent.log")
                seconds = opts.latency_seconds / opts.latency_pairs
                return one_side(bootstrap, wt, store.root, tag, log, kind, workload.values,
                                opts.latency_rate, seconds)  # fmt: skip

            def floor_phase() -> FloorResult:
                from bench.floor import measure

                return measure(floor_run, opts.latency_pairs, say, lambda: os.getloadavg()[0])

            artifact = store.version_dir(MODEL_NAME, workload.metadata.version) / ARTIFACT
            res.model_mb = model_rss_mb(artifact)
            for client in CLIENTS:
                say(f"(c) forestream worker on {client}")
                log = work / f"c-{client}-worker.log"
                res.worker[client] = (
                    worker_phase(client)
                    if client == "kafka-python"  # the default client: its failure is the run's
                    else allowed_to_fail(lambda c=client: worker_phase(c), log)
                )
                res.worker_batch[client] = mean_batch(log)
                say(f"(c) {client}: {shown(res.worker[client])}")
                other = "off" if pipelined_by_default(client) else "on"
                say(f"(c) {client}, pipelining {other}")
                res.worker_other[client] = allowed_to_fail(
                    lambda c=client: worker_phase(c, default=False),
                    work / f"c-{client}-other.log",
                )
                say(f"(c) {client}, pipelining {other}: {shown(res.worker_other[client])}")

            from bench.avro import measure_or_failed

            res.avro = measure_or_failed(
                bootstrap, workload, topics.avro, store.root, f"{prefix}.avro",
                work / "h-avro.log", 30, say,
            )  # fmt: skip

            say("(e) hand-written confluent-kafka loop")
            res.reference = reference_throughput(
                bootstrap, topics.input, topics.reference, opts.records, f"{prefix}.reference",
                artifact, workload.metadata.version,
            )  # fmt: skip
            say(f"(e) {shown(res.reference)}")

            for client in CLIENTS:
                say(f"(d) worker on {client}: {opts.latency_rate:g} rec/s "
                    f"for {opts.latency_seconds:g} s")  # fmt: skip
                if isinstance(res.worker[client], Failed):
                    res.latency[client] = Failed("not run: the worker failed in (c)")
                elif client == "kafka-python":
                    res.latency[client] = latency_phase(client)
                else:
                    say(f"(d) as {opts.latency_pairs} worker / passthrough pairs of "
                        f"{opts.latency_seconds / opts.latency_pairs:.3g} s each")  # fmt: skip
                    res.floor = allowed_to_fail(floor_phase, work / f"d-{client}.log")
                    if isinstance(res.floor, FloorResult):
                        from bench.floor import pooled

                        res.latency[client] = pooled(res.floor.worker)
                        res.passthrough_latency[client] = pooled(res.floor.passthrough)
                    else:
                        res.latency[client] = res.floor
                res.latency_batch[client] = mean_batch(work / f"d-{client}.log")
                say(f"(d) worker on {client}: {shown(res.latency[client])}")

            say(f"(i) worker on confluent without / with a shadow candidate: "
                f"{opts.shadow_reps} runs each, {opts.latency_rate:g} rec/s for "
                f"{opts.latency_seconds:g} s")  # fmt: skip
            if isinstance(res.worker["confluent"], Failed):
                res.shadow = Failed("not run: the worker on confluent failed in (c)")
            else:
                from bench.shadow import measure as shadow_phase

                res.shadow = allowed_to_fail(
                    lambda: shadow_phase(
                        bootstrap, workload, store, f"{prefix}.shadow", work,
                        opts.latency_rate, opts.latency_seconds, opts.shadow_reps, 1.0, say,
                    ),
                    work / "i-shadow.log",
                )  # fmt: skip
            for line in shadow_rows(res.shadow):
                say(f"{line[0]}: {line[1]}")

            for client in CLIENTS:
                say(f"(f) exactly-once worker on {client}")
                res.exactly_once[client] = allowed_to_fail(
                    lambda c=client: worker_throughput(
                        bootstrap, topics.exactly_once[c], store.root, opts.records,
                        f"{prefix}.{c}.eos", work / f"f-{c}.log", c, guarantee="exactly-once",
                    )[0],
                    work / f"f-{client}.log",
                )  # fmt: skip
                say(f"(f) exactly-once worker on {client}: {shown(res.exactly_once[client])}")
                say(f"(f) exactly-once worker on {client}: {opts.latency_rate:g} rec/s")
                res.exactly_once_latency[client] = allowed_to_fail(
                    lambda c=client: latency_phase(c, "exactly-once"),
                    work / f"f-lat-{client}.log",
                )
                say(f"(f) latency on {client}: {shown(res.exactly_once_latency[client])}")

            for client in CLIENTS:
                if client in res.passthrough_latency:  # confluent's ran in (d)'s pairs
                    continue
                say(f"(d) the same load through the passthrough on {client}")
                source, sink = topics.latency_passthrough[client]
                log = work / f"d-pass-{client}.log"
                res.passthrough_latency[client] = offered_load_latency(
                    bootstrap, source, sink, workload.values, opts.latency_rate,
                    opts.latency_seconds,
                    lambda n, c=client, src=source, dst=sink, log=log: start_passthrough(
                        bootstrap, src, dst, n, f"{prefix}.{c}.lat.pass", log, c),
                    log,
                )  # fmt: skip
            res.load.append(os.getloadavg())
        finally:
            admin = None
            with contextlib.suppress(Exception):  # best effort: leave the shared broker tidy
                admin = admin_client(bootstrap)
                admin.delete_topics([*topics.all(), *paired], timeout_ms=30_000)
            if admin is not None:
                admin.close()
    return res


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_args(argv)
        res = run(opts)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    render(res)
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(markdown(res))
    results = opts.output.with_suffix(".json")
    results.write_text(json.dumps(results_json(res), indent=2) + "\n")
    print(f"written to {opts.output} and {results} (`python -m bench.report {results}`)")
    return 0


if __name__ == "__main__":
    # through the module's own name: bench.avro imports bench.throughput, and its results must
    # be instances of the classes this run checks them against, not of a second copy
    from bench import throughput

    sys.exit(throughput.main())
