"""Producers on librdkafka: acknowledging (a batch refused as too large sent again, record by
record) and transactional."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from forestream.edge.confluent.classify import _FENCED, classify_librdkafka_error
from forestream.edge.confluent.client import _Client, _rd
from forestream.edge.connection import KafkaConnection
from forestream.edge.errors import not_authorized, producer_fenced
from forestream.edge.interface import Delivery, Outgoing, TopicPartition
from forestream.errors import (
    KafkaFatalError,
    ProducerFenced,
    TransactionAborted,
    TransientKafkaError,
)

_ENQUEUE_BLOCK_S = 2.0
"""How long ``send`` waits for room in librdkafka's queue before it stops handing records over
(the publisher then retries the rest): a broker away must not block the loop for long."""


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
        self._last: _Delivery | None = None
        """The latest :meth:`send`: awaited alone, a flush waits for nothing else."""

    def send(self, records: Sequence[Outgoing]) -> _Delivery:
        self._raise_fatal()
        resend = self._resend_alone if self._alone_config is not None else None
        delivery = _Delivery(len(records), resend)
        produce, done = self._producer.produce, delivery.done
        for i, o in enumerate(records):
            callback = functools.partial(done, i)
            try:
                # list is invariant: our (str, bytes) headers are librdkafka's
                # (str, str | bytes | None) all the same
                produce(o.topic, o.value, o.key, headers=o.headers, on_delivery=callback)  # type: ignore[arg-type]
            except BufferError:  # librdkafka's queue is full: let it drain a little
                if not self._wait_for_room(o, callback):
                    delivery.stopped(BufferError("producer queue full"), i)
                    break
            except KafkaException as exc:
                delivery.stopped(exc, i)
                break
        self._poll(0)
        self._last = delivery
        return delivery

    def _resend_alone(self, delivery: _Delivery, index: int, message: Message) -> bool:
        """A batch the broker refused as too large fails every record in it on librdkafka,
        where kafka-python splits it and sends the parts again: only a record too large on
        its own is then refused. The same here: each record of such a batch goes again,
        alone in its request, through a second handle that batches nothing."""
        if self._alone_config is None:  # _resend_alone is only handed out with a config
            raise RuntimeError("a record resent alone without the one-record producer's config")
        if self._alone is None:
            self._alone = Producer(self._alone_config)
        try:
            self._alone.produce(
                cast(str, message.topic()),  # a delivery report's message has both
                message.value(),
                message.key(),
                partition=cast(int, message.partition()),
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
                    o.topic,
                    o.value,
                    o.key,
                    headers=o.headers,  # type: ignore[arg-type]  # list invariance, as above
                    on_delivery=callback,
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
        monitoring's, the next batch's) need not be waited for. Unless ``delivery`` is the
        latest send: then a flush waits for nothing more, and sends at once what ``poll``
        leaves to ``linger.ms`` (5 ms, to fill requests; a batch sent whole gains nothing by
        it). Small batches pay it on every ack: the adaptive window's, at 1,000 rec/s, waited
        ~6.5 ms per batch for the previous one's acks instead of ~1.6 ms (median, measured)."""
        deadline = time.monotonic() + timeout_s
        while not delivery.settled():
            left = deadline - time.monotonic()
            step = max(min(left, 0.05), 0)
            if delivery is self._last:
                self.flush(step)  # both handles: a record resent alone is part of it
            else:
                self._poll(step)
            if left <= 0:
                break
        self._raise_fatal()
        return delivery.settled()

    def fatal(self, exc: BaseException, topic: str | None = None) -> Exception | None:
        return classify_librdkafka_error(exc, self._conn, topic=topic)

    def append(self, record: Outgoing, partition: int | None, timeout_s: float) -> int:
        self._raise_fatal()
        outcome: list[tuple[KafkaError | None, Message]] = []
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        try:
            self._producer.produce(
                record.topic,
                record.value,
                record.key,
                headers=record.headers,  # type: ignore[arg-type]  # list invariance, as above
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
        offset = message.offset()
        if offset is None:  # an acknowledged record has one; never seen otherwise
            raise TransientKafkaError("acknowledged without an offset")
        return int(offset)

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
        transactional: dict[str, Any] = {
            "transactional.id": transactional_id,
            "transaction.timeout.ms": transaction_timeout_ms,
            "message.timeout.ms": transaction_timeout_ms,  # librdkafka: at most that
        }
        super().__init__(
            conn,
            client_id=client_id,
            linger_ms=linger_ms,
            **transactional,
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
