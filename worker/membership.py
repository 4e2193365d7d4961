"""The worker's side of the group protocol: what it does when partitions come and go.

The adapters call these from wherever their client runs rebalance callbacks (kafka-python:
its IO thread; librdkafka: inside ``poll`` on the loop thread). A revocation delivers the
batch in hand while the partitions are still ours, bounded in time (the rebalance waits for
us); a release forgets what the next owner will re-read from the committed offsets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from forestream.edge.interface import TopicPartition, describe_partitions
from forestream.runtime.deadline import Deadline
from forestream.worker.cycle import BatchCycle
from forestream.worker.delivery import DeliveryEngine, StopBudget

if TYPE_CHECKING:
    from forestream.worker.health import Telemetry

log = structlog.get_logger("forestream.worker")

REVOKE_PUBLISH_LIMIT_S = 30.0
"""Upper bound on publishing a held batch inside a revocation callback; also at most half the
session timeout, since that callback holds the client's group protocol (and its heartbeats)."""
REVOKE_COMMIT_TIMEOUT_S = 10.0


class Membership:
    """A :class:`~forestream.edge.interface.RebalanceHandler` around the delivery engine."""

    def __init__(
        self,
        cycle: BatchCycle,
        stop: StopBudget,
        session_timeout_ms: int,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.cycle = cycle
        self.stop = stop
        self.session_timeout_ms = session_timeout_ms
        self.telemetry = telemetry
        self.engine: DeliveryEngine | None = None
        """Set before the consumer subscribes: no callback comes earlier."""
        self.owned: set[TopicPartition] = set()

    def on_revoking(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Publish the held batch while we still own its partitions.

        Returns every acknowledged-but-uncommitted offset, for the adapter to commit before
        the partitions move. Publishing is bounded in time here: the rebalance waits for us.
        """
        if partitions:
            log.info(
                "partitions_revoked",
                partitions=describe_partitions(partitions),
                pending=len(self.cycle.pending),
            )
        if self.engine is None:
            raise RuntimeError("self.engine used before it was set (a call out of order)")
        limit = Deadline.after(min(REVOKE_PUBLISH_LIMIT_S, self.session_timeout_ms / 2000))
        self.engine.finish(give_up=lambda: self.stop.past_grace() or limit.expired())
        return self.cycle.to_commit()

    def revocation_commit_timeout_s(self) -> float:
        """A rebalance may wait for its commit; a stop (close() revokes too) has a budget."""
        left_s = self.stop.left_s(at_least=1.0)
        return REVOKE_COMMIT_TIMEOUT_S if left_s is None else min(REVOKE_COMMIT_TIMEOUT_S, left_s)

    def on_committed(self, offsets: dict[TopicPartition, int]) -> None:
        self.cycle.committed(offsets)

    def on_released(self, partitions: list[TopicPartition], lost: bool) -> None:
        """Forget partitions we no longer own: the next owner re-reads from the last
        committed offset, so anything dropped here is duplicated, never lost."""
        if self.engine is not None:
            self.engine.release(partitions, lost=lost)
        else:
            self.cycle.release(partitions, lost=lost)
        self.owned.difference_update(partitions)
        log.info(
            "partitions_released",
            partitions=describe_partitions(partitions),
            owned=describe_partitions(self.owned),
        )
        if self.telemetry is not None:
            self.telemetry.health.set_assignment(self.owned)

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        self.owned.update(partitions)
        # with incremental rebalancing ``partitions`` is what was added; ``owned`` is all
        log.info(
            "partitions_assigned",
            partitions=describe_partitions(partitions),
            owned=describe_partitions(self.owned),
        )
        if self.telemetry is not None:
            self.telemetry.health.set_assignment(self.owned)
