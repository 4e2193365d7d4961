"""A worker scores records that another client (librdkafka's kcat) wrote compressed.

snappy, lz4 and zstd are common producer defaults; without their libraries every poll() of the
worker failed with UnsupportedCodecError and the partition never moved. One input partition
holds batches of all four codecs interleaved, read by one real worker subprocess.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kafka.record import MemoryRecords
from kafka.record.default_records import DefaultRecordBatch

from forestream.edge.factory import TopicSpec, ensure_topics
from forestream.wire.messages import Prediction
from tests.kafka_helpers import read_topic
from tests.worker_support import (
    ROOT,
    log_events,
    make_frame,
    publish_promotion,
    row_json,
    save_model,
    worker_command,
    worker_env,
)

pytestmark = pytest.mark.usefixtures("kafka_client")  # every test on both clients

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
CODES = {
    "gzip": DefaultRecordBatch.CODEC_GZIP,
    "snappy": DefaultRecordBatch.CODEC_SNAPPY,
    "lz4": DefaultRecordBatch.CODEC_LZ4,
    "zstd": DefaultRecordBatch.CODEC_ZSTD,
}
ROUNDS = 2  # each codec twice, so batches of different codecs alternate in the partition
PER_RUN = 150  # records per kcat run
BATCH = 50  # records per librdkafka batch
MODEL = "codecs"
WORKER_TIMEOUT_S = 120  # the worker scores 1,200 records in about 2 s once it has the model


def kcat_produce(bootstrap: str, topic: str, codec: str, lines: list[str]) -> None:
    """key<TAB>value lines into partition 0, in compressed batches of ``BATCH`` records."""
    assert KCAT, "kcat is not installed: `make setup` installs it (Debian package kcat)"
    command = [
        KCAT, "-P", "-b", bootstrap, "-t", topic, "-p", "0", "-K", "\t", "-z", codec,
        "-X", "linger.ms=50", "-X", f"batch.num.messages={BATCH}",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, input="".join(lines), capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"kcat -z {codec} did not finish within 60s") from None
    assert done.returncode == 0, f"kcat -z {codec} exited {done.returncode}: {done.stderr}"


def batch_codecs(
    bootstrap: str, topic: str, expected: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Any], list[tuple[int, int, int]]]:
    """Reads ``topic`` and returns its records and each fetched batch's (first offset, last
    offset, codec), seen by spying on the consumer's own batch parser."""
    seen: list[tuple[int, int, int]] = []
    original = MemoryRecords.next_batch

    def spy(self: MemoryRecords, *args: Any, **kwargs: Any) -> Any:
        batch = original(self, *args, **kwargs)
        if isinstance(batch, DefaultRecordBatch):
            seen.append((batch.base_offset, batch.last_offset, batch.compression_type))
        return batch

    with monkeypatch.context() as patch:
        patch.setattr(MemoryRecords, "next_batch", spy)
        records = read_topic(bootstrap, topic, expected=expected, timeout_s=60)
    return records, sorted(set(seen))


def test_worker_scores_records_of_every_codec(
    kafka_bootstrap: str,
    topic_name: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topics = {k: topic_name(k) for k in ("in", "out", "dlq", "models")}
    ensure_topics(kafka_bootstrap, [TopicSpec(topics["in"], 1)])
    _pipeline, metadata = save_model(tmp_path / "store", MODEL, make_frame(300, seed=3))
    publish_promotion(kafka_bootstrap, topics["models"], metadata)

    frame = make_frame(ROUNDS * len(CODES) * PER_RUN, seed=4)
    rows = iter(frame.iterrows())
    codec_of: dict[bytes, str] = {}
    for round_ in range(ROUNDS):
        for codec in CODES:
            lines = []
            for i in range(PER_RUN):
                _, row = next(rows)
                key = f"{codec}-{round_}-{i}"
                codec_of[key.encode()] = codec
                lines.append(f"{key}\t{row_json(pd.Series(row)).decode()}\n")
            kcat_produce(kafka_bootstrap, topics["in"], codec, lines)
    total = len(codec_of)

    inputs, batches = batch_codecs(kafka_bootstrap, topics["in"], total, monkeypatch)
    assert Counter(r.key for r in inputs) == Counter(dict.fromkeys(codec_of, 1))
    for record in inputs:
        [code] = [c for first, last, c in batches if first <= record.offset <= last]
        assert code == CODES[codec_of[record.key]], (
            f"{record.key!r} at offset {record.offset} is in a batch of codec {code}: "
            "kcat did not compress it as asked"
        )
    assert {c for _, _, c in batches} == set(CODES.values())
    assert len(batches) >= ROUNDS * len(CODES) * 2, f"too few batches to interleave: {batches}"
    offset_of = {r.key: r.offset for r in inputs}

    log_path = tmp_path / "worker.log"
    command = worker_command(
        kafka_bootstrap, topics, tmp_path / "store", MODEL, topic_name("group"),
        "--max-records", str(total), "--max-batch", "100",
    )  # fmt: skip
    with log_path.open("wb") as sink:
        worker = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=worker_env(),
            cwd=ROOT,
        )
    try:
        try:
            code = worker.wait(timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
            raise AssertionError(
                f"worker did not score {total} records within {WORKER_TIMEOUT_S}s; poll_failed: "
                f"{log_events(log_path, 'poll_failed')[:3]}\n{log_path.read_text()[-3000:]}"
            ) from None
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
    log = log_path.read_text(errors="replace")
    assert code == 0, f"worker exited {code}:\n{log[-3000:]}"
    assert "poll_failed" not in log, log_events(log_path, "poll_failed")[:3]

    started = time.monotonic()
    predictions = read_topic(kafka_bootstrap, topics["out"], expected=total, settle_s=2.0)
    counts = Counter(r.key for r in predictions)
    missing = {codec_of[k] for k in codec_of if k not in counts}
    assert not missing, f"no prediction for some records of codecs {sorted(missing)}"
    assert set(counts) == set(codec_of), "a prediction carries a key that was never sent"
    assert max(counts.values()) == 1, f"scored twice: {[k for k, n in counts.items() if n > 1]}"
    for record in predictions:
        prediction = Prediction.model_validate_json(record.value)
        assert prediction.model_version == metadata.version
        assert prediction.source.topic == topics["in"]
        assert prediction.source.offset == offset_of[record.key]
    finals = log_events(log_path, "worker_final_summary")
    print(
        f"{total} records in {len(batches)} batches of 4 codecs, {len(predictions)} predictions "
        f"(read back in {time.monotonic() - started:.1f}s); final: {json.dumps(finals[-1:])}"
    )
