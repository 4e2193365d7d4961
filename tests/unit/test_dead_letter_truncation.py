"""A dead letter too big for the producer is cut, never left to block its partition."""

from __future__ import annotations

import hashlib

from forestream.wire import headers
from forestream.wire.headers import DLQ_MAX_VALUE_BYTES, MAX_KEY_BYTES, ReasonCode
from forestream.worker.processing import process_records
from tests.unit.test_worker_processing import Record, model
from tests.worker_support import make_frame, row_json


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


def test_an_overlong_key_is_dead_lettered_and_the_rest_of_the_batch_scored() -> None:
    frame = make_frame(3, seed=5)
    rows = [row_json(frame.iloc[i]) for i in range(3)]
    long_key = b"k" * (MAX_KEY_BYTES + 1)
    records = [
        Record(b"a", rows[0], offset=0),
        Record(long_key, rows[1], offset=1),
        Record(b"c", rows[2], offset=2),
    ]
    batch = process_records(
        records, model(), output_topic="out", dlq_topic="dlq", max_record_bytes=1000
    )
    assert (batch.records_in, batch.predicted) == (3, 2)
    assert batch.dead_lettered == {ReasonCode.TOO_LARGE: 1}
    assert batch.scored.records_in == 3 and batch.scored.reject_codes == [ReasonCode.TOO_LARGE]
    assert sorted(o.key for o in batch.outgoing if o.topic == "out") == [b"a", b"c"]
    [letter] = [o for o in batch.outgoing if o.topic == "dlq"]
    found = dict(letter.headers or [])
    assert letter.value == rows[1]
    assert letter.key == long_key[:MAX_KEY_BYTES]
    assert found[headers.KEY_TRUNCATED] == str(len(long_key)).encode()
    assert found[headers.KEY_SHA256] == hashlib.sha256(long_key).hexdigest().encode()
    assert b"key of 65537 bytes" in found[headers.ERROR_DETAIL]


def test_the_largest_dead_letter_still_fits_the_producers_request_limit() -> None:
    """A huge key and a huge value together: what the producer gets stays under 1 MiB."""
    key = b"k" * (4 * MAX_KEY_BYTES)
    value = b"x" * (4 * DLQ_MAX_VALUE_BYTES)
    batch = process_records(
        [Record(key, value, offset=9)],
        model(),
        output_topic="out",
        dlq_topic="dlq",
        max_record_bytes=1000,
    )
    [letter] = batch.outgoing
    size = len(letter.key or b"") + len(letter.value or b"")
    size += sum(len(k) + len(v) for k, v in letter.headers or [])
    assert size < 1024 * 1024 - 16 * 1024  # leaves room for the record batch's own framing
