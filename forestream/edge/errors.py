"""Which Kafka client errors are worth retrying, and which end the command (and how).

Retrying helps when the cause goes away by itself: a broker restarting, a leader moving, a
request timing out. It cannot help when the cause is configuration: a wrong password, an
untrusted certificate, a missing ACL, records this client cannot decode, a topic that is not
there and may not be created. Those end the command within seconds, in one line that names
the cause and what to change, with an exit code of its own (orchestrators and scripts can tell
a bad secret from a bad ACL without parsing text). Anything not classified fatal here is
retried with backoff by the caller.

Pure: each client's adapter maps its own errors onto these
(:func:`forestream.edge.kafka_python.classify_client_error`,
:func:`forestream.edge.confluent.classify_librdkafka_error`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forestream.errors import (
    AuthenticationFailed,
    NotAuthorized,
    ProducerFenced,
    TlsFailed,
    TopicUnavailable,
    UnreadableRecords,
)

if TYPE_CHECKING:
    from forestream.edge.connection import KafkaConnection


def _who(conn: KafkaConnection | None) -> str:
    if conn is None:
        return ""
    if conn.uses_sasl:
        return f" as {conn.sasl_username!r}"
    if conn.ssl_certfile is not None:
        return f" as the subject of {conn.ssl_certfile}"
    return " as the anonymous principal"


def _where(conn: KafkaConnection | None) -> str:
    return f" at {conn.bootstrap}" if conn is not None else ""


def said(exc: BaseException) -> str:
    text = str(exc).strip()
    return text[:300] if text else type(exc).__name__


def authentication_failed(conn: KafkaConnection | None, said: str) -> AuthenticationFailed:
    mechanism = conn.sasl_mechanism if conn is not None else "SASL"
    return AuthenticationFailed(
        f"Kafka{_where(conn)} refused authentication{_who(conn)} with {mechanism} "
        f"({said}): check FORESTREAM_SASL_USERNAME, FORESTREAM_SASL_PASSWORD(_FILE) "
        "and FORESTREAM_SASL_MECHANISM"
    )


def topic_not_authorized(
    conn: KafkaConnection | None, topic: str | None, said: str
) -> NotAuthorized:
    on = f"topic {topic!r}" if topic else "a topic"
    return NotAuthorized(
        f"not authorized on {on}{_who(conn)}{_where(conn)} ({said}): grant the "
        "principal READ and DESCRIBE on input topics, WRITE and DESCRIBE on output topics"
    )


def group_not_authorized(conn: KafkaConnection | None, group: str | None) -> NotAuthorized:
    on = f"consumer group {group!r}" if group else "the consumer group"
    from forestream.runtime.settings import REPLAY_GROUP_PREFIX

    which = (
        f"an exactly-once replay's own group: a prefixed ACL on {REPLAY_GROUP_PREFIX!r} "
        "covers every replay"
        if group and group.startswith(REPLAY_GROUP_PREFIX)
        else "FORESTREAM_GROUP"
    )
    return NotAuthorized(
        f"not authorized on {on}{_who(conn)}{_where(conn)}: grant the principal READ on "
        f"the group ({which})"
    )


def idempotence_refused(
    conn: KafkaConnection | None, topic: str | None, said: str
) -> NotAuthorized:
    """The broker refused an idempotent producer its producer id: since Kafka 3.0 that takes
    WRITE on some topic (or IDEMPOTENT_WRITE on the cluster), so a principal that may only
    DESCRIBE the topic hears it as a cluster authorization failure."""
    to = f" to topic {topic!r}" if topic else ""
    return NotAuthorized(
        f"not authorized to produce{to}{_who(conn)}{_where(conn)} ({said}): grant the "
        "principal WRITE and DESCRIBE on the topics it writes"
    )


def not_authorized(conn: KafkaConnection | None, what: str) -> NotAuthorized:
    return NotAuthorized(
        f"not authorized{_who(conn)}{_where(conn)} ({what}): grant the principal the ACL "
        "this operation needs"
    )


def unsupported_codec(
    conn: KafkaConnection | None, topic: str | None, said: str
) -> UnreadableRecords:
    return UnreadableRecords(
        f"records{' in ' + repr(topic) if topic else ''}{_where(conn)} use a compression "
        f"codec this client cannot decode ({said}): the codec libraries "
        "(python-snappy, lz4, zstandard) are forestream dependencies, reinstall it"
    )


def format_mismatch(conn: KafkaConnection | None, said: str) -> UnreadableRecords:
    return UnreadableRecords(
        f"the broker{_where(conn)} and this client disagree on the record format or "
        f"protocol ({said})"
    )


def tls_failed(conn: KafkaConnection | None, said: str) -> TlsFailed:
    return TlsFailed(
        f"TLS with Kafka{_where(conn)} failed ({said}): check FORESTREAM_SSL_CAFILE "
        "(the CA that signed the broker's certificate) and FORESTREAM_SECURITY_PROTOCOL"
    )


def producer_fenced(transactional_id: str | None, said: str) -> ProducerFenced:
    return ProducerFenced(
        f"fenced: another producer with transactional id {transactional_id!r} took over "
        f"({said}); this worker's late transaction is void and it stops. If no replacement was "
        "started, two live workers share the id: give each its own FORESTREAM_WORKER_INDEX or "
        "FORESTREAM_TRANSACTIONAL_ID"
    )


_TLS_MARKERS = (
    "CERTIFICATE_VERIFY_FAILED",
    "certificate verify failed",
    "WRONG_VERSION_NUMBER",
    "SSL handshake failed",
)


def looks_like_tls(message: str) -> bool:
    return any(marker in message for marker in _TLS_MARKERS)


def topic_unavailable(topic: str, conn: KafkaConnection | None, why: str) -> TopicUnavailable:
    return TopicUnavailable(
        f"topic {topic!r} does not exist{_where(conn)} and cannot be created{_who(conn)} "
        f"({why}): create it, or grant the principal CREATE on it"
    )
