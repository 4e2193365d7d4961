"""Ownership read back from a worker's JSON log, as incremental rebalancing writes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forestream.worker.assignment_log import (
    log_events,
    owned_partitions,
    ownership_changes,
    partition_number,
)


def write_log(path: Path, *entries: dict[str, object]) -> Path:
    lines = [json.dumps(e) for e in entries]
    lines.insert(1, "Traceback (most recent call last): not JSON")
    lines.append('["a JSON line that is not an object"]')
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ownership_is_the_owned_set_of_the_newest_change_not_the_partitions_added(
    tmp_path: Path,
) -> None:
    """A cooperative rebalance: all four assigned, two released, nothing more assigned. The
    newest ``partitions_assigned`` still names all four; the worker owns two."""
    log = write_log(
        tmp_path / "worker.log",
        {"event": "worker_started", "timestamp": "2026-12-03T13:13:49.000000Z"},
        {
            "event": "partitions_assigned",
            "partitions": ["in-0", "in-1", "in-2", "in-3"],
            "owned": ["in-0", "in-1", "in-2", "in-3"],
            "timestamp": "2026-12-03T13:13:52.500000Z",
        },
        {
            "event": "partitions_revoked",
            "partitions": ["in-0", "in-1"],
            "timestamp": "2026-12-03T13:13:53.600000Z",
        },
        {
            "event": "partitions_released",
            "partitions": ["in-0", "in-1"],
            "owned": ["in-2", "in-3"],
            "timestamp": "2026-12-03T13:13:53.700000Z",
        },
    )
    assert owned_partitions(log) == ["in-2", "in-3"]
    changes = ownership_changes(log)
    assert [owned for _, owned in changes] == [["in-0", "in-1", "in-2", "in-3"], ["in-2", "in-3"]]
    assert changes[1][0] - changes[0][0] == pytest.approx(1.2)
    assert [e["event"] for e in log_events(log, "partitions_revoked", "worker_started")] == [
        "worker_started",
        "partitions_revoked",
    ]


def test_a_worker_that_has_logged_no_assignment_owns_nothing(tmp_path: Path) -> None:
    log = write_log(tmp_path / "w.log", {"event": "worker_started", "timestamp": "x"})
    assert owned_partitions(log) == []


def test_partition_numbers_of_topics_with_dashes() -> None:
    assert partition_number("demo.2026-12-03.features-11") == 11
