"""The soak's moving parts on a real broker: the paced feeder, the workers, the broker's kill
and restart, the sampler, and reading topics back whole. :mod:`bench.soak` runs them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.soak_stats import lag_by_partition, process_sample

ROOT = Path(__file__).resolve().parent.parent
QUIET = {"log_level": 2}
"""librdkafka logs every failed reconnect at level 3; a broker kill would bury the output."""


# -- feeding -------------------------------------------------------------------------------------


@dataclass
class Feeder:
    """Writes keys ``0, 1, 2, ...`` (decimal) through librdkafka, paced by ``rate``; every
    ``period``-th record (``key % period == period - 1``) is malformed."""

    bootstrap: str
    topic: str
    valid: list[bytes]
    malformed: list[bytes]
    period: int
    next_key: int = 0
    failed: int = 0
    rate: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _producer: Any = None

    def __post_init__(self) -> None:
        from confluent_kafka import Producer

        from bench.confluent_clients import producer_config

        # a broker outage must not overflow the queue: it holds minutes of records
        config = (
            producer_config(self.bootstrap) | QUIET | {"queue.buffering.max.messages": 5_000_000}
        )
        self._producer = Producer(config)

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed += 1

    def _send_one(self) -> None:
        key = self.next_key
        bad = self.period > 0 and key % self.period == self.period - 1
        value = (
            self.malformed[key % len(self.malformed)] if bad else self.valid[key % len(self.valid)]
        )
        while True:
            try:
                self._producer.produce(
                    self.topic, value, str(key).encode(), on_delivery=self._delivered
                )
                break
            except BufferError:
                self._producer.poll(0.1)
        self.next_key += 1

    def fill(self, records: int) -> None:
        for _ in range(records):
            self._send_one()
            if self.next_key % 1000 == 0:
                self._producer.poll(0)
        self._producer.flush(120)

    def start(self, rate: float) -> Feeder:
        self.rate = rate
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        from forestream.producer.pacing import RateSchedule

        schedule = RateSchedule(rate=self.rate, start=time.monotonic())
        while not self._stop.is_set():
            wait = schedule.wait_s(time.monotonic())
            if wait > 0.002:
                self._producer.poll(min(wait, 0.05))
                continue
            for _ in range(50):  # a burst per wake-up; the schedule keeps the average
                self._send_one()
                schedule.mark_sent()
            self._producer.poll(0)

    def stop(self) -> int:
        """Stop and flush; returns the records still undelivered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return int(self._producer.flush(300))

    def malformed_keys(self) -> np.ndarray:
        if self.period <= 0:
            return np.zeros(0, dtype=np.int64)
        return np.arange(self.period - 1, self.next_key, self.period, dtype=np.int64)


def malformed_values(valid: list[bytes], names: list[str]) -> list[bytes]:
    from forestream.producer.malformed import MALFORMED_KINDS, malformed_value
    from forestream.wire.headers import ReasonCode

    kinds = [k for k in MALFORMED_KINDS if k != ReasonCode.TOO_LARGE]  # 1 MB each: a disk test
    return [
        malformed_value(kind, json.loads(valid[i]), names, names, pick=i)
        for i in range(64)
        for kind in [kinds[i % len(kinds)]]
    ]


# -- workers and the broker ----------------------------------------------------------------------


def start_worker(
    bootstrap: str,
    topics: dict[str, str],
    store: Path,
    group: str,
    log: Path,
    index: int,
    guarantee: str,
) -> subprocess.Popen[bytes]:
    from bench.workload import MODEL_NAME

    cmd = [
        sys.executable, "-m", "forestream", "worker",
        "--bootstrap-servers", bootstrap,
        "--input-topic", topics["in"], "--output-topic", topics["out"],
        "--dlq-topic", topics["dlq"], "--models-topic", topics["models"],
        "--labels-topic", topics["labels"], "--monitoring-topic", topics["monitoring"],
        "--store", str(store), "--name", MODEL_NAME, "--group", group,
        "--log-format", "json", "--guarantee", guarantee,
    ]  # fmt: skip
    if guarantee == "exactly-once":  # one transactional id per worker: no fencing each other
        cmd += ["--transactional-id", f"{group}.tx.{index}"]
    with log.open("ab") as sink:
        return subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
        )


def kill_and_restart_broker(data_dir: Path, port: int) -> dict[str, float]:
    """SIGKILL the broker, start it again on the same port and log dirs; seconds it took."""
    from forestream.local import kafka as local_kafka

    info = local_kafka.status(data_dir)
    if info is None:
        raise SystemExit("the broker is not running: nothing to kill")
    killed = time.monotonic()
    os.killpg(info.pid, signal.SIGKILL)  # its own session: java and nothing else
    try:
        os.waitpid(info.pid, 0)
    except ChildProcessError:
        while Path(f"/proc/{info.pid}").exists():
            time.sleep(0.05)
    restarted = local_kafka.start(data_dir, port=port)
    if restarted.port != port:
        raise SystemExit(f"the broker came back on port {restarted.port}, not {port}")
    return {
        "down_s": round(time.monotonic() - killed, 2),
        "old_pid": info.pid,
        "new_pid": restarted.pid,
    }


# -- sampling ------------------------------------------------------------------------------------


@dataclass
class Sampler:
    """Every ``every`` seconds: /proc figures per worker and lag per worker and in total."""

    bootstrap: str
    topic: str
    group: str
    partitions: int
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    every: float
    feeder: Feeder
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _consumer: Any = None

    def start(self) -> Sampler:
        from confluent_kafka import Consumer

        # group.id only to read the group's offsets: it never subscribes, so never joins
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                **QUIET,
            }
        )
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def lags(self) -> dict[int, int] | None:
        from confluent_kafka import KafkaException, TopicPartition

        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        try:
            committed = {
                tp.partition: (tp.offset if tp.offset >= 0 else None)
                for tp in self._consumer.committed(tps, timeout=5)
            }
            ends = {
                tp.partition: self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1]
                for tp in tps
            }
        except (KafkaException, TypeError):  # broker down: a gap in the series
            return None
        return lag_by_partition(committed, ends)

    def _run(self) -> None:
        from forestream.worker.assignment_log import owned_partitions, partition_number

        while not self._stop.wait(self.every):
            lags = self.lags()
            workers = []
            for proc, log in zip(self.procs, self.logs, strict=True):
                sample = process_sample(proc.pid)
                if sample is not None and lags is not None:
                    owned = {partition_number(n) for n in owned_partitions(log)}
                    sample["lag"] = float(sum(lags.get(p, 0) for p in owned))
                workers.append(sample)
            self.samples.append(
                {
                    "mono": time.monotonic(),  # made seconds from the feed's start at the end
                    "workers": workers,
                    "lag": None if lags is None else sum(lags.values()),
                    "fed": self.feeder.next_key,
                }
            )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._consumer is not None:
            self._consumer.close()


# -- reading back ----------------------------------------------------------------------------------


def read_keys(bootstrap: str, topic: str, timeout_s: float = 900) -> tuple[np.ndarray, np.ndarray]:
    """Every record's key (as an integer) and CreateTime (ms) on ``topic``, committed ones only."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"soak-reader-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            **QUIET,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    keys, stamps = array("q"), array("q")
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        parts = sorted(meta.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        open_parts = set(parts)
        deadline = time.monotonic() + timeout_s
        while open_parts:
            if time.monotonic() > deadline:
                raise SystemExit(f"reading {topic} did not finish in {timeout_s:.0f} s")
            for msg in consumer.consume(10_000, timeout=1.0):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        open_parts.discard(msg.partition())
                        continue
                    raise SystemExit(f"reading {topic}: {err}")
                keys.append(int(msg.key() or b"no key"))  # every record the soak writes has one
                stamps.append(msg.timestamp()[1])
    finally:
        consumer.close()
    return np.frombuffer(keys, dtype=np.int64), np.frombuffer(stamps, dtype=np.int64)


def wait_drained(sampler: Sampler, slack: int, timeout_s: float) -> float | None:
    """Seconds until the group's lag is at most ``slack`` twice in a row (exactly-once leaves
    one transaction marker per partition past the last committed offset); None if it did not
    within ``timeout_s``."""
    started = time.monotonic()
    calm = 0
    while time.monotonic() - started < timeout_s:
        lags = sampler.lags()
        calm = calm + 1 if lags is not None and sum(lags.values()) <= slack else 0
        if calm >= 2:
            return time.monotonic() - started
        time.sleep(2)
    return None
