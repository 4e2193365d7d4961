"""Every codec another producer may use round-trips through kafka-python itself, no broker.

kafka-python decodes gzip natively but imports optional libraries for snappy, lz4 and zstd; if
one is missing the worker's poll() raises UnsupportedCodecError on the first such batch and the
partition never moves again. These tests fail loudly when a codec library silently goes away.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from kafka import codec
from kafka.record import MemoryRecords, MemoryRecordsBuilder
from kafka.record.default_records import DefaultRecordBatch

# name -> the attribute code of a v2 record batch (what Kafka puts on the wire)
CODES = {
    "gzip": DefaultRecordBatch.CODEC_GZIP,
    "snappy": DefaultRecordBatch.CODEC_SNAPPY,
    "lz4": DefaultRecordBatch.CODEC_LZ4,
    "zstd": DefaultRecordBatch.CODEC_ZSTD,
}
PRESENT: dict[str, Callable[[], bool]] = {
    "gzip": codec.has_gzip,
    "snappy": codec.has_snappy,
    "lz4": codec.has_lz4,
    "zstd": codec.has_zstd,
}
ENCODE: dict[str, Callable[[bytes], bytes]] = {
    "gzip": codec.gzip_encode,
    "snappy": codec.snappy_encode,
    "lz4": codec.lz4_encode,
    "zstd": codec.zstd_encode,
}
DECODE: dict[str, Callable[[bytes], bytes]] = {
    "gzip": codec.gzip_decode,
    "snappy": codec.snappy_decode,
    "lz4": codec.lz4_decode,
    "zstd": codec.zstd_decode,
}


def feature_values(n: int) -> list[bytes]:
    """Input-like JSON values: repetitive enough that every codec actually shrinks them."""
    return [
        json.dumps(
            {"x1": i * 0.37, "x2": 5.0 + i % 7, "x3": -0.25, "color": "red", "shape": "circle"}
        ).encode()
        for i in range(n)
    ]


@pytest.mark.parametrize("name", list(CODES))
def test_codec_library_is_installed(name: str) -> None:
    assert PRESENT[name](), f"kafka-python cannot find the {name} library: see pyproject.toml"


@pytest.mark.parametrize("name", list(CODES))
def test_codec_round_trips(name: str) -> None:
    payload = b"\n".join(feature_values(2000))  # > 32 KiB: several xerial snappy blocks
    encoded = ENCODE[name](payload)
    assert len(encoded) < len(payload)
    assert DECODE[name](encoded) == payload


def test_snappy_reads_both_framings() -> None:
    """Java clients write xerial-framed snappy, librdkafka writes raw snappy blocks."""
    payload = b"\n".join(feature_values(500))
    raw = codec.snappy_encode(payload, xerial_compatible=False)
    assert codec.snappy_decode(raw) == payload
    assert codec.snappy_decode(codec.snappy_encode(payload, xerial_compatible=True)) == payload


def test_zstd_reads_frames_without_content_size_and_concatenated() -> None:
    """Streaming producers may omit the frame's content size or write several frames."""
    import zstandard

    first, second = b"a" * 5000 + b"tail", b"b" * 7000
    compressor = zstandard.ZstdCompressor(write_content_size=False)
    framed = compressor.compress(first) + compressor.compress(second)
    assert codec.zstd_decode(framed) == first + second


@pytest.mark.parametrize("name", list(CODES))
def test_record_batch_round_trips(name: str) -> None:
    """What the consumer's fetcher does with a fetched batch: attributes name the codec, and
    every record (key, value, headers, None key and value) comes back intact."""
    values = feature_values(1000)
    builder = MemoryRecordsBuilder(magic=2, compression_type=CODES[name], batch_size=1 << 20)
    sent: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    for i, value in enumerate(values):
        key = None if i == 3 else f"key-{i}".encode()
        headers = [("trace", f"t{i}".encode())] if i % 2 else []
        assert builder.append(
            timestamp=1_700_000_000_000 + i, key=key, value=value, headers=headers
        )
        sent.append((key, value, headers))
    builder.append(timestamp=1_700_000_001_000, key=b"tombstone", value=None)
    sent.append((b"tombstone", None, []))
    builder.close()
    assert builder.compression_rate() < 0.5, f"{name} did not compress the batch"

    records = MemoryRecords(bytes(builder.buffer()))
    batch = records.next_batch()
    assert batch is not None and records.next_batch() is None
    assert batch.compression_type == CODES[name]
    assert batch.validate_crc()
    got = [(r.key, r.value, list(r.headers)) for r in batch]
    assert got == sent
    assert [r.offset for r in MemoryRecords(bytes(builder.buffer())).next_batch()] == list(
        range(len(sent))
    )
