"""The per-batch work shared by the streaming worker and a bounded replay: records in, acks out.

``process_records`` turns consumed records and the active model into the exact records to
publish (predictions and dead letters) plus what observers need; ``AckedPublisher`` sends them
and returns only once the broker acknowledged every one. Neither knows about consumer groups or
offsets: committing (worker) or not committing at all (replay) is the caller's business, which is
what lets both loops share this code instead of copying it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from forestream.edge.interface import AckingProducer, Delivery, InputRecord, Outgoing
from forestream.runtime.logs import RateLimited
from forestream.wire import headers
from forestream.wire.headers import DLQ_MAX_VALUE_BYTES, MAX_KEY_BYTES, ReasonCode
from forestream.worker.batch import BatchObserver, ScoredBatch
from forestream.worker.decoding import Parser, Reject, decode_batch, empty_frame, parse_json
from forestream.worker.models import ActiveModel
from forestream.worker.scoring import (
    PredictionEncoder,
    dlq_headers,
    encode_predictions,
    score_isolating,
)

log = structlog.get_logger("forestream.worker")

_MAX_BACKOFF_S = 10.0
_ACK_WAIT_SLICE_S = 0.5
_DETAIL_CHARS = 200


@dataclass(frozen=True)
class ProcessedBatch:
    """Everything one batch produces; every input record is in exactly one output record."""

    outgoing: list[Outgoing]
    records_in: int
    predicted: int
    dead_lettered: Counter[str]
    scored: ScoredBatch
    """What observers see: the predicted rows only (none went to the DLQ)."""
    scoring_error: str | None = None
    """The model's error on the whole batch when some of its rows were dead-lettered for it."""
    valid_indexes: Sequence[int] = ()
    """Indexes (in the batch's records) of the predicted records, in ``outgoing``'s order:
    what shadow scoring chooses from."""


def process_records(
    records: Sequence[InputRecord],
    model: ActiveModel,
    *,
    output_topic: str,
    dlq_topic: str,
    max_record_bytes: int,
    parse: Parser = parse_json,
    encode: PredictionEncoder = encode_predictions,
) -> ProcessedBatch:
    """Decode, score with one ``predict_proba``, and build predictions plus dead letters.

    ``parse`` reads the values (JSON by default, or a Confluent wire format); ``encode``
    writes the predictions (JSON by default, or Avro). Dead letters carry the input's bytes.

    Pure apart from the clock: never raises for bad input or a failing model, so no record is
    lost. When the model fails on the batch, :func:`forestream.worker.scoring.score_isolating`
    finds the
    rows it fails on: only those are dead-lettered (``scoring_failed``), the rest predicted.
    """
    long_keys = [i for i, r in enumerate(records) if r.key and len(r.key) > MAX_KEY_BYTES]
    if long_keys:  # rare: keep the common path free of the bookkeeping
        return _dead_letter_long_keys(
            records,
            long_keys,
            model,
            output_topic=output_topic,
            dlq_topic=dlq_topic,
            max_record_bytes=max_record_bytes,
            parse=parse,
            encode=encode,
        )
    decoded = decode_batch(
        [r.value for r in records], model.schema, max_record_bytes=max_record_bytes, parse=parse
    )
    rejects = list(decoded.rejects)
    started = time.perf_counter()
    isolated = score_isolating(model.pipeline, decoded.frame, model.classes)
    scores = isolated.scores
    scoring_error: str | None = None
    if isolated.failed:  # only the rows the model cannot score are lost, each in the DLQ
        scoring_error = isolated.error
        rejects += [
            Reject(decoded.valid_indexes[j], ReasonCode.SCORING_FAILED, why[:_DETAIL_CHARS])
            for j, why in isolated.failed.items()
        ]
        rejects.sort(key=lambda reject: reject.index)
        scored_rows = isolated.scored.tolist()
        valid_indexes: Sequence[int] = [decoded.valid_indexes[j] for j in scored_rows]
        valid = [records[i] for i in valid_indexes]
        frame = decoded.frame.iloc[scored_rows].reset_index(drop=True)
    else:
        valid_indexes = decoded.valid_indexes
        valid = [records[i] for i in valid_indexes]
        frame = decoded.frame
    predict_seconds = time.perf_counter() - started
    scored_at_ms = int(time.time() * 1000)

    event_times_ms = [r.timestamp for r in valid]
    outgoing: list[Outgoing] = []
    if valid:
        values = encode(
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
    outgoing += [
        dead_letter(records[reject.index], reject.code, reject.detail, dlq_topic, model.version)
        for reject in rejects
    ]

    if not valid:
        frame = empty_frame(model.schema)
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
        engine=scores.engine,
    )
    return ProcessedBatch(
        outgoing=outgoing,
        records_in=len(records),
        predicted=len(valid),
        dead_lettered=Counter(r.code for r in rejects),
        scored=scored,
        scoring_error=scoring_error,
        valid_indexes=valid_indexes,
    )


def _dead_letter_long_keys(
    records: Sequence[InputRecord],
    long_keys: list[int],
    model: ActiveModel,
    *,
    output_topic: str,
    dlq_topic: str,
    max_record_bytes: int,
    parse: Parser,
    encode: PredictionEncoder,
) -> ProcessedBatch:
    """A prediction carries its input's key, so an input whose key exceeds ``MAX_KEY_BYTES``
    is dead-lettered (``too_large``) instead of scored; the rest of the batch goes on as usual."""
    skip = set(long_keys)
    kept = [i for i in range(len(records)) if i not in skip]
    rest = process_records(
        [records[i] for i in kept],
        model,
        output_topic=output_topic,
        dlq_topic=dlq_topic,
        max_record_bytes=max_record_bytes,
        parse=parse,
        encode=encode,
    )
    letters = []
    for i in long_keys:
        detail = f"key of {len(records[i].key or b'')} bytes exceeds the {MAX_KEY_BYTES}-byte limit"
        letters.append(
            dead_letter(records[i], ReasonCode.TOO_LARGE, detail, dlq_topic, model.version)
        )
    codes = [ReasonCode.TOO_LARGE] * len(letters)
    return ProcessedBatch(
        outgoing=rest.outgoing + letters,
        records_in=len(records),
        predicted=rest.predicted,
        dead_lettered=rest.dead_lettered + Counter(codes),
        scored=dataclasses.replace(
            rest.scored,
            records_in=len(records),
            reject_codes=[*rest.scored.reject_codes, *codes],
        ),
        scoring_error=rest.scoring_error,
        valid_indexes=[kept[j] for j in rest.valid_indexes],
    )


def dead_letter(
    record: InputRecord, code: str, detail: str, dlq_topic: str, model_version: str
) -> Outgoing:
    """The input's own key and value bytes with the reason in headers.

    Key and value are cut (to ``MAX_KEY_BYTES`` / ``DLQ_MAX_VALUE_BYTES``, with the original
    size and sha256 in headers) only when the producer could not send them whole.
    """
    letter_headers = dlq_headers(
        code, detail, record.topic, record.partition, record.offset, model_version
    )
    key = _cut(record.key, MAX_KEY_BYTES, headers.KEY_TRUNCATED, headers.KEY_SHA256, letter_headers)
    # the client refuses a record with neither key nor value: only then send an empty value
    value = record.value if (record.value is not None or key is not None) else b""
    value = _cut(
        value, DLQ_MAX_VALUE_BYTES, headers.VALUE_TRUNCATED, headers.VALUE_SHA256, letter_headers
    )
    return Outgoing(dlq_topic, key, value, letter_headers)


def _cut(
    data: bytes | None,
    limit: int,
    size_header: str,
    sha256_header: str,
    letter_headers: list[tuple[str, bytes]],
) -> bytes | None:
    """``data`` cut to ``limit`` bytes, noting its original size and sha256 in the headers."""
    if data is None or len(data) <= limit:
        return data
    letter_headers += [
        (size_header, str(len(data)).encode()),
        (sha256_header, hashlib.sha256(data).hexdigest().encode()),
    ]
    return data[:limit]


@dataclass(frozen=True, slots=True)
class Publication:
    """Records handed to the producer, and what became of them so far."""

    records: list[Outgoing]
    delivery: Delivery


class AckedPublisher:
    """Sends a batch's records and waits until the broker acknowledged every one of them.

    Records whose send failed are resent (with backoff) until acknowledged or ``give_up()``
    turns true (e.g. a rebalance deadline, or a shutdown grace period with the broker down);
    the caller then must not commit, so the batch is read again: at-least-once, never a gap.
    Acks are awaited in short slices so ``give_up`` is honoured while records are in flight,
    not only after the client's own delivery timeout (two minutes).
    """

    def __init__(
        self,
        producer: AckingProducer,
        give_up: Callable[[], bool] = lambda: False,
    ) -> None:
        self.producer = producer
        self.give_up = give_up
        self._warn = RateLimited(10.0)

    def send(self, outgoing: Sequence[Outgoing]) -> Publication:
        """Hand the records to the client without waiting: :meth:`complete` awaits them, so
        the caller can score the next batch meanwhile."""
        pending = list(outgoing)
        return Publication(pending, self.producer.send(pending))

    def settled(self, publication: Publication) -> bool:
        """Whether :meth:`complete` would return at once (serves what already arrived)."""
        return self.producer.await_delivery(publication.delivery, 0)

    def publish(
        self, outgoing: Sequence[Outgoing], give_up: Callable[[], bool] | None = None
    ) -> bool:
        """:meth:`send` then :meth:`complete`."""
        return self.complete(self.send(outgoing), give_up)

    def complete(self, publication: Publication, give_up: Callable[[], bool] | None = None) -> bool:
        """True once all of the publication is acknowledged; False if abandoned (do not
        commit). ``give_up`` overrides the publisher's own condition for this call (e.g. a
        deadline). An error no retry can fix (a missing ACL) is raised, classified, not
        retried.
        """
        give_up = give_up or self.give_up
        pending, delivery = publication.records, publication.delivery
        backoff = 0.2
        while True:
            waited = self._await_acks(delivery, give_up)
            failed = [pending[i] for i in delivery.unacknowledged()]
            if not failed:
                return True
            error = delivery.error()
            if error is not None and (fatal := self.producer.fatal(error, failed[0].topic)):
                raise fatal
            if not waited or give_up():
                break
            if self._warn.ready():
                log.warning(
                    "publish_failed_retrying",
                    error=str(error),
                    retriable=getattr(error, "retriable", None),
                    unacknowledged=len(failed),
                    retry_in_s=backoff,
                    suppressed=self._warn.take_suppressed(),
                )
            if not _sleep_unless(give_up, backoff):
                break
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            pending = failed
            delivery = self.producer.send(pending)
        log.error(
            "publish_abandoned",
            unacknowledged=len(failed),
            error=str(error) if error else "gave up waiting for acknowledgements",
        )
        return False

    def _await_acks(self, delivery: Delivery, give_up: Callable[[], bool]) -> bool:
        """Wait until everything sent is acknowledged or failed; False if given up first."""
        while not self.producer.await_delivery(delivery, _ACK_WAIT_SLICE_S):
            if give_up():
                return False
        return True


def _sleep_unless(give_up: Callable[[], bool], seconds: float) -> bool:
    """Sleep ``seconds`` in short steps; False as soon as ``give_up()`` (a deadline) holds."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        if give_up():
            return False
        time.sleep(min(left, 0.1))
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
