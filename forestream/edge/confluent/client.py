"""What every librdkafka client of the Kafka edge (:mod:`forestream.edge.interface`) shares,
through ``confluent-kafka``: its config, its error reports and how records are read.

librdkafka fetches, decompresses, batches and sends in C threads of its own, outside the GIL:
the Python cost per record is building one small tuple on the way in and one ``produce`` call
on the way out, where kafka-python parses every record batch and every response in Python.

What differs from kafka-python, and is dealt with here (the group protocol's differences are
:mod:`forestream.edge.confluent.consumer`'s):

- errors the cluster keeps giving (a refused login, a failed TLS handshake) are not raised but
  reported to ``error_cb`` while librdkafka retries forever: fatal ones are kept and raised
  from the next call, classified like kafka-python's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as RdTopicPartition

from forestream.edge.confluent.classify import classify_librdkafka_error
from forestream.edge.connection import KafkaConnection
from forestream.edge.interface import ConsumedRecord, InputRecord, TopicPartition
from forestream.errors import KafkaFatalError, TransientKafkaError
from forestream.runtime.logs import RateLimited

log = structlog.get_logger("forestream.kafka")

RECONNECT_BACKOFF_MAX_MS = 1000
_CLIENT_LOG = logging.getLogger("kafka.librdkafka")
"""librdkafka's own log lines, through the rate-limited bridge of :mod:`forestream.runtime.logs`."""

_NOT_AN_ERROR = frozenset({KafkaError._PARTITION_EOF, KafkaError._NO_OFFSET})


def _rd(tp: TopicPartition, offset: int | None = None) -> RdTopicPartition:
    if offset is None:
        return RdTopicPartition(tp.topic, tp.partition)
    return RdTopicPartition(tp.topic, tp.partition, offset)


def _ours(partitions: Iterable[RdTopicPartition]) -> list[TopicPartition]:
    return [TopicPartition(tp.topic, tp.partition) for tp in partitions]


def _records(messages: list[Any]) -> tuple[list[InputRecord], list[KafkaError]]:
    """Records, and the error events librdkafka put among them. The hot path of the fetch:
    one tuple per record, the timestamp's type dropped. ``messages`` are ``Message``s, typed
    ``Any`` because their accessors are ``Optional`` for error events, which are split off here
    (a cast per record would cost a call on the hot path)."""
    records: list[InputRecord] = [
        ConsumedRecord(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value())
        for m in messages
        if m.error() is None
    ]
    if len(records) == len(messages):
        return records, []
    return records, [e for m in messages if (e := m.error()) is not None]


_Builder = Callable[[list[Message]], tuple[list[InputRecord], list[KafkaError]]]
"""Turns ``consume()``'s messages into records and the error events among them."""


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
