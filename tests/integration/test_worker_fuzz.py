"""Fuzz one real ``forestream worker`` with nasty and generated records on the real broker.

Every record's fate is known before it is sent: a valid record must come back as exactly one
prediction (same key, its own source offset, the probabilities the pipeline gives offline), an
invalid one as a dead letter with its original bytes and the documented reason code, and the
worker must neither crash nor send anything to the model that makes it fail a batch.

The generated records come from a hypothesis strategy that builds a valid record and then
applies at most one defect, so the expected reason code is known by construction (one defect
means no question of which problem names the record). They are collected by running a
``@given`` function once, offline, under ``@seed`` with only the generate phase; then all of
them go through one worker in one run. A ``@given`` test per example would need a broker round
trip per example, and shrinking against a live worker proves little: what a failure needs is
the offending record, which the assertion messages print, and the seed that replays the whole
corpus (random per run, printed; ``FORESTREAM_FUZZ_SEED=N`` reruns one).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.wire import headers
from forestream.wire.headers import ReasonCode
from forestream.wire.messages import Prediction
from forestream.worker.decoding import MODEL_RANGE_LIMIT
from tests.worker_support import (
    CATEGORICAL,
    COLORS,
    NUMERIC,
    ROOT,
    SHAPES,
    log_events,
    make_frame,
    publish_promotion,
    save_model,
    worker_command,
    worker_env,
)

pytestmark = pytest.mark.usefixtures("kafka_client")  # every test on both clients

PARTITIONS = 2
MODEL = "fuzz"
MAX_RECORD_BYTES = 256 * 1024
"""Raised for this worker so a 100,000-deep nesting reaches the parser instead of the size check."""
GENERATED = 500
SEED = int(os.environ.get("FORESTREAM_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
WAIT_S = 45.0

BELOW_LIMIT = float(np.nextafter(MODEL_RANGE_LIMIT, 0.0))
GOOD: dict[str, Any] = {"x1": 0.5, "x2": 1.0, "x3": 0.1, "color": "red", "shape": "circle"}
MISSING = object()
"""A feature value meaning "left out of the record"."""


@dataclass
class Case:
    """One input record and what must become of it."""

    value: bytes | None
    code: str | None
    """The reason code it must be dead-lettered with; None for a record to be predicted."""
    features: dict[str, Any] = field(default_factory=dict)
    """For a valid record: the features the model sees (absent = missing)."""
    origin: str = ""
    key: bytes | None = None
    partition: int = -1
    offset: int = -1


def valid(value: bytes, features: dict[str, Any], origin: str) -> Case:
    return Case(value, None, features, origin)


def invalid(value: bytes | None, code: str, origin: str) -> Case:
    return Case(value, code, {}, origin)


def obj(**changes: Any) -> dict[str, Any]:
    row = {**GOOD, **changes}
    return {k: v for k, v in row.items() if v is not MISSING}


def dumps(row: dict[str, Any]) -> bytes:
    return json.dumps(row).encode()


def digits(n: int) -> bytes:
    """An n-digit JSON integer (msgspec hands it over as a Python int)."""
    return b"1" + b"0" * (n - 1)


def good(origin: str, **changes: Any) -> Case:
    """A valid record: the good one with ``changes``."""
    return valid(dumps(obj(**changes)), obj(**changes), origin)


def bad(code: str, origin: str, **changes: Any) -> Case:
    """An invalid record: the good one with ``changes``."""
    return invalid(dumps(obj(**changes)), code, origin)


def with_x1(raw: bytes) -> bytes:
    """A record whose x1 is the raw JSON text ``raw``."""
    return b'{"x1": ' + raw + b', "x3": 0.1, "color": "red"}'


def fixed_corpus() -> list[Case]:
    """Values chosen by hand: the ones issue 13 is about and the classics of parser abuse."""
    members = dumps(GOOD)[1:-1]  # the members of the good record, to splice raw JSON into
    deep = b"[" * 500 + b"]" * 500
    some = {"x3": 0.1, "color": "red"}
    cases = [
        good("good"),
        valid(b"  \n" + dumps(GOOD) + b"\t ", GOOD, "whitespace around the object"),
        # numbers the model takes: float32 rounds them to its max, a subnormal or zero
        good("float32 max", x1=3.4028235e38, x3=-3.4028235e38),
        good("just below the limit", x1=BELOW_LIMIT, x3=-BELOW_LIMIT),
        good("subnormal and -0.0", x1=5e-324, x3=-0.0),
        valid(with_x1(b"1e-320"), {"x1": 1e-320, **some}, "subnormal"),
        valid(with_x1(b"1e-400"), {"x1": 0.0, **some}, "underflow to 0"),
        valid(with_x1(digits(38)), {"x1": 1e37, **some}, "38-digit integer"),
        valid(with_x1(b"1." + b"0" * 400), {"x1": 1.0, **some}, "400-digit fraction"),
        # duplicate keys: the last one wins, in msgspec and in the stdlib fallback alike
        valid(b'{"x1": 1e300, ' + members + b"}", GOOD, "duplicate key, bad then good"),
        valid(b'{"x1": NaN, ' + members + b"}", GOOD, "duplicate key, NaN then good"),
        invalid(
            b"{" + members + b', "x1": -1e300}', ReasonCode.OUT_OF_RANGE, "duplicate, bad last"
        ),
        # unicode: unseen categories are fine, whatever their text
        good("unicode categories", color="💥\u0000é\u202e", shape="ｃｉｒｃｌｅ"),
        valid(
            b'{"x1": 0.5, "x3": 0.1, "color": "\\ud800"}',
            {"x1": 0.5, **some} | {"color": "\ud800"},
            "lone surrogate escape",
        ),
        valid(
            json.dumps(
                {**GOOD, "ключ\U0001f600": [None, {"": "\u2028"}]}, ensure_ascii=False
            ).encode(),
            GOOD,
            "unicode extra key",
        ),
        valid(b"{" + members + b', "deep": ' + deep + b"}", GOOD, "extra key nested 500 deep"),
        good("allowed missing", x2=MISSING, shape=MISSING),
        valid(dumps(obj(x2=None, shape=None)), obj(x2=MISSING, shape=MISSING), "allowed null"),
        # finite, but infinite in float32: out_of_range (issue 13)
        bad(ReasonCode.OUT_OF_RANGE, "1e300", x1=1e300),
        bad(ReasonCode.OUT_OF_RANGE, "3.5e38", x1=3.5e38),
        bad(ReasonCode.OUT_OF_RANGE, "-3.5e38", x3=-3.5e38),
        bad(ReasonCode.OUT_OF_RANGE, "float64 max", x2=1.7976931348623157e308),
        bad(ReasonCode.OUT_OF_RANGE, "the limit itself", x1=MODEL_RANGE_LIMIT),
        invalid(with_x1(digits(40)), ReasonCode.OUT_OF_RANGE, "40-digit integer"),
        # beyond float64, or not a number: not_finite
        invalid(with_x1(digits(400)), ReasonCode.NOT_FINITE, "400-digit integer"),
        invalid(with_x1(b"-" + digits(400)), ReasonCode.NOT_FINITE, "-400-digit integer"),
        invalid(with_x1(b"1e999"), ReasonCode.NOT_FINITE, "1e999"),
        invalid(with_x1(b"NaN"), ReasonCode.NOT_FINITE, "NaN"),
        invalid(with_x1(b"Infinity"), ReasonCode.NOT_FINITE, "Infinity"),
        invalid(with_x1(b"-Infinity"), ReasonCode.NOT_FINITE, "-Infinity"),
        # nesting, bytes that are not UTF-8, broken JSON
        invalid(b"[" * 100_000, ReasonCode.NOT_JSON, "100,000 open brackets"),
        invalid(b"[" * 100_000 + b"]" * 100_000, ReasonCode.NOT_JSON, "100,000-deep array"),
        invalid(with_x1(b"[" * 100_000), ReasonCode.NOT_JSON, "100,000-deep in a member"),
        invalid(b'{"color": "\xff"}', ReasonCode.NOT_JSON, "byte 0xff"),
        invalid(b'{"color": "\xc0\xaf"}', ReasonCode.NOT_JSON, "overlong UTF-8"),
        invalid(b'{"color": "\xed\xa0\x80"}', ReasonCode.NOT_JSON, "UTF-8 encoded surrogate"),
        invalid(b'{"color": "\xe2\x82"}', ReasonCode.NOT_JSON, "cut multibyte character"),
        invalid(b"\xef\xbb\xbf" + dumps(GOOD), ReasonCode.NOT_JSON, "byte order mark"),
        invalid(b'{"color": "a\x00b"}', ReasonCode.NOT_JSON, "raw NUL in a string"),
        invalid(dumps(GOOD)[:-1], ReasonCode.NOT_JSON, "truncated"),
        invalid(dumps(GOOD) + b"\x00", ReasonCode.NOT_JSON, "trailing NUL"),
        invalid(b"\xfe\xff\x00{", ReasonCode.NOT_JSON, "UTF-16 garbage"),
        # the rest of the contract
        invalid(b"", ReasonCode.EMPTY, "empty"),
        invalid(None, ReasonCode.EMPTY, "tombstone"),
        bad(ReasonCode.TOO_LARGE, "too large", pad="x" * MAX_RECORD_BYTES),
        invalid(b"[]", ReasonCode.NOT_OBJECT, "array"),
        invalid(b"1e300", ReasonCode.NOT_OBJECT, "a bare number"),
        invalid(b"null", ReasonCode.NOT_OBJECT, "null"),
        bad(ReasonCode.MISSING_FEATURE, "x1 left out", x1=MISSING),
        bad(ReasonCode.MISSING_FEATURE, "color null", color=None),
        bad(ReasonCode.WRONG_TYPE, "numeric string", x1="0.5"),
        bad(ReasonCode.WRONG_TYPE, "boolean number", x3=True),
        bad(ReasonCode.WRONG_TYPE, "boolean category", shape=True),
        invalid(with_x1(deep), ReasonCode.WRONG_TYPE, "nested number"),
    ]
    for case in cases:
        if case.code is None:
            case.features = {k: v for k, v in case.features.items() if v is not MISSING}
    return cases


# -- generated records: a valid record, then at most one defect -----------------------------------

model_range = st.floats(-BELOW_LIMIT, BELOW_LIMIT) | st.integers(-(10**38), 10**38)
beyond_float32 = st.floats(MODEL_RANGE_LIMIT, allow_infinity=False) | st.integers(10**39, 10**300)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@st.composite
def generated_case(draw: st.DrawFn) -> Case:
    features: dict[str, Any] = {"x1": draw(model_range), "x3": draw(model_range)}
    if draw(st.booleans()):
        features["x2"] = draw(model_range | st.none())
    features["color"] = draw(st.sampled_from(COLORS) | st.text(max_size=6))
    if draw(st.booleans()):
        features["shape"] = draw(st.sampled_from(SHAPES) | st.text(max_size=6) | st.none())
    extra = draw(
        st.dictionaries(
            st.text(max_size=6).filter(lambda k: k not in GOOD), json_values, max_size=3
        )
    )
    row = {**extra, **features}
    keys = draw(st.permutations(list(row)))
    row = {k: row[k] for k in keys}
    defect = draw(
        st.sampled_from(
            [None] * 4
            + [ReasonCode.OUT_OF_RANGE] * 2
            + [
                ReasonCode.NOT_FINITE,
                ReasonCode.WRONG_TYPE,
                ReasonCode.MISSING_FEATURE,
                ReasonCode.NOT_JSON,
                ReasonCode.NOT_OBJECT,
            ]
        )
    )
    numeric = draw(st.sampled_from(NUMERIC))
    if defect == ReasonCode.OUT_OF_RANGE:
        row[numeric] = draw(st.sampled_from([1, -1])) * draw(beyond_float32)
    elif defect == ReasonCode.NOT_FINITE:
        row[numeric] = draw(
            st.sampled_from([float("nan"), float("inf"), float("-inf")])
            | st.integers(10**309, 10**400)
            | st.integers(-(10**400), -(10**309))
        )
    elif defect == ReasonCode.WRONG_TYPE:
        name = draw(st.sampled_from(NUMERIC + CATEGORICAL))
        never_right = (
            st.booleans()
            | st.lists(st.integers(), max_size=2)
            | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)
        )
        if name in NUMERIC:
            row[name] = draw(never_right | st.text(max_size=6))
        else:
            row[name] = draw(never_right | st.integers() | st.floats(allow_nan=False))
    elif defect == ReasonCode.MISSING_FEATURE:
        name = draw(st.sampled_from(["x1", "x3", "color"]))
        if draw(st.booleans()):
            row[name] = None
        else:
            del row[name]
    value = json.dumps(row, ensure_ascii=draw(st.booleans())).encode()
    if defect == ReasonCode.NOT_JSON:
        if draw(st.booleans()):  # a proper prefix of an object is never JSON
            value = value[: draw(st.integers(1, len(value) - 1))]
        else:  # a byte that is never UTF-8, anywhere
            at = draw(st.integers(0, len(value)))
            value = value[:at] + draw(st.sampled_from([b"\xff", b"\xc0", b"\xfe"])) + value[at:]
    elif defect == ReasonCode.NOT_OBJECT:
        value = draw(st.sampled_from([b"[%s]", b"[%s, 1]"])) % value
    if defect is not None:
        return invalid(value, defect, f"generated {defect}")
    seen = {k: row[k] for k in GOOD if k in row and row[k] is not None}
    return valid(value, seen, "generated valid")


def generated_corpus(count: int, corpus_seed: int) -> list[Case]:
    """``count`` draws of :func:`generated_case`, reproducible from ``corpus_seed``."""
    drawn: list[Case] = []

    @seed(corpus_seed)
    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(generated_case())
    def collect(case: Case) -> None:
        drawn.append(case)

    collect()
    return drawn


# -- the run -----------------------------------------------------------------------------------


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, Any, Any]:
    store = tmp_path / "store"
    pipeline, metadata = save_model(store, MODEL, make_frame(300, seed=1), trees=10)
    return store, pipeline, metadata


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[Callable[[list[str]], subprocess.Popen[bytes]]]:
    """Starts one worker with its log in ``tmp_path``; killed at the end whatever happened."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(command: list[str]) -> subprocess.Popen[bytes]:
        env = worker_env()
        env["FORESTREAM_MAX_RECORD_BYTES"] = str(MAX_RECORD_BYTES)
        with (tmp_path / "worker.log").open("wb") as sink:
            proc = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=ROOT,
            )  # fmt: skip
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def produce_all(bootstrap: str, topic: str, cases: list[Case]) -> None:
    """Sends every case with a unique key (a few valid ones keyless) and notes where it landed."""
    producer = make_producer(bootstrap, max_request_size=4 * 1024 * 1024)
    try:
        futures = []
        for i, case in enumerate(cases):
            keyless = case.code is None and i % 41 == 0
            case.key = None if keyless else f"fuzz-{i}".encode()
            futures.append(producer.send(topic, key=case.key, value=case.value))
        producer.flush(timeout=30)
        for case, future in zip(cases, futures, strict=True):
            metadata = future.get(timeout=10)
            case.partition, case.offset = metadata.partition, metadata.offset
    finally:
        producer.close()


def source_of(record: ConsumerRecord, dlq_topic: str) -> tuple[int, int]:
    if record.topic == dlq_topic:
        got = dict(record.headers)
        return int(got[headers.SOURCE_PARTITION]), int(got[headers.SOURCE_OFFSET])
    source = json.loads(record.value)["source"]
    return source["partition"], source["offset"]


def read_until_covered(
    bootstrap: str,
    topics: dict[str, str],
    expected: set[tuple[int, int]],
    worker: subprocess.Popen[bytes],
    log: Path,
    context: str,
) -> list[ConsumerRecord]:
    """Output and DLQ records until every expected source offset has an outcome; fails at once
    if the worker exits, and after ``WAIT_S`` with what is missing."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    records: list[ConsumerRecord] = []
    try:
        tps = [TopicPartition(topics[t], p) for t in ("out", "dlq") for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + WAIT_S
        seen: set[tuple[int, int]] = set()
        settle_until = None
        while settle_until is None or time.monotonic() < settle_until:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
                seen.update(source_of(r, topics["dlq"]) for r in batch)
            if settle_until is None and expected <= seen:
                settle_until = time.monotonic() + 2.0  # catch anything extra, e.g. duplicates
            if worker.poll() is not None:
                raise AssertionError(
                    f"worker exited {worker.returncode} mid-run ({context}):\n"
                    + log.read_text(errors="replace")[-4000:]
                )
            if settle_until is None and time.monotonic() > deadline:
                missing = sorted(expected - seen)
                raise AssertionError(
                    f"{len(missing)} of {len(expected)} records without an outcome after "
                    f"{WAIT_S:.0f}s ({context}), e.g. (partition, offset) {missing[:10]}; "
                    f"worker log tail:\n" + log.read_text(errors="replace")[-3000:]
                )
        return records
    finally:
        consumer.close()


def offline_probabilities(pipeline: Any, cases: list[Case]) -> np.ndarray:
    """What the pipeline says about the valid cases outside Kafka, from their known features."""
    rows = [
        {
            **{n: float(case.features.get(n, np.nan)) for n in NUMERIC},
            **{n: case.features.get(n, np.nan) for n in CATEGORICAL},
        }
        for case in cases
    ]
    frame = pd.DataFrame(rows, columns=NUMERIC + CATEGORICAL)
    for name in CATEGORICAL:
        frame[name] = frame[name].astype(object)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # float32's max in sklearn's sum check
        return pipeline.predict_proba(frame)


def test_fuzzed_records_through_a_real_worker(
    kafka_bootstrap: str,
    topic_name: Callable[[str], str],
    trained: tuple[Path, Any, Any],
    worker_process: Callable[[list[str]], subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    context = f"FORESTREAM_FUZZ_SEED={SEED}"
    print(context)  # shown with any failure
    store, pipeline, metadata = trained
    cases = fixed_corpus() + generated_corpus(GENERATED, SEED)
    random.Random(SEED).shuffle(cases)
    reasons_page = (ROOT / "docs" / "wire.md").read_text(encoding="utf-8")
    for case in cases:
        documented = case.code is None or f"| `{case.code}` |" in reasons_page
        assert documented, f"{case.code} not in docs/wire.md's reason table"

    topics = {k: topic_name(k) for k in ("in", "out", "dlq", "models")}
    ensure_topics(kafka_bootstrap, [TopicSpec(topics[k], PARTITIONS) for k in ("in", "out", "dlq")])
    publish_promotion(kafka_bootstrap, topics["models"], metadata)
    produce_all(kafka_bootstrap, topics["in"], cases)
    command = worker_command(
        kafka_bootstrap, topics, store, MODEL, topic_name("group"), "--max-batch", "100"
    )
    worker = worker_process(command)
    log = tmp_path / "worker.log"

    by_source = {(c.partition, c.offset): c for c in cases}
    records = read_until_covered(kafka_bootstrap, topics, set(by_source), worker, log, context)

    assert worker.poll() is None, f"the worker must still be running ({context})"
    worker.send_signal(signal.SIGTERM)
    try:
        code = worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker did not exit within 30s of SIGTERM ({context})") from None
    assert code == 0, f"worker exited {code} ({context}):\n{log.read_text()[-4000:]}"
    assert len(log_events(log, "worker_started")) == 1, "the worker restarted"
    [summary] = log_events(log, "worker_final_summary")
    assert summary["observer_errors"] == 0, summary  # drift, metrics: fine with all of it
    assert summary["records_in"] >= len(cases), summary
    assert summary["predicted"] + sum(summary["dead_lettered"].values()) == summary["records_in"]
    assert ReasonCode.SCORING_FAILED not in summary["dead_lettered"], summary
    assert not log_events(log, "scoring_failed"), "a record the model rejects got through"

    outcomes: dict[tuple[int, int], ConsumerRecord] = {}
    duplicates = 0
    for record in records:
        source = source_of(record, topics["dlq"])
        if source in outcomes:  # at-least-once: a repeat must be the same outcome
            duplicates += 1
            first = outcomes[source]
            assert (first.topic, first.key) == (record.topic, record.key), (source, context)
            continue
        outcomes[source] = record
    assert set(outcomes) == set(by_source), context

    valid_cases = [c for c in cases if c.code is None]
    expected = offline_probabilities(pipeline, valid_cases)
    for case, probabilities in zip(valid_cases, expected, strict=True):
        record = outcomes[(case.partition, case.offset)]
        what = f"{case.origin} {case.value!r:.300} ({context})"
        assert record.topic == topics["out"], (
            f"valid record dead-lettered as {dict(record.headers).get(headers.ERROR)!r}: "
            f"{dict(record.headers).get(headers.ERROR_DETAIL)!r}: {what}"
        )
        assert record.key == case.key, what
        prediction = Prediction.model_validate_json(record.value)
        assert prediction.model_version == metadata.version, what
        got = [prediction.probabilities[c] for c in metadata.classes]
        assert np.allclose(got, probabilities), f"{got} != {probabilities.tolist()}: {what}"
    for case in (c for c in cases if c.code is not None):
        record = outcomes[(case.partition, case.offset)]
        what = f"{case.origin} {case.value!r:.300} ({context})"
        assert record.topic == topics["dlq"], f"invalid record predicted ({case.code}): {what}"
        got = dict(record.headers)
        detail = got[headers.ERROR_DETAIL].decode()
        assert got[headers.ERROR].decode() == case.code, f"{detail}: {what}"
        assert record.key == case.key, what
        assert record.value == case.value, f"a dead letter must carry the original bytes: {what}"

    codes = sorted({c.code or "predicted" for c in cases})
    print(
        f"seed {SEED}: {len(cases)} records ({len(valid_cases)} valid), codes {codes}, "
        f"{duplicates} duplicates, {time.monotonic() - started:.1f}s"
    )
