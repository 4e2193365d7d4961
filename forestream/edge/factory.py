"""Kafka client construction and topic creation, configured one way for every component.

Every Kafka client of every command is built here, from one :class:`KafkaConnection` (address,
TLS/SASL, compression, topic layout, client library), so a secured cluster is reached alike
everywhere. The edge factories (``group_consumer``, ``partition_reader``, ``acking_producer``,
``transactional_producer``, ``topic_admin``) return :mod:`forestream.edge.interface` interfaces on
the
connection's client; ``make_producer``, ``make_consumer`` and ``admin_client`` build raw
kafka-python clients for that adapter, tests and benchmarks. No Kafka client is imported until
one is built. A plain ``str`` stands for a PLAINTEXT address with defaults (the local broker:
tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from forestream.edge.connection import KafkaConnection
from forestream.edge.errors import topic_not_authorized, topic_unavailable
from forestream.edge.interface import (
    WORKER_FETCH_PARTITION_BYTES,
    AckingProducer,
    GroupConsumer,
    GroupOffsetsReader,
    PartitionReader,
    TopicAdmin,
    TopicRequest,
    TransactionalProducer,
)
from forestream.errors import (
    ClusterUnreachable,
    CreationRefused,
    KafkaFatalError,
    NotAuthorized,
    TransientKafkaError,
    UserError,
)
from forestream.runtime.settings import broker_addresses

if TYPE_CHECKING:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

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


def _unreachable(bootstrap: str) -> ClusterUnreachable:
    """No broker answered at all: the address (or the local broker) is the likely mistake."""
    return ClusterUnreachable(
        bootstrap,
        f"cannot reach Kafka at {bootstrap}: start the local broker with "
        "`forestream kafka start` or pass --bootstrap-servers",
    )


_Client = TypeVar("_Client")


def rebuilt(build: Callable[[], _Client]) -> _Client:
    """Build a client in a process already running (a successor after a failed transaction):
    a cluster that does not answer now is an outage to retry with backoff, not the user's
    mistake it is at start. kafka-python connects while it is built; librdkafka never does."""
    try:
        return build()
    except ClusterUnreachable as exc:
        raise TransientKafkaError(f"no broker at {exc.bootstrap} answered") from None


def require_reachable(target: Target, timeout_s: float = 3.0) -> None:
    """Fail fast, in one line, when no listed broker accepts a TCP connection, or (on a
    secured cluster) when TLS or SASL refuse us.

    The clients would retry for tens of seconds (and log every attempt) before giving up; a
    mistyped address, an untrusted CA or a wrong password deserve an answer now, with the
    exit code of their class (:mod:`forestream.edge.errors`). A broker that accepts but then
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
        from forestream.edge.preflight import check_security

        check_security(conn, host, port, timeout_s=max(timeout_s, 5.0), open_admin=topic_admin)


def _built(conn: KafkaConnection, build: Any) -> Any:
    """Build a kafka-python client; a failure is classified (fatal: one line and its exit
    code). kafka-python connects while it is built; librdkafka's clients connect later."""
    from kafka.errors import KafkaError

    from forestream.edge.kafka_python.classify import classify_client_error

    try:
        return build()
    except KafkaError as exc:
        fatal = classify_client_error(exc, conn)
        if fatal is not None:
            raise fatal from None
        raise _unreachable(conn.bootstrap) from exc


def classify_stray(exc: BaseException) -> KafkaFatalError | None:
    """The fatal error a client exception no command caught amounts to (the last resort of
    ``forestream.cli``), on whichever client raised it."""
    module = type(exc).__module__
    if module.startswith("kafka."):
        from forestream.edge.kafka_python.classify import classify_client_error

        return classify_client_error(exc)
    if module.startswith(("confluent_kafka", "cimpl")):
        from forestream.edge.confluent.classify import classify_librdkafka_error

        return classify_librdkafka_error(exc)
    return None


def admin_client(target: Target, timeout_s: float = 10.0) -> KafkaAdminClient:
    """A raw kafka-python admin client (tests and benchmarks; commands use :func:`topic_admin`)."""
    from kafka import KafkaAdminClient

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
    """A kafka-python producer that waits for the full ISR and retries: outputs must not be
    lost."""
    from kafka import KafkaProducer

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
    """A kafka-python consumer, offsets committed by hand, reading committed records only."""
    from kafka import KafkaConsumer

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
    rebuild_without_broker_s: float | None = None,
) -> GroupConsumer:
    """A consumer-group member on the connection's client (``FORESTREAM_KAFKA_CLIENT``).
    ``rebuild_without_broker_s``: librdkafka's client watches its statistics and says when it
    has known no broker that long (``GroupConsumer.broker_loss_s``); kafka-python has none."""
    conn = connection(target)
    heartbeat_ms = min(3000, session_timeout_ms // 3)
    if conn.kafka_client == "confluent":
        from forestream.edge.confluent.consumer import ConfluentGroupConsumer

        return ConfluentGroupConsumer(
            conn,
            group_id=group,
            client_id=client_id,
            session_timeout_ms=session_timeout_ms,
            # members learn of a rebalance from a heartbeat's answer, and a cooperative one
            # takes two rounds: partitions moving to a joining worker waited ~2 heartbeats
            heartbeat_interval_ms=min(1000, session_timeout_ms // 3),
            rebuild_without_broker_s=rebuild_without_broker_s,
        )  # librdkafka is told how many records per poll_batch, not up front
    from forestream.edge.kafka_python.consumer import KafkaPythonGroupConsumer

    consumer = make_consumer(
        conn,
        group_id=group,
        client_id=client_id,
        max_poll_records=max_poll_records,
        # The group leader rebalances when topic metadata changes, but kafka-python only
        # refreshes it every 5 min by default: a worker that joined while the input topic
        # was being created (or gained partitions) would sit idle with nothing assigned.
        metadata_max_age_ms=5000,
        max_partition_fetch_bytes=WORKER_FETCH_PARTITION_BYTES,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_ms,
    )
    return KafkaPythonGroupConsumer(consumer, conn, group)


def acking_producer(
    target: Target,
    *,
    client_id: str,
    max_block_ms: int | None = None,
    linger_ms: int = 5,
    compression: str | None = None,
    max_request_bytes: int | None = None,
    quick_metadata: bool = False,
) -> AckingProducer:
    """A producer that says which records the full ISR acknowledged, on the connection's
    client. ``max_block_ms`` bounds how long a send may block for metadata or buffer room;
    ``compression`` overrides the connection's; ``max_request_bytes`` raises the client's own
    limit on a record (the broker's still applies, to the compressed batch); ``quick_metadata``
    is for one-shot commands (the registry) that wait on their first metadata."""
    conn = connection(target)
    if conn.kafka_client == "confluent":
        from forestream.edge.confluent.producer import ConfluentProducer

        extra: dict[str, Any] = {}
        if compression is not None:
            extra["compression.type"] = compression
        if max_request_bytes is not None:
            extra["message.max.bytes"] = max_request_bytes
        if max_block_ms is not None:
            extra["enqueue_block_s"] = max_block_ms / 1000
        return ConfluentProducer(conn, client_id=client_id, linger_ms=linger_ms, **extra)
    from forestream.edge.kafka_python.client import quicken_metadata
    from forestream.edge.kafka_python.producer import KafkaPythonProducer

    overrides: dict[str, Any] = {"client_id": client_id, "linger_ms": linger_ms}
    if max_block_ms is not None:
        overrides["max_block_ms"] = max_block_ms
    if compression is not None:
        overrides["compression_type"] = None if compression == "none" else compression
    if max_request_bytes is not None:
        overrides["max_request_size"] = max_request_bytes
    producer = make_producer(conn, **overrides)
    if quick_metadata:
        quicken_metadata(getattr(producer, "_metadata", None))
    return KafkaPythonProducer(producer, conn)


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
        from forestream.edge.confluent.producer import ConfluentTransactionalProducer

        return ConfluentTransactionalProducer(
            conn,
            client_id=client_id,
            transactional_id=transactional_id,
            transaction_timeout_ms=transaction_timeout_ms,
            init_timeout_s=max_block_ms / 1000,
        )
    from forestream.edge.kafka_python.producer import KafkaPythonTransactionalProducer

    producer = make_producer(
        conn,
        client_id=client_id,
        transactional_id=transactional_id,
        transaction_timeout_ms=transaction_timeout_ms,
        max_block_ms=max_block_ms,
        # built again after a failed transaction, maybe while the cluster is away: its
        # bootstrap is bounded like its init (kafka-python's default waits 30 s)
        bootstrap_timeout_ms=max_block_ms,
        # no record outlives its transaction (kafka-python wants linger + request timeout
        # below the delivery timeout)
        delivery_timeout_ms=transaction_timeout_ms,
        request_timeout_ms=min(30_000, transaction_timeout_ms // 2),
    )
    return KafkaPythonTransactionalProducer(producer, conn, transactional_id)


def partition_reader(
    target: Target,
    *,
    client_id: str,
    max_poll_records: int = 2000,
    fetch_max_wait_ms: int = 100,
    quick_metadata: bool = False,
    rebuild_without_broker_s: float | None = None,
) -> PartitionReader:
    """A group-less reader (nothing committed) on the connection's client: the follower,
    labels, replay, monitor, demo, the registry. ``fetch_max_wait_ms``: how long the broker may
    hold a fetch with nothing to return; ``quick_metadata`` as for :func:`acking_producer`;
    ``rebuild_without_broker_s``: librdkafka's reader raises :class:`BrokersLost` from
    ``poll_batch`` once it has known no broker that long (kafka-python: never)."""
    conn = connection(target)
    if conn.kafka_client == "confluent":
        from forestream.edge.confluent.reader import ConfluentReader

        return ConfluentReader(
            conn,
            client_id=client_id,
            fetch_max_wait_ms=fetch_max_wait_ms,
            rebuild_without_broker_s=rebuild_without_broker_s,
        )
    from forestream.edge.kafka_python.client import quicken_metadata
    from forestream.edge.kafka_python.reader import KafkaPythonReader

    consumer = make_consumer(
        conn,
        group_id=None,
        client_id=client_id,
        max_poll_records=max_poll_records,
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    if quick_metadata:
        quicken_metadata(getattr(getattr(consumer, "_client", None), "cluster", None))
    return KafkaPythonReader(consumer, conn)


def group_offsets_reader(
    target: Target, *, group: str, client_id: str, max_poll_records: int = 2000
) -> GroupOffsetsReader:
    """A group-less reader (it only assigns) whose offsets are ``group``'s: a replay under
    exactly-once commits them in its transactions and resumes from them."""
    conn = connection(target)
    if conn.kafka_client == "confluent":
        from forestream.edge.confluent.reader import ConfluentGroupOffsetsReader

        return ConfluentGroupOffsetsReader(conn, client_id=client_id, group_id=group)
    from forestream.edge.kafka_python.reader import KafkaPythonGroupOffsetsReader

    consumer = make_consumer(
        conn, group_id=group, client_id=client_id, max_poll_records=max_poll_records
    )
    return KafkaPythonGroupOffsetsReader(consumer, conn, group)


def topic_admin(target: Target, timeout_s: float = 10.0) -> TopicAdmin:
    """Topic creation and inspection on the connection's client; every call answers within
    about ``timeout_s``."""
    conn = connection(target)
    if conn.kafka_client == "confluent":
        from forestream.edge.confluent.admin import ConfluentAdmin

        return ConfluentAdmin(conn, client_id="forestream-admin", timeout_s=timeout_s)
    from forestream.edge.kafka_python.admin import KafkaPythonAdmin

    return KafkaPythonAdmin(admin_client(conn, timeout_s=timeout_s), conn)


def topic_request(spec: TopicSpec, conn: KafkaConnection) -> TopicRequest:
    """The creation request: replication from the connection's settings, else the broker's
    ``default.replication.factor`` (-1), never a hard-coded 1."""
    return TopicRequest(
        spec.name,
        spec.partitions,
        conn.replication_factor or -1,
        {**conn.topic_configs(), **spec.configs},
    )


def ensure_topics(target: Target, specs: Iterable[TopicSpec], timeout_s: float = 20.0) -> None:
    """Create missing topics and wait until their metadata is visible; existing ones are kept."""
    conn = connection(target)
    specs = list(specs)
    if not specs:
        return
    admin = _admin_or_unreachable(conn)
    try:
        existing = _asked(admin.topics, conn)
        missing = [s for s in specs if s.name not in existing]
        if missing:
            names = ", ".join(s.name for s in missing)
            try:
                admin.create_topics([topic_request(s, conn) for s in missing], timeout_s)
            except NotAuthorized:
                raise _refused_creation(admin, missing, conn) from None
            except CreationRefused as exc:
                raise UserError(f"the broker refused to create {names}: {exc}") from None
            except TransientKafkaError as exc:
                raise UserError(
                    f"could not create {names} at {conn.bootstrap}: {str(exc)[:200]}"
                ) from None
        deadline = time.monotonic() + timeout_s
        wanted = {s.name for s in specs}
        while not wanted <= _asked(admin.topics, conn):
            if time.monotonic() > deadline:
                raise UserError(f"topics {sorted(wanted)} not visible after {timeout_s:.0f}s")
            time.sleep(0.1)
    finally:
        admin.close()


def _admin_or_unreachable(conn: KafkaConnection) -> TopicAdmin:
    try:
        return topic_admin(conn)
    except TransientKafkaError:
        raise _unreachable(conn.bootstrap) from None


def _asked(call: Any, conn: KafkaConnection) -> Any:
    """An admin question whose failure to get an answer ends the command in one line."""
    try:
        return call()
    except TransientKafkaError as exc:
        raise UserError(f"Kafka at {conn.bootstrap} did not answer: {str(exc)[:200]}") from None


def _refused_creation(
    admin: TopicAdmin, missing: list[TopicSpec], conn: KafkaConnection
) -> KafkaFatalError:
    """Creating was refused. Without DESCRIBE on a topic the broker hides whether it exists
    (it answers "not authorized" either way): that is an ACL to grant. With DESCRIBE, and
    the topic absent, it is missing and we may not create it."""
    for spec in missing:
        with contextlib.suppress(TransientKafkaError):
            if not admin.may_describe(spec.name):
                return topic_not_authorized(conn, spec.name, "topic authorization failed")
    return topic_unavailable(missing[0].name, conn, "not allowed to create topics")


def topic_partitions(target: Target, names: Iterable[str]) -> dict[str, int]:
    """Partition counts of those of ``names`` that exist (absent ones are left out)."""
    conn = connection(target)
    admin = _admin_or_unreachable(conn)
    try:
        return _asked(lambda: admin.partition_counts(names), conn)
    finally:
        admin.close()
