"""What every kafka-python client of the Kafka edge (:mod:`forestream.edge.interface`) shares:
partitions in its own type, and a quicker metadata backoff for one-shot commands.

kafka-python's quirks are dealt with in this package, by role (``consumer``, ``reader``,
``producer``, ``admin``), so no command sees a kafka-python type or quirk.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kafka import TopicPartition as KafkaTopicPartition

from forestream.edge.interface import TopicPartition

_QUICK_METADATA_BACKOFF_MS = 10


def quicken_metadata(cluster: object) -> None:
    """Lower the pause between a client's metadata requests, for one-shot commands (the
    registry). kafka-python 3.0.12 builds its cluster metadata with the default 100 ms whatever
    ``retry_backoff_ms`` says, and the first topic lookup always follows the bootstrap's own
    request: 0.1 s per client, twice per command. Private; left alone if it changed."""
    config = getattr(cluster, "config", None)
    if isinstance(config, dict) and "retry_backoff_ms" in config:
        config["retry_backoff_ms"] = _QUICK_METADATA_BACKOFF_MS


def _theirs(tp: TopicPartition) -> KafkaTopicPartition:
    """kafka-python checks ``isinstance(tp, its TopicPartition)`` in some calls."""
    return KafkaTopicPartition(tp.topic, tp.partition)


def _ours(partitions: Iterable[Any]) -> list[TopicPartition]:
    return [TopicPartition(tp.topic, tp.partition) for tp in partitions]
