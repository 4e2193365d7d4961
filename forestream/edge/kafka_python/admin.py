"""Topic creation and inspection on kafka-python."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)

from forestream.edge.connection import KafkaConnection
from forestream.edge.errors import said
from forestream.edge.interface import TopicRequest
from forestream.edge.kafka_python.classify import classify_client_error
from forestream.errors import CreationRefused, TransientKafkaError


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
