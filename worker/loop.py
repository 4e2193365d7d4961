"""The Kafka side of the worker: micro-batch, score, publish, wait for acks, then commit.

Delivery is at-least-once by construction: the offsets of a batch are committed only after
every prediction and dead letter of that batch has been acknowledged by the broker (acks=all,
idempotent producer). A crash before the commit means the batch is read again (duplicates,
never gaps). The per-batch work (decode, score, build outgoing records, publish and wait for
acks) lives in :mod:`forestream.worker.processing`, shared with ``forestream replay``; this module
is the
thin, single-threaded group loop around it: batching, committing, rebalances, signals, logs.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

import structlog

from forestream.edge.errors import KafkaFatalError
from forestream.edge.factory import (
    TopicSpec,
    acking_producer,
    ensure_topics,
    group_consumer,
    models_topic_spec,
    topic_partitions,
    transactional_producer,
)
from forestream.edge.interface import (
    AckingProducer,
    CommitRejected,
    GroupConsumer,
    InputRecord,
    TopicPartition,
    TransactionAborted,
    TransactionalProducer,
    TransientKafkaError,
    describe_partitions,
)
from forestream.exit_codes import exit_code_for
from forestream.runtime.logs import RateLimited
from forestream.wire.headers import ReasonCode
from forestream.worker.batch import BatchObserver
from forestream.worker.cycle import BatchCycle, next_offsets
from forestream.worker.models import ActiveModel, ModelFollower
from forestream.worker.processing import (
    AckedPublisher,
    ObserverFanout,
    ProcessedBatch,
    Publication,
    process_records,
)
from forestream.worker.settings import WorkerSettings
from forestream.worker.transactions import (
    TXN_INIT_BLOCK_MS,
    TXN_TIMEOUT_S,
    replace_producer,
    retry_backoff_s,
    transact,
)

if TYPE_CHECKING:
    from forestream.wire.schema import ReferenceStats
    from forestream.worker.health import Telemetry
    from forestream.worker.monitoring import StreamMonitoring

log = structlog.get_logger("forestream.worker")

_IDLE_POLL_S = 0.2
_IN_FLIGHT_POLL_S = 0.005
"""Poll timeout while a published batch awaits its acks: settle (and commit) it soon after."""
_LAG_INTERVAL_S = 5.0
_REVOKE_PUBLISH_LIMIT_S = 30.0
"""Upper bound on publishing a held batch inside a revocation callback; also at most half the
session timeout, since that callback holds the client's group protocol (and its heartbeats)."""
_REVOKE_COMMIT_TIMEOUT_S = 10.0
_COMMIT_TIMEOUT_S = 10.0
_LATE_COMMIT_TIMEOUT_S = 3.0
_BATCH_COMMIT_TIMEOUT_S = 2.0
"""One commit try after a batch (milliseconds when healthy). Past it the offsets are held and
retried between polls: blocking in long tries while the coordinator is away kept the loop from
polling, and polls are what complete a rejoin once it is back."""
_ASYNC_COMMIT_PATIENCE_S = 10.0
"""How long an asynchronous commit may go unconfirmed before the loop holds and retries it.
Not the 2 s of a blocking try: during a group join the coordinator answers a commit only once
every member has rejoined (a heartbeat interval, ~3 s), and holding then paused the partitions
that the rebalance was leaving alone."""
_REJECTED_RETRY_S = 0.5
"""After a commit rejected by a rebalance, when the offsets still ours are committed again."""
_HELD_RETRY_MAX_S = 1.0
_HELD_POLL_S = 0.1
_POLL_BACKOFF_MAX_S = 1.0
_SHUTDOWN_GRACE_S = 10.0
"""After SIGTERM, how long a batch in hand may wait for the broker before it is left
uncommitted (to be re-read by the next owner) so that the worker exits."""
_SEND_BLOCK_MS = 2_000
_MAX_BACKOFF_S = 10.0


@dataclass
class _Totals:
    records_in: int = 0
    predicted: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    batches: int = 0


@dataclass(slots=True)
class _InFlight:
    processed: ProcessedBatch
    publication: Publication


class Worker:
    """One consumer-group member: ``run()`` until SIGTERM/SIGINT or ``max_records``.

    It is also the consumer's :class:`~forestream.edge.interface.RebalanceHandler`: the adapters
    call
    ``on_revoking`` and friends from wherever their client runs rebalance callbacks.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        follower: ModelFollower,
        observers: Sequence[BatchObserver] = (),
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        self.kafka = settings.kafka()
        self.follower = follower
        self.telemetry = telemetry
        self.monitoring: StreamMonitoring | None = None
        self.totals = _Totals()
        self.cycle = BatchCycle()
        if telemetry is not None:
            observers = [telemetry.observer, *observers]
            self._observers = ObserverFanout(observers, telemetry.metrics.record_observer_error)
        else:
            self._observers = ObserverFanout(observers)
        self._lag_at = 0.0
        self._owned: set[TopicPartition] = set()
        self._stopping = False
        self._stop_requested_at: float | None = None
        self._fatal: KafkaFatalError | None = None
        self._closed = False
        self._consumer: GroupConsumer | None = None
        self._producer: AckingProducer | None = None
        self._publisher: AckedPublisher | None = None
        self._model: ActiveModel | None = None
        self._warn = {name: RateLimited(10.0) for name in ("poll", "commit", "deferred", "scoring")}
        self._warn["model"] = RateLimited(settings.model_wait_log_s)
        self._summary_at = time.monotonic()
        self._summary_records = 0
        self._held_since: float | None = None
        self._held_retry_at = 0.0
        self._held_backoff = 0.1
        self._commit_failing = False
        """An asynchronous commit failed: hold (commit synchronously, with backoff) until one
        succeeds."""
        self._commit_sent: tuple[dict[TopicPartition, int], float] | None = None
        """The asynchronous commit in flight (one at a time) and when it was sent."""
        self._commit_again_at = 0.0
        """No asynchronous commit before then (one was just rejected by a rebalance)."""
        self._in_flight: _InFlight | None = None
        """The batch out (``cycle.out``): published, its acknowledgements not yet awaited."""
        self._txn: TransactionalProducer | None = None
        """Exactly-once: the producer of predictions and dead letters (``_producer`` then
        serves monitoring only, outside transactions)."""
        self._resync: dict[TopicPartition, int] = {}
        """Exactly-once: partitions whose last transaction's outcome is unknown, with the first
        offset of what it held. Nothing is read until they are sought to the group's committed
        offsets (asked after a new producer has settled that transaction)."""
        self._txn_failures = 0

    def attach_monitoring(self, monitoring: StreamMonitoring) -> None:
        """Add drift/accuracy/latency observers and the periodic report (before ``run``)."""
        self.monitoring = monitoring
        self._observers.observers.extend(monitoring.observers)

    # -- lifecycle -----------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Signal handler: stop taking new records; the loop flushes and commits, then exits."""
        if not self._stopping:
            name = signal.Signals(signum).name if signum else None
            log.info("worker_stopping", signal=name, pending=len(self.cycle.pending))
        self._mark_stopping()

    def _mark_stopping(self) -> None:
        self._stopping = True
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()

    def _past_shutdown_grace(self) -> bool:
        """Stopping, and the batch in hand has had its chance to be acknowledged (or a fatal
        error means it never will be)."""
        return self._fatal is not None or (
            self._stop_requested_at is not None
            and time.monotonic() - self._stop_requested_at > _SHUTDOWN_GRACE_S
        )

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the loop in order; a watchdog ends the process anyway once
        ``forestream.runtime.shutdown.GRACE_S`` has passed (a client wedged in ``poll()``, say)."""
        from forestream.runtime.shutdown import install

        install(self.request_stop, self.describe_abandoned)

    def describe_abandoned(self) -> dict[str, object]:
        """For the watchdog's exit line, read from its thread while this one may be stuck:
        plain reads, no locks. Nothing past the committed offsets is lost: it is re-read."""
        consumer = self._consumer
        return {
            "pending_records": self.cycle.in_hand,
            "uncommitted": {
                f"{tp.topic}-{tp.partition}": offset
                for tp, offset in list(self.cycle.acknowledged.items())
            },
            "assigned": describe_partitions(consumer.assignment_snapshot() if consumer else ()),
            "records_in": self.totals.records_in,
        }

    def run(self) -> int:
        """The main loop; returns the process exit code (0 on an orderly stop).

        A :class:`KafkaFatalError` (credentials, TLS, ACLs, unreadable records) is raised
        after a short close: ``/healthz`` says why until the process has ended.
        """
        try:
            return self._run()
        except KafkaFatalError as exc:
            self._fatal = exc
            log.error("kafka_fatal", kind=exc.kind, exit_code=exit_code_for(exc), error=str(exc))
            if self.telemetry is not None:
                self.telemetry.health.set_fatal(exc.kind, str(exc))
            self._close()
            raise

    def _raise_background_fatal(self) -> None:
        """The model follower and the labels reader run on threads of their own: a fatal
        error there (say, no ACL on the models topic) ends the worker too."""
        for source in (self.follower, self.monitoring and self.monitoring.labels):
            fatal = getattr(source, "fatal", None)
            if fatal is not None:
                raise fatal

    def _run(self) -> int:
        s = self.settings
        log.info(
            "worker_started",
            group=s.group,
            input_topic=s.input_topic,
            output_topic=s.output_topic,
            dlq_topic=s.dlq_topic,
            model=s.model_name,
            max_batch=s.max_batch,
            max_wait_ms=s.max_wait_ms,
            worker_index=s.worker_index,
            kafka_client=self.kafka.kafka_client,
            pipelined=s.pipelined,
            guarantee=s.guarantee,
            transactional_id=s.transactional_id_or_default() if s.exactly_once else None,
        )
        self._ensure_topics()
        self._model = self._wait_for_model()
        if self._model is None:  # stopped while waiting: nothing read, still a final word
            self._log_summary(final=True)
            return 0
        # sklearn, pandas and the model are loaded for good: take them out of the cyclic GC's
        # view, or each full collection walks them all (30-220 ms pauses measured mid-batch).
        gc.collect()
        gc.freeze()
        if self.telemetry is not None:
            self.telemetry.health.set_model(self._model.version)
            self.telemetry.metrics.set_model_version(self._model.version)
        # a send that blocks for a topic's metadata (60 s by default) stalls scoring and
        # monitoring alike while a broker is away; the publisher retries instead
        self._producer = acking_producer(
            self.kafka, client_id=self._client_id("out"), max_block_ms=_SEND_BLOCK_MS
        )
        self._publisher = AckedPublisher(self._producer, give_up=self._past_shutdown_grace)
        if s.exactly_once:  # fences (and settles) an earlier worker's open transaction
            self._txn = self._transactional_producer()
        if self.monitoring is not None:
            self.monitoring.start(self._producer)
        self._consumer = group_consumer(
            self.kafka,
            group=s.group,
            client_id=self._client_id("in"),
            max_poll_records=s.max_batch,
            session_timeout_ms=s.session_timeout_ms,
        )
        self._consumer.subscribe(s.input_topic, self)
        try:
            self._loop()
            self._finish_pending(serial=True)
            if self._past_shutdown_grace():  # the broker is away: one short try, then go
                self._commit_held(attempts=1, timeout_s=_LATE_COMMIT_TIMEOUT_S)
            else:  # within what is left of the orderly budget, so close() still fits the grace
                self._commit_held(attempts=3, deadline=self._orderly_deadline())
            self._report_monitoring(force=True)
        except KafkaFatalError as exc:
            self._fatal = exc  # before closing: nothing more is waited for
            raise
        finally:
            self._close()
        self._log_summary(final=True)
        return 0

    def _client_id(self, role: str) -> str:
        return f"forestream-worker-{self.settings.worker_index}-{role}"

    def _ensure_topics(self) -> None:
        """Outputs get as many partitions as the input (if it exists) so keys spread alike."""
        s = self.settings
        partitions = 1
        with contextlib.suppress(Exception):  # absent or unreachable: the default will do
            partitions = topic_partitions(self.kafka, [s.input_topic]).get(s.input_topic, 1) or 1
        ensure_topics(
            self.kafka,
            [
                TopicSpec(s.output_topic, partitions),
                TopicSpec(s.dlq_topic, partitions),
                TopicSpec(s.labels_topic, partitions),
                TopicSpec(s.monitoring_topic, 1),
                models_topic_spec(s.models_topic),
            ],
        )

    def _wait_for_model(self) -> ActiveModel | None:
        while not self._stopping:
            if self.telemetry is not None:
                self.telemetry.health.tick()  # waiting for a model is not being stuck
            model = self.follower.wait(timeout_s=0.5)
            self._raise_background_fatal()
            if model is not None:
                return model
            if self._warn["model"].ready():
                log.info(
                    "waiting_for_model",
                    name=self.settings.model_name,
                    models_topic=self.settings.models_topic,
                )
        return None

    def _close(self) -> None:
        """Leave the group, then close the producer.

        Records still held here were never published (we only get here with some after an
        unexpected error), so they stay uncommitted and are re-read: dropping them is safe.
        The consumer closes first because leaving the group runs the revocation callback,
        which may still commit acknowledged offsets.
        """
        self._mark_stopping()
        closed_before = self._closed
        late = self._past_shutdown_grace()  # the broker is away: do not wait for it again
        # leaving the group (and the revocation commit it runs) gets what is left of the
        # orderly budget, at least a short try: the whole stop stays inside the watchdog's grace
        deadline = self._orderly_deadline() or time.monotonic()
        close_s = max(deadline - time.monotonic(), _LATE_COMMIT_TIMEOUT_S)
        self.cycle.drop_pending()
        if self.monitoring is not None:
            self.monitoring.stop()
        consumer, self._closed = self._consumer, True  # closed once, whoever calls first
        producer, self._producer = self._producer, None
        if consumer is not None and not closed_before:
            consumer.close(_LATE_COMMIT_TIMEOUT_S if late else close_s)
        if producer is not None:
            producer.close(1 if late else 30)
        txn, self._txn = self._txn, None
        if txn is not None:
            txn.close(1 if late else 5)
        self.follower.stop()

    # -- batching ------------------------------------------------------------------------------

    def _loop(self) -> None:
        s = self.settings
        assert self._consumer is not None
        cycle = self.cycle
        deadline: float | None = None
        backoff = 0.1
        # When the loop last knew nothing was waiting. Records found by the first poll after a
        # batch arrived while that batch was scored: their max-wait runs from then, not from
        # when the loop got round to polling (which added the batch's whole cycle to latency).
        idle_since = time.monotonic()
        while not self._stopping:
            if self.telemetry is not None:
                self.telemetry.health.tick()
            if s.max_records is not None and self.totals.records_in >= s.max_records:
                log.info("max_records_reached", records_in=self.totals.records_in)
                return
            self._take_commit_results()
            if self._in_flight is not None and self._publisher_settled():
                self._settle_out()
            held = self._hold_while_uncommitted()
            if held:
                timeout_s = _HELD_POLL_S
            elif cycle.pending and deadline is not None:
                timeout_s = max(deadline - time.monotonic(), 0.0)
            else:
                timeout_s = _IDLE_POLL_S
            if self._in_flight is not None:  # look at its acknowledgements again soon
                timeout_s = min(timeout_s, _IN_FLIGHT_POLL_S)
            room = s.max_batch - len(cycle.pending)
            if s.max_records is not None:
                taken = self.totals.records_in + cycle.in_hand
                if taken >= s.max_records:  # the rest is out: settle it, then stop
                    self._finish_pending(serial=True)
                    continue
                room = min(room, s.max_records - taken)
            try:
                cycle.take(self._consumer.poll_batch(max(room, 1), timeout_s))
                backoff = 0.1
            except TransientKafkaError as exc:
                if self._warn["poll"].ready():
                    log.warning(
                        "poll_failed",
                        error=str(exc),
                        suppressed=self._warn["poll"].take_suppressed(),
                    )
                time.sleep(backoff)
                backoff = min(backoff * 2, _POLL_BACKOFF_MAX_S)
                continue
            if cycle.pending and deadline is None:
                deadline = idle_since + s.max_wait_ms / 1000
            full = len(cycle.pending) >= s.max_batch or (
                s.max_records is not None
                and self.totals.records_in + cycle.in_hand >= s.max_records
            )
            if cycle.pending and not held and (full or time.monotonic() >= (deadline or 0.0)):
                idle_since = time.monotonic()
                self._finish_pending()
            elif not cycle.pending:
                idle_since = time.monotonic()
            if not cycle.pending:  # also after a rebalance finished the batch in hand
                deadline = None
            self._raise_background_fatal()
            self._maybe_log_summary()
            if not held:  # the broker is not answering: both could block the loop for seconds
                self._maybe_measure_lag()
                self._report_monitoring()
            self._consumer.maintain()

    def _hold_while_uncommitted(self) -> bool:
        """True while a commit failed and acknowledged offsets still wait for one (retried
        here, synchronously, with backoff).

        Meanwhile the loop takes no new batch and fetches nothing (its partitions are paused)
        but keeps polling, which is what completes a rejoin; what a lost partition makes the next
        owner redo stays bounded; scoring resumes within a second of the commit. While commits
        succeed, what is acknowledged is committed asynchronously: the loop does not wait.
        """
        assert self._consumer is not None
        if self.settings.exactly_once:
            return self._hold_while_unsettled()
        if self._commit_failing:
            if self.cycle.holding and time.monotonic() >= self._held_retry_at:
                if self._commit_held(attempts=1, timeout_s=_BATCH_COMMIT_TIMEOUT_S):
                    self._commit_failing = False
                else:
                    self._held_backoff = min(self._held_backoff * 2, _HELD_RETRY_MAX_S)
                    self._held_retry_at = time.monotonic() + self._held_backoff
            if not self.cycle.holding:
                self._commit_failing = False
        elif self.settings.pipelined:
            self._commit_async()
        if self._commit_failing:
            if self._held_since is None:
                self._held_since = time.monotonic()
            self._consumer.pause(self._consumer.assignment())
            return True
        if self._held_since is not None:
            log.info("commit_resumed", held_s=round(time.monotonic() - self._held_since, 2))
            self._held_since = None
            self._held_backoff = 0.1
        if paused := self._consumer.paused():
            self._consumer.resume(paused)
        return False

    def _commit_async(self) -> None:
        """Commit what is acknowledged without waiting; one commit in flight at a time, and
        one not confirmed in time counts as failed (the hold then retries synchronously)."""
        assert self._consumer is not None
        if self._commit_sent is not None:
            if time.monotonic() - self._commit_sent[1] > _ASYNC_COMMIT_PATIENCE_S:
                self._commit_sent = None
                self._commit_failed(
                    TransientKafkaError(
                        f"commit not confirmed within {_ASYNC_COMMIT_PATIENCE_S:.0f}s"
                    )
                )
            return
        if not self.cycle.holding or time.monotonic() < self._commit_again_at:
            return
        offsets = self.cycle.to_commit()
        try:
            self._consumer.commit_async(offsets)
        except (CommitRejected, TransientKafkaError) as exc:
            self._commit_failed(exc)
            return
        self._commit_sent = (offsets, time.monotonic())

    def _take_commit_results(self) -> None:
        """What became of the asynchronous commits (a late one that had timed out still
        counts when it succeeded: only exactly those offsets are forgotten)."""
        assert self._consumer is not None
        for offsets, error in self._consumer.commit_results():
            current = self._commit_sent is not None and self._commit_sent[0] == offsets
            if current:
                self._commit_sent = None
            if error is None:
                self.cycle.committed(offsets)
            elif current:
                self._commit_failed(error)

    def _commit_failed(self, error: Exception) -> None:
        if isinstance(error, CommitRejected):
            # the group moved on without us: the new owner re-reads these (duplicates)
            assert self._consumer is not None
            log.warning("commit_rejected_after_rebalance", error=str(error))
            self.cycle.commit_rejected(still_ours=self._consumer.assignment())
            self._commit_again_at = time.monotonic() + _REJECTED_RETRY_S
            return
        if not isinstance(error, TransientKafkaError):
            raise error  # classified fatal (an ACL, say)
        if self._warn["commit"].ready():
            log.warning(
                "commit_failed_retrying",
                error=str(error),
                suppressed=self._warn["commit"].take_suppressed(),
            )
        self._hold_for_retry()

    def _hold_for_retry(self) -> None:
        """A commit failed: the loop holds and retries it (``_hold_while_uncommitted``)."""
        self._commit_failing = True
        self._held_retry_at = time.monotonic() + self._held_backoff

    # -- rebalances (forestream.edge.interface.RebalanceHandler)
    # -------------------------------------------

    def on_revoking(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Publish the held batch while we still own its partitions.

        Returns every acknowledged-but-uncommitted offset, for the adapter to commit before
        the partitions move. Publishing is bounded in time here: the rebalance waits for us.
        """
        if partitions:
            log.info(
                "partitions_revoked",
                partitions=describe_partitions(partitions),
                pending=len(self.cycle.pending),
            )
        limit_s = min(_REVOKE_PUBLISH_LIMIT_S, self.settings.session_timeout_ms / 2000)
        deadline = time.monotonic() + limit_s
        self._finish_pending(
            give_up=lambda: self._past_shutdown_grace() or time.monotonic() > deadline
        )
        return self.cycle.to_commit()

    def revocation_commit_timeout_s(self) -> float:
        """A rebalance may wait for its commit; a stop (close() revokes too) has a budget."""
        deadline = self._orderly_deadline()
        if deadline is None:
            return _REVOKE_COMMIT_TIMEOUT_S
        return min(_REVOKE_COMMIT_TIMEOUT_S, max(deadline - time.monotonic(), 1.0))

    def on_committed(self, offsets: dict[TopicPartition, int]) -> None:
        self.cycle.committed(offsets)

    def on_released(self, partitions: list[TopicPartition], lost: bool) -> None:
        """Forget partitions we no longer own: the next owner re-reads from the last
        committed offset, so anything dropped here is duplicated, never lost."""
        self.cycle.release(partitions, lost=lost)
        self._owned.difference_update(partitions)
        for tp in partitions:  # the next owner reads from the committed offsets
            self._resync.pop(tp, None)
        log.info(
            "partitions_released",
            partitions=describe_partitions(partitions),
            owned=describe_partitions(self._owned),
        )
        if self.telemetry is not None:
            self.telemetry.health.set_assignment(self._owned)

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        self._owned.update(partitions)
        # with incremental rebalancing ``partitions`` is what was added; ``owned`` is all
        log.info(
            "partitions_assigned",
            partitions=describe_partitions(partitions),
            owned=describe_partitions(self._owned),
        )
        if self.telemetry is not None:
            self.telemetry.health.set_assignment(self._owned)

    # -- one batch -----------------------------------------------------------------------------

    def _finish_pending(
        self, give_up: Callable[[], bool] | None = None, serial: bool = False
    ) -> None:
        """Score the records taken and publish them.

        Pipelined (``settings.pipelined``): the batch published
        before is settled only once this one is scored, so its acknowledgements arrive while
        this one is scored, and this one stays out when we return; commits are sent, not
        waited for. ``serial`` (stopping) or ``give_up`` (the rebalance path): everything out
        is settled before returning; with ``give_up`` committing is left to the caller (the
        adapter commits in its client's own way there).
        """
        if self.settings.exactly_once:
            self._finish_in_transaction(give_up)
            return
        serial = serial or give_up is not None or not self.settings.pipelined
        cycle = self.cycle
        try:
            if serial and not self._settle_out(give_up):
                return
            if not cycle.pending:
                return
            scored = self._score(cycle.pending)
            if not self._settle_out(give_up):
                return
            cycle.start_batch()
            assert self._publisher is not None
            self._in_flight = _InFlight(scored, self._publisher.send(scored.outgoing))
            if serial and not self._settle_out(give_up):
                return
        except BaseException:
            self._rewind()
            raise
        unpipelined = give_up is None and not self.settings.pipelined
        if unpipelined and not self._commit_held(attempts=1, timeout_s=_BATCH_COMMIT_TIMEOUT_S):
            self._hold_for_retry()

    # -- exactly-once ---------------------------------------------------------------------------

    def _transactional_producer(self) -> TransactionalProducer:
        s = self.settings
        return transactional_producer(
            self.kafka,
            client_id=self._client_id("txn"),
            transactional_id=s.transactional_id_or_default(),
            transaction_timeout_ms=s.transaction_timeout_ms,
            max_block_ms=TXN_INIT_BLOCK_MS,
        )

    def _finish_in_transaction(self, give_up: Callable[[], bool] | None = None) -> None:
        """Score the records taken and commit their outputs and offsets in one transaction.

        Aborted (a send or the commit failed, the group moved on): nothing of it counts, and
        the batch is read again from its first offsets. Outcome unknown (a timeout): the
        loop holds until a new producer has settled it and the partitions are sought to the
        committed offsets, whichever way it went.
        """
        cycle = self.cycle
        if not cycle.pending or self._resync or (give_up is not None and give_up()):
            return
        assert self._consumer is not None
        scored = self._score(cycle.pending)
        batch = cycle.start_batch()
        offsets = next_offsets(batch)
        try:
            self._transact(scored, offsets)
        except TransactionAborted as exc:
            self._txn_failed("transaction_aborted", exc)
            self._rewind()
            return
        except TransientKafkaError as exc:
            self._txn_failed("transaction_outcome_unknown", exc)
            for tp, first in cycle.abandon().items():
                self._resync.setdefault(tp, first)
            self._settle_resync()
            return
        except BaseException:
            self._rewind()
            raise
        self._txn_failures = 0
        cycle.committed(cycle.acknowledge())  # both at once: they were one transaction
        self.totals.records_in += scored.records_in
        self.totals.batches += 1
        self.totals.predicted += scored.predicted
        self.totals.dead_lettered.update(scored.dead_lettered)
        self._observers.notify(scored.scored)

    def _transact(self, scored: ProcessedBatch, offsets: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        assert consumer is not None
        if self._txn is None:  # the last one was given up: its successor settles it
            self._txn = replace_producer(None, self._transactional_producer)
        deadline = self._orderly_deadline()
        timeout_s = TXN_TIMEOUT_S if deadline is None else deadline - time.monotonic()
        transact(
            self._txn,
            scored.outgoing,
            offsets,
            consumer.group_metadata,
            timeout_s=max(min(timeout_s, TXN_TIMEOUT_S), _LATE_COMMIT_TIMEOUT_S),
            topic=self.settings.output_topic,
            # lost meanwhile (a rebalance): not ours to commit
            still_owned=lambda: offsets.keys() <= consumer.assignment(),
        )

    def _txn_failed(self, event: str, exc: Exception) -> None:
        self._txn_failures += 1
        if self._warn["commit"].ready():
            log.warning(
                event,
                error=str(exc)[:300],
                failures_in_a_row=self._txn_failures,
                suppressed=self._warn["commit"].take_suppressed(),
            )
        self._held_retry_at = time.monotonic() + retry_backoff_s(self._txn_failures)

    def _hold_while_unsettled(self) -> bool:
        """Exactly-once: hold (partitions paused, polling on) while an earlier transaction's
        outcome is unknown, or after a failed one until its backoff has passed."""
        assert self._consumer is not None
        if self._resync and time.monotonic() >= self._held_retry_at:
            self._settle_resync()
        held = bool(self._resync) or time.monotonic() < self._held_retry_at
        if held:
            if self._held_since is None:
                self._held_since = time.monotonic()
            self._consumer.pause(self._consumer.assignment())
            return True
        if self._held_since is not None:
            log.info("transactions_resumed", held_s=round(time.monotonic() - self._held_since, 2))
            self._held_since = None
        if paused := self._consumer.paused():
            self._consumer.resume(paused)
        return False

    def _settle_resync(self) -> None:
        """Replace the producer (its successor completes or aborts the transaction left
        open), then read the partitions again from what the group committed."""
        assert self._consumer is not None
        old, self._txn = self._txn, None
        try:
            self._txn = replace_producer(old, self._transactional_producer)
            owned = self._consumer.assignment()
            mine = [tp for tp in self._resync if tp in owned]
            committed = self._consumer.committed(mine, timeout_s=_LATE_COMMIT_TIMEOUT_S)
        except TransientKafkaError as exc:
            self._txn_failed("transaction_settle_failed", exc)
            return
        self.cycle.abandon()  # whatever was read meanwhile: read again from there
        # nothing committed: the transaction did not commit either, so its first offset
        resume = {tp: self._resync[tp] if o is None else o for tp, o in committed.items()}
        for tp, offset in resume.items():
            self._consumer.seek(tp, offset)
        log.info(
            "transaction_settled",
            partitions=sorted(f"{tp.topic}-{tp.partition}@{o}" for tp, o in resume.items()),
        )
        self._resync.clear()

    def _publisher_settled(self) -> bool:
        assert self._publisher is not None and self._in_flight is not None
        return self._publisher.settled(self._in_flight.publication)

    def _settle_out(self, give_up: Callable[[], bool] | None = None) -> bool:
        """Await the acknowledgements of the batch out; True when there is none (any more).
        A batch not acknowledged is rewound with whatever was taken after it."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return True
        assert self._publisher is not None
        if not self._publisher.complete(flight.publication, give_up=give_up):
            self._rewind()  # not committed, and read again (at-least-once)
            return False
        self.cycle.acknowledge()
        batch = flight.processed
        self.totals.records_in += batch.records_in
        self.totals.batches += 1
        self.totals.predicted += batch.predicted
        self.totals.dead_lettered.update(batch.dead_lettered)
        self._observers.notify(batch.scored)
        return True

    def _rewind(self) -> None:
        """Make the batch out, whose outputs were not all acknowledged, and the records taken
        after it be read again.

        Seeking back to their first offsets (local state, safe from a rebalance callback)
        makes the client discard what it fetched beyond them; a partition no longer ours is
        re-read by its new owner from the committed offset.
        """
        assert self._consumer is not None
        self._in_flight = None
        records = self.cycle.in_hand
        first = self.cycle.abandon()
        owned = self._consumer.assignment()
        for tp, offset in first.items():
            if tp in owned:
                self._consumer.seek(tp, offset)
        if records:
            log.warning(
                "batch_left_unacknowledged_rewound",
                records=records,
                partitions=sorted(f"{tp.topic}-{tp.partition}@{o}" for tp, o in first.items()),
            )

    def _score(self, records: list[InputRecord]) -> ProcessedBatch:
        """Validate and score with the model active now (a swap shows here first)."""
        s = self.settings
        model = self.follower.current() or self._model
        assert model is not None
        if self._model is not None and model.version != self._model.version:
            log.info("model_swapped", previous=self._model.version, version=model.version)
            if self.telemetry is not None:
                self.telemetry.health.set_model(model.version)
                self.telemetry.metrics.record_reload(model.version)
        self._model = model
        batch = process_records(
            records,
            model,
            output_topic=s.output_topic,
            dlq_topic=s.dlq_topic,
            max_record_bytes=s.max_record_bytes,
        )
        if batch.scoring_error is not None and self._warn["scoring"].ready():
            log.error(
                "scoring_failed",
                error=batch.scoring_error,
                dead_lettered=batch.dead_lettered[ReasonCode.SCORING_FAILED],
                suppressed=self._warn["scoring"].take_suppressed(),
            )
        return batch

    def _orderly_deadline(self) -> float | None:
        """When a stop's orderly budget (``_SHUTDOWN_GRACE_S`` from the signal) runs out."""
        if self._stop_requested_at is None:
            return None
        return self._stop_requested_at + _SHUTDOWN_GRACE_S

    def _commit_held(
        self,
        attempts: int = 5,
        timeout_s: float = _COMMIT_TIMEOUT_S,
        deadline: float | None = None,
    ) -> bool:
        """Commit every acknowledged-but-uncommitted offset; what fails is kept for next time.

        Held offsets are merged into the next commit, so a commit lost to a broker blip is
        retried with the next batch (or at shutdown) rather than forgotten. ``deadline``
        (monotonic) bounds all attempts together, each at least a short one.
        """
        assert self._consumer is not None
        backoff = 0.2
        for attempt in range(attempts):
            if not self.cycle.holding:
                return True
            if deadline is not None:
                left_s = deadline - time.monotonic()
                if attempt > 0 and left_s <= 0:
                    break
                timeout_s = min(timeout_s, max(left_s, _LATE_COMMIT_TIMEOUT_S))
            offsets = self.cycle.to_commit()
            try:
                self._consumer.commit(offsets, timeout_s)
            except CommitRejected as exc:
                # the group moved on without us: the new owner re-reads these (duplicates)
                log.warning("commit_rejected_after_rebalance", error=str(exc))
                self.cycle.commit_rejected()
                return False
            except TransientKafkaError as exc:
                if self._warn["commit"].ready():
                    log.warning(
                        "commit_failed_retrying",
                        error=str(exc),
                        attempt=attempt + 1,
                        suppressed=self._warn["commit"].take_suppressed(),
                    )
                if attempt + 1 < attempts:
                    time.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            self.cycle.committed(offsets)
            return True
        if self._warn["deferred"].ready():
            log.error(
                "commit_deferred",
                partitions=len(self.cycle.acknowledged),
                suppressed=self._warn["deferred"].take_suppressed(),
            )
        return False

    # -- reporting -----------------------------------------------------------------------------

    def _maybe_measure_lag(self) -> None:
        """Consumer lag for the metrics endpoint, every few seconds from the loop thread."""
        if self.telemetry is None or self._consumer is None:
            return
        now = time.monotonic()
        if now - self._lag_at < _LAG_INTERVAL_S:
            return
        self._lag_at = now
        lag = self._consumer.lag(timeout_s=2.0)
        if lag is not None:  # Kafka did not answer: keep the previous values
            self.telemetry.metrics.set_lag(lag)

    def reference_for(self, version: str) -> ReferenceStats | None:
        """Drift reference of the version that scored the batch being observed (the active one)."""
        model = self._model
        if model is None or model.version != version:
            return None
        return getattr(model.metadata, "reference", None)

    def _report_monitoring(self, force: bool = False) -> None:
        if self.monitoring is None:
            return
        self.monitoring.tick(
            model_version=self._model.version if self._model else None,
            records_in=self.totals.records_in,
            predicted=self.totals.predicted,
            dead_lettered=self.totals.dead_lettered,
            force=force,
        )

    def _maybe_log_summary(self) -> None:
        if time.monotonic() - self._summary_at >= self.settings.summary_interval_s:
            self._log_summary()

    def _log_summary(self, final: bool = False) -> None:
        now = time.monotonic()
        elapsed = max(now - self._summary_at, 1e-9)
        fresh = self.totals.records_in - self._summary_records
        log.info(
            "worker_final_summary" if final else "worker_summary",
            records_in=self.totals.records_in,
            predicted=self.totals.predicted,
            dead_lettered=dict(self.totals.dead_lettered),
            batches=self.totals.batches,
            observer_errors=self._observers.errors,
            rate_per_s=round(fresh / elapsed, 1),
            model_version=self._model.version if self._model else None,
        )
        self._summary_at = now
        self._summary_records = self.totals.records_in


def run_worker(
    settings: WorkerSettings,
    follower: ModelFollower,
    observers: Sequence[BatchObserver] = (),
    telemetry: Telemetry | None = None,
    monitoring: Callable[[Worker], StreamMonitoring] | None = None,
) -> int:
    """Start the follower, run one worker in this process until stopped; returns exit code.

    ``monitoring`` builds the worker's :class:`StreamMonitoring` (it needs the worker for the
    drift reference of the serving version).
    """
    worker = Worker(settings, follower.start(), observers, telemetry)
    if monitoring is not None:
        worker.attach_monitoring(monitoring(worker))
    worker.install_signal_handlers()
    try:
        return worker.run()
    finally:
        follower.stop()
