"""A consumer-group member on librdkafka.

What differs from kafka-python, and is dealt with here:

- rebalance callbacks run inside ``consume()`` on the caller's thread, so the revocation
  handler may commit synchronously right there; the assignment strategy is
  ``cooperative-sticky``: a member joining or leaving moves only the partitions that change
  owner, the others keep being scored;
- a synchronous ``commit()`` has no timeout: commits are sent asynchronously and their result
  awaited for at most the caller's timeout, records fetched meanwhile kept for the next poll;
- confluent-kafka (2.16) serialises the calls made on one consumer: a commit waiting on
  another thread holds ``consume()`` for as long, so the consumer is only ever called from the
  loop's thread, and commits report back through ``consume()`` like the records.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as RdTopicPartition

from forestream.edge.broker_loss import BrokerLossWatch, stats_interval_ms
from forestream.edge.confluent.client import _Client, _ours, _rd
from forestream.edge.connection import KafkaConnection
from forestream.edge.interface import (
    WORKER_FETCH_PARTITION_BYTES,
    InputRecord,
    RebalanceHandler,
    TopicPartition,
    describe_partitions,
    lag_by_partition,
)
from forestream.errors import CommitRejected, TransientKafkaError

log = structlog.get_logger("forestream.kafka")

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
_STASH_HIGH = 20_000
_STASH_LOW = 2_000
"""Records kept while commits are awaited: fetching pauses above the first, resumes below the
second (see ``ConfluentGroupConsumer._stash_records``)."""
_REPORT_STEP_S = 0.002
"""How long one read waits while a commit's report is awaited."""
_COMMITTED = object()
"""The report of a commit that succeeded."""


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
        rebuild_without_broker_s: float | None = None,
    ) -> None:
        super().__init__(conn, topic=None, group=group_id)
        self._watch: BrokerLossWatch | None = None
        """Told every statistics report: when this client has known no broker for too long."""
        watching: dict[str, object] = {}
        if rebuild_without_broker_s is not None:
            self._watch = BrokerLossWatch(rebuild_without_broker_s)
            watching = {
                "statistics.interval.ms": stats_interval_ms(rebuild_without_broker_s),
                "stats_cb": self._on_stats,
            }
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
                    "max.partition.fetch.bytes": WORKER_FETCH_PARTITION_BYTES,
                    # once that is full, fetch again 10 ms later, not librdkafka's 1 s: the
                    # queue drains in well under a second, and the worker then sat idle
                    "fetch.queue.backoff.ms": 10,
                    "on_commit": self._on_commit,
                    **watching,
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
        if self._handler is not None:  # else abandoned (see abandon): released already
            log.warning("partitions_lost", partitions=describe_partitions(lost))
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
        if isinstance(outcome, Exception):
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
                results.append((offsets, outcome if isinstance(outcome, Exception) else None))
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

    # -- a client that lost every broker (librdkafka#5301) -------------------------------------

    def _on_stats(self, stats: str) -> None:
        """librdkafka's statistics, served inside ``consume()`` on the loop's thread."""
        if self._watch is not None:
            self._watch.observe(stats)

    def broker_loss_s(self) -> float | None:
        """How long this client has known no broker, once that is past its rebuild bound
        (:mod:`forestream.edge.broker_loss`); None before, or when not watched."""
        watch = self._watch
        return watch.silent_s() if watch is not None and watch.due() else None

    def abandon(self, timeout_s: float) -> list[TopicPartition]:
        """Give this client up for a new one. Its partitions are lost to it, as when the group
        expels a member: the handler is told (``on_released(lost=True)``) and nothing more is
        committed from here, since the revocation that closing runs finds no handler. The close
        itself runs on a thread of its own, awaited at most ``timeout_s``: a client without a
        broker may wait on its group leave for as long as librdkafka lets it."""
        lost = sorted(self._assigned)
        handler, self._handler = self._handler, None
        self._forget(lost)
        self._stash.clear()
        self._sent.clear()
        self._outcomes.clear()
        self._results.clear()
        if handler is not None and lost:
            log.warning(
                "partitions_lost", partitions=describe_partitions(lost), reason="client_abandoned"
            )
            handler.on_released(lost, lost=True)
        closing = threading.Thread(
            target=self.close, args=(timeout_s,), name="forestream-abandoned-consumer", daemon=True
        )
        closing.start()
        closing.join(timeout_s)
        if closing.is_alive():
            log.warning("abandoned_consumer_still_closing", waited_s=timeout_s)
        return lost

    def close(self, timeout_s: float) -> None:
        """Leave the group (the revocation handler runs, and librdkafka waits for the commits
        in flight); librdkafka bounds it by itself."""
        self._stash.clear()
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer_close_failed", error=str(exc))
