"""Kafka client construction and topic creation, configured one way for every component.

Every Kafka client of every command is built here, from one :class:`KafkaConnection` (address,
TLS/SASL, compression, topic layout), so a secured cluster is reached alike everywhere. A plain
``str`` stands for a PLAINTEXT address with defaults (the local broker: tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError, TopicAuthorizationFailedError

from contracts.connection import KafkaConnection
from contracts.edge import (
    AckingProducer,
    GroupConsumer,
    GroupOffsetsReader,
    PartitionReader,
    TransactionalProducer,
)
from contracts.errors import UserError
from contracts.kafka_errors import (
    KafkaFatalError,
    NotAuthorized,
    classify_client_error,
    topic_unavailable,
)
from contracts.settings import broker_addresses

Target = KafkaConnection | str
"""A connection, or a bare PLAINTEXT bootstrap address."""

RECONNECT_BACKOFF_MAX_MS = 1000
"""Cap on the clients' exponential reconnect backoff: the Java client's default, where
kafka-python's is 30 s. The same backoff spaces metadata refreshes once no broker answers, so
after a broker restart the 30 s cap left producers, fetches and coordinator lookups idle for up
to half a minute more (measured: 7-30 s), long enough for a group member to miss its session.
One connection attempt a second per client to a broker that is away is cheap."""


def connection(target: Target) -> KafkaConnection:
    return target if isinstance(target, KafkaConnection) else KafkaConnection(bootstrap=target)


@dataclass(frozen=True)
class TopicSpec:
    """A topic the project creates on first use (partitions and configs only matter then)."""

    name: str
    partitions: int = 1
    configs: dict[str, str] = field(default_factory=dict)


COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}


def models_topic_spec(name: str) -> TopicSpec:
    """The models topic: one partition (one ordered history), compacted to the newest event
    per model name."""
    return TopicSpec(name, 1, dict(COMPACTED))


def _unreachable(bootstrap: str) -> UserError:
    """No broker answered at all: the address (or the local broker) is the likely mistake."""
    return UserError(
        f"cannot reach Kafka at {bootstrap}: start the local broker with "
        "`forestream kafka start` or pass --bootstrap-servers"
    )


def require_reachable(target: Target, timeout_s: float = 3.0) -> None:
    """Fail fast, in one line, when no listed broker accepts a TCP connection, or (on a
    secured cluster) when TLS or SASL refuse us.

    The clients would retry for tens of seconds (and log every attempt) before giving up; a
    mistyped address, an untrusted CA or a wrong password deserve an answer now, with the
    exit code of their class (:mod:`contracts.kafka_errors`). A broker that accepts but then
    misbehaves is still the clients' business.
    """
    import socket

    conn = connection(target)
    for host, port in broker_addresses(conn.bootstrap):
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                break
        except OSError:
            continue
    else:
        raise _unreachable(conn.bootstrap)
    if conn.uses_tls or conn.uses_sasl:
        from contracts.kafka_preflight import check_security

        check_security(conn, host, port, timeout_s=max(timeout_s, 5.0))


def _built(conn: KafkaConnection, build: Any) -> Any:
    """Build a client; a failure is classified (fatal: one line and its exit code)."""
    try:
        return build()
    except KafkaError as exc:
        fatal = classify_client_error(exc, conn)
        if fatal is not None:
            raise fatal from None
        raise _unreachable(conn.bootstrap) from exc


def admin_client(target: Target, timeout_s: float = 10.0) -> KafkaAdminClient:
    conn = connection(target)
    return _built(
        conn,
        lambda: KafkaAdminClient(
            **conn.kafka_python_config(),
            client_id="forestream-admin",
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
        ),
    )


def make_producer(target: Target, **overrides: Any) -> KafkaProducer:
    """A producer that waits for the full ISR and retries: outputs must not be lost."""
    conn = connection(target)
    config: dict[str, Any] = {
        **conn.kafka_python_config(),
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "compression_type": None if conn.compression == "none" else conn.compression,
        "retries": 2**31 - 1,
        "delivery_timeout_ms": 120_000,
        "max_in_flight_requests_per_connection": 5,
        "enable_idempotence": True,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
    }
    config.update(overrides)
    return _built(conn, lambda: KafkaProducer(**config))


def make_consumer(target: Target, *topics: str, **overrides: Any) -> KafkaConsumer:
    conn = connection(target)
    config: dict[str, Any] = {
        **conn.kafka_python_config(),
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 2000,
        "fetch_max_wait_ms": 100,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        # records of aborted transactions (exactly-once workers, upstream producers) are
        # never read, nor those of open ones yet; librdkafka's default already
        "isolation_level": "read_committed",
    }
    config.update(overrides)
    return _built(conn, lambda: KafkaConsumer(*topics, **config))


def group_consumer(
    target: Target,
    *,
    group: str,
    client_id: str,
    max_poll_records: int,
    session_timeout_ms: int,
) -> GroupConsumer:
    """A consumer-group member on the connection's client (``FORESTREAM_KAFKA_CLIENT``)."""
    conn = connection(target)
    heartbeat_ms = min(3000, session_timeout_ms // 3)
    if conn.kafka_client == "confluent":
        from contracts.edge_confluent import ConfluentGroupConsumer

        return ConfluentGroupConsumer(
            conn,
            group_id=group,
            client_id=client_id,
            session_timeout_ms=session_timeout_ms,
            # members learn of a rebalance from a heartbeat's answer, and a cooperative one
            # takes two rounds: partitions moving to a joining worker waited ~2 heartbeats
            heartbeat_interval_ms=min(1000, session_timeout_ms // 3),
        )  # librdkafka is told how many records per poll_batch, not up front
    from contracts.edge_kafka_python import KafkaPythonGroupConsumer

    consumer = make_consumer(
        conn,
        group_id=group,
        client_id=client_id,
        max_poll_records=max_poll_records,
        # The group leader rebalances when topic metadata changes, but kafka-python only
        # refreshes it every 5 min by default: a worker that joined while the input topic
        # was being created (or gained partitions) would sit idle with nothing assigned.
        metadata_max_age_ms=5000,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_ms,
    )
    return KafkaPythonGroupConsumer(consumer, conn, group)


def acking_producer(
    target: Target, *, client_id: str, max_block_ms: int | None = None, linger_ms: int = 5
) -> AckingProducer:
    """A producer that says which records the full ISR acknowledged, on the connection's
    client. ``max_block_ms`` bounds how long a send may block for metadata or buffer room."""
    conn = connection(target)
    if conn.kafka_client == "confluent":
        from contracts.edge_confluent import ConfluentProducer

        return ConfluentProducer(conn, client_id=client_id, linger_ms=linger_ms)
    from contracts.edge_kafka_python import KafkaPythonProducer

    overrides: dict[str, Any] = {"client_id": client_id, "linger_ms": linger_ms}
    if max_block_ms is not None:
        overrides["max_block_ms"] = max_block_ms
    return KafkaPythonProducer(make_producer(conn, **overrides), conn)


def transactional_producer(
    target: Target,
    *,
    client_id: str,
    transactional_id: str,
    transaction_timeout_ms: int,
    max_block_ms: int,
) -> TransactionalProducer:
    """A producer whose records and consumer offsets count together or not at all (exactly
    once). Creating it fences any earlier producer with ``transactional_id`` and settles its
    open transaction; ``max_block_ms`` also bounds that."""
    conn = connection(target)
    if conn.kafka_client == "confluent":
        from contracts.edge_confluent import ConfluentTransactionalProducer

        return ConfluentTransactionalProducer(
            conn,
            client_id=client_id,
            transactional_id=transactional_id,
            transaction_timeout_ms=transaction_timeout_ms,
            init_timeout_s=max_block_ms / 1000,
        )
    from contracts.edge_kafka_python import KafkaPythonTransactionalProducer

    producer = make_producer(
        conn,
        client_id=client_id,
        transactional_id=transactional_id,
        transaction_timeout_ms=transaction_timeout_ms,
        max_block_ms=max_block_ms,
        # no record outlives its transaction (kafka-python wants linger + request timeout
        # below the delivery timeout)
        delivery_timeout_ms=transaction_timeout_ms,
        request_timeout_ms=min(30_000, transaction_timeout_ms // 2),
    )
    return KafkaPythonTransactionalProducer(producer, conn, transactional_id)


def partition_reader(
    target: Target, *, client_id: str, max_poll_records: int = 2000
) -> PartitionReader:
    """A group-less reader (nothing committed) on the connection's client: the follower,
    labels, replay, monitor, demo."""
    conn = connection(target)
    if conn.kafka_client == "confluent":
        from contracts.edge_confluent import ConfluentReader

        return ConfluentReader(conn, client_id=client_id)
    from contracts.edge_kafka_python import KafkaPythonReader

    consumer = make_consumer(
        conn, group_id=None, client_id=client_id, max_poll_records=max_poll_records
    )
    return KafkaPythonReader(consumer, conn)


def group_offsets_reader(
    target: Target, *, group: str, client_id: str, max_poll_records: int = 2000
) -> GroupOffsetsReader:
    """A group-less reader (it only assigns) whose offsets are ``group``'s: a replay under
    exactly-once commits them in its transactions and resumes from them."""
    conn = connection(target)
    if conn.kafka_client == "confluent":
        from contracts.edge_confluent import ConfluentGroupOffsetsReader

        return ConfluentGroupOffsetsReader(conn, client_id=client_id, group_id=group)
    from contracts.edge_kafka_python import KafkaPythonGroupOffsetsReader

    consumer = make_consumer(
        conn, group_id=group, client_id=client_id, max_poll_records=max_poll_records
    )
    return KafkaPythonGroupOffsetsReader(consumer, conn, group)


def new_topic(spec: TopicSpec, conn: KafkaConnection) -> NewTopic:
    """The creation request: replication from the connection's settings, else the broker's
    ``default.replication.factor`` (-1), never a hard-coded 1."""
    return NewTopic(
        spec.name,
        num_partitions=spec.partitions,
        replication_factor=conn.replication_factor or -1,
        topic_configs={**conn.topic_configs(), **spec.configs},
    )


def ensure_topics(target: Target, specs: Iterable[TopicSpec], timeout_s: float = 20.0) -> None:
    """Create missing topics and wait until their metadata is visible; existing ones are kept."""
    conn = connection(target)
    specs = list(specs)
    if not specs:
        return
    admin = admin_client(conn)
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            new = [new_topic(s, conn) for s in missing]
            # another process may win the race to create a topic; that is fine
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass
            except KafkaError as exc:  # e.g. a partition count over the broker's policy
                fatal = classify_client_error(exc, conn, topic=missing[0].name)
                if isinstance(fatal, NotAuthorized):
                    raise _refused_creation(admin, missing, conn) from None
                if fatal is not None:
                    raise fatal from None
                names = ", ".join(s.name for s in missing)
                said = re.search(r"error_message='([^']+)'", str(exc))
                reason = said.group(1) if said else str(exc)[:200]
                raise UserError(
                    f"the broker refused to create {names}: {type(exc).__name__}: {reason}"
                ) from None
        deadline = time.monotonic() + timeout_s
        wanted = {s.name for s in specs}
        while not wanted <= set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise UserError(f"topics {sorted(wanted)} not visible after {timeout_s:.0f}s")
            time.sleep(0.1)
    finally:
        admin.close()


def _refused_creation(
    admin: KafkaAdminClient, missing: list[TopicSpec], conn: KafkaConnection
) -> KafkaFatalError:
    """Creating was refused. Without DESCRIBE on a topic the broker hides whether it exists
    (it answers "not authorized" either way): that is an ACL to grant. With DESCRIBE, and
    the topic absent, it is missing and we may not create it."""
    for spec in missing:
        with contextlib.suppress(KafkaError):
            (described,) = admin.describe_topics([spec.name])
            if described.get("error_code") == TopicAuthorizationFailedError.errno:
                fatal = classify_client_error(
                    TopicAuthorizationFailedError(), conn, topic=spec.name
                )
                assert fatal is not None
                return fatal
    return topic_unavailable(missing[0].name, conn, "not allowed to create topics")


def topic_partitions(target: Target, names: Iterable[str]) -> dict[str, int]:
    """Partition counts of those of ``names`` that exist (absent ones are left out)."""
    wanted = set(names)
    reader = partition_reader(target, client_id="forestream-admin")
    try:
        present = wanted & reader.topics()
        return {name: len(reader.partitions(name)) for name in sorted(present)}
    finally:
        reader.close()
