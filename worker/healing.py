"""A group consumer whose client has known no broker for too long is replaced by a new one.

librdkafka can lose every broker for good (librdkafka#5301: a metadata answer listing no
broker, taken while the connection is down): the client then never fetches, commits or
rejoins again, and the worker sits idle while its partitions move to other members. The edge
says when a client is past that point (``GroupConsumer.broker_loss_s``, from librdkafka's
statistics; kafka-python never says so); the loop then asks :class:`ConsumerHealer` here.

The old client's partitions are handled as lost, through the same path as an eviction
(``Membership.on_released(lost=True)``, the delivery engine's release): records in hand and
offsets acknowledged but not committed are forgotten, and the group re-reads them from the
last committed offsets, here or elsewhere. Duplicates, never gaps; nothing is committed from
the old client after that, and the new one commits only what it reads itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from forestream.edge.factory import group_consumer, rebuilt
from forestream.edge.interface import GroupConsumer, describe_partitions
from forestream.worker.delivery import DeliveryEngine
from forestream.worker.membership import Membership

if TYPE_CHECKING:
    from forestream.edge.connection import KafkaConnection
    from forestream.errors import BrokersLost
    from forestream.worker.health import Telemetry
    from forestream.worker.settings import WorkerSettings

log = structlog.get_logger("forestream.worker")

ABANDON_CLOSE_S = 5.0
"""How long the loop waits for the old client to close (on a thread of its own) before it
goes on without it: a client with no broker may wait on its group leave much longer."""


class ConsumerHealer:
    """Builds the worker's group consumer, and builds it again when its client has known no
    broker past the bound (``FORESTREAM_REBUILD_WITHOUT_BROKER_S``)."""

    def __init__(
        self,
        settings: WorkerSettings,
        kafka: KafkaConnection,
        client_id: str,
        membership: Membership,
        telemetry: Telemetry | None = None,
        build: Callable[[], GroupConsumer] | None = None,
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.client_id = client_id
        self.membership = membership
        self.telemetry = telemetry
        self._build = build
        self.rebuilds = 0

    def build(self) -> GroupConsumer:
        """A new, unsubscribed member of the worker's group."""
        if self._build is not None:
            return self._build()
        s = self.settings
        return group_consumer(
            self.kafka,
            group=s.group,
            client_id=self.client_id,
            max_poll_records=s.max_batch,
            session_timeout_ms=s.session_timeout_ms,
            rebuild_without_broker_s=s.rebuild_without_broker_s,
        )

    def check(self, consumer: GroupConsumer, engine: DeliveryEngine) -> GroupConsumer:
        """``consumer``, or a new one subscribed in its place when its client has known no
        broker past the bound (its partitions then released as lost, its uncommitted work
        forgotten, to be re-read). The engine's ledger is switched to the new one."""
        silent_s = consumer.broker_loss_s()
        if silent_s is None:
            return consumer
        lost = consumer.abandon(ABANDON_CLOSE_S)  # -> Membership.on_released(lost=True)
        fresh = rebuilt(self.build)
        engine.ledger.consumer = fresh
        fresh.subscribe(self.settings.input_topic, self.membership)
        self.rebuilds += 1
        log.warning(
            "kafka_client_rebuilt",
            client="group_consumer",
            no_broker_s=round(silent_s, 1),
            bound_s=self.settings.rebuild_without_broker_s,
            partitions_lost=describe_partitions(lost),
            rebuilds=self.rebuilds,
        )
        if self.telemetry is not None:
            self.telemetry.metrics.record_client_rebuild("group_consumer")
        return fresh


def reader_rebuilt(
    client: str, lost: BrokersLost, counted: Callable[[str], None] | None = None
) -> None:
    """A reader thread of the worker (``model_follower``, ``labels_reader``) replaces its
    client, which raised :class:`~forestream.errors.BrokersLost`: logged and counted like the
    group consumer's rebuild. Nothing of theirs is committed, so nothing is lost: the follower
    reads the compacted models topic again, the labels reader goes on from its positions."""
    log.warning(
        "kafka_client_rebuilt",
        client=client,
        no_broker_s=round(lost.silent_s, 1),
        bound_s=lost.bound_s,
    )
    if counted is not None:
        counted(client)
