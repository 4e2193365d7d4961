"""When a librdkafka client has known no broker for too long, read from its statistics.

librdkafka can lose every broker for good: a metadata answer listing no broker, taken while
the connection is down, drops the brokers it knew and nothing bootstraps again
(librdkafka#5301). The client then never reads, commits or answers again, while its group
moves its partitions elsewhere; a new client bootstraps afresh. This module only decides
*when*, from the JSON librdkafka hands ``stats_cb`` every ``statistics.interval.ms``; the
adapters (:mod:`forestream.edge.confluent`) build the new client.

"Heard from a broker" is the last time a broker connection received anything: each entry of
the report's ``brokers`` map has its ``state`` and ``rxidle`` (microseconds since the last
receive on that connection, -1 before the first). A frozen broker keeps its connection
``UP`` until ``socket.timeout.ms`` (a minute) ends it, so ``UP`` alone would not tell a
silent broker from a live one; ``rxidle`` does. Only brokers that carry fetches and
metadata count: the logical coordinators (``GroupCoordinator``, ``TxnCoordinator``) ride on a
connection of their own and answer heartbeats even when nothing can be fetched, and the
internal pseudo-broker never connects. Pure: no client is imported, the clock is injected.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from forestream.runtime.deadline import Clock

DEFAULT_REBUILD_AFTER_S = 60.0
"""The worker's default (``FORESTREAM_REBUILD_WITHOUT_BROKER_S``): long past anything a
healthy client goes without an answer (fetches return every 100 ms, metadata every 5 s), short
beside the minutes an idle worker would otherwise sit out. Below ~15 s a healthy member with
nothing to fetch (no partitions, or all paused) may be rebuilt: its client then hears from a
broker only at each metadata refresh (every 5 s)."""

_NOT_A_BROKER = frozenset({"logical", "internal"})
"""``source`` of the entries that are no broker of their own."""


def stats_interval_ms(rebuild_after_s: float) -> int:
    """``statistics.interval.ms`` for a bound: a fifth of it, between 0.5 s and 10 s. A report
    is a few KB of JSON per client (more with many partitions): every 10 s costs nothing, and a
    fifth keeps how late a rebuild comes small beside the bound."""
    return int(min(max(rebuild_after_s / 5, 0.5), 10.0) * 1000)


def _counts(name: str, broker: Any) -> bool:
    """A broker of the cluster (learned from metadata, or a configured bootstrap one)."""
    if not isinstance(broker, Mapping):
        return False
    if broker.get("source") in _NOT_A_BROKER:
        return False
    return name not in ("GroupCoordinator", "TxnCoordinator") and not name.endswith("/internal")


def last_heard_ago_s(report: Mapping[str, Any]) -> float | None:
    """Seconds since the client last received anything from a broker, as one report says:
    the smallest ``rxidle`` of the brokers up; None when no broker is up, or none has answered
    on its current connection yet. A broker up without ``rxidle`` (an older librdkafka)
    counts as heard just now."""
    brokers = report.get("brokers")
    if not isinstance(brokers, Mapping):
        return None
    ago: float | None = None
    for name, broker in brokers.items():
        if not _counts(str(name), broker) or broker.get("state") != "UP":
            continue
        idle_us = broker.get("rxidle")
        if idle_us is None:
            seconds = 0.0
        elif isinstance(idle_us, int | float) and not isinstance(idle_us, bool) and idle_us >= 0:
            seconds = idle_us / 1e6
        else:  # -1: nothing received on this connection yet
            continue
        ago = seconds if ago is None else min(ago, seconds)
    return ago


class BrokerLossWatch:
    """Fed every statistics report of one client; says when it is to be rebuilt.

    The client counts as having heard from a broker when it was built (a new client gets the
    whole bound to connect) and whenever a report shows a broker that received something
    since. Once that is ``rebuild_after_s`` ago, :meth:`due` says so, until a report shows a
    broker again. Reports that are not JSON, or carry no ``brokers`` map, tell nothing and
    change nothing.
    """

    def __init__(self, rebuild_after_s: float, clock: Clock = time.monotonic) -> None:
        if not rebuild_after_s > 0:
            raise ValueError(f"rebuild_after_s must be positive, not {rebuild_after_s!r}")
        self.rebuild_after_s = rebuild_after_s
        self.clock = clock
        self.heard = clock()
        """When, on ``clock``, a broker last sent this client anything (as far as known)."""
        self.reports = 0

    def observe(self, stats: str | bytes | Mapping[str, Any]) -> bool:
        """Take one report (librdkafka's JSON, or it parsed); returns :meth:`due` after it."""
        now = self.clock()
        report: object = stats
        if isinstance(stats, str | bytes):
            try:
                report = json.loads(stats)
            except ValueError:
                return self.due()
        if isinstance(report, Mapping):
            self.reports += 1
            ago = last_heard_ago_s(report)
            if ago is not None:
                self.heard = max(self.heard, now - ago)
        return self.due()

    def silent_s(self) -> float:
        """How long since a broker was last heard from (never negative)."""
        return max(self.clock() - self.heard, 0.0)

    def due(self) -> bool:
        """The client has known no broker for ``rebuild_after_s`` or longer."""
        return self.silent_s() >= self.rebuild_after_s
