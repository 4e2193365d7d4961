"""confluent-kafka clients set up like kafka-python's in :mod:`forestream.edge.factory`.

The passthrough on librdkafka and the hand-written reference loop use these, so a row on one
client and its twin on the other differ by the library, not by acks, batching or compression.
The benchmark talks PLAINTEXT to one broker; security settings are the adapter's business
(:mod:`forestream.edge.confluent`), not this module's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Producer

POLL_TIMEOUT_S = 0.05
"""``consume(n, timeout)`` waits for ``n`` messages or the timeout, whichever comes first (not
for the first message, as kafka-python's ``poll`` does): at low load this is the longest a
batch waits to fill."""


def producer_config(bootstrap: str) -> dict[str, Any]:
    """``make_producer``'s delivery guarantees and batching, in librdkafka's names."""
    from forestream.edge.factory import RECONNECT_BACKOFF_MAX_MS, connection

    return {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "batch.size": 256 * 1024,
        "compression.type": connection(bootstrap).compression,
        "max.in.flight.requests.per.connection": 5,
        "delivery.timeout.ms": 120_000,
        "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
    }


def make_producer(bootstrap: str) -> Producer:
    from confluent_kafka import Producer

    return Producer(producer_config(bootstrap))


def make_consumer(bootstrap: str, topic: str, group: str) -> Consumer:
    """A group member subscribed to ``topic``: manual commits, from the earliest offset."""
    from confluent_kafka import Consumer

    from forestream.edge.factory import RECONNECT_BACKOFF_MAX_MS

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
            "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
        }
    )
    consumer.subscribe([topic])
    return consumer
