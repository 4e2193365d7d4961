"""The evaluator's Kafka loop: a consumer-group member on the labels topic, reading the
predictions partitions of the same numbers, joining them (:mod:`.join`) and publishing counts
(:mod:`.counts`) to the monitoring topic.

Why the group is on the labels topic only: the edge's group consumer subscribes to one topic,
and the join needs partition *p* of both topics in one instance. The group hands out labels
partitions; a group-less reader follows the predictions partitions of the same numbers, and
their offsets are committed in the same group (the coordinator takes offsets for any
partition), so the next owner of *p* resumes both.

Delivery, at-least-once: every ``evaluator_publish_interval_s`` the counts joined since the
last publish are sent and acknowledged, then offsets are committed: labels at the position
read, predictions at the lowest offset still waiting for a label (else the position). What a
crash or a moved partition does is in docs/evaluator.md ("Delivery"). Exactly-once: the counts
and those offsets go in one transaction (:func:`forestream.worker.transactions.transact`).

Shadow comparison: when the shadow topic exists, the same reader follows its partitions of the
same numbers too, and each label also feeds a second join per partition (shadow records: the
candidate's prediction with the served one's), counted as ``ShadowCounts`` published with the
``EvaluationCounts`` (same publish, same transaction); its offsets commit like the predictions'.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import structlog

from forestream.edge.interface import Outgoing, TopicPartition
from forestream.runtime.logs import RateLimited
from forestream.worker.evaluator.counts import (
    CountsBuffer,
    ShadowCountsBuffer,
    record_key,
    shadow_record_key,
)
from forestream.worker.evaluator.join import (
    PartitionJoin,
    decode_prediction,
    decode_shadow,
    label_or_reason,
)
from forestream.worker.evaluator.moves import PartitionMoves
from forestream.worker.evaluator.topics import (
    COMMIT_TIMEOUT_S,
    Rebalance,
    check_co_partitioned,
    shadow_topic_to_read,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from forestream.edge.interface import (
        AckingProducer,
        GroupConsumer,
        InputRecord,
        PartitionReader,
        TransactionalProducer,
    )
    from forestream.fleet.policy import Policy
    from forestream.worker.evaluator.promotion import Decider
    from forestream.worker.evaluator.settings import EvaluatorSettings

__all__ = ["Evaluator", "check_co_partitioned", "evaluator_id", "shadow_topic_to_read"]

log = structlog.get_logger("forestream.evaluator")

ACK_TIMEOUT_S = 10.0


def evaluator_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-evaluator"


class Evaluator(PartitionMoves):
    """One evaluator process; the state below is guarded by ``_lock`` because rebalance
    callbacks may run on the client's IO thread (kafka-python) while the loop polls.

    ``shadow_topic``: the shadow topic to join with the labels too (None: no shadow comparison).
    ``policy``: promotion by rule (:mod:`forestream.worker.evaluator.promotion`), or None.
    """

    def __init__(
        self,
        settings: EvaluatorSettings,
        ident: str | None = None,
        shadow_topic: str | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.s = settings
        self.policy = policy
        self.decider: Decider | None = None
        self.ident = ident or evaluator_id()
        self.buffer = CountsBuffer(settings.evaluation_window_s)
        self.joins: dict[int, PartitionJoin] = {}
        self.label_pos: dict[int, int] = {}
        self.prediction_pos: dict[int, int] = {}
        self.shadow_topic = shadow_topic
        self.shadow_buffer = ShadowCountsBuffer(settings.evaluation_window_s)
        self.shadow_joins: dict[int, PartitionJoin] = {}
        """Partition -> the shadow join (present exactly when ``joins`` has the partition and
        there is a shadow topic)."""
        self.shadow_pos: dict[int, int] = {}
        self.following: set[int] = set()
        """Predictions partitions the reader is positioned on (the loop's view)."""
        self.seek_due: set[int] = set()
        """Partitions (re)assigned since the reader was positioned on them: their state is new,
        so their predictions are read again from the committed offset (an eager rebalance
        takes a partition away and gives it back between two polls)."""
        self.parked = {}
        """At-least-once: partitions revoked, kept until the rebalance ends; those given
        straight back resume with their waiting records (see ``revoking``)."""
        self.labels_due: set[int] = set()
        """Exactly-once: partitions kept through a rebalance, or assigned, whose labels are read
        again from the committed offset (see ``_rewind_all`` and ``assigned``)."""
        self.outbox: list[Outgoing] = []
        self.labels_read = 0
        self.predictions_read = 0
        self.shadow_read = 0
        self.bad_labels: Counter[str] = Counter()
        self.bad_predictions: Counter[str] = Counter()
        self.bad_shadow: Counter[str] = Counter()
        self.shadow_joined = 0
        self.evicted: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.joined = 0
        self.published = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._bad_log = RateLimited(10.0)
        self._warn = RateLimited(10.0)
        self.group: GroupConsumer | None = None
        self.reader: PartitionReader | None = None
        self.producer: AckingProducer | None = None
        self.txn: TransactionalProducer | None = None
        """Exactly-once only: the producer of the transactions (then also ``producer``)."""

    # -- lifecycle ------------------------------------------------------------------------------

    def request_stop(self, _signum: int = 0) -> None:
        self._stop.set()

    def abandoned(self) -> dict[str, Any]:
        return {
            "partitions": sorted(self.joins),
            "unpublished_cells": len(self.buffer) + len(self.shadow_buffer),
        }

    def open(self) -> None:
        from forestream.edge.factory import acking_producer, group_consumer, partition_reader

        kafka = self.s.kafka()
        if self.s.exactly_once:
            self.producer = self.txn = self._transactional_producer()
        else:
            self.producer = acking_producer(kafka, client_id="forestream-evaluator")
        self.reader = partition_reader(kafka, client_id="forestream-evaluator-predictions")
        self.group = group_consumer(
            kafka,
            group=self.s.evaluator_group,
            client_id="forestream-evaluator",
            max_poll_records=2000,
            session_timeout_ms=self.s.session_timeout_ms,
        )
        self.group.subscribe(self.s.labels_topic, Rebalance(self))
        log.info(
            "evaluator_started",
            evaluator_id=self.ident,
            group=self.s.evaluator_group,
            guarantee=self.s.guarantee,
            predictions_topic=self.s.output_topic,
            labels_topic=self.s.labels_topic,
            monitoring_topic=self.s.monitoring_topic,
            shadow_topic=self.shadow_topic,
        )

    def transactional_id(self) -> str:
        """Per process: KIP-447 fences a zombie by its group generation, not by this id; the
        open transaction of a process that died is aborted by the coordinator's timeout."""
        return f"forestream-{self.s.evaluator_group}-{self.ident}"

    def _transactional_producer(self) -> TransactionalProducer:
        from forestream.edge.factory import transactional_producer
        from forestream.worker.transactions import TXN_INIT_BLOCK_MS

        return transactional_producer(
            self.s.kafka(),
            client_id="forestream-evaluator-txn",
            transactional_id=self.transactional_id(),
            transaction_timeout_ms=self.s.transaction_timeout_ms,
            max_block_ms=TXN_INIT_BLOCK_MS,
        )

    def run(self) -> None:
        from forestream.runtime.shutdown import install

        watchdog = install(self.request_stop, self.abandoned)
        try:
            self.open()
            self._start_decider()
            self.loop()
        finally:
            self._stop_decider()
            self.close()
            watchdog.uninstall()

    def loop(self) -> None:
        from forestream.errors import TransientKafkaError

        group, reader = self._opened()
        interval = self.s.evaluator_publish_interval_s
        next_publish = time.monotonic() + interval
        next_summary = time.monotonic() + self.s.summary_interval_s
        while not self._stop.is_set():
            try:
                group.maintain()  # the adapter's client workarounds (a stalled group join)
                self._follow()
                labels = group.poll_batch(2000, 0.1)
                with self._lock:
                    self._drop_parked()  # a rebalance ends inside the poll: kept or moved
                predictions = reader.poll_batch(2000, 0.05) if self.following else []
                with self._lock:
                    self._feed_predictions(predictions)
                    self._feed_labels(labels)
                if time.monotonic() >= next_publish:
                    next_publish = time.monotonic() + interval
                    self.publish_and_commit()
            except TransientKafkaError as exc:
                if self._warn.ready():
                    log.warning("evaluator_kafka_error", error=str(exc))
                self._stop.wait(0.5)
            if time.monotonic() >= next_summary:
                next_summary = time.monotonic() + self.s.summary_interval_s
                log.info("evaluator_summary", **self.totals())

    def close(self) -> None:
        from forestream.errors import ForestreamError

        try:
            if self.group is not None and self.producer is not None:
                self.publish_and_commit()
        except ForestreamError as exc:
            log.warning("evaluator_final_commit_failed", error=str(exc))
        if self.group is not None:
            self.group.close(COMMIT_TIMEOUT_S)  # revocation publishes and commits the rest
        with self._lock:
            self._drop_parked()  # revoked by the close: nothing comes back, totals kept
        if self.reader is not None:
            self.reader.close()
        if self.producer is not None:
            self.producer.close(ACK_TIMEOUT_S)
        log.info("evaluator_stopped", **self.totals())

    def totals(self) -> dict[str, Any]:
        """What the summary lines and ``/metrics`` report (:func:`.totals.totals_of`)."""
        from forestream.worker.evaluator.totals import totals_of

        with self._lock:
            return totals_of(self)

    # -- promotion by rule (``--promote-policy``): its own thread and clients -------------------

    def _start_decider(self) -> None:
        if self.policy is None:
            return
        from forestream.worker.evaluator.promotion import Decider

        self.decider = Decider(self.s, self.policy, self.ident, self.owns_first).start()

    def _stop_decider(self) -> None:
        if self.decider is not None:
            self.decider.stop()

    def owns_first(self) -> bool:
        """This instance owns labels partition 0: the group hands it to one instance, which
        therefore is the one that decides promotions."""
        with self._lock:
            return 0 in self.joins

    # -- the predictions reader follows the group's assignment ----------------------------------

    def _opened(self) -> tuple[GroupConsumer, PartitionReader]:
        if self.group is None or self.reader is None or self.producer is None:
            raise RuntimeError("the evaluator's clients are not open")
        return self.group, self.reader

    def _follow(self) -> None:
        group, reader = self._opened()
        with self._lock:
            owned = set(self.joins)
            due = self.seek_due & owned
            rewind = self.labels_due & owned
        if rewind:
            self._rewind_labels(group, reader, rewind)
        if owned == self.following and not due:
            return
        topics = [self.s.output_topic]
        if self.shadow_topic is not None:
            topics.append(self.shadow_topic)
        if owned != self.following:
            reader.assign([TopicPartition(t, p) for t in topics for p in sorted(owned)])
        moved = sorted((owned - self.following) | due)
        new = [TopicPartition(t, p) for t in topics for p in moved]
        committed = group.committed(new, COMMIT_TIMEOUT_S) if new else {}
        fresh = [tp for tp in new if committed.get(tp) is None]
        if fresh:
            reader.seek_to_beginning(fresh)
        for tp in new:
            offset = committed.get(tp)
            if offset is not None:
                reader.seek(tp, offset)
        with self._lock:
            for tp in new:
                if tp.partition in self.joins:
                    positions = (
                        self.prediction_pos if tp.topic == self.s.output_topic else self.shadow_pos
                    )
                    positions[tp.partition] = reader.position(tp)
            self.seek_due -= due
            self.seek_due &= set(self.joins)
        self.following = owned

    def _rewind_labels(
        self, group: GroupConsumer, reader: PartitionReader, partitions: set[int]
    ) -> None:
        tps = [TopicPartition(self.s.labels_topic, p) for p in sorted(partitions)]
        committed = group.committed(tps, COMMIT_TIMEOUT_S)
        missing = [tp for tp in tps if committed.get(tp) is None]
        beginning = reader.beginning_offsets(missing) if missing else {}
        for tp in tps:
            offset = committed.get(tp)
            group.seek(tp, offset if offset is not None else beginning[tp])
        with self._lock:
            self.labels_due -= partitions
            for p in partitions:
                self.label_pos.pop(p, None)

    # -- feeding --------------------------------------------------------------------------------

    def _feed_predictions(self, records: Sequence[InputRecord]) -> None:
        for record in records:
            if record.topic == self.shadow_topic:
                self._feed_shadow(record)
                continue
            join = self.joins.get(record.partition)
            if join is None or record.partition in self.seek_due:
                continue  # revoked (or given back) since the poll: read again from the commit
            self.prediction_pos[record.partition] = record.offset + 1
            self.predictions_read += 1
            key = record.key
            decoded = decode_prediction(record.value) if key is not None else None
            if key is None or decoded is None:
                self._bad(
                    self.bad_predictions, "no_key" if record.key is None else "malformed", record
                )
                continue
            join.add_prediction(key, record.offset, record.timestamp, decoded)

    def _feed_shadow(self, record: InputRecord) -> None:
        join = self.shadow_joins.get(record.partition)
        if join is None or record.partition in self.seek_due:
            return  # revoked (or given back) since the poll: read again from the commit
        self.shadow_pos[record.partition] = record.offset + 1
        self.shadow_read += 1
        key = record.key
        decoded, reason = decode_shadow(record.value) if key is not None else (None, "no_key")
        if key is None or decoded is None:
            self._bad(self.bad_shadow, reason or "malformed", record)
            return
        join.add_prediction(key, record.offset, record.timestamp, decoded)

    def _feed_labels(self, records: Sequence[InputRecord]) -> None:
        for record in records:
            join = self.joins.get(record.partition)
            if join is None or record.partition in self.labels_due:
                continue  # fetched before a rewind: read again from the commit
            self.label_pos[record.partition] = record.offset + 1
            self.labels_read += 1
            key = record.key
            label, reason = label_or_reason(key, record.value)
            if key is None or label is None:
                self._bad(self.bad_labels, reason or "malformed", record)
                continue
            join.add_label(key, record.offset, record.timestamp, label)
            shadow = self.shadow_joins.get(record.partition)
            if shadow is not None:
                shadow.add_label(key, record.offset, record.timestamp, label)

    def _bad(self, counter: Counter[str], reason: str, record: InputRecord) -> None:
        counter[reason] += 1
        if self._bad_log.ready():
            log.warning(
                "evaluator_bad_record",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                reason=reason,
                suppressed=self._bad_log.take_suppressed(),
            )

    # -- publishing and committing --------------------------------------------------------------

    def publish(self) -> bool:
        """Send what was joined since the last publish; True once all of it is acknowledged."""
        if self.producer is None:
            raise RuntimeError("the evaluator's producer is not open")
        with self._lock:
            self._fill_outbox()
            if not self.outbox:
                return True
            delivery = self.producer.send(self.outbox)
            self.producer.await_delivery(delivery, ACK_TIMEOUT_S)
            left = delivery.unacknowledged()
            self.published += len(self.outbox) - len(left)
            self.outbox = [self.outbox[i] for i in left]
            if self.outbox:
                error = delivery.error()
                fatal = self.producer.fatal(error, self.s.monitoring_topic) if error else None
                if fatal is not None:
                    raise fatal
                if self._warn.ready():
                    log.warning(
                        "evaluator_publish_pending", records=len(self.outbox), error=str(error)
                    )
            return not self.outbox

    def _fill_outbox(self) -> None:
        now_ms = int(time.time() * 1000)
        for counts in self.buffer.drain(self.ident, now_ms):
            value = counts.model_dump_json().encode()
            self.outbox.append(Outgoing(self.s.monitoring_topic, record_key(counts), value))
        for shadow in self.shadow_buffer.drain(self.ident, now_ms):
            value = shadow.model_dump_json().encode()
            self.outbox.append(Outgoing(self.s.monitoring_topic, shadow_record_key(shadow), value))

    def offsets(self, partitions: set[int]) -> dict[TopicPartition, int]:
        """Next-offsets to commit: labels at the position read, predictions (and shadow
        records) no further than the lowest one still waiting for a label."""
        out: dict[TopicPartition, int] = {}
        with self._lock:
            for p in partitions:
                join = self.joins.get(p)
                if join is None:
                    continue
                if p in self.label_pos:
                    out[TopicPartition(self.s.labels_topic, p)] = self.label_pos[p]
                if p in self.prediction_pos:
                    oldest = join.oldest_prediction_offset()
                    position = self.prediction_pos[p]
                    out[TopicPartition(self.s.output_topic, p)] = (
                        position if oldest is None else min(oldest, position)
                    )
                shadow = self.shadow_joins.get(p)
                if shadow is not None and self.shadow_topic is not None and p in self.shadow_pos:
                    oldest = shadow.oldest_prediction_offset()
                    position = self.shadow_pos[p]
                    out[TopicPartition(self.shadow_topic, p)] = (
                        position if oldest is None else min(oldest, position)
                    )
        return out

    def publish_and_commit(self) -> None:
        from forestream.errors import CommitRejected

        group, _ = self._opened()
        if self.txn is not None:
            self.transact()
            return
        with self._lock:
            if not self.publish():
                return  # nothing committed past counts not acknowledged
            offsets = self.offsets(set(self.joins))
        if not offsets:
            return
        try:
            group.commit(offsets, COMMIT_TIMEOUT_S)
        except CommitRejected as exc:  # the group moved on: the new owners re-read
            log.warning("evaluator_commit_rejected", error=str(exc))

    def transact(self) -> None:
        """Exactly-once: what was joined since the last transaction and the offsets of every
        partition owned, committed together (all partitions: a record's counts must never
        commit without the offsets of the labels it counts)."""
        from forestream.errors import TransactionAborted, TransientKafkaError
        from forestream.worker.transactions import TXN_TIMEOUT_S, replace_producer, transact

        group, _ = self._opened()
        with self._lock:
            self._fill_outbox()
            offsets = self.offsets(set(self.joins))
            if (not self.outbox and not offsets) or self.txn is None:
                return
            records = list(self.outbox)
            try:
                transact(
                    self.txn,
                    records,
                    offsets,
                    group.group_metadata,
                    timeout_s=TXN_TIMEOUT_S,
                    topic=self.s.monitoring_topic,
                )
            except TransactionAborted as exc:  # nothing of it counts: all of it next time
                log.warning("evaluator_transaction_aborted", error=str(exc))
                return
            except TransientKafkaError as exc:
                # outcome unknown: the successor settles it; the group's offsets then say
                self.txn = replace_producer(self.txn, self._transactional_producer)
                self.producer = self.txn
                committed = group.committed(list(offsets), COMMIT_TIMEOUT_S)
                done = bool(offsets) and all(committed.get(tp) == o for tp, o in offsets.items())
                log.warning("evaluator_transaction_outcome_unknown", error=str(exc), committed=done)
                if not done:
                    return
            self.published += len(records)
            self.outbox = []

    # -- the group's calls ----------------------------------------------------------------------
