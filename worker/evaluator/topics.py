"""The evaluator's topics: the start-up checks (the partition-local join needs the labels,
predictions and, when it exists, shadow topics co-partitioned) and the labels subscription's
rebalance handler."""

from __future__ import annotations

from typing import TYPE_CHECKING

from forestream.edge.interface import TopicPartition

if TYPE_CHECKING:
    from forestream.worker.evaluator.service import Evaluator
    from forestream.worker.evaluator.settings import EvaluatorSettings

COMMIT_TIMEOUT_S = 10.0


def check_co_partitioned(counts: dict[str, int], predictions: str, labels: str, where: str) -> None:
    """Both topics exist with one partition count, else one line naming both."""
    from forestream.errors import TopicsNotCoPartitioned, UserError

    for name in (predictions, labels):
        if name not in counts:
            raise UserError(
                f"topic {name!r} does not exist on {where} (`forestream topics create` makes it)"
            )
    if counts[predictions] != counts[labels]:
        raise TopicsNotCoPartitioned(
            f"predictions topic {predictions!r} has {counts[predictions]} partitions and labels "
            f"topic {labels!r} has {counts[labels]}: the evaluator joins partition by partition "
            "and needs the same count (`forestream topics create` makes them so)"
        )


def shadow_topic_to_read(counts: dict[str, int], settings: EvaluatorSettings) -> str | None:
    """The shadow topic when it exists (then co-partitioned with the labels, else one line),
    ``None`` when it does not: the evaluator runs without shadow comparison."""
    from forestream.errors import TopicsNotCoPartitioned

    shadow, labels = settings.shadow_topic_or_default(), settings.labels_topic
    if shadow not in counts:
        return None
    if counts[shadow] != counts[labels]:
        raise TopicsNotCoPartitioned(
            f"shadow topic {shadow!r} has {counts[shadow]} partitions and labels topic "
            f"{labels!r} has {counts[labels]}: the evaluator joins partition by partition and "
            "needs the same count (`forestream topics create` makes them so)"
        )
    return shadow


class Rebalance:
    """The :class:`forestream.edge.interface.RebalanceHandler` of the labels subscription."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        self.evaluator.assigned(partitions)

    def on_revoking(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return self.evaluator.revoking(partitions)

    def revocation_commit_timeout_s(self) -> float:
        return COMMIT_TIMEOUT_S

    def on_committed(self, offsets: dict[TopicPartition, int]) -> None:
        pass

    def on_released(self, partitions: list[TopicPartition], lost: bool) -> None:
        self.evaluator.released(partitions, lost=lost)
