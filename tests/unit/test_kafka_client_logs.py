"""kafka-python's per-attempt error lines reach our log at most once per interval, counted."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from forestream.runtime.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging binds the (captured) stderr of this test: undo it for the next ones."""
    root = logging.getLogger()
    kafka = logging.getLogger("kafka")
    saved = (list(root.handlers), root.level, list(kafka.handlers), kafka.propagate)
    yield
    structlog.reset_defaults()
    root.handlers, root.level = saved[0], saved[1]
    kafka.handlers, kafka.propagate = saved[2], saved[3]


def test_a_flood_of_client_errors_becomes_one_line_with_a_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json")
    client = logging.getLogger("kafka.conn")
    for attempt in range(50):
        client.error("connect attempt %d to 127.0.0.1:1 failed", attempt)
    client.warning("below the ERROR threshold: never shown")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 1
    assert lines[0]["event"] == "kafka_client_error"
    assert lines[0]["logger"] == "kafka.conn"
    assert lines[0]["message"] == "connect attempt 0 to 127.0.0.1:1 failed"
    assert lines[0]["suppressed"] == 0
