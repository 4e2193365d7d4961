"""The kafka-python adapter's guard against kafka-python 3.0.12's never-completed group join.

The coordinator here is a stand-in for the three attributes the guard reads and the one call it
makes (the stuck state cannot be produced on demand against a real broker); delivery itself is
tested against the real broker in tests/integration.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from forestream.edge.connection import KafkaConnection
from forestream.edge.kafka_python import consumer as kafka_python_consumer
from forestream.edge.kafka_python.consumer import KafkaPythonGroupConsumer


class Coordinator:
    def __init__(self, rejoining: bool, needs: bool) -> None:
        self.rejoining = rejoining
        self.needs = needs
        self.requests = 0

    def need_rejoin(self) -> bool:
        return self.needs

    def request_rejoin(self) -> None:
        self.requests += 1

    async def _commit_offsets_sync_async(self, *args: object, **kwargs: object) -> None:
        """Present, as the adapter checks at construction; not called here."""


def _consumer(coordinator: Coordinator) -> KafkaPythonGroupConsumer:
    client = SimpleNamespace(
        _coordinator=coordinator,
        _subscription=SimpleNamespace(assignment=set()),
        _client=SimpleNamespace(cluster=SimpleNamespace(config={})),
    )
    return KafkaPythonGroupConsumer(client, KafkaConnection("127.0.0.1:1"))


@pytest.fixture(autouse=True)
def _no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_python_consumer, "_JOIN_STUCK_AFTER_S", 0.0)


def test_a_join_nobody_drives_is_restarted_after_the_grace_period() -> None:
    stuck = Coordinator(rejoining=True, needs=False)
    consumer = _consumer(stuck)
    consumer.maintain()  # first sight: start the clock only
    assert stuck.requests == 0
    consumer.maintain()
    assert stuck.requests == 1


@pytest.mark.parametrize(
    ("rejoining", "needs"),
    [(False, False), (True, True), (False, True)],
    ids=["stable", "join-in-progress", "rejoin-requested"],
)
def test_healthy_states_are_left_alone(rejoining: bool, needs: bool) -> None:
    coordinator = Coordinator(rejoining, needs)
    consumer = _consumer(coordinator)
    for _ in range(3):
        consumer.maintain()
    assert coordinator.requests == 0
