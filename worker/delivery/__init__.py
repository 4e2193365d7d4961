"""One delivery engine for the worker's three guarantees, shared in part with replay.

:mod:`.engine` drives a :class:`~.engine.Guarantee` strategy between polls;
:mod:`.at_least_once` and :mod:`.transactional` are the strategies (the latter's
:class:`~.transactional.Transactions` also serves ``forestream replay``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forestream.worker.delivery.at_least_once import PipelinedAtLeastOnce, SerialAtLeastOnce
from forestream.worker.delivery.engine import DeliveryEngine, Guarantee, Ledger, StopBudget
from forestream.worker.delivery.transactional import Transactional, Transactions

if TYPE_CHECKING:
    from forestream.worker.processing import AckedPublisher

__all__ = [
    "DeliveryEngine",
    "Guarantee",
    "Ledger",
    "PipelinedAtLeastOnce",
    "SerialAtLeastOnce",
    "StopBudget",
    "Transactional",
    "Transactions",
    "choose_guarantee",
]


def choose_guarantee(
    ledger: Ledger,
    *,
    exactly_once: bool,
    pipelined: bool,
    publisher: AckedPublisher,
    transactions: Transactions | None,
    output_topic: str,
) -> Guarantee:
    """The one place the settings pick a strategy: no flag is tested past here."""
    if exactly_once:
        if transactions is None:
            raise RuntimeError("transactions used before it was set (a call out of order)")
        return Transactional(ledger, transactions, output_topic)
    if pipelined:
        return PipelinedAtLeastOnce(ledger, publisher)
    return SerialAtLeastOnce(ledger, publisher)
