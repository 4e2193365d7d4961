"""The Kafka edge: the few things forestream asks of a Kafka client, whichever client it is.

Two clients sit behind it: kafka-python (the default, pure Python) and librdkafka through
``confluent-kafka`` (fetching, batching and sending in C threads, outside the GIL). Each has
one adapter (:mod:`forestream.edge.kafka_python`, :mod:`forestream.edge.confluent`) that turns
its API, its errors and its quirks into this interface; the factories of
:mod:`forestream.edge.factory` (``group_consumer``, ``partition_reader``, ``acking_producer``,
``transactional_producer``, ``topic_admin``) pick one by ``FORESTREAM_KAFKA_CLIENT``. Everything
else (the worker, ``produce``, the registry, replay, the monitor, topic creation) sees only what
is defined here and imports no Kafka client.

Errors cross the edge in a few kinds only: :class:`~forestream.edge.errors.KafkaFatalError`
(already classified, with its exit code: stop), :class:`TransientKafkaError` (retry with
backoff), and for the operation that has one, its own outcome: :class:`CommitRejected` (the
group moved on; the new owner re-reads), :class:`TransactionAborted` (nothing of it counts),
:class:`CreationRefused` (the broker will not create that topic; the user must change it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple, Protocol

KafkaClient = Literal["kafka-python", "confluent"]
KAFKA_CLIENTS: tuple[str, ...] = ("kafka-python", "confluent")

WORKER_FETCH_PARTITION_BYTES = 256 * 1024
"""What a worker's consumer asks per partition per fetch, on either client (both default to
1 MB). A full batch of 1,000 ~0.5 KB records is ~0.5 MB, so four partitions still bring two
batches a round; at 1 MB the fetched bytes held in the client cost 6-11 MB more peak RSS at
the same rate (paired runs, #24). A larger record batch still comes whole (KIP-74)."""


class TopicPartition(NamedTuple):
    """A partition. kafka-python's own ``TopicPartition`` is the same two-field tuple, so the
    two compare and hash alike."""

    topic: str
    partition: int


class InputRecord(Protocol):
    """What the batch path reads of a consumed record (kafka-python's ``ConsumerRecord`` has
    it as is; the librdkafka adapter builds :class:`ConsumedRecord`)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class ConsumedRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    """Milliseconds since the epoch (create or append time, as the topic says)."""
    key: bytes | None
    value: bytes | None


class ReadRecord(NamedTuple):
    """A record from the librdkafka :class:`PartitionReader`: a :class:`ConsumedRecord` with
    its headers, which readers of the DLQ need (kafka-python's ``ConsumerRecord`` has them)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class Outgoing(NamedTuple):
    """One record to publish; kept until acknowledged so a failed send is retried unchanged.

    A NamedTuple rather than a frozen dataclass: one is built per record, and a tuple is
    several times cheaper to construct.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    """None for none (the clients take a list or None, not any sequence)."""


class TopicRequest(NamedTuple):
    """A topic to create: its layout and configs as the broker is to get them."""

    name: str
    partitions: int
    replication_factor: int
    """-1: the broker's ``default.replication.factor``."""
    configs: dict[str, str]


class RebalanceHandler(Protocol):
    """What a group member does when partitions come and go; the adapters call it from
    wherever their client runs rebalance callbacks (kafka-python: its IO thread, while the
    loop thread is blocked in the client; librdkafka: inside ``poll`` on the loop thread)."""

    def on_assigned(self, partitions: list[TopicPartition]) -> None: ...

    def on_revoking(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Finish the work held for them; the acknowledged offsets to commit before they go."""
        ...

    def revocation_commit_timeout_s(self) -> float: ...

    def on_committed(self, offsets: dict[TopicPartition, int]) -> None: ...

    def on_released(self, partitions: list[TopicPartition], lost: bool) -> None:
        """They are no longer ours. ``lost``: taken away (session expired) without a chance
        to commit."""
        ...


class GroupConsumer(Protocol):
    """A consumer-group member reading one topic, offsets committed by hand."""

    def subscribe(self, topic: str, handler: RebalanceHandler) -> None: ...

    def poll_batch(self, max_records: int, timeout_s: float) -> Sequence[InputRecord]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first ones.
        Raises :class:`TransientKafkaError` or a classified fatal error."""
        ...

    def commit(self, offsets: dict[TopicPartition, int], timeout_s: float) -> None:
        """Commit next-offsets synchronously. Raises :class:`CommitRejected`,
        :class:`TransientKafkaError` or a classified fatal error."""
        ...

    def commit_async(self, offsets: dict[TopicPartition, int]) -> None:
        """Send a commit of next-offsets without waiting for the coordinator; its outcome comes
        out of a later :meth:`commit_results`. What cannot even be sent raises like
        :meth:`commit`."""
        ...

    def commit_results(self) -> list[tuple[dict[TopicPartition, int], Exception | None]]:
        """Outcomes of :meth:`commit_async` calls that ended since the last call, in the order
        they were sent: None for committed, else :class:`CommitRejected`,
        :class:`TransientKafkaError` or a classified fatal error. Never blocks."""
        ...

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Fetch ``partition`` from ``offset`` next (drops what was fetched beyond it)."""
        ...

    def committed(
        self, partitions: Sequence[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, int | None]:
        """The group's committed next-offsets (None: none yet). Raises
        :class:`TransientKafkaError` or a classified fatal error."""
        ...

    def group_metadata(self) -> object:
        """This member's group, generation and member id, as the client's producer takes it
        in a transaction (the coordinator refuses offsets from a stale generation: KIP-447)."""
        ...

    def pause(self, partitions: Iterable[TopicPartition]) -> None: ...

    def resume(self, partitions: Iterable[TopicPartition]) -> None: ...

    def paused(self) -> set[TopicPartition]: ...

    def assignment(self) -> set[TopicPartition]: ...

    def assignment_snapshot(self) -> list[TopicPartition]:
        """The assignment read without locks, for a watchdog thread while the loop is stuck."""
        ...

    def lag(self, timeout_s: float) -> dict[int, int] | None:
        """Records behind the end, per assigned partition; None when Kafka did not answer."""
        ...

    def maintain(self) -> None:
        """Called once per loop turn: room for the adapter's client workarounds."""
        ...

    def broker_loss_s(self) -> float | None:
        """How long the client has known no broker, once that is past the bound it was built
        with (then it will not heal by itself: build a new one); None before that, or when
        the client cannot tell (kafka-python has no statistics). Never blocks."""
        ...

    def abandon(self, timeout_s: float) -> list[TopicPartition]:
        """Give the client up for a new one: its partitions, returned, are released to the
        handler as lost (nothing more is committed from it), then it is closed, waited for
        at most ``timeout_s``."""
        ...

    def close(self, timeout_s: float) -> None:
        """Leave the group (the revocation handler still runs) and release the client."""
        ...


class PartitionReader(Protocol):
    """Reads the partitions it is told to, outside any group, committing nothing: the model
    follower, the labels reader, replay, the monitor and the demo's reader."""

    def topics(self) -> set[str]: ...

    def partitions(self, topic: str) -> set[int]:
        """The topic's partitions; empty when it does not exist (yet)."""
        ...

    def assign(self, partitions: Sequence[TopicPartition]) -> None: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    def seek_to_beginning(self, partitions: Sequence[TopicPartition]) -> None: ...

    def seek_to_end(self, partitions: Sequence[TopicPartition]) -> None: ...

    def position(self, partition: TopicPartition) -> int:
        """The offset of the next record to be read (resolving a pending seek)."""
        ...

    def beginning_offsets(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]: ...

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]: ...

    def offsets_for_times(
        self, partitions: Sequence[TopicPartition], timestamp_ms: int
    ) -> dict[TopicPartition, int | None]:
        """The first offset at or after ``timestamp_ms``; None past the last record."""
        ...

    def poll_batch(self, max_records: int, timeout_s: float) -> Sequence[InputRecord]:
        """Raises :class:`TransientKafkaError` or a classified fatal error."""
        ...

    def pause(self, partitions: Sequence[TopicPartition]) -> None: ...

    def close(self) -> None: ...


class GroupOffsetsReader(PartitionReader, Protocol):
    """A :class:`PartitionReader` whose progress is a consumer group's committed offsets, in a
    group it never joins (``assign`` only, so no rebalance can take its partitions): a replay
    under exactly-once, whose transactions carry the offsets of what it read."""

    def committed(
        self, partitions: Sequence[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, int | None]:
        """The group's committed next-offsets (None: none yet). Raises
        :class:`TransientKafkaError` or a classified fatal error."""
        ...

    def group_metadata(self) -> object:
        """The group as the client's transactional producer takes it: unjoined (generation
        -1, no member id), which the coordinator accepts for a group without members."""
        ...


class Delivery(Protocol):
    """The fate of the records of one :meth:`AckingProducer.send` call."""

    def unacknowledged(self) -> list[int]:
        """Indexes of the records not acknowledged (failed, in flight, or never handed over)."""
        ...

    def error(self) -> BaseException | None:
        """The first error seen, if any."""
        ...

    def settled(self) -> bool:
        """Every record handed over is acknowledged or failed (none is still in flight)."""
        ...

    def handed_over(self) -> int:
        """How many records (the first ones) the client took; fewer than were given when
        ``send`` stopped early, :meth:`error` then saying why."""
        ...


class AckingProducer(Protocol):
    """Sends with ``acks=all`` and idempotence, and says which records were acknowledged."""

    def send(self, records: Sequence[Outgoing]) -> Delivery:
        """Hand the records to the client; stops at the first that cannot be handed over."""
        ...

    def flush(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; False when ``timeout_s`` ran out first."""
        ...

    def await_delivery(self, delivery: Delivery, timeout_s: float) -> bool:
        """Wait until ``delivery`` is settled (other sends may still be in flight); False
        when ``timeout_s`` ran out first. ``0`` only serves what already arrived."""
        ...

    def fatal(self, exc: BaseException, topic: str | None = None) -> Exception | None:
        """The fatal error ``exc`` amounts to (a missing ACL, say), or None: retry."""
        ...

    def append(self, record: Outgoing, partition: int | None, timeout_s: float) -> int:
        """Send one record (to ``partition`` if given) and wait for its acknowledgement: its
        offset. For rare writes whose position matters (the registry's compare-and-set), not
        for the hot path. Raises :class:`TransientKafkaError` or a classified fatal error."""
        ...

    def close(self, timeout_s: float) -> None: ...


class TransactionalProducer(AckingProducer, Protocol):
    """An :class:`AckingProducer` whose records, with the consumer's offsets, count only once
    their transaction commits. Built with a ``transactional.id``: creating it fences (and
    settles the open transaction of) any earlier producer with the same id."""

    def begin(self) -> None: ...

    def commit_transaction(
        self, offsets: dict[TopicPartition, int], group_metadata: object, timeout_s: float
    ) -> None:
        """Add ``offsets`` (next-offsets of the records consumed) to the open transaction and
        commit it. Raises :class:`TransactionAborted` (it was aborted: nothing of it counts),
        :class:`TransientKafkaError` (its outcome is unknown: replace this producer, whose
        successor settles it, and re-read from the committed offsets) or a classified fatal
        error (:class:`~forestream.edge.errors.ProducerFenced` among them)."""
        ...

    def abort(self, timeout_s: float) -> bool:
        """Abort the open transaction, if any; False when that could not be confirmed."""
        ...


class TopicAdmin(Protocol):
    """Topic creation and inspection (``topics create``, every command's topics on first use,
    the connection check before a command starts). Calls are bounded by the timeout the admin
    was built with; each raises :class:`TransientKafkaError` or a classified fatal error."""

    def topics(self) -> set[str]:
        """The names of the topics this principal may see."""
        ...

    def partition_counts(self, names: Iterable[str]) -> dict[str, int]:
        """Partition counts of those of ``names`` that exist (absent ones are left out);
        asking never creates a topic, whatever ``auto.create.topics.enable`` says."""
        ...

    def create_topics(self, requests: Sequence[TopicRequest], timeout_s: float) -> None:
        """Create them; one that exists already is no error (another process may win the
        race). Also raises :class:`CreationRefused`; a refused creation for want of an ACL is a
        classified :class:`~forestream.edge.errors.NotAuthorized`."""
        ...

    def may_describe(self, topic: str) -> bool:
        """False when the broker refuses to say whether ``topic`` exists (no DESCRIBE ACL)."""
        ...

    def brokers(self) -> int:
        """How many brokers the cluster has: one metadata round trip as our principal, so a
        refused login, TLS failure or missing ACL shows here as its fatal error."""
        ...

    def close(self) -> None: ...


def describe_partitions(partitions: Iterable[TopicPartition]) -> list[str]:
    """``topic-partition`` names, sorted: how logs show partitions."""
    return sorted(f"{tp.topic}-{tp.partition}" for tp in partitions)


def lag_by_partition(end_offsets: dict[int, int], positions: dict[int, int]) -> dict[int, int]:
    """Records behind per partition; a partition without a known position is left out."""
    return {p: max(end - positions[p], 0) for p, end in end_offsets.items() if p in positions}
