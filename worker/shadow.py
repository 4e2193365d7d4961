"""Shadow scoring: a candidate version (``models shadow``) scores a share of every batch beside
the served version, its predictions going to the shadow topic only.

The scoring loop hands each batch over in one non-blocking call (:meth:`ShadowScorer.offer`);
a thread of its own decodes, scores and publishes with its own producer, so the served path never
waits for it: outputs, acknowledgements and commits go on as without a shadow. Shadow records are
outside any transaction and never retried: at-most-once per scoring of a record. A batch that
finds the thread still busy with an earlier one, or too many shadow records unacknowledged, is
skipped whole and counted (``forestream_shadow_skipped_total{reason}``), never waited for.

Which records: those the served version predicted, chosen by a hash of the key (of the
source topic, partition and offset when there is no key), so every worker, and every re-read
of a record, chooses the same ones.

Each shadow record carries ``served``: what the served version predicted for the same input
record (:class:`forestream.wire.messages.ServedPrediction`), handed over with the batch, so the
evaluator compares candidate and served on the same records from the shadow topic alone.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import structlog

from forestream.edge.interface import AckingProducer, Delivery, InputRecord
from forestream.runtime.logs import RateLimited

if TYPE_CHECKING:
    import numpy as np

    from forestream.wire.schema import FeatureSchema
    from forestream.worker.decoding import Parser
    from forestream.worker.health import Telemetry
    from forestream.worker.models import ActiveModel, ModelFollower
    from forestream.worker.scoring import PredictionEncoder, Scores, ServedLabels
    from forestream.worker.settings import WorkerSettings

log = structlog.get_logger("forestream.worker.shadow")

SkipReason = Literal["busy", "backpressure", "error"]
SKIP_REASONS: tuple[SkipReason, ...] = ("busy", "backpressure", "error")
MAX_UNACKED_BATCHES = 4
MAX_QUEUED_BATCHES = 64
"""Served batches waiting for the shadow thread past which a batch is skipped as ``busy``."""
COALESCE_RECORDS = 1_000
COALESCE_S = 0.2
"""The shadow thread scores the waiting batches together, once it holds this many records or
its oldest has waited this long: at a low rate a served batch is a few records, and scoring a
candidate per served batch costs its fixed overhead (parse, forest call, encode, send) as
often, on the cores the served path needs (measured: served p99 1.42x without coalescing at
1,000 rec/s on 2 cores). Shadow records are at-most-once and off the served path; a fifth of
a second later costs them nothing."""
"""Shadow publications still unacknowledged past which a batch's shadow work is skipped: the
broker or the producer's queue is not keeping up, and the served path must not share that."""
_SEND_BLOCK_MS = 2_000
"""A shadow send waits at most this long for metadata or room in its own producer's queue, on
the shadow thread only: meanwhile later batches find it busy and are skipped."""
_SPAN = 1 << 64


def record_ident(record: InputRecord) -> bytes:
    """What the share is chosen by: the key, or the source coordinates when there is none."""
    if record.key is not None:
        return record.key
    return f"{record.topic}/{record.partition}/{record.offset}".encode()


def selects(ident: bytes, share: float) -> bool:
    """Whether a record is in the shadowed share: the same answer on every worker, every run."""
    if share >= 1.0:
        return True
    digest = hashlib.blake2b(ident, digest_size=8).digest()
    return int.from_bytes(digest, "big") < int(share * _SPAN)


def select(records: Sequence[InputRecord], indexes: Sequence[int], share: float) -> list[int]:
    """The ``indexes`` (of ``records``) in the share."""
    if share >= 1.0:
        return list(indexes)
    return [i for i in indexes if selects(record_ident(records[i]), share)]


def skip_reason(queue_full: bool, unacked_batches: int) -> SkipReason | None:
    """Why a batch's shadow work is skipped, if it is: the scorer is still on an earlier batch
    (slower than the stream), or earlier shadow records are not acknowledged yet."""
    if queue_full:
        return "busy"
    if unacked_batches >= MAX_UNACKED_BATCHES:
        return "backpressure"
    return None


def coalesce(jobs: list[_Job]) -> list[_Job]:
    """Consecutive batches of one candidate and one served version as one job (their records
    appended, indexes shifted): a change of either starts a new job, in order."""
    out: list[_Job] = []
    for job in jobs:
        last = out[-1] if out else None
        if last is None or last.model is not job.model or last.served_version != job.served_version:
            out.append(job)
            continue
        shift = len(last.records)
        labels = _as_list(last.served_labels) + _as_list(job.served_labels)
        out[-1] = _Job(
            last.model,
            last.records + job.records,
            list(last.indexes) + [i + shift for i in job.indexes],
            last.served_version,
            labels,
        )
    return out


def _as_list(labels: Sequence[str] | np.ndarray) -> list[str]:
    return labels.tolist() if hasattr(labels, "tolist") else list(labels)


class _Job(NamedTuple):
    model: ActiveModel
    records: list[InputRecord]
    indexes: Sequence[int]
    served_version: str
    served_labels: Sequence[str] | np.ndarray
    """The served version's label per entry of ``indexes``."""


def with_served(
    encode: PredictionEncoder, version: str, by_source: dict[tuple[int, int], str]
) -> PredictionEncoder:
    """``encode`` writing each row's ``served``, found by the row's source (partition, offset):
    the encoder sees the rows the candidate scored, a subset of those chosen, in their order."""
    from forestream.worker.scoring import ServedLabels

    def encoded(
        *,
        scores: Scores,
        classes: Sequence[str],
        model_version: str,
        topic: str,
        partitions: Sequence[int],
        offsets: Sequence[int],
        event_times_ms: Sequence[int],
        scored_at_ms: int,
        served: ServedLabels | None = None,
    ) -> list[bytes]:
        labels = [by_source[p, o] for p, o in zip(partitions, offsets, strict=True)]
        return encode(
            scores=scores,
            classes=classes,
            model_version=model_version,
            topic=topic,
            partitions=partitions,
            offsets=offsets,
            event_times_ms=event_times_ms,
            scored_at_ms=scored_at_ms,
            served=ServedLabels(version, labels),
        )

    return encoded


class ShadowScorer:
    """One worker's shadow scoring: a thread, a one-batch hand-off slot, a producer."""

    def __init__(
        self,
        settings: WorkerSettings,
        follower: ModelFollower,
        telemetry: Telemetry | None,
        parser: Callable[[list[InputRecord], FeatureSchema], Parser],
        encoder: Callable[[], PredictionEncoder],
    ) -> None:
        """``parser``: the batch parser for the candidate's schema (never waiting for the
        Schema Registry); ``encoder``: the shadow topic's prediction encoder, built on first
        use (Avro registers its subject then)."""
        self.settings = settings
        self.follower = follower
        self.telemetry = telemetry
        self.parser = parser
        self.encoder = encoder
        self.topic = settings.shadow_topic_or_default()
        self.share = settings.shadow_share
        self._jobs: queue.Queue[_Job] = queue.Queue(MAX_QUEUED_BATCHES)
        self._unacked: deque[Delivery] = deque()
        self._producer: AckingProducer | None = None
        self._encode: PredictionEncoder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warn = RateLimited(10.0)

    def offer(
        self,
        records: list[InputRecord],
        valid_indexes: Sequence[int],
        served_version: str,
        served_labels: Sequence[str] | np.ndarray,
    ) -> None:
        """Hand a scored batch over (its records, the indexes the served version predicted,
        that version and its label per index, as scored: no per-record work here); returns
        at once. Nothing happens without a candidate, or once the candidate is the version
        served (promoted, say by the evaluator's rule, before anyone stopped the shadow): it
        would only compare a version with itself."""
        model = self.follower.shadow()
        if model is None or not len(valid_indexes) or model.version == served_version:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
            self._thread.start()
        try:
            self._jobs.put_nowait(
                _Job(model, records, valid_indexes, served_version, served_labels)
            )
        except queue.Full:
            self._skipped("busy", model.version)

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the thread; what is still queued is dropped (at-most-once), what was sent gets
        ``timeout_s`` to be acknowledged."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._producer is not None:
            self._producer.close(timeout_s)
            self._producer = None

    # -- the shadow thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._jobs.get(timeout=0.2)
            except queue.Empty:
                self._reap()
                continue
            for job in coalesce(self._gather(first)):
                try:
                    self._work(job)
                except Exception as exc:  # never let a candidate's bug reach serving
                    error = f"{type(exc).__name__}: {exc}"
                    self._skipped("error", job.model.version, error=error)

    def _gather(self, first: _Job) -> list[_Job]:
        """``first`` and the batches that follow it within :data:`COALESCE_S`, up to
        :data:`COALESCE_RECORDS` records."""
        import time

        jobs, held = [first], len(first.indexes)
        until = time.monotonic() + COALESCE_S
        while held < COALESCE_RECORDS and not self._stop.is_set():
            left = until - time.monotonic()
            if left <= 0:
                break
            try:
                job = self._jobs.get(timeout=left)
            except queue.Empty:
                break
            jobs.append(job)
            held += len(job.indexes)
        return jobs

    def _work(self, job: _Job) -> None:
        from forestream.worker.processing import process_records

        model, records = job.model, job.records
        indexes = list(job.indexes)
        picked = select(records, indexes, self.share)
        if not picked:
            return
        chosen = [records[i] for i in picked]
        served_of = dict(zip(indexes, _as_list(job.served_labels), strict=True))
        served = {(records[i].partition, records[i].offset): served_of[i] for i in picked}
        self._reap()
        reason = skip_reason(False, len(self._unacked))
        if reason is not None:
            self._skipped(reason, model.version)
            return
        if self._encode is None:  # Avro: the shadow topic's subject registered once, here
            self._encode = self.encoder()
        s = self.settings
        batch = process_records(
            chosen,
            model,
            output_topic=self.topic,
            dlq_topic=self.topic,  # dead letters are dropped below: the served path has its own
            max_record_bytes=s.max_record_bytes,
            parse=self.parser(chosen, model.schema),
            encode=with_served(self._encode, job.served_version, served),
        )
        predictions = batch.outgoing[: batch.predicted]  # predictions come first, then letters
        if batch.predicted < len(chosen) and self._warn.ready():
            log.warning(
                "shadow_records_rejected",
                version=model.version,
                rejected=len(chosen) - batch.predicted,
                error=batch.scoring_error,
                suppressed=self._warn.take_suppressed(),
            )
        if not predictions:
            return
        delivery = self._producer_now().send(predictions)
        self._unacked.append(delivery)
        sent = delivery.handed_over()
        if self.telemetry is not None:
            self.telemetry.metrics.record_shadow_predicted(sent)
        if sent < len(predictions):
            self._skipped("backpressure", model.version, dropped=len(predictions) - sent)

    def _producer_now(self) -> AckingProducer:
        if self._producer is None:
            from forestream.edge.factory import acking_producer

            self._producer = acking_producer(
                self.settings.kafka(),
                client_id=f"forestream-worker-{self.settings.worker_index}-shadow",
                max_block_ms=_SEND_BLOCK_MS,
            )
        return self._producer

    def _reap(self) -> None:
        """Serve acknowledgements that arrived; forget settled publications (oldest first)."""
        producer = self._producer
        while producer is not None and self._unacked:
            delivery = self._unacked[0]
            producer.await_delivery(delivery, 0)
            if not delivery.settled():
                return
            self._unacked.popleft()
            error = delivery.error()
            if error is not None and self._warn.ready():
                log.warning(
                    "shadow_delivery_failed",
                    error=str(error),
                    unacknowledged=len(delivery.unacknowledged()),
                    suppressed=self._warn.take_suppressed(),
                )

    def _skipped(self, reason: SkipReason, version: str, **detail: object) -> None:
        if self.telemetry is not None:
            self.telemetry.metrics.record_shadow_skip(reason)
        if self._warn.ready():
            log.warning(
                "shadow_batch_skipped",
                reason=reason,
                version=version,
                suppressed=self._warn.take_suppressed(),
                **detail,
            )
