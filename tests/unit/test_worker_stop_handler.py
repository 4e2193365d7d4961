"""The worker's stop handler only sets flags: logging from a signal handler can deadlock.

Python runs a handler on the main thread between two bytecodes, possibly while that thread
holds the logger's write lock (a plain ``Lock``); a handler that logs would then wait forever
and only the shutdown watchdog would end the process.
"""

from __future__ import annotations

import signal
from typing import Any

import structlog

from forestream.worker.loop import Worker
from forestream.worker.models import ModelFollower
from forestream.worker.settings import WorkerSettings


class _Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, _logger: object, _method: str, event: dict[str, Any]) -> str:
        self.events.append(dict(event))
        raise structlog.DropEvent


def test_request_stop_sets_flags_and_the_loop_logs_the_stop() -> None:
    recorder = _Recorder()
    structlog.configure(processors=[recorder], cache_logger_on_first_use=False)
    try:
        settings = WorkerSettings(bootstrap_servers="127.0.0.1:1")
        worker = Worker(settings, ModelFollower("127.0.0.1:1", "unused", "m", loader=None))
        worker.request_stop(signal.SIGTERM)
        worker.request_stop(signal.SIGINT)  # a second signal changes nothing here
        assert recorder.events == []  # nothing written from the handler
        worker._log_stopping()
        assert [(e["event"], e["signal"]) for e in recorder.events] == [
            ("worker_stopping", "SIGTERM")
        ]
    finally:
        structlog.reset_defaults()
