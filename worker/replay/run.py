"""Running a replay: read the fixed range, score, deliver under the checkpoint's guarantee.

At-least-once (the default), a batch is published through
:class:`forestream.worker.processing.AckedPublisher` and the file saved once it is
acknowledged: a crash in between re-scores that batch on ``--resume``. Exactly-once, a batch's
outputs and its input next-offsets are committed in one transaction through the worker's own
:class:`forestream.worker.delivery.Transactions` (the same commit, backoff and settle after an
unknown outcome), the offsets to a consumer group of the replay's own that nobody joins; a
resume starts from the group's committed offsets (the file may lag them by a batch) after its
new producer has fenced any earlier one and settled its open transaction.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forestream.edge.interface import InputRecord, PartitionReader, TopicPartition
from forestream.errors import TransientKafkaError, UserError
from forestream.runtime.logs import RateLimited
from forestream.worker.cycle import next_offsets
from forestream.worker.delivery.transactional import Outcome, Transactions
from forestream.worker.replay.checkpoint import Checkpoint, settled_ranges
from forestream.worker.replay.flags import ReplaySettings
from forestream.worker.transactions import TXN_INIT_BLOCK_MS, TXN_TIMEOUT_S

if TYPE_CHECKING:  # the clients' side is imported when a replay runs: `--help` stays fast
    from forestream.edge.interface import AckingProducer, GroupOffsetsReader, TransactionalProducer
    from forestream.errors import ProducerFenced
    from forestream.worker.processing import AckedPublisher, ProcessedBatch
    from forestream.worker.scoring import PredictionEncoder


@dataclass
class ReplayResult:
    scored: int
    dead_lettered: Counter[str]
    seconds: float
    interrupted: bool
    checkpoint: Checkpoint

    @property
    def records(self) -> int:
        return self.scored + sum(self.dead_lettered.values())

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


def load_model(settings: ReplaySettings, version: str | None) -> Any:
    from forestream.registry.store import normalize_version, signing_key_from_env
    from forestream.worker.models import ActiveModel, warm_up

    store = settings.open_store()
    name = settings.model_name
    if version is None:
        version = store.served(name)
        if version is None:
            raise UserError(
                f"model {name!r} has no promoted version in {settings.model_store}: "
                "pass --model-version or promote one"
            )
    pipeline, meta = store.load_verified(
        name, normalize_version(version), trust=settings.trust(), signing_key=signing_key_from_env()
    )
    try:  # the live worker's checks too: a mislabelling artifact must not backfill a topic
        warm_up(pipeline, meta)
    except Exception as exc:
        raise UserError(
            f"model {name} {meta.version} cannot be served: {type(exc).__name__}: {exc}"
        ) from None
    return ActiveModel(meta.version, meta.artifact_sha256, pipeline, meta)


def replay(
    settings: ReplaySettings,
    checkpoint: Checkpoint,
    model: Any,
    checkpoint_path: Path,
    on_progress: Callable[[int], object] | None = None,
    encode: PredictionEncoder | None = None,
) -> ReplayResult:
    """Score every record of ``checkpoint.ranges``; stop early (cleanly) on SIGINT/SIGTERM.

    The checkpoint's guarantee and formats decide how (``settings.guarantee`` and the formats
    are the new replays' only). ``encode``: the predictions' encoder when the caller already
    built it (registered the Avro schema); else built here.
    """
    from forestream.errors import ProducerFenced
    from forestream.runtime.shutdown import install as install_shutdown_watchdog

    run = _Run(settings, checkpoint, model, checkpoint_path, on_progress, encode)
    # SIGINT/SIGTERM stop after the batch in hand; a broker that never answers cannot hold us
    # past the watchdog's grace (the checkpoint then lags by at most that batch)
    watchdog = install_shutdown_watchdog(run.request_stop, run.abandoned)
    started = time.monotonic()
    try:
        run.open()
        run.loop()
    except ProducerFenced:
        raise _fenced(checkpoint, checkpoint_path, settings.transaction_timeout_ms) from None
    finally:
        run.close()
        watchdog.uninstall()
    checkpoint.save(checkpoint_path)
    return ReplayResult(
        scored=run.scored,
        dead_lettered=run.dead,
        seconds=time.monotonic() - started,
        interrupted=checkpoint.remaining() > 0,
        checkpoint=checkpoint,
    )


def _fenced(checkpoint: Checkpoint, path: Path, timeout_ms: int) -> ProducerFenced:
    from forestream.errors import ProducerFenced

    return ProducerFenced(
        f"fenced: transactional id {checkpoint.transactional_id!r} was taken over, by another "
        f"process of this replay (`forestream replay --resume {path}` started while it ran?) "
        "or by the coordinator, which aborts a transaction left open past "
        f"FORESTREAM_TRANSACTION_TIMEOUT_MS ({timeout_ms} ms); this replay stops and its last "
        f"batch is void. If no other replay of {path} runs, resume it: forestream replay "
        f"--resume {path}"
    )


class _Run:
    """One replay run: its reader, its producer and its progress, under either guarantee."""

    def __init__(
        self,
        settings: ReplaySettings,
        checkpoint: Checkpoint,
        model: Any,
        path: Path,
        on_progress: Callable[[int], object] | None,
        encode: PredictionEncoder | None = None,
    ) -> None:
        from forestream.worker.serving import output_encoder, writer_schemas_for

        formats = settings.model_copy(
            update={
                "input_format": checkpoint.input_format,
                "output_format": checkpoint.output_format,
            }
        )
        self.writer_schemas = writer_schemas_for(formats)
        """The worker's reading of framed records: each schema id fetched once, held while
        the registry is away."""
        self.encode = encode or output_encoder(formats, checkpoint.output_topic)
        self.settings = settings
        self.kafka = settings.kafka()
        self.checkpoint = checkpoint
        self.model = model
        self.path = path
        self.on_progress = on_progress
        self.stop_requested = False
        self.scored = 0
        self.dead: Counter[str] = Counter()
        self.todo: dict[int, TopicPartition] = {}
        """Partitions with records left to score."""
        self.consumer: PartitionReader | None = None
        self.producer: AckingProducer | None = None
        self.publisher: AckedPublisher | None = None
        self._warn = RateLimited(10.0)
        # exactly-once
        self.reader: GroupOffsetsReader | None = None
        """The consumer, whose group's committed offsets are the replay's progress."""
        self.transactions = Transactions(
            self._transactional_producer, time.monotonic, _log(), self._warn
        )
        """The worker's exactly-once core: commits, their backoff, settling unknown outcomes."""
        self.unsettled = checkpoint.exactly_once
        """The producer must be (re)built and the partitions sought to the group's committed
        offsets before the next transaction: at start (a resume's predecessor may have left a
        transaction open) and after a transaction whose outcome is unknown."""
        self.settled_before = False
        """Every settle after the first builds a new reader as well as a new producer."""

    def request_stop(self, _signum: int) -> None:
        self.stop_requested = True

    def abandoned(self) -> dict[str, object]:
        """What a hard exit leaves: the batch past the checkpoint, re-read on resume."""
        return {
            "remaining_records": self.checkpoint.remaining(),
            "resume": f"forestream replay --resume {self.path}",
        }

    # -- clients -------------------------------------------------------------------------------

    def open(self) -> None:
        from forestream.edge.factory import (
            TopicSpec,
            acking_producer,
            ensure_topics,
            partition_reader,
        )
        from forestream.worker.processing import AckedPublisher

        c = self.checkpoint
        partitions = max(c.ranges, default=0) + 1
        ensure_topics(
            self.kafka, [TopicSpec(c.output_topic, partitions), TopicSpec(c.dlq_topic, 1)]
        )
        if c.exactly_once:
            self.reader = self.consumer = self._group_offsets_reader()
        else:
            self.consumer = partition_reader(
                self.kafka,
                client_id="forestream-replay",
                max_poll_records=self.settings.replay_max_batch,
            )
            self.producer = acking_producer(self.kafka, client_id="forestream-replay", linger_ms=20)
            self.publisher = AckedPublisher(self.producer, give_up=lambda: self.stop_requested)

    def _group_offsets_reader(self) -> GroupOffsetsReader:
        from forestream.edge.factory import group_offsets_reader

        if self.checkpoint.group is None:
            raise RuntimeError("self.checkpoint.group used before it was set (a call out of order)")
        return group_offsets_reader(
            self.kafka,
            group=self.checkpoint.group,
            client_id="forestream-replay",
            max_poll_records=self.settings.replay_max_batch,
        )

    def _replace_reader(self) -> None:
        """A fresh reader for the partitions left, the old one closed. A librdkafka client
        can lose every broker for good after a broker pause (a metadata answer listing no
        broker drops them all and nothing re-bootstraps: librdkafka#5301), and then never
        answers ``committed`` again; a new client bootstraps afresh."""
        from forestream.edge.factory import rebuilt

        old, new = self.reader, rebuilt(self._group_offsets_reader)
        self.reader = self.consumer = new
        if old is not None:
            old.close()
        new.assign(list(self.todo.values()))

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close(10)
        self.transactions.close(5)
        if self.consumer is not None:
            self.consumer.close()

    def _transactional_producer(self) -> TransactionalProducer:
        from forestream.edge.factory import transactional_producer

        if self.checkpoint.transactional_id is None:
            raise RuntimeError(
                "self.checkpoint.transactional_id used before it was set (a call out of order)"
            )
        return transactional_producer(
            self.kafka,
            client_id="forestream-replay-txn",
            transactional_id=self.checkpoint.transactional_id,
            transaction_timeout_ms=self.settings.transaction_timeout_ms,
            max_block_ms=TXN_INIT_BLOCK_MS,
        )

    # -- the loop ------------------------------------------------------------------------------

    def loop(self) -> None:
        c = self.checkpoint
        if self.consumer is None:
            raise RuntimeError("self.consumer used before it was set (a call out of order)")
        self.todo = {
            p: TopicPartition(c.input_topic, p) for p, (nxt, end) in c.ranges.items() if nxt < end
        }
        self.consumer.assign(list(self.todo.values()))
        self._seek_to_checkpoint()
        c.save(self.path)  # exactly-once: it names the group and the transactional id from now
        while self.todo and not self.stop_requested:
            if c.exactly_once and not self._ready_for_transactions():
                continue
            try:
                polled = self.consumer.poll_batch(self.settings.replay_max_batch, 0.5)
            except TransientKafkaError as exc:  # the broker away: it comes back, or ^C
                self._warn_rate_limited("poll_failed", exc)
                time.sleep(_POLL_BACKOFF_S)
                continue
            batch = [r for r in polled if r.offset < c.ranges[r.partition][1]]
            if batch:
                if c.exactly_once:
                    if not self._commit_in_transaction(batch):
                        continue  # read again, from the batch's first or the committed offsets
                elif not self._publish(batch):
                    break  # interrupted while the broker was away: not checkpointed
            self._close_finished()
            c.save(self.path)
            if self.on_progress is not None and batch:
                self.on_progress(len(batch))

    def _seek_to_checkpoint(self) -> None:
        if self.consumer is None:
            raise RuntimeError("self.consumer used before it was set (a call out of order)")
        for p, tp in self.todo.items():
            self.consumer.seek(tp, self.checkpoint.ranges[p][0])

    def _close_finished(self) -> None:
        """A position at or past the end also closes a partition whose last offsets hold no
        record (transaction markers, compaction): waiting for them would never end."""
        if self.consumer is None:
            raise RuntimeError("self.consumer used before it was set (a call out of order)")
        for p, tp in list(self.todo.items()):
            nxt, end = self.checkpoint.ranges[p]
            if nxt >= end or self.consumer.position(tp) >= end:
                self.checkpoint.ranges[p] = (end, end)
                del self.todo[p]
                self.consumer.pause([tp])

    def _score(self, batch: list[InputRecord]) -> ProcessedBatch:
        from forestream.worker.processing import process_records
        from forestream.worker.serving import record_parser

        c = self.checkpoint
        return process_records(
            batch,
            self.model,
            output_topic=c.output_topic,
            dlq_topic=c.dlq_topic,
            max_record_bytes=self.settings.max_record_bytes,
            parse=record_parser(
                c.input_format,
                self.writer_schemas,
                batch,
                self.model.schema,
                lambda: not self.stop_requested,
            ),
            encode=self.encode,
        )

    def _advance(self, batch: list[InputRecord], processed: ProcessedBatch) -> None:
        self.scored += processed.predicted
        self.dead.update(processed.dead_lettered)
        for (_, partition), offset in next_offsets(batch).items():
            nxt, end = self.checkpoint.ranges[partition]
            self.checkpoint.ranges[partition] = (max(nxt, offset), end)

    # -- at-least-once -------------------------------------------------------------------------

    def _publish(self, batch: list[InputRecord]) -> bool:
        if self.publisher is None:
            raise RuntimeError("self.publisher used before it was set (a call out of order)")
        processed = self._score(batch)
        if not self.publisher.publish(processed.outgoing):
            return False
        self._advance(batch, processed)
        return True

    # -- exactly-once --------------------------------------------------------------------------

    def _ready_for_transactions(self) -> bool:
        """Past the backoff of a failed transaction, and settled: False means wait (briefly,
        so that a stop request is seen)."""
        if not self.transactions.ready():
            time.sleep(min(self.transactions.retry.remaining(), 0.1))
            return False
        return not self.unsettled or self._settle()

    def _settle(self) -> bool:
        """Replace the producer (its successor fences any earlier one with this transactional
        id, a resumed replay's predecessor included, and completes or aborts the transaction
        it left open), then go on from the group's committed offsets. A settle after the
        first follows a transaction or a settle that failed: the reader is replaced too, so
        that no retry waits on a client that lost the cluster. False: retried after a backoff."""
        c = self.checkpoint
        new_reader = self.settled_before
        self.settled_before = True

        def ask() -> dict[TopicPartition, int | None]:
            if new_reader:  # after the producer: the cluster has just answered it
                self._replace_reader()
            if self.reader is None:
                raise RuntimeError("self.reader used before it was set (a call out of order)")
            return self.reader.committed(list(self.todo.values()), timeout_s=_COMMITTED_TIMEOUT_S)

        committed = self.transactions.settle(ask)
        if committed is None:
            return False
        before = c.remaining()
        c.ranges.update(
            settled_ranges(
                {p: c.ranges[p] for p in self.todo},
                {tp.partition: o for tp, o in committed.items()},
            )
        )
        self._seek_to_checkpoint()
        self.unsettled = False
        _log().info(
            "replay_settled",
            transactional_id=c.transactional_id,
            group=c.group,
            next_offsets=c.offsets_text(),
            already_committed=before - c.remaining(),
            new_reader=new_reader,
        )
        return True

    def _commit_in_transaction(self, batch: list[InputRecord]) -> bool:
        """Score the batch and commit its outputs and next-offsets in one transaction; False
        when it did not commit (or may not have): the batch is read again."""
        if self.reader is None:
            raise RuntimeError("self.reader used before it was set (a call out of order)")
        processed = self._score(batch)
        outcome = self.transactions.commit(
            processed.outgoing,
            next_offsets(batch),
            self.reader.group_metadata,
            timeout_s=lambda: TXN_TIMEOUT_S,
            topic=self.checkpoint.output_topic,
        )
        if outcome is Outcome.ABORTED:  # nothing of it counts
            self._seek_to_checkpoint()
            return False
        if outcome is Outcome.UNKNOWN:  # settled by the next producer, whichever way
            self.unsettled = True
            return False
        self._advance(batch, processed)
        return True

    def _warn_rate_limited(self, event: str, exc: Exception, **fields: object) -> None:
        if self._warn.ready():
            _log().warning(
                event,
                error=str(exc)[:300],
                suppressed=self._warn.take_suppressed(),
                **fields,
            )


_COMMITTED_TIMEOUT_S = 5.0
"""Bound on asking the group's committed offsets (retried with backoff past it)."""
_POLL_BACKOFF_S = 0.5


def _log() -> Any:
    import structlog

    return structlog.get_logger("forestream.replay")
