"""Topic creation and inspection on librdkafka."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic

from forestream.edge.confluent.classify import classify_librdkafka_error
from forestream.edge.confluent.client import _Client
from forestream.edge.connection import KafkaConnection
from forestream.edge.interface import TopicRequest
from forestream.errors import CreationRefused, TransientKafkaError

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
