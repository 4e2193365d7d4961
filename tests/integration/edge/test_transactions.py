"""The transactional producer (:class:`forestream.edge.interface.TransactionalProducer`) against
a real broker, on both clients: a committed transaction is what ``read_committed`` readers see;
a producer with the same transactional id fences the one before it, whose open transaction is
aborted and whose commit ends in :class:`~forestream.edge.errors.ProducerFenced` (fatal: the
worker or replay that held it stops, it does not build a successor that would fence back)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from forestream.edge.factory import TopicSpec, ensure_topics, transactional_producer
from forestream.edge.interface import Outgoing, TransactionalProducer
from forestream.errors import ProducerFenced
from tests.kafka_helpers import on_client, read_topic


def test_a_successor_fences_the_producer_before_it_and_aborts_its_transaction(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_client: str
) -> None:
    topic = topic_name("out")
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1)])
    conn = on_client(kafka_bootstrap, kafka_client)
    opened: list[TransactionalProducer] = []

    def producer(name: str) -> TransactionalProducer:
        made = transactional_producer(
            conn,
            client_id=name,
            transactional_id=topic_name("tx"),
            transaction_timeout_ms=30_000,
            max_block_ms=10_000,
        )
        opened.append(made)
        return made

    def in_transaction(p: TransactionalProducer, value: bytes) -> None:
        p.begin()
        delivery = p.send([Outgoing(topic, value, value)])
        assert p.await_delivery(delivery, 10), f"{value!r} not acknowledged in 10 s"

    try:
        first = producer("first")
        in_transaction(first, b"committed")
        first.commit_transaction({}, None, timeout_s=10)
        in_transaction(first, b"fenced")
        second = producer("second")  # fences the first; its open transaction is aborted
        with pytest.raises(ProducerFenced):
            first.commit_transaction({}, None, timeout_s=10)
        in_transaction(second, b"successor")
        second.commit_transaction({}, None, timeout_s=10)
    finally:
        for p in opened:
            p.close(5)

    records = read_topic(
        kafka_bootstrap, topic, until=lambda got: got[-1:] and got[-1].value == b"successor"
    )
    # read_committed: the aborted record, written before the successor's, is never handed out
    assert [r.value for r in records] == [b"committed", b"successor"]
