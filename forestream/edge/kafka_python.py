"""The kafka-python side of the Kafka edge (:mod:`forestream.edge.interface`), with its workarounds.

kafka-python runs the group protocol (heartbeats, joins, rebalance callbacks) on an IO thread
of its own while the caller blocks in ``poll()``; a blocking consumer call from a rebalance
callback raises there, and its 3.0.12 release can leave a group join unfinished. Its producer's
``flush`` raises before the end while a batch the broker refused as too large is split and sent
again. All of that is dealt with here, so no command sees a kafka-python type or quirk.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import structlog
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition
from kafka import errors as e
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import (
    CommitFailedError,
    InvalidProducerEpochError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFencedError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailedError,
    TransactionalIdNotFoundError,
)
from kafka.structs import OffsetAndMetadata

from forestream.edge.connection import KafkaConnection
from forestream.edge.errors import (
    KafkaFatalError,
    authentication_failed,
    format_mismatch,
    group_not_authorized,
    idempotence_refused,
    looks_like_tls,
    not_authorized,
    producer_fenced,
    said,
    tls_failed,
    topic_not_authorized,
    unsupported_codec,
)
from forestream.edge.interface import (
    CommitRejected,
    CreationRefused,
    Delivery,
    InputRecord,
    Outgoing,
    RebalanceHandler,
    TopicPartition,
    TopicRequest,
    TransactionAborted,
    TransientKafkaError,
    describe_partitions,
    lag_by_partition,
)

log = structlog.get_logger("forestream.kafka")


def classify_client_error(
    exc: BaseException,
    conn: KafkaConnection | None = None,
    topic: str | None = None,
    group: str | None = None,
) -> KafkaFatalError | None:
    """The fatal error a kafka-python ``exc`` amounts to, or None when it is worth retrying
    (the librdkafka twin is :func:`forestream.edge.confluent.classify_librdkafka_error`)."""
    if isinstance(exc, KafkaFatalError):
        return exc
    if isinstance(
        exc,
        e.SaslAuthenticationFailedError | e.UnsupportedSaslMechanismError | e.IllegalSaslStateError,
    ):
        return authentication_failed(conn, said(exc))
    if isinstance(exc, e.TopicAuthorizationFailedError):
        return topic_not_authorized(conn, topic, said(exc))
    if isinstance(exc, e.GroupAuthorizationFailedError):
        return group_not_authorized(conn, group)
    if isinstance(exc, e.AuthorizationError):  # cluster, transactional id, delegation token
        return not_authorized(conn, type(exc).__name__)
    if type(exc) is e.KafkaError and "InitProducerId" in str(exc) and "Authorization" in str(exc):
        # the producer-id request's refusal comes wrapped in a plain KafkaError
        return idempotence_refused(conn, topic, said(exc))
    if isinstance(exc, e.UnsupportedCodecError):
        return unsupported_codec(conn, topic, said(exc))
    if isinstance(
        exc,
        e.UnsupportedForMessageFormatError
        | e.UnsupportedCompressionTypeError
        | e.UnsupportedVersionError,
    ):
        return format_mismatch(conn, f"{type(exc).__name__}: {said(exc)}")
    if isinstance(exc, e.KafkaConnectionError) and looks_like_tls(str(exc)):
        return tls_failed(conn, said(exc))
    return None


_JOIN_STUCK_AFTER_S = 2.0
_QUICK_METADATA_BACKOFF_MS = 10


def quicken_metadata(cluster: object) -> None:
    """Lower the pause between a client's metadata requests, for one-shot commands (the
    registry). kafka-python 3.0.12 builds its cluster metadata with the default 100 ms whatever
    ``retry_backoff_ms`` says, and the first topic lookup always follows the bootstrap's own
    request: 0.1 s per client, twice per command. Private; left alone if it changed."""
    config = getattr(cluster, "config", None)
    if isinstance(config, dict) and "retry_backoff_ms" in config:
        config["retry_backoff_ms"] = _QUICK_METADATA_BACKOFF_MS


def _theirs(tp: TopicPartition) -> KafkaTopicPartition:
    """kafka-python checks ``isinstance(tp, its TopicPartition)`` in some calls."""
    return KafkaTopicPartition(tp.topic, tp.partition)


def _ours(partitions: Iterable[Any]) -> list[TopicPartition]:
    return [TopicPartition(tp.topic, tp.partition) for tp in partitions]


class KafkaPythonGroupConsumer:
    """A group member on kafka-python; ``consumer`` is built by :mod:`forestream.edge.factory`."""

    def __init__(
        self, consumer: KafkaConsumer, conn: KafkaConnection, group: str | None = None
    ) -> None:
        self._consumer = consumer
        self._conn = conn
        self._group = group
        self._topic: str | None = None
        self._join_stuck_since: float | None = None
        self._sent_async: deque[tuple[dict[TopicPartition, int], Any]] = deque()
        """Asynchronous commits and their futures, oldest first."""

    def _classified(self, exc: KafkaError) -> Exception:
        fatal = classify_client_error(exc, self._conn, topic=self._topic, group=self._group)
        return fatal if fatal is not None else TransientKafkaError(str(exc))

    def subscribe(self, topic: str, handler: RebalanceHandler) -> None:
        self._topic = topic
        # kafka-python 3.0.12: a group leader that joins before it has the topic's metadata
        # assigns nobody anything, then rejoins when the metadata arrives; if that rejoin
        # outlives one poll() the client never finishes it (see maintain()). Knowing the
        # partitions before the first join avoids that empty first generation.
        with contextlib.suppress(KafkaError):
            self._consumer.partitions_for_topic(topic)
        self._consumer.subscribe([topic], listener=_Listener(self._consumer, handler))

    def poll_batch(self, max_records: int, timeout_s: float) -> Sequence[InputRecord]:
        try:
            polled = self._consumer.poll(
                timeout_ms=max(int(timeout_s * 1000), 0), max_records=max(max_records, 1)
            )
        except KafkaError as exc:
            raise self._classified(exc) from None
        if len(polled) == 1:
            return next(iter(polled.values()))
        records: list[InputRecord] = []
        for part in polled.values():
            records.extend(part)
        return records

    def commit(self, offsets: dict[TopicPartition, int], timeout_s: float) -> None:
        try:
            self._consumer.commit(
                {_theirs(tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()},
                timeout_ms=max(int(timeout_s * 1000), 1),
            )
        except CommitFailedError as exc:
            raise CommitRejected(str(exc)) from None
        except KafkaError as exc:
            raise self._classified(exc) from None

    def commit_async(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            future = self._consumer.commit_async(
                {_theirs(tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
            )
        except KafkaError as exc:
            raise self._classified(exc) from None
        self._sent_async.append((dict(offsets), future))

    def commit_results(self) -> list[tuple[dict[TopicPartition, int], Exception | None]]:
        """Futures are completed by the IO thread; read here, oldest first, only once done."""
        results: list[tuple[dict[TopicPartition, int], Exception | None]] = []
        while self._sent_async and self._sent_async[0][1].is_done:
            offsets, future = self._sent_async.popleft()
            results.append((offsets, self._commit_outcome(future.exception)))
        return results

    def _commit_outcome(self, error: BaseException | None) -> Exception | None:
        if error is None:
            return None
        if isinstance(error, CommitFailedError):
            return CommitRejected(str(error))
        if isinstance(error, KafkaError):
            return self._classified(error)
        return TransientKafkaError(f"{type(error).__name__}: {error}")

    def seek(self, partition: TopicPartition, offset: int) -> None:
        with contextlib.suppress(KafkaError, AssertionError, ValueError):
            self._consumer.seek(_theirs(partition), offset)

    def committed(
        self, partitions: Sequence[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, int | None]:
        timeout_ms = max(int(timeout_s * 1000), 1)
        try:
            return {
                tp: self._consumer.committed(_theirs(tp), timeout_ms=timeout_ms)
                for tp in partitions
            }
        except KafkaError as exc:
            raise self._classified(exc) from None

    def group_metadata(self) -> object:
        return self._consumer.group_metadata()

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._consumer.pause(*map(_theirs, partitions))

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._consumer.resume(*map(_theirs, partitions))

    def paused(self) -> set[TopicPartition]:
        return set(_ours(self._consumer.paused()))

    def assignment(self) -> set[TopicPartition]:
        return set(_ours(self._consumer.assignment() or ()))

    def assignment_snapshot(self) -> list[TopicPartition]:
        subscription = getattr(self._consumer, "_subscription", None)
        return _ours(list(getattr(subscription, "assignment", ())))

    def lag(self, timeout_s: float) -> dict[int, int] | None:
        assigned = list(self._consumer.assignment() or ())
        if not assigned:
            return {}
        timeout_ms = int(timeout_s * 1000)
        try:
            end = self._consumer.end_offsets(assigned, timeout_ms=timeout_ms)
            positions: dict[int, int] = {}
            for tp in assigned:
                position = self._consumer.position(tp, timeout_ms=timeout_ms)
                if position is not None:
                    positions[tp.partition] = position
        except KafkaError:
            return None
        return lag_by_partition({tp.partition: o for tp, o in end.items()}, positions)

    def maintain(self) -> None:
        """Work around a kafka-python 3.0.12 join that is never completed.

        When the group leader rejoins because topic metadata changed and the JoinGroup outlives
        one ``poll()`` timeout, the leader's own assignment step (run inside that join) clears
        the metadata mismatch that made it rejoin, so ``poll()`` never comes back to finish the
        join: no partitions, heartbeats off, and the broker evicts the member after the session
        timeout. The client is then ``rejoining`` but no longer thinks it ``need_rejoin()``;
        after a moment in that state, asking for a rejoin makes the next ``poll()`` finish it.
        """
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is None or not getattr(coordinator, "rejoining", False):
            self._join_stuck_since = None
            return
        if coordinator.need_rejoin():  # the client is driving the join itself
            self._join_stuck_since = None
            return
        now = time.monotonic()
        if self._join_stuck_since is None:
            self._join_stuck_since = now
        elif now - self._join_stuck_since >= _JOIN_STUCK_AFTER_S:
            log.warning(
                "group_join_stalled_rejoining", stalled_s=round(now - self._join_stuck_since, 1)
            )
            coordinator.request_rejoin()
            self._join_stuck_since = None

    def close(self, timeout_s: float) -> None:
        with contextlib.suppress(KafkaError):
            self._consumer.close(autocommit=False, timeout_ms=max(int(timeout_s * 1000), 1))


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


class _Listener(AsyncConsumerRebalanceListener):
    """Finish and commit what the worker holds before its partitions go to someone else.

    kafka-python 3 runs rebalance callbacks on the consumer's IO thread while the loop thread
    is blocked inside ``poll()``/``close()``, so the held batch is not touched concurrently;
    but a blocking consumer call (``commit()``) from there raises. Hence an *async* listener
    that lets the handler publish (the producer is a client of its own) and then awaits the
    commit on the consumer's event loop, the way the client commits before a rebalance itself.
    """

    def __init__(self, consumer: KafkaConsumer, handler: RebalanceHandler) -> None:
        self.consumer = consumer
        self.handler = handler

    async def on_partitions_revoked(self, revoked: set[KafkaTopicPartition]) -> None:
        partitions = _ours(revoked)
        try:
            offsets = self.handler.on_revoking(partitions)
            if offsets:
                await self._commit_on_io_loop(offsets)
                self.handler.on_committed(offsets)
        except Exception as exc:  # raising here would break the group join; re-reads are safe
            log.warning("commit_on_revocation_failed", error=f"{type(exc).__name__}: {exc}")
        self.handler.on_released(partitions, lost=False)

    async def on_partitions_assigned(self, assigned: set[KafkaTopicPartition]) -> None:
        self.handler.on_assigned(_ours(assigned))

    async def on_partitions_lost(self, lost: set[KafkaTopicPartition]) -> None:
        """Evicted: the partitions already belong to someone else, so commit nothing."""
        log.warning("partitions_lost", partitions=describe_partitions(_ours(lost)))
        self.handler.on_released(_ours(lost), lost=True)

    async def _commit_on_io_loop(self, offsets: dict[TopicPartition, int]) -> None:
        """``KafkaConsumer.commit()`` would block this very thread; the coordinator's
        coroutine is what the client awaits for its own pre-rebalance commit."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        commit = getattr(coordinator, "_commit_offsets_sync_async", None)
        if commit is None:
            raise RuntimeError(
                "this kafka-python has no coroutine commit; offsets left as they are"
            )
        timeout_ms = int(self.handler.revocation_commit_timeout_s() * 1000)
        await commit(
            {_theirs(tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()},
            timeout_ms=timeout_ms,
        )


class _FutureDelivery:
    def __init__(self, count: int, futures: list[Any], error: BaseException | None) -> None:
        self._count = count
        self._futures = futures
        self._error = error

    def unacknowledged(self) -> list[int]:
        failed = [i for i, f in enumerate(self._futures) if not f.is_done or f.failed()]
        return failed + list(range(len(self._futures), self._count))

    def error(self) -> BaseException | None:
        if self._error is not None:
            return self._error
        return next((f.exception for f in self._futures if f.is_done and f.failed()), None)

    def settled(self) -> bool:
        return all(f.is_done for f in self._futures)

    def handed_over(self) -> int:
        return len(self._futures)


class KafkaPythonProducer:
    """An acknowledging producer on kafka-python (``producer`` built by ``kafka_io``)."""

    def __init__(self, producer: KafkaProducer, conn: KafkaConnection) -> None:
        self._producer = producer
        self._conn = conn

    def send(self, records: Sequence[Outgoing]) -> _FutureDelivery:
        futures: list[Any] = []
        error: BaseException | None = None
        send = self._producer.send
        try:
            for o in records:
                futures.append(send(o.topic, value=o.value, key=o.key, headers=o.headers))
        except KafkaError as exc:  # e.g. metadata not there within max_block_ms
            error = exc
        return _FutureDelivery(len(records), futures, error)

    def flush(self, timeout_s: float) -> bool:
        """kafka-python's ``flush`` raises (``UnknownError: Future not done``) while a batch
        the broker refused as too large is being split and sent again: not an outcome yet, so
        flush again until the deadline. Failed records are the futures' to say."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._producer.flush(timeout=max(deadline - time.monotonic(), 0.1))
                return True
            except KafkaTimeoutError:
                return False
            except KafkaError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)  # the split batch needs the sender thread, not a busy loop

    def await_delivery(self, delivery: Delivery, timeout_s: float) -> bool:
        """kafka-python's sender thread completes the futures: wait on them, not on a flush
        (which would also wait for whatever was sent after ``delivery``)."""
        deadline = time.monotonic() + timeout_s
        while not delivery.settled():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.002))
        return True

    def fatal(self, exc: BaseException, topic: str | None = None) -> Exception | None:
        return classify_client_error(exc, self._conn, topic=topic)

    def append(self, record: Outgoing, partition: int | None, timeout_s: float) -> int:
        try:
            future = self._producer.send(
                record.topic,
                value=record.value,
                key=record.key,
                headers=record.headers,
                partition=partition,
            )
            return int(future.get(timeout=timeout_s).offset)
        except KafkaError as exc:
            fatal = classify_client_error(exc, self._conn, topic=record.topic)
            raise (fatal if fatal is not None else TransientKafkaError(said(exc))) from None

    def close(self, timeout_s: float) -> None:
        with contextlib.suppress(KafkaError):
            self._producer.flush(timeout=timeout_s)
        with contextlib.suppress(KafkaError):
            self._producer.close(timeout=max(timeout_s, 1))


_FENCED = (ProducerFencedError, InvalidProducerEpochError, TransactionalIdNotFoundError)
"""A newer producer holds our transactional id, or the coordinator aborted our transaction
for its timeout and moved the id on: whatever we still send is void."""


def _cause(exc: BaseException) -> BaseException:
    """kafka-python refuses a send after a failed transactional request with a bare
    ``KafkaError(message, that request's error)``: the error that says what happened."""
    if type(exc) is KafkaError:
        for arg in exc.args:
            if isinstance(arg, KafkaError):
                return arg
    return exc


class KafkaPythonTransactionalProducer(KafkaPythonProducer):
    """A transactional producer on kafka-python
    (:class:`forestream.edge.interface.TransactionalProducer`).

    kafka-python's ``send_offsets_to_transaction``, ``commit_transaction`` and
    ``abort_transaction`` wait without a bound; the same requests are made here through its
    transaction manager and awaited for at most the caller's timeout, so a broker away cannot
    hold the worker past its shutdown grace.
    """

    def __init__(
        self, producer: KafkaProducer, conn: KafkaConnection, transactional_id: str
    ) -> None:
        super().__init__(producer, conn)
        self._id = transactional_id
        self._open = False
        try:
            producer.init_transactions()  # bounded by max_block_ms
        except KafkaError as exc:
            with contextlib.suppress(KafkaError):
                producer.close(timeout=1)
            raise self._fatal_or_transient(exc) from None

    def _fatal_or_transient(self, exc: BaseException) -> Exception:
        exc = _cause(exc)
        if isinstance(exc, _FENCED):
            return producer_fenced(self._id, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, TransactionalIdAuthorizationFailedError):
            return not_authorized(
                self._conn, f"WRITE and DESCRIBE on transactional id {self._id!r}"
            )
        fatal = classify_client_error(exc, self._conn)
        return fatal if fatal is not None else TransientKafkaError(f"{type(exc).__name__}: {exc}")

    def fatal(self, exc: BaseException, topic: str | None = None) -> Exception | None:
        """Fenced is fatal here too: a send refused because the producer was fenced must end
        the command, not replace the producer (whose successor would fence the one that took
        over, and so on)."""
        cause = _cause(exc)
        if isinstance(cause, _FENCED):
            return producer_fenced(self._id, f"{type(cause).__name__}: {cause}")
        return classify_client_error(cause, self._conn, topic=topic)

    def begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaError as exc:
            raise self._fatal_or_transient(exc) from None
        self._open = True

    def _await(self, result: Any, timeout_s: float, what: str) -> None:
        self._producer._sender.wakeup()
        if not result.wait(timeout_ms=max(int(timeout_s * 1000), 1)):
            raise KafkaTimeoutError(f"{what} not confirmed within {timeout_s:.1f}s")

    def commit_transaction(
        self, offsets: dict[TopicPartition, int], group_metadata: object, timeout_s: float
    ) -> None:
        manager = self._producer._transaction_manager
        deadline = time.monotonic() + timeout_s
        try:
            if offsets:
                theirs = {_theirs(tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
                result = manager.send_offsets_to_transaction(theirs, group_metadata)
                self._await(result, deadline - time.monotonic(), "offsets in the transaction")
            self._await(manager.begin_commit(), deadline - time.monotonic(), "commit")
        except KafkaTimeoutError as exc:
            raise TransientKafkaError(f"transaction outcome unknown: {exc}") from None
        except KafkaError as exc:
            failed = self._fatal_or_transient(exc)
            if not isinstance(failed, TransientKafkaError):
                raise failed from None
            if self.abort(max(deadline - time.monotonic(), 1.0)):
                raise TransactionAborted(f"{type(exc).__name__}: {exc}") from None
            raise TransientKafkaError(f"transaction outcome unknown: {exc}") from None
        self._open = False

    def abort(self, timeout_s: float) -> bool:
        if not self._open:
            return True
        try:
            self._await(self._producer._transaction_manager.begin_abort(), timeout_s, "abort")
        except KafkaError:
            return False
        self._open = False
        return True

    def close(self, timeout_s: float) -> None:
        """An open transaction is left to the next producer with our id (which aborts it) or
        to the coordinator's timeout: flushing it first would only delay that."""
        with contextlib.suppress(KafkaError):
            self._producer.close(timeout=max(timeout_s, 0))


class KafkaPythonAdmin:
    """Topic creation and inspection on kafka-python
    (:class:`forestream.edge.interface.TopicAdmin`)."""

    def __init__(self, admin: KafkaAdminClient, conn: KafkaConnection) -> None:
        self._admin = admin
        self._conn = conn

    def _failed(self, exc: KafkaError, topic: str | None = None) -> Exception:
        fatal = classify_client_error(exc, self._conn, topic=topic)
        return fatal if fatal is not None else TransientKafkaError(said(exc))

    def topics(self) -> set[str]:
        try:
            return set(self._admin.list_topics())
        except KafkaError as exc:
            raise self._failed(exc) from None

    def partition_counts(self, names: Iterable[str]) -> dict[str, int]:
        present = sorted(set(names) & self.topics())
        if not present:
            return {}
        try:
            described = self._admin.describe_topics(present)
        except KafkaError as exc:
            raise self._failed(exc, present[0]) from None
        return {t["name"]: len(t["partitions"]) for t in described if t.get("partitions")}

    def create_topics(self, requests: Sequence[TopicRequest], timeout_s: float) -> None:
        new = [
            NewTopic(
                r.name,
                num_partitions=r.partitions,
                replication_factor=r.replication_factor,
                topic_configs=dict(r.configs),
            )
            for r in requests
        ]
        try:
            self._admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
        except TopicAlreadyExistsError:  # the others in the request were created
            pass
        except KafkaError as exc:  # e.g. a partition count over the broker's policy
            fatal = classify_client_error(exc, self._conn, topic=requests[0].name)
            if fatal is not None:
                raise fatal from None
            if exc.retriable or isinstance(exc, KafkaTimeoutError):
                raise TransientKafkaError(said(exc)) from None
            told = re.search(r"error_message='([^']+)'", str(exc))
            reason = told.group(1) if told else str(exc)[:200]
            raise CreationRefused(f"{type(exc).__name__}: {reason}") from None

    def may_describe(self, topic: str) -> bool:
        try:
            (described,) = self._admin.describe_topics([topic])
        except KafkaError as exc:
            raise self._failed(exc, topic) from None
        return described.get("error_code") != TopicAuthorizationFailedError.errno

    def brokers(self) -> int:
        try:
            return len(self._admin.describe_cluster().get("brokers") or ())
        except KafkaError as exc:
            raise self._failed(exc) from None

    def close(self) -> None:
        with contextlib.suppress(KafkaError):
            self._admin.close()
