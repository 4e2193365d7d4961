"""A worker's partition ownership, read back from its JSON log.

The demo, the tests and the benchmarks run workers as processes and learn from their logs when
a group has settled. With incremental rebalancing an assignment event names only the partitions
added, so what a worker owns is the ``owned`` set of its newest assignment change, never the
``partitions`` of its newest ``partitions_assigned``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

ASSIGNMENT_CHANGES = ("partitions_assigned", "partitions_released")


def log_events(path: Path, *events: str) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` whose ``event`` is one of ``events``, in the log's order
    (lines that are not JSON objects, such as a traceback, are skipped)."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") in events:
            found.append(entry)
    return found


def log_time(entry: dict[str, Any]) -> float:
    """Wall-clock seconds of a log line (structlog's ISO timestamp, UTC)."""
    return datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00")).timestamp()


def ownership_changes(path: Path) -> list[tuple[float, list[str]]]:
    """(wall-clock seconds, partitions owned from then on) for each assignment change."""
    return [
        (log_time(entry), list(entry.get("owned") or []))
        for entry in log_events(path, *ASSIGNMENT_CHANGES)
    ]


def owned_partitions(path: Path) -> list[str]:
    """What the worker logging to ``path`` owns now (``topic-partition`` names)."""
    changes = ownership_changes(path)
    return changes[-1][1] if changes else []


def partition_number(name: str) -> int:
    """``topic-3`` → 3 (a topic name may itself contain dashes)."""
    return int(name.rsplit("-", 1)[1])
