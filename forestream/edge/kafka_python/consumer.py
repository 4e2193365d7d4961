"""A consumer-group member on kafka-python, with its workarounds.

kafka-python runs the group protocol (heartbeats, joins, rebalance callbacks) on an IO thread
of its own while the caller blocks in ``poll()``; a blocking consumer call from a rebalance
callback raises there, and its 3.0.12 release can leave a group join unfinished: both are
dealt with here.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import structlog
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from forestream.edge.connection import KafkaConnection
from forestream.edge.interface import (
    InputRecord,
    RebalanceHandler,
    TopicPartition,
    describe_partitions,
    lag_by_partition,
)
from forestream.edge.kafka_python.classify import classify_client_error
from forestream.edge.kafka_python.client import _ours, _theirs
from forestream.errors import CommitRejected, TransientKafkaError
from forestream.runtime.internals import KAFKA_CONSUMER, require

log = structlog.get_logger("forestream.kafka")

_JOIN_STUCK_AFTER_S = 2.0


class KafkaPythonGroupConsumer:
    """A group member on kafka-python; ``consumer`` is built by :mod:`forestream.edge.factory`."""

    def __init__(
        self, consumer: KafkaConsumer, conn: KafkaConnection, group: str | None = None
    ) -> None:
        require(consumer, KAFKA_CONSUMER)  # the workarounds below must not silently turn off
        self._consumer = consumer
        self._conn = conn
        self._group = group
        self._topic: str | None = None
        self._listener: _Listener | None = None
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
        self._listener = _Listener(self._consumer, handler)
        self._consumer.subscribe([topic], listener=self._listener)

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
        return _ours(list(self._consumer._subscription.assignment))

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
        coordinator = self._consumer._coordinator  # checked when this consumer was built
        if not coordinator.rejoining:
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

    def broker_loss_s(self) -> float | None:
        """kafka-python keeps no statistics to tell a client that lost every broker: never
        rebuilt for it (it re-bootstraps from the configured addresses by itself)."""
        return None

    def abandon(self, timeout_s: float) -> list[TopicPartition]:
        """Its partitions released as lost, the listener detached, then closed."""
        lost = sorted(self.assignment())
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.detached = True
            if lost:
                listener.handler.on_released(lost, lost=True)
        self.close(timeout_s)
        return lost

    def close(self, timeout_s: float) -> None:
        with contextlib.suppress(KafkaError):
            self._consumer.close(autocommit=False, timeout_ms=max(int(timeout_s * 1000), 1))


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
        self.detached = False
        """The consumer was abandoned (its partitions already released): tell nothing more."""

    async def on_partitions_revoked(self, revoked: set[KafkaTopicPartition]) -> None:
        if self.detached:
            return
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
        if not self.detached:
            self.handler.on_assigned(_ours(assigned))

    async def on_partitions_lost(self, lost: set[KafkaTopicPartition]) -> None:
        """Evicted: the partitions already belong to someone else, so commit nothing."""
        if self.detached:
            return
        log.warning("partitions_lost", partitions=describe_partitions(_ours(lost)))
        self.handler.on_released(_ours(lost), lost=True)

    async def _commit_on_io_loop(self, offsets: dict[TopicPartition, int]) -> None:
        """``KafkaConsumer.commit()`` would block this very thread; the coordinator's
        coroutine is what the client awaits for its own pre-rebalance commit."""
        # checked when the consumer was built (forestream.runtime.internals.KAFKA_CONSUMER)
        commit = self.consumer._coordinator._commit_offsets_sync_async
        timeout_ms = int(self.handler.revocation_commit_timeout_s() * 1000)
        await commit(
            {_theirs(tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()},
            timeout_ms=timeout_ms,
        )
