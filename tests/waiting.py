"""The one bounded wait of the test suite: poll a condition until it holds, or fail saying what
was awaited (and, if given, what was seen instead). Tests await an event or a metric with it,
never ``sleep()`` before an assertion."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    what: str,
    timeout_s: float = 30.0,
    *,
    interval_s: float = 0.1,
    seen: Callable[[], object] | None = None,
) -> T:
    """Call ``condition`` until it returns something true, and return that.

    Fails with ``what`` (say, "v2 in every worker's log") when ``timeout_s`` passes first,
    adding ``seen()`` to the message: what there was instead, for the reader of a failure.
    An exception from ``condition`` (a worker found dead, say) ends the wait at once.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            message = f"not within {timeout_s:.0f}s: {what}"
            if seen is not None:
                message += f"\nseen instead: {seen()}"
            raise AssertionError(message)
        time.sleep(interval_s)
