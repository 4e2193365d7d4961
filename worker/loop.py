"""The Kafka side of the worker: poll, process, finish, around one delivery engine.

Delivery is at-least-once by construction: the offsets of a batch are committed only after
every prediction and dead letter of that batch has been acknowledged by the broker (acks=all,
idempotent producer); exactly-once, outputs and offsets commit in one transaction. How is the
business of the guarantee strategy in :mod:`forestream.worker.delivery` (commits, holds,
retries, settling an unknown outcome); the per-batch work (decode, score, build outgoing
records) lives in :mod:`forestream.worker.processing`, shared with ``forestream replay``. This
module is the thin, single-threaded group loop around them: batching, rebalances, signals.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import time
from collections.abc import Callable, Sequence
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING

import structlog

from forestream.edge.factory import (
    TopicSpec,
    acking_producer,
    ensure_topics,
    models_topic_spec,
    topic_partitions,
    transactional_producer,
)
from forestream.edge.interface import (
    AckingProducer,
    GroupConsumer,
    TransactionalProducer,
    describe_partitions,
)
from forestream.errors import KafkaFatalError, TransientKafkaError
from forestream.exit_codes import exit_code_for
from forestream.runtime.logs import RateLimited
from forestream.worker.batch import BatchObserver
from forestream.worker.cycle import BatchCycle
from forestream.worker.delivery import (
    DeliveryEngine,
    Ledger,
    StopBudget,
    Transactions,
    choose_guarantee,
)
from forestream.worker.delivery.engine import LATE_COMMIT_TIMEOUT_S
from forestream.worker.healing import ConsumerHealer
from forestream.worker.membership import Membership
from forestream.worker.models import ModelFollower
from forestream.worker.processing import AckedPublisher, ObserverFanout
from forestream.worker.reporting import Reporter
from forestream.worker.serving import Serving
from forestream.worker.settings import WorkerSettings
from forestream.worker.transactions import TXN_INIT_BLOCK_MS
from forestream.worker.window import BatchWindow

if TYPE_CHECKING:
    from forestream.edge.connection import KafkaConnection
    from forestream.runtime.shutdown import EarlyStop
    from forestream.worker.health import Telemetry
    from forestream.worker.monitoring import StreamMonitoring

log = structlog.get_logger("forestream.worker")

_IDLE_POLL_S = 0.2
_IN_FLIGHT_POLL_S = 0.005
"""Poll timeout while a published batch awaits its acks: settle (and commit) it soon after."""
_HELD_POLL_S = 0.1
_POLL_BACKOFF_MAX_S = 1.0
_SEND_BLOCK_MS = 2_000


def ensure_worker_topics(kafka: KafkaConnection | str, s: WorkerSettings) -> None:
    """Outputs get as many partitions as the input (if it exists) so keys spread alike."""
    partitions = 1
    with contextlib.suppress(Exception):  # absent or unreachable: the default will do
        partitions = topic_partitions(kafka, [s.input_topic]).get(s.input_topic, 1) or 1
    ensure_topics(
        kafka,
        [
            TopicSpec(s.output_topic, partitions),
            TopicSpec(s.dlq_topic, partitions),
            TopicSpec(s.shadow_topic_or_default(), partitions),
            TopicSpec(s.labels_topic, partitions),
            TopicSpec(s.monitoring_topic, 1),
            models_topic_spec(s.models_topic),
        ],
    )


def _keep_waiting_for_registry(telemetry: Telemetry | None) -> bool:
    """A batch waits for the Schema Registry: not stuck (health). A stop does not end the
    wait: its records would go to the DLQ; the shutdown watchdog ends the process at its
    grace instead, nothing committed, so they are read again (at-least-once)."""
    if telemetry is not None:
        telemetry.health.tick()
    return True


class Worker:
    """One consumer-group member: ``run()`` until SIGTERM/SIGINT or ``max_records``.

    Its parts: :class:`Serving` (the active model, scoring), the delivery engine (the guarantee),
    :class:`Membership` (the consumer's rebalance handler) and :class:`Reporter` (totals, logs).
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
        self.cycle = BatchCycle()
        if telemetry is not None:
            observers = [telemetry.observer, *observers]
            fanout = ObserverFanout(observers, telemetry.metrics.record_observer_error)
        else:
            fanout = ObserverFanout(observers)
        self.reporter = Reporter(fanout, telemetry, settings.summary_interval_s)
        self.stop = StopBudget()
        self.serving = Serving(settings, follower, telemetry)
        self.serving.keep_waiting = partial(_keep_waiting_for_registry, telemetry)
        self.membership = Membership(self.cycle, self.stop, settings.session_timeout_ms, telemetry)
        self.healer = ConsumerHealer(
            settings, self.kafka, self._client_id("in"), self.membership, telemetry
        )
        self.engine: DeliveryEngine | None = None
        self._stopping = False
        self._stop_signal: str | None = None
        self._closed = False
        self._consumer: GroupConsumer | None = None
        self._producer: AckingProducer | None = None
        self._transactions: Transactions | None = None
        self._warn_poll = RateLimited(10.0)

    @property
    def monitoring(self) -> StreamMonitoring | None:
        return self.reporter.monitoring

    def attach_monitoring(self, monitoring: StreamMonitoring) -> None:
        """Add drift/accuracy/latency observers and the periodic report (before ``run``)."""
        self.reporter.monitoring = monitoring
        self.reporter.observers.observers.extend(monitoring.observers)

    # -- lifecycle -----------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Signal handler: stop taking new records; the loop flushes and commits, then exits.
        It never logs: it may run inside the logger's (non-reentrant) write lock."""
        if self._stop_signal is None:
            self._stop_signal = signal.Signals(signum).name if signum else "requested"
        self._stopping = True
        self.stop.start()

    def _log_stopping(self) -> None:
        if self._stop_signal is not None:
            log.info("worker_stopping", signal=self._stop_signal, pending=len(self.cycle.pending))

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
            "records_in": self.reporter.totals.records_in,
        }

    def run(self) -> int:
        """The main loop; returns the process exit code (0 on an orderly stop).

        A :class:`KafkaFatalError` (credentials, TLS, ACLs, unreadable records) is raised
        after a short close: ``/healthz`` says why until the process has ended.
        """
        try:
            return self._run()
        except KafkaFatalError as exc:
            self.stop.fatal = True
            log.error("kafka_fatal", kind=exc.kind, exit_code=exit_code_for(exc), error=str(exc))
            if self.telemetry is not None:
                self.telemetry.health.set_fatal(exc.kind, exit_code=exit_code_for(exc))
            self._close()
            raise

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
        ensure_worker_topics(self.kafka, s)
        model = self.serving.wait(lambda: self._stopping, self._raise_background_fatal)
        if model is None:  # stopped while waiting: nothing read, still a final word
            self._log_stopping()
            self.reporter.log_summary(None, final=True)
            return 0
        # sklearn, pandas and the model are loaded for good: take them out of the cyclic GC's
        # view, or each full collection walks them all (30-220 ms pauses measured mid-batch).
        gc.collect()
        gc.freeze()
        if self.telemetry is not None:
            self.telemetry.health.set_model(model.version)
            self.telemetry.metrics.set_model_version(model.version)
        # a send that blocks for a topic's metadata (60 s by default) stalls scoring and
        # monitoring alike while a broker is away; the publisher retries instead
        producer = acking_producer(
            self.kafka, client_id=self._client_id("out"), max_block_ms=_SEND_BLOCK_MS
        )
        self._producer = producer
        if s.exactly_once:  # fences (and settles) an earlier worker's open transaction
            self._transactions = Transactions(self._transactional_producer, self.stop.clock, log)
            self._transactions.open()
        if self.monitoring is not None:
            self.monitoring.start(producer)
        consumer = self.healer.build()
        engine = self.open_delivery(consumer, producer)
        consumer.subscribe(s.input_topic, self.membership)
        try:
            self._loop(engine, consumer)
            self._log_stopping()
            engine.wind_up()
            self.reporter.report_monitoring(self.serving.version, force=True)
        except KafkaFatalError:
            self.stop.fatal = True  # before closing: nothing more is waited for
            raise
        finally:
            self._close()
        self.reporter.log_summary(self.serving.version, final=True)
        return 0

    def open_delivery(self, consumer: GroupConsumer, producer: AckingProducer) -> DeliveryEngine:
        """The engine for the configured guarantee, on these clients (before subscribing)."""
        s = self.settings
        self._consumer, self._producer = consumer, producer
        ledger = Ledger(
            consumer, self.cycle, self.serving.score, self.reporter.delivered, self.stop
        )
        guarantee = choose_guarantee(
            ledger,
            exactly_once=s.exactly_once,
            pipelined=s.pipelined,
            publisher=AckedPublisher(producer, give_up=self.stop.past_grace),
            transactions=self._transactions,
            output_topic=s.output_topic,
        )
        self.engine = self.membership.engine = DeliveryEngine(ledger, guarantee)
        return self.engine

    def _client_id(self, role: str) -> str:
        return f"forestream-worker-{self.settings.worker_index}-{role}"

    def _transactional_producer(self) -> TransactionalProducer:
        s = self.settings
        return transactional_producer(
            self.kafka,
            client_id=self._client_id("txn"),
            transactional_id=s.transactional_id_or_default(),
            transaction_timeout_ms=s.transaction_timeout_ms,
            max_block_ms=TXN_INIT_BLOCK_MS,
        )

    def _raise_background_fatal(self) -> None:
        """The model follower and the labels reader run on threads of their own: a fatal
        error there (say, no ACL on the models topic) ends the worker too."""
        for source in (self.follower, self.monitoring and self.monitoring.labels):
            fatal = getattr(source, "fatal", None)
            if fatal is not None:
                raise fatal

    def _close(self) -> None:
        """Leave the group, then close the producers.

        Records still held here were never published (we only get here with some after an
        unexpected error), so they stay uncommitted and are re-read: dropping them is safe.
        The consumer closes first because leaving the group runs the revocation callback,
        which may still commit acknowledged offsets; it gets what is left of the orderly
        budget, at least a short try, so the whole stop stays inside the watchdog's grace.
        """
        self._stopping = True
        self.stop.start()
        closed_before = self._closed
        late = self.stop.past_grace()  # the broker is away: do not wait for it again
        close_s = self.stop.left_s() or LATE_COMMIT_TIMEOUT_S
        self.cycle.drop_pending()
        if self.monitoring is not None:
            self.monitoring.stop()
        consumer, self._closed = self._consumer, True  # closed once, whoever calls first
        producer, self._producer = self._producer, None
        if consumer is not None and not closed_before:
            consumer.close(LATE_COMMIT_TIMEOUT_S if late else close_s)
        if producer is not None:
            producer.close(1 if late else 30)
        if self._transactions is not None:
            self._transactions.close(1 if late else 5)
        self.follower.stop()
        self.serving.shadow.close(1 if late else 2)

    # -- poll, process, finish -----------------------------------------------------------------

    def _loop(self, engine: DeliveryEngine, consumer: GroupConsumer) -> None:
        s, cycle, totals = self.settings, self.cycle, self.reporter.totals
        window = BatchWindow(s.max_batch, s.max_wait_ms / 1000, s.adaptive_window)
        backoff = 0.1
        while not self._stopping:
            consumer = self._consumer = self.healer.check(consumer, engine)  # librdkafka#5301
            if self.telemetry is not None:
                self.telemetry.health.tick()
            if s.max_records is not None and totals.records_in >= s.max_records:
                log.info("max_records_reached", records_in=totals.records_in)
                return
            held = engine.between_polls()
            room = s.max_batch - len(cycle.pending)
            if s.max_records is not None:
                taken = totals.records_in + cycle.in_hand
                if taken >= s.max_records:  # the rest is out: settle it, then stop
                    engine.finish(serial=True)
                    continue
                room = min(room, s.max_records - taken)
            asked = max(room, 1)
            try:
                records = consumer.poll_batch(asked, self._poll_timeout(held, window))
                backoff = 0.1
            except TransientKafkaError as exc:
                if self._warn_poll.ready():
                    log.warning(
                        "poll_failed",
                        error=str(exc),
                        suppressed=self._warn_poll.take_suppressed(),
                    )
                time.sleep(backoff)
                backoff = min(backoff * 2, _POLL_BACKOFF_MAX_S)
                continue
            cycle.take(records)
            window.polled(asked, len(records), len(cycle.pending))
            full = len(cycle.pending) >= s.max_batch or (
                s.max_records is not None and totals.records_in + cycle.in_hand >= s.max_records
            )
            if not held and window.closes(len(cycle.pending), full):
                window.restart()
                engine.finish()
            elif not cycle.pending:  # also after a rebalance finished the batch in hand
                window.restart()
            self._between_batches(held, consumer)

    def _poll_timeout(self, held: bool, window: BatchWindow) -> float:
        timeout_s = _HELD_POLL_S if held else window.wait_s(_IDLE_POLL_S)
        if self.engine is not None and self.engine.busy:  # look at its acks again soon
            timeout_s = min(timeout_s, _IN_FLIGHT_POLL_S)
        return timeout_s

    def _between_batches(self, held: bool, consumer: GroupConsumer) -> None:
        self._raise_background_fatal()
        self.reporter.maybe_log_summary(self.serving.version)
        if not held:  # the broker is not answering: both could block the loop for seconds
            self.reporter.measure_lag(consumer)
            self.reporter.report_monitoring(self.serving.version)
        consumer.maintain()


def run_worker(
    settings: WorkerSettings,
    follower: ModelFollower,
    observers: Sequence[BatchObserver] = (),
    telemetry: Telemetry | None = None,
    monitoring: Callable[[Worker], StreamMonitoring] | None = None,
    early_stop: EarlyStop | None = None,
) -> int:
    """Start the follower, run one worker in this process until stopped; returns exit code.

    ``monitoring`` builds the worker's :class:`StreamMonitoring` (it needs the worker for the
    drift reference of the serving version). ``early_stop``: a signal that came during start-up
    stops the worker as soon as its handlers are in place.
    """
    worker = Worker(settings, follower, observers, telemetry)  # Avro out: registered here
    follower.start()
    if monitoring is not None:
        worker.attach_monitoring(monitoring(worker))
    worker.install_signal_handlers()
    if early_stop is not None and early_stop.signum is not None:
        worker.request_stop(early_stop.signum)
    try:
        return worker.run()
    finally:
        follower.stop()
