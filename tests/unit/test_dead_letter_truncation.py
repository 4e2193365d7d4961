"""A dead letter too big for the producer is cut, never left to block its partition."""

from __future__ import annotations

import hashlib

from contracts import headers
from contracts.headers import DLQ_MAX_VALUE_BYTES, ReasonCode
from tests.unit.test_worker_processing import Record, model
from worker.processing import process_records


def _process(value: bytes) -> tuple[bytes | None, dict[str, bytes]]:
    batch = process_records(
        [Record(b"k", value, offset=3)],
        model(),
        output_topic="out",
        dlq_topic="dlq",
        max_record_bytes=1000,
    )
    [letter] = batch.outgoing
    assert letter.topic == "dlq"
    return letter.value, dict(letter.headers)


def test_an_oversize_value_is_cut_with_its_size_and_hash() -> None:
    original = b'{"pad": "' + b"x" * (2 * DLQ_MAX_VALUE_BYTES) + b'"}'
    value, found = _process(original)
    assert found[headers.ERROR] == ReasonCode.TOO_LARGE.encode()
    assert value == original[:DLQ_MAX_VALUE_BYTES]
    assert found[headers.VALUE_TRUNCATED] == str(len(original)).encode()
    assert found[headers.VALUE_SHA256] == hashlib.sha256(original).hexdigest().encode()
    assert found[headers.SOURCE_OFFSET] == b"3"


def test_a_value_within_the_limit_is_kept_whole() -> None:
    original = b'{"pad": "' + b"x" * (DLQ_MAX_VALUE_BYTES - 20) + b'"}'
    assert len(original) <= DLQ_MAX_VALUE_BYTES
    value, found = _process(original)
    assert value == original
    assert headers.VALUE_TRUNCATED not in found and headers.VALUE_SHA256 not in found
