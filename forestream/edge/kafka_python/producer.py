"""Producers on kafka-python: acknowledging and transactional.

Its producer's ``flush`` raises before the end while a batch the broker refused as too large
is split and sent again, and its transactional calls wait without a bound: both are dealt
with here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import (
    InvalidProducerEpochError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFencedError,
    TransactionalIdAuthorizationFailedError,
    TransactionalIdNotFoundError,
)
from kafka.structs import OffsetAndMetadata

from forestream.edge.connection import KafkaConnection
from forestream.edge.errors import not_authorized, producer_fenced, said
from forestream.edge.interface import Delivery, Outgoing, TopicPartition
from forestream.edge.kafka_python.classify import classify_client_error
from forestream.edge.kafka_python.client import _theirs
from forestream.errors import TransactionAborted, TransientKafkaError
from forestream.runtime.internals import KAFKA_TRANSACTIONAL_PRODUCER, require


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
        self._last: _FutureDelivery | None = None
        """The latest :meth:`send`: awaited alone, a flush waits for nothing else."""

    def send(self, records: Sequence[Outgoing]) -> _FutureDelivery:
        futures: list[Any] = []
        error: BaseException | None = None
        send = self._producer.send
        try:
            for o in records:
                futures.append(send(o.topic, value=o.value, key=o.key, headers=o.headers))
        except KafkaError as exc:  # e.g. metadata not there within max_block_ms
            error = exc
        self._last = _FutureDelivery(len(records), futures, error)
        return self._last

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
        (which would also wait for whatever was sent after ``delivery``). Unless ``delivery``
        is the latest send: a flush then waits for nothing more and sends at once what
        ``linger_ms`` would hold (5 ms on every small batch of the adaptive window)."""
        deadline = time.monotonic() + timeout_s
        if delivery is self._last and not delivery.settled():
            self.flush(timeout_s)
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
        require(producer, KAFKA_TRANSACTIONAL_PRODUCER)  # at start, not at the first commit
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
