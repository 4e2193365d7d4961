"""The worker's guard against kafka-python 3.0.12's never-completed group join.

The coordinator here is a stand-in for the three attributes the guard reads and the one call it
makes (the stuck state cannot be produced on demand against a real broker); delivery itself is
tested against the real broker in tests/integration.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from worker import loop
from worker.loop import Worker
from worker.settings import WorkerSettings


class Coordinator:
    def __init__(self, rejoining: bool, needs: bool) -> None:
        self.rejoining = rejoining
        self.needs = needs
        self.requests = 0

    def need_rejoin(self) -> bool:
        return self.needs

    def request_rejoin(self) -> None:
        self.requests += 1


def _worker(coordinator: Coordinator) -> Worker:
    worker = Worker(WorkerSettings(bootstrap_servers="127.0.0.1:1"), follower=None)  # type: ignore[arg-type]
    worker._consumer = SimpleNamespace(_coordinator=coordinator)  # type: ignore[assignment]
    return worker


@pytest.fixture(autouse=True)
def _no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "_JOIN_STUCK_AFTER_S", 0.0)


def test_a_join_nobody_drives_is_restarted_after_the_grace_period() -> None:
    stuck = Coordinator(rejoining=True, needs=False)
    worker = _worker(stuck)
    worker._unstick_group_join()  # first sight: start the clock only
    assert stuck.requests == 0
    worker._unstick_group_join()
    assert stuck.requests == 1


@pytest.mark.parametrize(
    ("rejoining", "needs"),
    [(False, False), (True, True), (False, True)],
    ids=["stable", "join-in-progress", "rejoin-requested"],
)
def test_healthy_states_are_left_alone(rejoining: bool, needs: bool) -> None:
    coordinator = Coordinator(rejoining, needs)
    worker = _worker(coordinator)
    for _ in range(3):
        worker._unstick_group_join()
    assert coordinator.requests == 0
