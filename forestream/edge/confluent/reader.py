"""Group-less readers on librdkafka: the partition reader, and the reader whose offsets are a
consumer group's (exactly-once replay)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
)

from forestream.edge.broker_loss import BrokerLossWatch, stats_interval_ms
from forestream.edge.confluent.classify import classify_librdkafka_error
from forestream.edge.confluent.client import _Client, _rd
from forestream.edge.connection import KafkaConnection
from forestream.edge.interface import InputRecord, ReadRecord, TopicPartition
from forestream.errors import BrokersLost, KafkaFatalError

log = structlog.get_logger("forestream.kafka")

_METADATA_TIMEOUT_S = 10.0
"""Bound on a reader's metadata and offset queries: past it the caller sees a transient error."""


def _read_records(messages: list[Any]) -> tuple[list[InputRecord], list[KafkaError]]:
    """A reader's records: as :func:`forestream.edge.confluent.client._records`, with their
    headers."""
    records: list[InputRecord] = [
        ReadRecord(
            m.topic(),
            m.partition(),
            m.offset(),
            m.timestamp()[1],
            m.key(),
            m.value(),
            m.headers() or [],
        )
        for m in messages
        if m.error() is None
    ]
    if len(records) == len(messages):
        return records, []
    return records, [e for m in messages if (e := m.error()) is not None]


class ConfluentReader(_Client):
    """A group-less reader on librdkafka (:class:`forestream.edge.interface.PartitionReader`).

    Where each partition is read from is kept here, not in librdkafka: ``assign`` and the
    seeks only note it, and the next read or ``position`` hands librdkafka the whole assignment
    at those offsets in one ``assign()``, which discards whatever was fetched for the old
    positions. So a seek never reaches a partition librdkafka is not yet fetching (its seek
    would then fail out of sight). A record below its partition's position can therefore not
    be a fresh one: it is dropped and counted (``reader_stale_records_dropped`` at close), so a
    reader never hands the same offset out twice, whatever the client's queues hold.
    """

    def __init__(
        self,
        conn: KafkaConnection,
        *,
        client_id: str,
        group_id: str | None = None,
        fetch_max_wait_ms: int = 100,
        rebuild_without_broker_s: float | None = None,
    ) -> None:
        super().__init__(conn, topic=None, group=group_id)
        self._watch: BrokerLossWatch | None = None
        """Told every statistics report: when this client has known no broker for too long
        (then :meth:`poll_batch` raises :class:`BrokersLost`)."""
        watching: dict[str, object] = {}
        if rebuild_without_broker_s is not None:
            self._watch = BrokerLossWatch(rebuild_without_broker_s)
            watching = {
                "statistics.interval.ms": stats_interval_ms(rebuild_without_broker_s),
                "stats_cb": self._watch.observe,
            }
        self._consumer = Consumer(
            self._config(
                client_id,
                **{
                    # required by confluent-kafka, never joined (no subscribe); committed to
                    # only by a GroupOffsetsReader's transactions
                    "group.id": group_id or f"forestream-reader-{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    "fetch.wait.max.ms": fetch_max_wait_ms,
                    "queued.max.messages.kbytes": 16 * 1024,
                    **watching,
                },
            )
        )
        self._assigned: list[TopicPartition] = []
        self._next: dict[TopicPartition, int] = {}
        """The offset of the next record to hand out, per assigned partition."""
        self._logical: dict[TopicPartition, int] = {}
        """Seeks to OFFSET_BEGINNING/OFFSET_END not yet resolved (resolved lazily, as
        kafka-python does: a ``seek_to_end`` means the end when the read starts)."""
        self._handed_over = True
        """librdkafka reads ``_assigned`` from ``_next``; False after any assign or seek."""
        self._since_handover: set[TopicPartition] = set()
        """Partitions whose librdkafka position belongs to the last hand-over: those that
        delivered a record since, and those librdkafka showed without a position right after
        it (``assign()`` resets it; what it reads later is the new assignment's, control
        records stepped over included). Any other may still show the previous assignment's."""
        self._paused: set[TopicPartition] = set()
        self.stale_dropped = 0

    def _classify(self, error: KafkaError | BaseException) -> KafkaFatalError | None:
        """A plain reader's group id is never used: a cluster refusing it (a coordinator
        lookup librdkafka makes on its own) is no reason to stop reading."""
        code = error.code() if isinstance(error, KafkaError) else None
        if isinstance(error, KafkaException) and error.args:
            first = error.args[0]
            code = first.code() if isinstance(first, KafkaError) else None
        if code == KafkaError.GROUP_AUTHORIZATION_FAILED and self._group is None:
            return None
        return super()._classify(error)

    # -- metadata and offsets ------------------------------------------------------------------

    def topics(self) -> set[str]:
        try:
            return set(self._consumer.list_topics(timeout=_METADATA_TIMEOUT_S).topics)
        except KafkaException as exc:
            raise self._translated(exc) from None

    def partitions(self, topic: str) -> set[int]:
        try:
            found = self._consumer.list_topics(topic, timeout=_METADATA_TIMEOUT_S).topics.get(topic)
        except KafkaException as exc:
            raise self._translated(exc) from None
        if found is None:
            return set()
        if found.error is not None:
            fatal = classify_librdkafka_error(found.error, self._conn, topic=topic)
            if fatal is not None:
                raise fatal
            return set()  # unknown, or its leaders still being elected: not there yet
        return set(found.partitions)

    def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        try:
            low, high = self._consumer.get_watermark_offsets(
                _rd(tp), timeout=_METADATA_TIMEOUT_S, cached=False
            )
        except KafkaException as exc:
            raise self._translated(exc) from None
        return int(low), int(high)

    def beginning_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._watermarks(tp)[0] for tp in partitions}

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._watermarks(tp)[1] for tp in partitions}

    def offsets_for_times(
        self, partitions: Sequence[TopicPartition], timestamp_ms: int
    ) -> dict[TopicPartition, int | None]:
        if not partitions:
            return {}
        try:
            found = self._consumer.offsets_for_times(
                [_rd(tp, timestamp_ms) for tp in partitions], timeout=_METADATA_TIMEOUT_S
            )
        except KafkaException as exc:
            raise self._translated(exc) from None
        return self._offsets_or_none(found)  # -1 (OFFSET_END): no record since

    # -- positions -----------------------------------------------------------------------------

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions kept keep their position; new ones start at their beginning (what
        kafka-python's group-less reader does with ``auto_offset_reset=earliest``)."""
        wanted = list(dict.fromkeys(TopicPartition(tp.topic, tp.partition) for tp in partitions))
        self._topic = wanted[0].topic if wanted else None
        keep = set(wanted)
        for tp in self._assigned:
            if tp not in keep:
                self._next.pop(tp, None)
                self._logical.pop(tp, None)
                self._paused.discard(tp)
        for tp in wanted:
            if tp not in self._next and tp not in self._logical:
                self._logical[tp] = OFFSET_BEGINNING
        if wanted != self._assigned:
            self._assigned = wanted
            self._handed_over = False

    def _check_assigned(self, tp: TopicPartition) -> TopicPartition:
        tp = TopicPartition(tp.topic, tp.partition)
        if tp not in self._next and tp not in self._logical:
            raise ValueError(f"{tp.topic}-{tp.partition} is not assigned to this reader")
        return tp

    def seek(self, partition: TopicPartition, offset: int) -> None:
        tp = self._check_assigned(partition)
        self._logical.pop(tp, None)
        self._next[tp] = offset
        self._handed_over = False

    def seek_to_beginning(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self._seek_logical(self._check_assigned(tp), OFFSET_BEGINNING)

    def seek_to_end(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self._seek_logical(self._check_assigned(tp), OFFSET_END)

    def _seek_logical(self, tp: TopicPartition, where: int) -> None:
        self._next.pop(tp, None)
        self._logical[tp] = where
        self._handed_over = False

    def _resolve(self) -> None:
        """Logical seeks to absolute offsets, from the partitions' watermarks now."""
        for tp, where in list(self._logical.items()):
            low, high = self._watermarks(tp)
            self._next[tp] = low if where == OFFSET_BEGINNING else high
            del self._logical[tp]

    def _hand_over(self) -> None:
        """One ``assign()`` of every partition at its position, if any moved since the last."""
        self._resolve()
        if self._handed_over:
            return
        try:
            if self._assigned:
                self._consumer.assign([_rd(tp, self._next[tp]) for tp in self._assigned])
                # a pause is the partition's in librdkafka and would outlive an assignment
                running = [_rd(tp) for tp in self._assigned if tp not in self._paused]
                if running:
                    self._consumer.resume(running)
                if self._paused:
                    self._consumer.pause([_rd(tp) for tp in self._paused])
                reset = self._consumer.position([_rd(tp) for tp in self._assigned])
            else:
                self._consumer.unassign()
                reset = []
        except KafkaException as exc:
            raise self._translated(exc) from None
        # a partition whose only offsets left are control records (a replay resumed just
        # before a commit marker) delivers no record: without this its position never moved
        self._since_handover = {TopicPartition(p.topic, p.partition) for p in reset if p.offset < 0}
        self._handed_over = True

    def position(self, partition: TopicPartition) -> int:
        """Past the last record handed out, and past the control records (transaction
        markers) librdkafka stepped over after it, as kafka-python's position is."""
        tp = self._check_assigned(partition)
        self._hand_over()
        if tp in self._since_handover:
            try:
                (at,) = self._consumer.position([_rd(tp)])
            except KafkaException as exc:
                raise self._translated(exc) from None
            if at.offset > self._next[tp]:
                self._next[tp] = at.offset
        return self._next[tp]

    # -- records -------------------------------------------------------------------------------

    def poll_batch(self, max_records: int, timeout_s: float) -> Sequence[InputRecord]:
        self._raise_fatal()
        watch = self._watch
        if watch is not None and watch.due():  # librdkafka#5301: the caller builds a new one
            raise BrokersLost(watch.silent_s(), watch.rebuild_after_s)
        self._hand_over()
        if not any(tp not in self._paused for tp in self._assigned):
            time.sleep(max(timeout_s, 0.0))
            return []
        fetched = self._consume(self._consumer, max_records, timeout_s, _read_records)
        records: list[InputRecord] = []
        stale = 0
        for r in fetched:
            tp = TopicPartition(r.topic, r.partition)
            at = self._next.get(tp)
            if at is None or tp in self._paused:  # no longer ours, or paused meanwhile
                continue
            if r.offset < at:
                stale += 1
                continue
            self._next[tp] = r.offset + 1
            self._since_handover.add(tp)
            records.append(r)
        if stale:
            self.stale_dropped += stale
            if self._warn.ready():
                log.warning(
                    "reader_stale_records_dropped",
                    count=stale,
                    total=self.stale_dropped,
                    suppressed=self._warn.take_suppressed(),
                )
        return records

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        fresh = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        self._paused.update(fresh)
        if self._handed_over and fresh:
            try:
                self._consumer.pause([_rd(tp) for tp in fresh])
            except KafkaException as exc:
                raise self._translated(exc) from None

    def close(self) -> None:
        if self.stale_dropped:
            log.warning("reader_stale_records_dropped", total=self.stale_dropped)
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer_close_failed", error=str(exc))


class ConfluentGroupOffsetsReader(ConfluentReader):
    """A reader whose offsets are a consumer group's
    (:class:`forestream.edge.interface.GroupOffsetsReader`):
    ``group.id`` set, partitions only assigned, so librdkafka never joins the group and its
    ``consumer_group_metadata()`` is the unjoined one (generation -1) that a transaction's
    offsets of a memberless group go with."""

    def __init__(self, conn: KafkaConnection, *, client_id: str, group_id: str) -> None:
        super().__init__(conn, client_id=client_id, group_id=group_id)

    def committed(
        self, partitions: Sequence[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, int | None]:
        self._raise_fatal()
        if not partitions:
            return {}
        try:
            found = self._consumer.committed([_rd(tp) for tp in partitions], timeout=timeout_s)
        except KafkaException as exc:
            raise self._translated(exc) from None
        return self._offsets_or_none(found)  # -1001 (OFFSET_INVALID): none committed

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()
