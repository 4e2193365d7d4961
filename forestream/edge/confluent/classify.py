"""What a librdkafka error amounts to: fatal (one of :mod:`forestream.edge.errors`) or worth
retrying; the kafka-python twin is :mod:`forestream.edge.kafka_python.classify`."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from forestream.edge.connection import KafkaConnection
from forestream.edge.errors import (
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
from forestream.errors import KafkaFatalError

_FENCED = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)
"""A newer producer holds our transactional id, or the coordinator aborted our transaction
for its timeout and moved the id on: whatever we still send is void."""


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
