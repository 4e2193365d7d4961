"""What each output compression codec costs the worker's producer, and what it saves.

``python -m bench.codecs [--records 1000] [--batches 30] [--seed 0]``

No broker. Batches of real prediction values (``forestream.worker.scoring.encode_predictions``, the
worker's own encoder, with forest-like probabilities and uuid keys) go through kafka-python's
own record batch builder, as its producer does (the ``batch_size`` of
``forestream.edge.factory.make_producer``: 256 KiB, so 1,000 records fill two batches), once per
codec, codecs interleaved round by round. Per codec it prints the median CPU time per record
to build the batches (append + compress + CRC), the extra over no compression, the time to
read them back (what a consumer, the broker's validation of the same bytes aside, pays),
the bytes per record on the wire and the size ratio against no compression.

The worker is CPU-bound on two shared cores; compression buys broker disk and network. The
codec is applied by the producer's sender thread, which holds the GIL while it compresses.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time
import uuid
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np
from kafka.record import MemoryRecords, MemoryRecordsBuilder
from kafka.record.default_records import DefaultRecordBatch

from forestream.worker.scoring import Scores, encode_predictions

CODECS = {
    "none": DefaultRecordBatch.CODEC_NONE,
    "gzip": DefaultRecordBatch.CODEC_GZIP,
    "snappy": DefaultRecordBatch.CODEC_SNAPPY,
    "lz4": DefaultRecordBatch.CODEC_LZ4,
    "zstd": DefaultRecordBatch.CODEC_ZSTD,
}
BATCH_SIZE = 256 * 1024  # the worker's producer batch_size
CLASSES = ["Adelie", "Chinstrap", "Gentoo"]


@dataclass
class Result:
    codec: str
    build_us: float  # per record, median over batches
    read_us: float
    bytes_per_record: float


def prediction_records(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of one worker batch: uuid keys, 100-tree vote shares as probabilities."""
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet([0.3, 0.3, 0.3], n)
    probabilities = np.array([rng.multinomial(100, p) for p in shares]) / 100.0
    labels = np.asarray(CLASSES, dtype=object)[probabilities.argmax(axis=1)]
    first_offset = int(rng.integers(0, 10_000_000))
    first_time = 1_764_064_800_000
    values = encode_predictions(
        scores=Scores(labels, probabilities),
        classes=CLASSES,
        model_version="v3",
        topic="forestream.features",
        partitions=[3] * n,
        offsets=range(first_offset, first_offset + n),
        event_times_ms=[first_time + i * 4 for i in range(n)],
        scored_at_ms=first_time + n * 4 + 40,
    )
    keys = [str(uuid.UUID(bytes=rng.bytes(16), version=4)).encode() for _ in range(n)]
    return list(zip(keys, values, strict=True))


def build(records: list[tuple[bytes, bytes]], code: int) -> list[bytes]:
    """The producer's accumulator in small: fill a batch until it is full, close, go on."""
    out: list[bytes] = []
    builder = MemoryRecordsBuilder(magic=2, compression_type=code, batch_size=BATCH_SIZE)
    timestamp = int(time.time() * 1000)
    for key, value in records:
        if builder.append(timestamp, key, value) is None:
            builder.close()
            out.append(bytes(builder.buffer()))
            builder = MemoryRecordsBuilder(magic=2, compression_type=code, batch_size=BATCH_SIZE)
            builder.append(timestamp, key, value)
    builder.close()
    out.append(bytes(builder.buffer()))
    return out


def read(buffers: list[bytes]) -> int:
    """Every record's value, as the consumer's fetcher parses it; returns the record count."""
    count = 0
    for buffer in buffers:
        for batch in MemoryRecords(buffer):
            for record in batch:
                count += record.value is not None
    return count


def measure(records: list[tuple[bytes, bytes]], batches: int) -> list[Result]:
    build_ns: dict[str, list[int]] = {name: [] for name in CODECS}
    read_ns: dict[str, list[int]] = {name: [] for name in CODECS}
    sizes: dict[str, int] = {}
    for name, code in CODECS.items():  # warm-up, and the sizes (deterministic)
        buffers = build(records, code)
        assert read(buffers) == len(records), name
        codes = {b.compression_type for buf in buffers for b in MemoryRecords(buf)}
        assert codes == {code}, f"{name}: batches came out with codecs {codes}"
        sizes[name] = sum(len(b) for b in buffers)
    gc.collect()
    gc.disable()  # a collection inside one timing would be noise, not codec cost
    try:
        for _ in range(batches):
            for name, code in CODECS.items():  # interleaved: host drift hits every codec alike
                start = time.perf_counter_ns()
                buffers = build(records, code)
                built = time.perf_counter_ns()
                read(buffers)
                build_ns[name].append(built - start)
                read_ns[name].append(time.perf_counter_ns() - built)
    finally:
        gc.enable()
    n = len(records)
    return [
        Result(
            name,
            statistics.median(build_ns[name]) / n / 1000,
            statistics.median(read_ns[name]) / n / 1000,
            sizes[name] / n,
        )
        for name in CODECS
    ]


def table(results: list[Result], records: list[tuple[bytes, bytes]]) -> str:
    base = results[0]
    rows = [
        "| codec | build µs/record | extra vs none | read µs/record | bytes/record | ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.codec} | {r.build_us:.2f} | {r.build_us - base.build_us:+.2f} "
            f"| {r.read_us:.2f} | {r.bytes_per_record:.1f} "
            f"| {base.bytes_per_record / r.bytes_per_record:.2f}x |"
        )
    mean_value = sum(len(v) for _, v in records) / len(records)
    mean_key = sum(len(k) for k, _ in records) / len(records)
    rows.append("")
    rows.append(
        f"{len(records)} records per batch, value {mean_value:.0f} B + key {mean_key:.0f} B "
        f"on average; e.g. {records[0][1].decode()}"
    )
    return "\n".join(rows)


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    libs = ", ".join(
        f"{name} {version(name)}"
        for name in ("kafka-python", "python-snappy", "cramjam", "lz4", "zstandard")
    )
    return f"{cpu}, Python {platform.python_version()}; {libs}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000, help="records per worker batch")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per codec")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    records = prediction_records(options.records, options.seed)
    results = measure(records, options.batches)
    print(f"Machine: {machine()}")
    print(f"Median of {options.batches} batches per codec; gzip is kafka-python's level 9.\n")
    print(table(results, records))


if __name__ == "__main__":
    main()
