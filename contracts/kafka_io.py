"""Kafka client construction and topic creation, configured one way for every component."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from contracts.errors import UserError
from contracts.settings import broker_addresses


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
    return UserError(
        f"cannot reach Kafka at {bootstrap}: start the local broker with "
        "`forestream kafka start` or pass --bootstrap-servers"
    )


def require_reachable(bootstrap: str, timeout_s: float = 3.0) -> None:
    """Fail fast, in one line, when no listed broker accepts a TCP connection.

    The clients would retry for tens of seconds (and log every attempt) before giving up; a
    mistyped address deserves an answer now. A broker that accepts but then misbehaves is
    still the clients' business.
    """
    import socket

    for host, port in broker_addresses(bootstrap):
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return
        except OSError:
            continue
    raise _unreachable(bootstrap)


def admin_client(bootstrap: str, timeout_s: float = 10.0) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="forestream-admin",
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
        )
    except KafkaError as exc:
        raise _unreachable(bootstrap) from exc


def make_producer(bootstrap: str, **overrides: Any) -> KafkaProducer:
    """A producer that waits for the full ISR and retries: outputs must not be lost."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "compression_type": None,
        "retries": 2**31 - 1,
        "delivery_timeout_ms": 120_000,
        "max_in_flight_requests_per_connection": 5,
        "enable_idempotence": True,
    }
    config.update(overrides)
    try:
        return KafkaProducer(**config)
    except KafkaError as exc:
        raise _unreachable(bootstrap) from exc


def make_consumer(bootstrap: str, *topics: str, **overrides: Any) -> KafkaConsumer:
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 2000,
        "fetch_max_wait_ms": 100,
    }
    config.update(overrides)
    try:
        return KafkaConsumer(*topics, **config)
    except KafkaError as exc:
        raise _unreachable(bootstrap) from exc


def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec], timeout_s: float = 20.0) -> None:
    """Create missing topics and wait until their metadata is visible; existing ones are kept."""
    specs = list(specs)
    if not specs:
        return
    admin = admin_client(bootstrap)
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            new = [
                NewTopic(
                    s.name,
                    num_partitions=s.partitions,
                    replication_factor=1,
                    topic_configs=s.configs,
                )
                for s in missing
            ]
            # another process may win the race to create a topic; that is fine
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass
            except KafkaError as exc:  # e.g. a partition count over the broker's policy
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


def topic_partitions(bootstrap: str, names: Iterable[str]) -> dict[str, int]:
    """Partition counts of those of ``names`` that exist (absent ones are left out)."""
    wanted = set(names)
    consumer = make_consumer(bootstrap)
    try:
        present = wanted & set(consumer.topics())
        return {name: len(consumer.partitions_for_topic(name) or ()) for name in sorted(present)}
    finally:
        consumer.close()
