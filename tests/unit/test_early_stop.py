"""A stop signal during a service's start-up is remembered, never the default death."""

from __future__ import annotations

import os
import signal

from forestream.runtime.shutdown import EarlyStop


def test_sigterm_before_the_service_handlers_is_remembered_not_fatal() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        early = EarlyStop().install()
        assert early.signum is None
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread before kill returns
        os.kill(os.getpid(), signal.SIGINT)  # a second one does not replace the first
        assert early.signum == signal.SIGTERM
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
