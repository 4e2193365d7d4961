"""The librdkafka side of the Kafka edge (:mod:`forestream.edge.interface`), through
``confluent-kafka``.

librdkafka fetches, decompresses, batches and sends in C threads of its own, outside the GIL:
the Python cost per record is building one small tuple on the way in and one ``produce`` call
on the way out, where kafka-python parses every record batch and every response in Python.

What differs from kafka-python, and is dealt with here:

- rebalance callbacks run inside ``consume()`` on the caller's thread, so the revocation
  handler may commit synchronously right there; the assignment strategy is
  ``cooperative-sticky``: a member joining or leaving moves only the partitions that change
  owner, the others keep being scored;
- errors the cluster keeps giving (a refused login, a failed TLS handshake) are not raised but
  reported to ``error_cb`` while librdkafka retries forever: fatal ones are kept and raised
  from the next call, classified like kafka-python's;
- a synchronous ``commit()`` has no timeout: commits are sent asynchronously and their result
  awaited for at most the caller's timeout, records fetched meanwhile kept for the next poll;
- confluent-kafka (2.16) serialises the calls made on one consumer: a commit waiting on
  another thread holds ``consume()`` for as long, so the consumer is only ever called from the
  loop's thread, and commits report back through ``consume()`` like the records.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
)
from confluent_kafka import TopicPartition as RdTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from forestream.edge.connection import KafkaConnection
from forestream.edge.errors import (
    KafkaFatalError,
    ProducerFenced,
    authentication_failed,
    format_mismatch,
    group_not_authorized,
    idempotence_refused,
    looks_like_tls,
    not_authorized,
    producer_fenced,
    tls_failed,
    topic_not_authorized,
)
from forestream.edge.interface import (
    CommitRejected,
    ConsumedRecord,
    CreationRefused,
    Delivery,
    InputRecord,
    Outgoing,
    ReadRecord,
    RebalanceHandler,
    TopicPartition,
    TopicRequest,
    TransactionAborted,
    TransientKafkaError,
    describe_partitions,
    lag_by_partition,
)
from forestream.runtime.logs import RateLimited

log = structlog.get_logger("forestream.kafka")

RECONNECT_BACKOFF_MAX_MS = 1000
_METADATA_TIMEOUT_S = 10.0
"""Bound on a reader's metadata and offset queries: past it the caller sees a transient error."""
_ENQUEUE_BLOCK_S = 2.0
"""How long ``send`` waits for room in librdkafka's queue before it stops handing records over
(the publisher then retries the rest): a broker away must not block the loop for long."""
_CLIENT_LOG = logging.getLogger("kafka.librdkafka")
"""librdkafka's own log lines, through the rate-limited bridge of :mod:`forestream.runtime.logs`."""

_REJECTED_COMMIT = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError._ASSIGNMENT_LOST,
        KafkaError._STATE,
        KafkaError.FENCED_INSTANCE_ID,
    }
)
_FENCED = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)
"""A newer producer holds our transactional id, or the coordinator aborted our transaction
for its timeout and moved the id on: whatever we still send is void."""


_NOT_AN_ERROR = frozenset({KafkaError._PARTITION_EOF, KafkaError._NO_OFFSET})
_STASH_HIGH = 20_000
_STASH_LOW = 2_000
"""Records kept while commits are awaited: fetching pauses above the first, resumes below the
second (see ``ConfluentGroupConsumer._stash_records``)."""
_REPORT_STEP_S = 0.002
"""How long one read waits while a commit's report is awaited."""
_COMMITTED = object()
"""The report of a commit that succeeded."""


def classify_librdkafka_error(
    error: KafkaError | BaseException,
    conn: KafkaConnection | None = None,
    topic: str | None = None,
    group: str | None = None,
) -> KafkaFatalError | None:
    """The fatal error a librdkafka error amounts to, or None: worth retrying."""
    if isinstance(error, KafkaFatalError):
        return error
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        error = error.args[0]
    if not isinstance(error, KafkaError):
        return None
    code, said = error.code(), error.str()[:300]
    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
        return authentication_failed(conn, said)
    if code == KafkaError._SSL or (code == KafkaError._TRANSPORT and looks_like_tls(said)):
        return tls_failed(conn, said)
    if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        return topic_not_authorized(conn, topic, said)
    if code == KafkaError.GROUP_AUTHORIZATION_FAILED:
        return group_not_authorized(conn, group)
    if code == KafkaError.CLUSTER_AUTHORIZATION_FAILED and "idempotence" in said:
        return idempotence_refused(conn, topic, said)
    if code in (
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    ):
        return not_authorized(conn, error.name())
    if code in (
        KafkaError.UNSUPPORTED_COMPRESSION_TYPE,
        KafkaError.UNSUPPORTED_VERSION,
        KafkaError._UNSUPPORTED_FEATURE,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
    ):
        return format_mismatch(conn, f"{error.name()}: {said}")
    if code in _FENCED:
        return producer_fenced(None, f"{error.name()}: {said}")
    if error.fatal():
        return format_mismatch(conn, f"{error.name()}: {said}")
    return None


def _rd(tp: TopicPartition, offset: int | None = None) -> RdTopicPartition:
    if offset is None:
        return RdTopicPartition(tp.topic, tp.partition)
    return RdTopicPartition(tp.topic, tp.partition, offset)


def _ours(partitions: Iterable[RdTopicPartition]) -> list[TopicPartition]:
    return [TopicPartition(tp.topic, tp.partition) for tp in partitions]


def _records(messages: list[Message]) -> tuple[list[InputRecord], list[KafkaError]]:
    """Records, and the error events librdkafka put among them. The hot path of the fetch:
    one tuple per record, the timestamp's type dropped."""
    records: list[InputRecord] = [
        ConsumedRecord(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value())
        for m in messages
        if m.error() is None
    ]
    if len(records) == len(messages):
        return records, []
    return records, [m.error() for m in messages if m.error() is not None]


_Builder = Callable[[list[Message]], tuple[list[InputRecord], list[KafkaError]]]
"""Turns ``consume()``'s messages into records and the error events among them."""


def _read_records(messages: list[Message]) -> tuple[list[InputRecord], list[KafkaError]]:
    """A reader's records: as :func:`_records`, with their headers."""
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
    return records, [m.error() for m in messages if m.error() is not None]


def consume_available(consumer: Consumer, max_records: int, timeout_s: float) -> list[Message]:
    """What is there now, else the first message to come within ``timeout_s`` and what came
    with it. ``consume(n, timeout)`` alone waits until ``n`` messages or the timeout, so at
    1,000 rec/s a ``consume(1000, 0.2)`` held every record for up to 200 ms; kafka-python's
    ``poll`` (and this edge's contract) return as soon as records are there."""
    messages = consumer.consume(num_messages=max_records, timeout=0)
    if messages or timeout_s <= 0:
        return messages
    messages = consumer.consume(num_messages=1, timeout=timeout_s)
    if messages and max_records > 1:
        messages += consumer.consume(num_messages=max_records - 1, timeout=0)
    return messages


class _Client:
    """What the three librdkafka clients share: the config and the error reports."""

    def __init__(self, conn: KafkaConnection, topic: str | None, group: str | None) -> None:
        self._conn = conn
        self._topic = topic
        self._group = group
        self._fatal: KafkaFatalError | None = None
        self._warn = RateLimited(10.0)

    def _config(self, client_id: str, **extra: Any) -> dict[str, Any]:
        return {
            **self._conn.librdkafka_config(),
            "client.id": client_id,
            "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
            "error_cb": self._on_error,
            "logger": _CLIENT_LOG,
            **extra,
        }

    def _classify(self, error: KafkaError | BaseException) -> KafkaFatalError | None:
        return classify_librdkafka_error(error, self._conn, topic=self._topic, group=self._group)

    def _on_error(self, error: KafkaError) -> None:
        """Served from poll/consume/flush on the caller's thread."""
        fatal = self._classify(error)
        if fatal is not None:
            self._fatal = self._fatal or fatal
        elif self._warn.ready():
            log.warning(
                "kafka_client_error", error=error.str(), suppressed=self._warn.take_suppressed()
            )

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    def _translated(self, exc: KafkaException) -> Exception:
        fatal = self._classify(exc)
        return fatal if fatal is not None else TransientKafkaError(str(exc))

    def _offsets_or_none(self, found: list[Any]) -> dict[TopicPartition, int | None]:
        """librdkafka's answer per partition: an error raises, a negative offset is None."""
        result: dict[TopicPartition, int | None] = {}
        for p in found:
            if p.error is not None:
                raise self._translated(KafkaException(p.error))
            result[TopicPartition(p.topic, p.partition)] = p.offset if p.offset >= 0 else None
        return result

    def _served(self, call: Callable[..., Any], *args: Any) -> Any:
        """A call that serves callbacks (``poll``, ``flush``). A fatal error (a producer id
        refused, say) is not given to ``error_cb`` but raised from it; a delivery callback
        run after that, with the exception pending, raises ``SystemError`` on its first call
        into C (measured), the KafkaException as its cause. Either is classified here."""
        try:
            return call(*args)
        except KafkaException as exc:
            raise self._translated(exc) from None
        except SystemError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, KafkaException):
                raise self._translated(cause) from None
            raise

    def _consume(
        self,
        consumer: Consumer,
        max_records: int,
        timeout_s: float,
        build: _Builder = _records,
    ) -> list[InputRecord]:
        """One ``consume()``: its records, after dealing with the error events among them."""
        self._raise_fatal()
        try:
            messages = consume_available(consumer, max(max_records, 1), timeout_s)
        except KafkaException as exc:
            raise self._translated(exc) from None
        self._raise_fatal()
        records, errors = build(messages)
        for error in errors:
            self._on_fetch_error(error)
        return records

    def _on_fetch_error(self, error: KafkaError) -> None:
        """An error event among the records: fatal ones end the command, others are retried
        by librdkafka itself (the records around it were kept)."""
        if error.code() in _NOT_AN_ERROR:
            return
        fatal = self._classify(error)
        if fatal is not None:
            raise fatal
        if self._warn.ready():
            log.warning(
                "kafka_fetch_error", error=error.str(), suppressed=self._warn.take_suppressed()
            )


class ConfluentGroupConsumer(_Client):
    """A consumer-group member on librdkafka (:class:`forestream.edge.interface.GroupConsumer`)."""

    def __init__(
        self,
        conn: KafkaConnection,
        *,
        group_id: str,
        client_id: str,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
    ) -> None:
        super().__init__(conn, topic=None, group=group_id)
        self._consumer = Consumer(
            self._config(
                client_id,
                **{
                    "group.id": group_id,
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": session_timeout_ms,
                    "heartbeat.interval.ms": heartbeat_interval_ms,
                    "partition.assignment.strategy": "cooperative-sticky",
                    "fetch.wait.max.ms": 100,
                    "topic.metadata.refresh.interval.ms": 5000,
                    # what librdkafka prefetches (all partitions together): ~10 full batches of
                    # 0.5 KB records; its defaults (64 MB, 100,000 records a partition) would
                    # take ~60 MB of RSS for records the worker cannot score any sooner
                    "queued.max.messages.kbytes": 8 * 1024,
                    "queued.min.messages": 10_000,
                    # once that is full, fetch again 10 ms later, not librdkafka's 1 s: the
                    # queue drains in well under a second, and the worker then sat idle
                    "fetch.queue.backoff.ms": 10,
                    "on_commit": self._on_commit,
                },
            )
        )
        self._handler: RebalanceHandler | None = None
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._commit_seq = 0
        self._sent: list[tuple[int, dict[TopicPartition, int]]] = []
        """Commits sent whose report has not come yet, oldest first."""
        self._outcomes: dict[int, Exception | object] = {}
        """Reports not taken yet, by commit: ``_COMMITTED`` or the error."""
        self._results: list[tuple[int, dict[TopicPartition, int]]] = []
        """Commits reported since :meth:`commit_results` was last called, in report order."""
        self._stash: list[InputRecord] = []
        """Records fetched while :meth:`commit` awaited its report: the next polls' first."""
        self._stash_paused: set[TopicPartition] = set()
        """Partitions paused while the stash is full (see :meth:`_stash_records`)."""

    # -- rebalances (librdkafka calls these inside consume(), on this thread) -------------------

    def subscribe(self, topic: str, handler: RebalanceHandler) -> None:
        self._topic = topic
        self._handler = handler
        self._consumer.subscribe(
            [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def _on_assign(self, consumer: Consumer, partitions: list[RdTopicPartition]) -> None:
        """Assign here rather than let the client do it after us: a partition paused while
        it was ours before (a held commit) would come back paused, and never be read."""
        assigned = _ours(partitions)
        consumer.incremental_assign(partitions)
        if partitions:
            consumer.resume(partitions)
        self._assigned.update(assigned)
        self._paused -= set(assigned)
        if self._handler is not None and assigned:
            self._handler.on_assigned(assigned)

    def _on_revoke(self, _consumer: Consumer, partitions: list[RdTopicPartition]) -> None:
        revoked = _ours(partitions)
        self._forget(revoked)
        if self._handler is None or not revoked:
            return
        try:
            offsets = self._handler.on_revoking(revoked)
            if offsets:
                self._commit_sync(offsets)
                self._handler.on_committed(offsets)
        except Exception as exc:  # the rebalance goes on anyway; the new owner re-reads
            log.warning("commit_on_revocation_failed", error=f"{type(exc).__name__}: {exc}")
        self._handler.on_released(revoked, lost=False)

    def _on_lost(self, _consumer: Consumer, partitions: list[RdTopicPartition]) -> None:
        lost = _ours(partitions)
        self._forget(lost)
        log.warning("partitions_lost", partitions=describe_partitions(lost))
        if self._handler is not None:
            self._handler.on_released(lost, lost=True)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = set(partitions)
        self._assigned -= gone
        self._paused -= gone
        self._stash_paused -= gone
        self._drop_stashed(gone)

    def _drop_stashed(self, partitions: set[TopicPartition]) -> None:
        if self._stash:
            self._stash = [
                r for r in self._stash if TopicPartition(r.topic, r.partition) not in partitions
            ]

    # -- records -------------------------------------------------------------------------------

    def poll_batch(self, max_records: int, timeout_s: float) -> Sequence[InputRecord]:
        self._raise_fatal()
        # records read while a commit was awaited come first, in order
        if (self._stash or self._stash_paused) and (records := self._unstash(max_records)):
            return records
        return self._consume(self._consumer, max_records, timeout_s)

    # -- offsets -------------------------------------------------------------------------------

    def commit(self, offsets: dict[TopicPartition, int], timeout_s: float) -> None:
        """An asynchronous commit awaited for at most ``timeout_s``: librdkafka's synchronous
        one has no bound. Its report comes through ``consume()``, behind records already
        fetched; those are kept for the next :meth:`poll_batch` (see :meth:`_stash_records`).
        One not confirmed in time may still land (its outcome then shows in
        :meth:`commit_results`)."""
        sent = self._send_commit(offsets)
        deadline = time.monotonic() + timeout_s
        while (outcome := self._outcomes.pop(sent, None)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransientKafkaError(f"commit not confirmed within {timeout_s:.1f}s")
            # in short steps: a report served inside consume() does not end its wait, only a
            # record does (with 50 ms steps the unpipelined worker ran at half speed)
            self._stash_records(self._consume(self._consumer, 10_000, min(left, _REPORT_STEP_S)))
        if outcome is not _COMMITTED:
            raise outcome

    def _stash_records(self, records: list[InputRecord]) -> None:
        """Keep records read while a commit was awaited. Each wait reads whatever librdkafka
        has fetched, which it then fetches again up to its prefetch limit: a worker slower than
        its fetcher would pile its input up here (390 MB of RSS over 200,000 records, measured
        unpipelined), so past ``_STASH_HIGH`` records fetching is paused until the stash is
        nearly drained. Pausing each time instead cost a fetch restart per commit (1,200
        rec/s)."""
        self._stash.extend(records)
        if len(self._stash) > _STASH_HIGH and not self._stash_paused:
            self._stash_paused = {tp for tp in self._assigned if tp not in self._paused}
            if self._stash_paused:
                self._consumer.pause([_rd(tp) for tp in self._stash_paused])

    def _unstash(self, max_records: int) -> list[InputRecord]:
        records, self._stash = self._stash[:max_records], self._stash[max_records:]
        if self._stash_paused and len(self._stash) < _STASH_LOW:
            back = [tp for tp in self._stash_paused if tp in self._assigned]
            back = [tp for tp in back if tp not in self._paused]
            self._stash_paused = set()
            if back:
                self._consumer.resume([_rd(tp) for tp in back])
        return records

    def commit_async(self, offsets: dict[TopicPartition, int]) -> None:
        """librdkafka's own asynchronous commit, from the loop's thread: confluent-kafka
        serialises the calls on a consumer, so a commit waiting on another thread (behind a
        group join, say) held ``consume()`` for as long (the running workers stopped for ~3 s
        whenever one joined). Its outcome is served by ``consume()``."""
        self._send_commit(offsets)

    def _send_commit(self, offsets: dict[TopicPartition, int]) -> int:
        self._raise_fatal()
        self._commit_seq += 1
        self._sent.append((self._commit_seq, dict(offsets)))
        try:
            self._consumer.commit(
                offsets=[_rd(tp, o) for tp, o in offsets.items()], asynchronous=True
            )
        except KafkaException as exc:
            self._sent.pop()
            raise self._commit_error(exc.args[0] if exc.args else None, str(exc)) from None
        except RuntimeError as exc:  # the consumer was closed under it
            self._sent.pop()
            raise TransientKafkaError(f"commit not sent: {exc}") from None
        return self._commit_seq

    def _on_commit(self, error: KafkaError | None, partitions: list[RdTopicPartition]) -> None:
        """librdkafka's report of an asynchronous commit (served inside ``consume()``), matched
        to the commit it answers by its offsets (reports come in the order sent, except for
        commits librdkafka deferred while the coordinator was away)."""
        reported = {TopicPartition(p.topic, p.partition): p.offset for p in partitions or ()}
        index = next((i for i, (_, o) in enumerate(self._sent) if o == reported), None)
        if index is None:  # not one of ours (librdkafka reports each commit once)
            return
        seq, offsets = self._sent[index]
        del self._sent[index]
        if error is not None:
            outcome: Exception | object = self._commit_error(error, error.str())
        else:
            failed = self._partition_error(partitions)
            outcome = _COMMITTED if failed is None else failed
        self._outcomes[seq] = outcome
        self._results.append((seq, offsets))

    def commit_results(self) -> list[tuple[dict[TopicPartition, int], Exception | None]]:
        results: list[tuple[dict[TopicPartition, int], Exception | None]] = []
        for seq, offsets in self._results:
            outcome = self._outcomes.pop(seq, None)
            if outcome is not None:  # else taken by the commit() that awaited it
                results.append((offsets, None if outcome is _COMMITTED else outcome))
        self._results.clear()
        return results

    def _partition_error(self, partitions: list[RdTopicPartition] | None) -> Exception | None:
        """A commit's per-partition errors, the first one as ours."""
        failed = next((p.error for p in partitions or () if p.error is not None), None)
        return None if failed is None else self._commit_error(failed, failed.str())

    def _commit_error(self, error: KafkaError | None, said: str) -> Exception:
        if isinstance(error, KafkaError):
            if error.code() in _REJECTED_COMMIT:
                return CommitRejected(said)
            fatal = self._classify(error)
            if fatal is not None:
                return fatal
        return TransientKafkaError(said)

    def _commit_sync(self, offsets: dict[TopicPartition, int]) -> None:
        """Inside a revocation callback (within ``consume()``): blocking is what the rebalance
        waits for, and records must not be consumed from here. Asynchronous commits sent before
        it reach the coordinator first: a late one never overwrites these offsets."""
        done = self._consumer.commit(
            offsets=[_rd(tp, o) for tp, o in offsets.items()], asynchronous=False
        )
        if (error := self._partition_error(done)) is not None:
            raise error

    def committed(
        self, partitions: Sequence[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, int | None]:
        self._raise_fatal()
        try:
            found = self._consumer.committed([_rd(tp) for tp in partitions], timeout=timeout_s)
        except KafkaException as exc:
            raise self._translated(exc) from None
        return {
            TopicPartition(p.topic, p.partition): p.offset if p.offset >= 0 else None for p in found
        }

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._drop_stashed({partition})
        try:
            self._consumer.seek(_rd(partition, offset))
        except KafkaException as exc:  # not being fetched yet: the committed offset holds
            log.warning(
                "seek_failed",
                partition=f"{partition.topic}-{partition.partition}",
                offset=offset,
                error=str(exc),
            )

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        fresh = set(partitions) - self._paused
        if fresh:
            self._consumer.pause([_rd(tp) for tp in fresh])
            self._paused |= fresh

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        back = set(partitions) & self._paused
        if back:
            self._paused -= back
            back -= self._stash_paused  # those come back once the stash is drained
            if back:
                self._consumer.resume([_rd(tp) for tp in back])

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def assignment_snapshot(self) -> list[TopicPartition]:
        return list(self._assigned)

    def lag(self, timeout_s: float) -> dict[int, int] | None:
        assigned = sorted(self._assigned)
        if not assigned:
            return {}
        try:
            ends = {
                tp.partition: self._consumer.get_watermark_offsets(
                    _rd(tp), timeout=timeout_s, cached=True
                )[1]
                for tp in assigned
            }
            positions = {
                p.partition: p.offset
                for p in self._consumer.position([_rd(tp) for tp in assigned])
                if p.offset >= 0
            }
        except KafkaException:
            return None
        return lag_by_partition(ends, positions)

    def maintain(self) -> None:
        """librdkafka drives the group protocol in its own threads: nothing to nudge."""

    def close(self, timeout_s: float) -> None:
        """Leave the group (the revocation handler runs, and librdkafka waits for the commits
        in flight); librdkafka bounds it by itself."""
        self._stash.clear()
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer_close_failed", error=str(exc))


_Resend = Callable[["_Delivery", int, Message], bool]
"""Sends a record refused in a too-large batch again, alone; False if it could not."""


class _Delivery:
    """Which records of one ``send`` the broker acknowledged, filled in by callbacks."""

    __slots__ = ("_error", "_handed", "_resend", "_settled", "_state")

    def __init__(self, count: int, resend: _Resend | None = None) -> None:
        self._state: list[KafkaError | bool | None] = [None] * count
        """None: not handed over or in flight; True: acknowledged; an error: failed."""
        self._error: BaseException | None = None
        self._handed = count
        self._settled = 0
        self._resend = resend

    def done(self, index: int, error: KafkaError | None, message: Message) -> None:
        if (
            error is not None
            and error.code() == KafkaError.MSG_SIZE_TOO_LARGE
            and self._resend is not None
            and self._resend(self, index, message)
        ):
            return  # its outcome comes to settle()
        self.settle(index, error, message)

    def settle(self, index: int, error: KafkaError | None, _message: Message) -> None:
        self._state[index] = True if error is None else error
        self._settled += 1
        if error is not None and self._error is None:
            self._error = KafkaException(error)

    def stopped(self, error: BaseException, handed: int) -> None:
        """Records from ``handed`` on were never given to librdkafka."""
        self._handed = handed
        if self._error is None:
            self._error = error

    def settled(self) -> bool:
        return self._settled >= self._handed

    def handed_over(self) -> int:
        return self._handed

    def unacknowledged(self) -> list[int]:
        return [i for i, s in enumerate(self._state) if s is not True]

    def error(self) -> BaseException | None:
        return self._error


class ConfluentProducer(_Client):
    """An acknowledging producer on librdkafka
    (:class:`forestream.edge.interface.AckingProducer`)."""

    def __init__(
        self,
        conn: KafkaConnection,
        *,
        client_id: str,
        linger_ms: int = 5,
        enqueue_block_s: float = _ENQUEUE_BLOCK_S,
        **extra: Any,
    ) -> None:
        super().__init__(conn, topic=None, group=None)
        self._enqueue_block_s = enqueue_block_s
        config = self._config(
            client_id,
            **{
                "acks": "all",
                "enable.idempotence": True,
                # a key lands on the partition kafka-python and the Java client pick
                # (murmur2); librdkafka's default (CRC32) would spread one input
                # partition's outputs over all output partitions, interleaving owners
                "partitioner": "murmur2_random",
                "linger.ms": linger_ms,
                "batch.size": 256 * 1024,
                "compression.type": conn.compression,
                "message.timeout.ms": 120_000,
                **extra,
            },
        )
        self._producer = Producer(config)
        self._alone_config: dict[str, Any] | None = (
            None
            if "transactional.id" in config  # a transaction's records go through it alone
            else {**config, "batch.num.messages": 1, "linger.ms": 0}
        )
        self._alone: Producer | None = None
        """Started on the first batch refused as too large (see :meth:`_resend_alone`)."""

    def send(self, records: Sequence[Outgoing]) -> _Delivery:
        self._raise_fatal()
        resend = self._resend_alone if self._alone_config is not None else None
        delivery = _Delivery(len(records), resend)
        produce, done = self._producer.produce, delivery.done
        for i, o in enumerate(records):
            callback = functools.partial(done, i)
            try:
                produce(o.topic, o.value, o.key, headers=o.headers, on_delivery=callback)
            except BufferError:  # librdkafka's queue is full: let it drain a little
                if not self._wait_for_room(o, callback):
                    delivery.stopped(BufferError("producer queue full"), i)
                    break
            except KafkaException as exc:
                delivery.stopped(exc, i)
                break
        self._poll(0)
        return delivery

    def _resend_alone(self, delivery: _Delivery, index: int, message: Message) -> bool:
        """A batch the broker refused as too large fails every record in it on librdkafka,
        where kafka-python splits it and sends the parts again: only a record too large on
        its own is then refused. The same here: each record of such a batch goes again,
        alone in its request, through a second handle that batches nothing."""
        assert self._alone_config is not None
        if self._alone is None:
            self._alone = Producer(self._alone_config)
        try:
            self._alone.produce(
                message.topic(),
                message.value(),
                message.key(),
                partition=message.partition(),
                headers=message.headers(),
                on_delivery=functools.partial(delivery.settle, index),
            )
        except (BufferError, KafkaException):
            return False
        return True

    def _poll(self, timeout_s: float) -> None:
        self._served(self._producer.poll, timeout_s)
        if self._alone is not None:
            self._served(self._alone.poll, 0)

    def _wait_for_room(self, o: Outgoing, callback: Any) -> bool:
        deadline = time.monotonic() + self._enqueue_block_s
        while time.monotonic() < deadline:
            self._poll(0.05)
            try:
                self._producer.produce(
                    o.topic, o.value, o.key, headers=o.headers, on_delivery=callback
                )
                return True
            except BufferError:
                continue
        return False

    def flush(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        left = self._served(self._producer.flush, timeout_s)
        if self._alone is not None:  # after the main handle: its callbacks may send here
            left += self._served(self._alone.flush, max(deadline - time.monotonic(), 0))
        self._raise_fatal()
        return left == 0

    def await_delivery(self, delivery: Delivery, timeout_s: float) -> bool:
        """Served by ``poll`` rather than ``flush``: sends made after ``delivery`` (the
        monitoring's, the next batch's) need not be waited for."""
        deadline = time.monotonic() + timeout_s
        poll = self._poll
        while not delivery.settled():
            left = deadline - time.monotonic()
            poll(max(min(left, 0.05), 0))
            if left <= 0:
                break
        self._raise_fatal()
        return delivery.settled()

    def fatal(self, exc: BaseException, topic: str | None = None) -> Exception | None:
        return classify_librdkafka_error(exc, self._conn, topic=topic)

    def append(self, record: Outgoing, partition: int | None, timeout_s: float) -> int:
        self._raise_fatal()
        outcome: list[tuple[KafkaError | None, Message]] = []
        extra = {} if partition is None else {"partition": partition}
        try:
            self._producer.produce(
                record.topic,
                record.value,
                record.key,
                headers=record.headers,
                on_delivery=lambda error, message: outcome.append((error, message)),
                **extra,
            )
        except (BufferError, KafkaException) as exc:
            raise self._translated_any(exc, record.topic) from None
        deadline = time.monotonic() + timeout_s
        while not outcome and time.monotonic() < deadline:
            self._served(self._producer.poll, min(0.05, max(deadline - time.monotonic(), 0)))
            self._raise_fatal()
        if not outcome:
            raise TransientKafkaError(f"no acknowledgement within {timeout_s:.0f}s")
        error, message = outcome[0]
        if error is not None:
            raise self._translated_any(KafkaException(error), record.topic)
        return int(message.offset())

    def _translated_any(self, exc: BaseException, topic: str) -> Exception:
        fatal = classify_librdkafka_error(exc, self._conn, topic=topic)
        return fatal if fatal is not None else TransientKafkaError(str(exc) or type(exc).__name__)

    def close(self, timeout_s: float) -> None:
        """Flushes what is in flight; a fatal error is the last call's to report, not this."""
        with contextlib.suppress(KafkaException, SystemError):
            deadline = time.monotonic() + timeout_s
            self._producer.flush(timeout_s)
            if self._alone is not None:
                self._alone.flush(max(deadline - time.monotonic(), 0))


class ConfluentTransactionalProducer(ConfluentProducer):
    """A transactional producer on librdkafka
    (:class:`forestream.edge.interface.TransactionalProducer`).

    librdkafka's transactional calls take a timeout; an error says whether the transaction must
    be aborted, may be retried, or is fatal (fenced: this producer is done)."""

    def __init__(
        self,
        conn: KafkaConnection,
        *,
        client_id: str,
        transactional_id: str,
        transaction_timeout_ms: int,
        init_timeout_s: float,
        linger_ms: int = 5,
    ) -> None:
        self._id = transactional_id
        super().__init__(
            conn,
            client_id=client_id,
            linger_ms=linger_ms,
            **{
                "transactional.id": transactional_id,
                "transaction.timeout.ms": transaction_timeout_ms,
                "message.timeout.ms": transaction_timeout_ms,  # librdkafka: at most that
            },
        )
        self._open = False
        try:
            self._producer.init_transactions(init_timeout_s)
        except KafkaException as exc:
            raise self._txn_error(exc) from None

    def _classify(self, error: KafkaError | BaseException) -> KafkaFatalError | None:
        fatal = super()._classify(error)
        if isinstance(fatal, ProducerFenced):  # name the id
            return producer_fenced(self._id, str(error)[:300])
        return fatal

    def _txn_error(self, exc: KafkaException) -> Exception:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.code() in _FENCED:
            return producer_fenced(self._id, f"{error.name()}: {error.str()}")
        if (
            isinstance(error, KafkaError)
            and error.code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        ):
            return not_authorized(
                self._conn, f"WRITE and DESCRIBE on transactional id {self._id!r}"
            )
        if isinstance(error, KafkaError) and error.txn_requires_abort():
            return TransientKafkaError(str(exc))  # abortable: the caller aborts
        return self._translated(exc)

    def begin(self) -> None:
        self._raise_fatal()
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise self._txn_error(exc) from None
        self._open = True

    def commit_transaction(
        self, offsets: dict[TopicPartition, int], group_metadata: object, timeout_s: float
    ) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            if offsets:
                self._producer.send_offsets_to_transaction(
                    [_rd(tp, o) for tp, o in offsets.items()],
                    group_metadata,
                    max(deadline - time.monotonic(), 0.1),
                )
            self._producer.commit_transaction(max(deadline - time.monotonic(), 0.1))
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            failed = self._txn_error(exc)
            if not isinstance(failed, TransientKafkaError):
                raise failed from None
            abortable = isinstance(error, KafkaError) and error.txn_requires_abort()
            if abortable and self.abort(max(deadline - time.monotonic(), 1.0)):
                raise TransactionAborted(str(exc)) from None
            raise TransientKafkaError(f"transaction outcome unknown: {exc}") from None
        self._open = False

    def abort(self, timeout_s: float) -> bool:
        if not self._open:
            return True
        try:
            self._producer.abort_transaction(timeout_s)
        except KafkaException:
            return False
        self._open = False
        return True

    def close(self, timeout_s: float) -> None:
        """An open transaction is left to the next producer with our id (which aborts it) or
        to the coordinator's timeout; a closed transaction's records are all acknowledged."""
        if not self._open:
            self._producer.flush(timeout_s)


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
    ) -> None:
        super().__init__(conn, topic=None, group=group_id)
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


_STEP_S = 0.25
"""Admin calls wait in steps this long, so a login or TLS failure librdkafka reports to
``error_cb`` (it keeps retrying) ends the call at once rather than at its timeout."""


class ConfluentAdmin(_Client):
    """Topic creation and inspection on librdkafka (:class:`forestream.edge.interface.TopicAdmin`).

    librdkafka's admin handle is a producer underneath, whose metadata requests would let the
    broker auto-create a topic merely asked about: that is switched off. Its ``error_cb`` is
    served by ``poll()``, so every wait here is a series of short ones with a poll between.
    """

    def __init__(self, conn: KafkaConnection, *, client_id: str, timeout_s: float) -> None:
        super().__init__(conn, topic=None, group=None)
        self._timeout_s = timeout_s
        self._admin = AdminClient(
            self._config(
                client_id,
                **{
                    "allow.auto.create.topics": False,
                    # a broker away shows as the call's own error, in one line: librdkafka's
                    # log of every failed connection attempt would only repeat it
                    "log_level": 2,
                },
            )
        )

    def _on_error(self, error: KafkaError) -> None:
        """Fatal errors are kept for the call under way; transient ones are its timeout's."""
        fatal = self._classify(error)
        if fatal is not None:
            self._fatal = self._fatal or fatal

    def _check(self) -> None:
        self._admin.poll(0)
        self._raise_fatal()

    def _failed(self, exc: BaseException, topic: str | None = None) -> Exception:
        """A failed call: the fatal error librdkafka reported meanwhile, if any, comes first
        (a refused login shows to the call itself only as brokers that are down)."""
        self._admin.poll(0)
        if self._fatal is not None:
            return self._fatal
        fatal = classify_librdkafka_error(exc, self._conn, topic=topic)
        return fatal if fatal is not None else TransientKafkaError(str(exc) or type(exc).__name__)

    def _metadata(self) -> Any:
        """Cluster metadata (every topic), in short tries until the admin's timeout."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            self._check()
            step = min(_STEP_S, max(deadline - time.monotonic(), 0.01))
            try:
                return self._admin.list_topics(timeout=step)
            except KafkaException as exc:
                if time.monotonic() >= deadline:
                    raise self._failed(exc) from None

    def _wait(self, future: Future[Any]) -> Any:
        """The future's result within the admin's timeout; its KafkaException as raised."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            self._check()
            try:
                return future.result(timeout=min(_STEP_S, max(deadline - time.monotonic(), 0.01)))
            except FutureTimeout:
                if time.monotonic() >= deadline:
                    raise TransientKafkaError(
                        f"no answer from Kafka at {self._conn.bootstrap} within "
                        f"{self._timeout_s:.0f}s"
                    ) from None

    def topics(self) -> set[str]:
        return set(self._metadata().topics)

    def partition_counts(self, names: Iterable[str]) -> dict[str, int]:
        found = self._metadata().topics
        return {
            name: len(found[name].partitions)
            for name in sorted(set(names))
            if name in found and found[name].partitions
        }

    def create_topics(self, requests: Sequence[TopicRequest], timeout_s: float) -> None:
        new = [
            NewTopic(
                r.name,
                num_partitions=r.partitions,
                replication_factor=r.replication_factor,
                config=dict(r.configs),
            )
            for r in requests
        ]
        try:
            futures = self._admin.create_topics(
                new, operation_timeout=timeout_s, request_timeout=self._timeout_s
            )
        except KafkaException as exc:
            raise self._failed(exc, requests[0].name) from None
        refused: list[str] = []
        for request in requests:
            try:
                self._wait(futures[request.name])
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if not isinstance(error, KafkaError):
                    raise self._failed(exc, request.name) from None
                if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:  # another process won
                    continue
                failed = self._failed(exc, request.name)
                if not isinstance(failed, TransientKafkaError) or _retriable(error):
                    raise failed from None
                refused.append(f"{error.name()}: {error.str()[:200]}")
        if refused:  # the first reason, as kafka-python says it (the others are alike, mostly)
            raise CreationRefused(refused[0])

    def may_describe(self, topic: str) -> bool:
        futures = self._admin.describe_topics(
            TopicCollection([topic]), request_timeout=self._timeout_s
        )
        try:
            self._wait(futures[topic])
        except KafkaException as exc:
            return _code(exc) != KafkaError.TOPIC_AUTHORIZATION_FAILED
        return True

    def brokers(self) -> int:
        return len(self._metadata().brokers)

    def close(self) -> None:
        """The admin handle has nothing in flight worth waiting for."""
        self._admin.poll(0)


def _code(error: BaseException) -> int | None:
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return int(error.args[0].code())
    return None


def _retriable(error: KafkaError) -> bool:
    """Worth another try: librdkafka says so, or the cluster did not answer in time."""
    return bool(error.retriable()) or error.code() in (
        KafkaError._TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    )
