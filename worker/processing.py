"""The per-batch work shared by the streaming worker and a bounded replay: records in, acks out.

``process_records`` turns consumed records and the active model into the exact records to
publish (predictions and dead letters) plus what observers need; ``AckedPublisher`` sends them
and returns only once the broker acknowledged every one. Neither knows about consumer groups or
offsets: committing (worker) or not committing at all (replay) is the caller's business, which is
what lets both loops share this code instead of copying it.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import structlog

from contracts import headers
from contracts.headers import DLQ_MAX_VALUE_BYTES, ReasonCode
from contracts.logs import RateLimited
from worker.batch import BatchObserver, ScoredBatch
from worker.decoding import Reject, decode_batch, empty_frame
from worker.models import ActiveModel
from worker.scoring import Scores, ScoringError, dlq_headers, encode_predictions, score_frame

log = structlog.get_logger("forestream.worker")

_MAX_BACKOFF_S = 10.0
_DETAIL_CHARS = 200


class InputRecord(Protocol):
    """What the batch path reads from a consumed record (kafka-python's ``ConsumerRecord``)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


class Outgoing(NamedTuple):
    """One record to publish; kept until acknowledged so a failed send is retried unchanged.

    A NamedTuple rather than a frozen dataclass: one is built per record, and a tuple is
    several times cheaper to construct.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    """None for none (the client takes a list or None, not any sequence)."""


@dataclass(frozen=True)
class ProcessedBatch:
    """Everything one batch produces; every input record is in exactly one output record."""

    outgoing: list[Outgoing]
    records_in: int
    predicted: int
    dead_lettered: Counter[str]
    scored: ScoredBatch
    """What observers see (zero valid rows when scoring failed: all went to the DLQ)."""
    scoring_error: str | None = None


def process_records(
    records: Sequence[InputRecord],
    model: ActiveModel,
    *,
    output_topic: str,
    dlq_topic: str,
    max_record_bytes: int,
) -> ProcessedBatch:
    """Decode, score with one ``predict_proba``, and build predictions plus dead letters.

    Pure apart from the clock: never raises for bad input or a failing model (a model failure
    dead-letters every valid record of the batch as ``scoring_failed``), so no record is lost.
    """
    decoded = decode_batch(
        [r.value for r in records], model.schema, max_record_bytes=max_record_bytes
    )
    valid = [records[i] for i in decoded.valid_indexes]
    rejects = list(decoded.rejects)
    started = time.perf_counter()
    scores: Scores | None = None
    scoring_error: str | None = None
    try:
        scores = score_frame(model.pipeline, decoded.frame, model.classes)
    except ScoringError as exc:
        scoring_error = str(exc)
        detail = scoring_error[:_DETAIL_CHARS]
        rejects += [Reject(i, ReasonCode.SCORING_FAILED, detail) for i in decoded.valid_indexes]
        rejects.sort(key=lambda reject: reject.index)
        valid = []
    predict_seconds = time.perf_counter() - started
    scored_at_ms = int(time.time() * 1000)

    event_times_ms = [r.timestamp for r in valid]
    outgoing: list[Outgoing] = []
    if scores is not None and valid:
        values = encode_predictions(
            scores=scores,
            classes=model.classes,
            model_version=model.version,
            topic=valid[0].topic,
            partitions=[r.partition for r in valid],
            offsets=[r.offset for r in valid],
            event_times_ms=event_times_ms,
            scored_at_ms=scored_at_ms,
        )
        outgoing += [Outgoing(output_topic, r.key, v) for r, v in zip(valid, values, strict=True)]
    for reject in rejects:
        r = records[reject.index]
        letter_headers = dlq_headers(
            reject.code, reject.detail, r.topic, r.partition, r.offset, model.version
        )
        # the client refuses a record with neither key nor value: only then send an empty value
        value = r.value if (r.value is not None or r.key is not None) else b""
        if value is not None and len(value) > DLQ_MAX_VALUE_BYTES:
            letter_headers += truncation_headers(value)
            value = value[:DLQ_MAX_VALUE_BYTES]
        outgoing.append(Outgoing(dlq_topic, r.key, value, letter_headers))

    if scores is None:
        scores = Scores.empty(len(model.classes))
        frame = empty_frame(model.schema)
    else:
        frame = decoded.frame
    scored = ScoredBatch(
        model_version=model.version,
        classes=model.classes,
        frame=frame,
        keys=[r.key for r in valid],
        predictions=scores.labels,
        probabilities=scores.probabilities,
        event_times_ms=np.array(event_times_ms, dtype=np.int64),
        scored_at_ms=scored_at_ms,
        reject_codes=[r.code for r in rejects],
        records_in=len(records),
        unknown_categories=decoded.unknown_categories if valid else 0,
        extra_keys=decoded.extra_keys if valid else 0,
        predict_seconds=predict_seconds,
    )
    return ProcessedBatch(
        outgoing=outgoing,
        records_in=len(records),
        predicted=len(valid),
        dead_lettered=Counter(r.code for r in rejects),
        scored=scored,
        scoring_error=scoring_error,
    )


def truncation_headers(value: bytes) -> list[tuple[str, bytes]]:
    """Headers of a dead letter cut to ``DLQ_MAX_VALUE_BYTES``: original size and sha256."""
    return [
        (headers.VALUE_TRUNCATED, str(len(value)).encode()),
        (headers.VALUE_SHA256, hashlib.sha256(value).hexdigest().encode()),
    ]


def next_offsets(records: Sequence[InputRecord]) -> dict[tuple[str, int], int]:
    """Per (topic, partition): the offset after the last record of the batch, i.e. what to
    commit or checkpoint once the batch is acknowledged (records of a partition arrive in
    offset order)."""
    return {(r.topic, r.partition): r.offset + 1 for r in records}


class AckedPublisher:
    """Sends a batch's records and waits until the broker acknowledged every one of them.

    Records whose send failed are resent (with backoff) until acknowledged or ``give_up()``
    turns true (e.g. SIGTERM while the broker is down); the caller then must not commit, so the
    batch is read again later: at-least-once, never a silent gap.
    """

    def __init__(self, producer: Any, give_up: Callable[[], bool] = lambda: False) -> None:
        self.producer = producer
        self.give_up = give_up
        self._warn = RateLimited(10.0)

    def publish(
        self, outgoing: Sequence[Outgoing], give_up: Callable[[], bool] | None = None
    ) -> bool:
        """True once all of ``outgoing`` is acknowledged; False if abandoned (do not commit).

        ``give_up`` overrides the publisher's own condition for this call (e.g. a deadline).
        """
        from kafka.errors import KafkaError

        give_up = give_up or self.give_up

        pending = list(outgoing)
        backoff = 0.2
        while pending:
            futures = []
            error: BaseException | None = None
            try:
                for o in pending:
                    futures.append(
                        self.producer.send(o.topic, value=o.value, key=o.key, headers=o.headers)
                    )
                self.producer.flush()
            except KafkaError as exc:
                error = exc
            sent = zip(pending[: len(futures)], futures, strict=True)
            failed = [o for o, f in sent if not f.is_done or f.failed()]
            failed += pending[len(futures) :]
            if not failed:
                return True
            error = error or next((f.exception for f in futures if f.is_done and f.failed()), None)
            if give_up():
                log.error("publish_abandoned", unacknowledged=len(failed), error=str(error))
                return False
            if self._warn.ready():
                log.warning(
                    "publish_failed_retrying",
                    error=str(error),
                    retriable=getattr(error, "retriable", None),
                    unacknowledged=len(failed),
                    retry_in_s=backoff,
                    suppressed=self._warn.take_suppressed(),
                )
            time.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            pending = failed
        return True


class ObserverFanout:
    """Calls each observer once per batch; an observer's exception is counted and logged
    (rate-limited), never propagated: monitoring must not stop scoring."""

    def __init__(
        self,
        observers: Sequence[BatchObserver],
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.observers = list(observers)
        self.on_error = on_error
        """Told the failing observer's class name, e.g. to count it in a metric."""
        self.errors = 0
        self._warn = RateLimited(10.0)

    def notify(self, batch: ScoredBatch) -> None:
        for observer in self.observers:
            try:
                observer.on_batch(batch)
            except Exception as exc:
                self.errors += 1
                if self.on_error is not None:
                    with contextlib.suppress(Exception):
                        self.on_error(type(observer).__name__)
                if self._warn.ready():
                    log.error(
                        "observer_failed",
                        observer=type(observer).__name__,
                        error=f"{type(exc).__name__}: {exc}",
                        suppressed=self._warn.take_suppressed(),
                    )
