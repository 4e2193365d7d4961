"""What a kafka-python error amounts to: fatal (one of :mod:`forestream.edge.errors`) or worth
retrying; the librdkafka twin is :mod:`forestream.edge.confluent.classify`."""

from __future__ import annotations

from kafka import errors as e

from forestream.edge.connection import KafkaConnection
from forestream.edge.errors import (
    authentication_failed,
    format_mismatch,
    group_not_authorized,
    idempotence_refused,
    looks_like_tls,
    not_authorized,
    said,
    tls_failed,
    topic_not_authorized,
    unsupported_codec,
)
from forestream.errors import KafkaFatalError


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
