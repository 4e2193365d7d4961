"""Group-less readers on kafka-python: the partition reader, and the reader whose offsets are a
consumer group's (exactly-once replay)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from forestream.edge.connection import KafkaConnection
from forestream.edge.interface import InputRecord, TopicPartition
from forestream.edge.kafka_python.classify import classify_client_error
from forestream.edge.kafka_python.client import _theirs
from forestream.errors import TransientKafkaError


class KafkaPythonReader:
    """A group-less reader on kafka-python (:class:`forestream.edge.interface.PartitionReader`)."""

    def __init__(self, consumer: KafkaConsumer, conn: KafkaConnection) -> None:
        self._consumer = consumer
        self._conn = conn
        self._topic: str | None = None
        self._group: str | None = None

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except KafkaError as exc:
            fatal = classify_client_error(exc, self._conn, topic=self._topic, group=self._group)
            raise (fatal if fatal is not None else TransientKafkaError(str(exc))) from None

    def topics(self) -> set[str]:
        with self._translated():
            return set(self._consumer.topics())

    def partitions(self, topic: str) -> set[int]:
        with self._translated():
            return set(self._consumer.partitions_for_topic(topic) or ())

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        self._topic = partitions[0].topic if partitions else None
        self._consumer.assign([_theirs(tp) for tp in partitions])

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._consumer.seek(_theirs(partition), offset)

    def seek_to_beginning(self, partitions: Sequence[TopicPartition]) -> None:
        if partitions:
            self._consumer.seek_to_beginning(*map(_theirs, partitions))

    def seek_to_end(self, partitions: Sequence[TopicPartition]) -> None:
        if partitions:
            self._consumer.seek_to_end(*map(_theirs, partitions))

    def position(self, partition: TopicPartition) -> int:
        with self._translated():
            return int(self._consumer.position(_theirs(partition)))

    def beginning_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        with self._translated():
            found = self._consumer.beginning_offsets([_theirs(tp) for tp in partitions])
        return {TopicPartition(tp.topic, tp.partition): o for tp, o in found.items()}

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        with self._translated():
            found = self._consumer.end_offsets([_theirs(tp) for tp in partitions])
        return {TopicPartition(tp.topic, tp.partition): o for tp, o in found.items()}

    def offsets_for_times(
        self, partitions: Sequence[TopicPartition], timestamp_ms: int
    ) -> dict[TopicPartition, int | None]:
        with self._translated():
            found = self._consumer.offsets_for_times(
                {_theirs(tp): timestamp_ms for tp in partitions}
            )
        return {
            TopicPartition(tp.topic, tp.partition): (at.offset if at is not None else None)
            for tp, at in found.items()
        }

    def poll_batch(self, max_records: int, timeout_s: float) -> Sequence[InputRecord]:
        with self._translated():
            polled = self._consumer.poll(
                timeout_ms=max(int(timeout_s * 1000), 0), max_records=max(max_records, 1)
            )
        records: list[InputRecord] = []
        for part in polled.values():
            records.extend(part)
        return records

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self._consumer.pause(*map(_theirs, partitions))

    def close(self) -> None:
        with contextlib.suppress(KafkaError):
            self._consumer.close()


class KafkaPythonGroupOffsetsReader(KafkaPythonReader):
    """A reader whose ``consumer`` has ``group_id`` set but only ever ``assign``s
    (:class:`forestream.edge.interface.GroupOffsetsReader`): kafka-python then looks up the group's
    coordinator for offsets, and never joins (no heartbeats, no rebalances)."""

    def __init__(self, consumer: KafkaConsumer, conn: KafkaConnection, group: str) -> None:
        super().__init__(consumer, conn)
        self._group = group

    def committed(
        self, partitions: Sequence[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, int | None]:
        timeout_ms = max(int(timeout_s * 1000), 1)
        with self._translated():
            return {
                tp: self._consumer.committed(_theirs(tp), timeout_ms=timeout_ms)
                for tp in partitions
            }

    def group_metadata(self) -> object:
        """kafka-python's own snapshot: the group id, generation -1 and no member id, as an
        assigning consumer never joins (its transaction manager also takes a bare id)."""
        return self._consumer.group_metadata()
