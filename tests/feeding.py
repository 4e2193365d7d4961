"""The one rate-paced feeder of the integration tests: a thread that offers records to a topic
at a steady rate through the project's own producer, counts what the broker acknowledged, and
stops in order (every record sent acknowledged, or a clear failure).

``records(i)`` makes the i-th record, ``(key, value)``; ``cycling`` builds one from a list of
values. Paced in ticks (a burst of ``rate_per_s * tick_s`` records every ``tick_s``, anchored to
the start: no drift), until stopped or, with ``limit``, until that many were sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from forestream.edge.factory import make_producer
from tests.waiting import wait_until

Record = tuple[bytes, bytes | None]


def cycling(values: Sequence[bytes | None], prefix: str = "k-") -> Callable[[int], Record]:
    """Record i: key ``<prefix><i>``, the values taken in turn."""
    return lambda i: (f"{prefix}{i}".encode(), values[i % len(values)])


def listed(records: Sequence[Record]) -> Callable[[int], Record]:
    """Record i of a fixed list (give ``limit=len(records)``)."""
    return lambda i: records[i]


class PacedFeeder:
    """Offers ``records`` at ``rate_per_s`` from a thread; ``producer_settings`` go to the
    project's producer (``make_producer``).

    ``sent`` (and ``keys``) count what was handed to the producer, ``acked``/``acked_keys``
    what the broker acknowledged, ``failed`` what it refused for good. As a context manager it
    starts on entry; on exit it ``finish``es (at once unless ``finish_on_exit``: the rest of a
    ``limit`` is not sent) or, if the block failed, ``abandon``s.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        records: Callable[[int], Record],
        rate_per_s: float,
        *,
        limit: int | None = None,
        tick_s: float = 0.02,
        finish_on_exit: bool = True,
        **producer_settings: Any,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.records = records
        self.per_tick = max(1, round(rate_per_s * tick_s))
        self.tick_s = tick_s
        self.limit = limit
        self.finish_on_exit = finish_on_exit
        self.producer = make_producer(bootstrap, **producer_settings)
        self.keys: list[bytes] = []
        self.acked_keys: list[bytes] = []
        self.failed: list[str] = []
        self.error: BaseException | None = None
        self.elapsed_s = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-feeder", daemon=True)

    @property
    def sent(self) -> int:
        return len(self.keys)

    @property
    def acked(self) -> int:
        with self._lock:
            return len(self.acked_keys)

    def start(self) -> PacedFeeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        next_tick = started
        try:
            while not self._stop.is_set():
                for _ in range(self.per_tick):
                    if self.limit is not None and self.sent >= self.limit:
                        return
                    key, value = self.records(self.sent)
                    future = self.producer.send(self.topic, key=key, value=value)
                    future.add_callback(lambda _metadata, key=key: self._acked(key))
                    future.add_errback(self._failed)
                    self.keys.append(key)
                next_tick += self.tick_s
                self._stop.wait(max(0.0, next_tick - time.monotonic()))
        except BaseException as exc:  # surfaced by finish(), never swallowed
            self.error = exc
        finally:
            self.elapsed_s = time.monotonic() - started

    def _acked(self, key: bytes) -> None:
        with self._lock:
            self.acked_keys.append(key)

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.failed.append(f"{type(exc).__name__}: {exc}")

    def wait_acked(self, count: int, timeout_s: float = 60.0) -> None:
        """Until the broker acknowledged ``count`` records (fails if the feeder died)."""

        def reached() -> bool:
            if self.error is not None or self.failed:
                raise AssertionError(f"the feeder failed: {self.error!r} {self.failed[:3]}")
            return self.acked >= count

        wait_until(reached, f"{count} records acknowledged", timeout_s, seen=lambda: self.acked)

    def finish(self, timeout_s: float = 60.0, *, stop_now: bool = False) -> list[bytes]:
        """Stop offering (with ``limit``, unless ``stop_now``, let the rest go out first) and
        wait until every record sent is acknowledged; returns the keys sent, in order."""
        from kafka.errors import KafkaTimeoutError

        if self.limit is None or stop_now:
            self._stop.set()
        self._thread.join(timeout=timeout_s)
        assert not self._thread.is_alive(), f"the feeder did not stop within {timeout_s:.0f}s"
        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaTimeoutError:
            raise AssertionError(
                f"the feeder's records were not acknowledged within {timeout_s:.0f}s of the end "
                f"({self.acked} of {self.sent})"
            ) from None
        finally:
            self.producer.close(timeout=5)
        if self.error is not None:
            raise AssertionError(f"the feeder failed: {self.error!r}")
        return self.keys

    def abandon(self) -> None:
        """After a failure: stop at once, whatever is still unacknowledged."""
        self._stop.set()
        if self._thread.is_alive():  # never started when the failure came first
            self._thread.join(timeout=5)
        self.producer.close(timeout=1)

    def __enter__(self) -> PacedFeeder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.finish(stop_now=not self.finish_on_exit)
        else:
            self.abandon()
