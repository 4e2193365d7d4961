"""The produce loop: build keyed records from rows, pace them, send, and prove delivery.

Every record gets a key (the ``--key-column`` value, else ``<run-id>-<n>``) so any prediction
or dead letter can be traced back to the exact record that caused it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from contracts.errors import UserError
from producer.encoding import encode_row
from producer.malformed import MalformedMixer
from producer.pacing import RateSchedule

OVERSIZE_REQUEST_BYTES = 8 * 1024 * 1024


def make_oversize_producer(kafka: Target, **overrides: Any) -> KafkaProducer:
    """A client that may send a ``too_large`` test record (> 1 MiB, compressible): gzip gets it
    under the broker's message limit, the raised request size past the client's own check."""
    from contracts.kafka_io import make_producer

    return make_producer(
        kafka,
        compression_type="gzip",
        max_request_size=OVERSIZE_REQUEST_BYTES,
        **overrides,
    )


if TYPE_CHECKING:
    from kafka import KafkaProducer

    from contracts.kafka_io import Target

OVERSIZE_BYTES = 1_000_000
"""Values this big go through a compressing producer: the broker's 1 MiB limit is on the
(compressed) batch, so deliberately too-large test records still reach the worker."""

FLUSH_TIMEOUT_S = 120.0


class DeliveryFailed(UserError):
    """Some records were not acknowledged: the run did not do what it said. Exit code 1."""

    exit_code = 1


@dataclass(frozen=True)
class OutgoingRecord:
    key: bytes
    value: bytes
    malformed: str | None = None
    """Reason code the worker should give, for deliberately bad records."""


def record_stream(
    rows: Iterable[tuple[str | None, Mapping[str, Any]]],
    run_id: str,
    mixer: MalformedMixer | None = None,
) -> Iterator[OutgoingRecord]:
    """Keyed records for ``rows`` (``(key or None, row)``), with bad ones mixed in.

    A bad record is *added* (modelled on the next row, which is still sent afterwards), so
    every input row reaches the topic exactly once per pass.
    """
    n = 0
    for key, row in rows:
        while mixer is not None and mixer.next_is_malformed():
            kind, value = mixer.make(row)
            yield OutgoingRecord(f"{run_id}-{n}".encode(), value, kind)
            n += 1
        yield OutgoingRecord(
            (key if key is not None else f"{run_id}-{n}").encode(), encode_row(row), None
        )
        n += 1


def expected_total(rows: int | None, malformed_share: float) -> int | None:
    """How many records :func:`record_stream` makes from ``rows`` rows (``None`` = endless).

    Replays the mixer's own slot arithmetic, so a progress bar's total is exact.
    """
    if rows is None or malformed_share <= 0:
        return rows
    mixer = MalformedMixer(malformed_share, [], [])
    total = 0
    for _ in range(rows):
        while mixer.next_is_malformed():
            total += 1
        total += 1
    return total


@dataclass
class SendStats:
    sent: int = 0
    seconds: float = 0.0
    malformed: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False
    acknowledged: int = 0
    """Updated live from the client's I/O thread, for a shutdown that cannot wait for the rest."""

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        line = f"sent {self.sent} records in {self.seconds:.1f} s ({self.rate:.0f} rec/s)"
        return line + (" (stopped early)" if self.interrupted else "")


class _DeliveryTracker:
    """Counts deliveries (into ``stats``) and failures reported on the producer's I/O thread."""

    def __init__(self, stats: SendStats) -> None:
        self._lock = threading.Lock()
        self.stats = stats
        self.failed = 0
        self.first_error: str | None = None

    def on_ack(self, _metadata: object) -> None:
        with self._lock:
            self.stats.acknowledged += 1

    def on_error(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            if self.first_error is None:
                self.first_error = f"{type(exc).__name__}: {exc}"


def _flush(producer: KafkaProducer, sent: int, clock: Callable[[], float]) -> None:
    """Wait until every record has an outcome (ack or error), within ``FLUSH_TIMEOUT_S``.

    kafka-python's flush raises early (``UnknownError: Future not done``) while a refused batch
    is being split and retried; that is not an outcome yet, so flush again until the deadline.
    """
    from kafka.errors import KafkaError, KafkaTimeoutError

    deadline = clock() + FLUSH_TIMEOUT_S
    while True:
        try:
            producer.flush(timeout=max(deadline - clock(), 0.1))
            return
        except KafkaTimeoutError:
            pass
        except KafkaError:
            if clock() < deadline:
                time.sleep(0.05)  # the failing batch needs the I/O thread, not a busy loop
                continue
        raise DeliveryFailed(
            f"{sent} records sent but not all acknowledged within {FLUSH_TIMEOUT_S:.0f}s"
        )


def send_records(
    producer: KafkaProducer,
    topic: str,
    records: Iterable[OutgoingRecord],
    *,
    rate: float = 0.0,
    count: int | None = None,
    oversize_producer: Callable[[], KafkaProducer] | None = None,
    on_sent: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    stats: SendStats | None = None,
) -> SendStats:
    """Send ``records`` (at most ``count``) at ``rate``/s, then flush and check every ack.

    ``should_stop`` ends the sending early (SIGINT/SIGTERM): what was sent is still flushed
    and checked, so an interrupted run reports true numbers. Raises :class:`DeliveryFailed`
    if any record was not acknowledged by the broker. ``stats`` (filled in and returned) lets
    the caller watch progress while this runs, e.g. to say what a forced exit left unconfirmed.
    """
    from kafka.errors import KafkaError

    stats = stats if stats is not None else SendStats()
    tracker = _DeliveryTracker(stats)
    big: KafkaProducer | None = None
    start = clock()
    schedule = RateSchedule(rate=rate, start=start)
    try:
        for record in itertools.islice(records, count):
            wait = schedule.wait_s(clock())
            # shorter waits cost more in sleep overhead than they pace; long ones stay stoppable
            while wait > 0.0005 and not should_stop():
                sleep(min(wait, 0.25))
                wait = schedule.wait_s(clock())
            if should_stop():
                stats.interrupted = True
                break
            target = producer
            if len(record.value) >= OVERSIZE_BYTES and oversize_producer is not None:
                big = big or oversize_producer()
                target = big
            try:
                future = target.send(topic, key=record.key, value=record.value)
            except KafkaError as exc:
                from contracts.kafka_errors import classify_client_error

                fatal = classify_client_error(exc, topic=topic)
                if fatal is not None:
                    raise fatal from None
                raise DeliveryFailed(
                    f"sending to {topic} failed after {stats.sent} records: {exc}"
                ) from None
            future.add_callback(tracker.on_ack)
            future.add_errback(tracker.on_error)
            schedule.mark_sent()
            stats.sent += 1
            if record.malformed:
                stats.malformed[record.malformed] += 1
            if on_sent is not None:
                on_sent(1)
        for p in (producer, big):
            if p is not None:
                _flush(p, stats.sent, clock)
    finally:
        if big is not None:
            big.close(timeout=5)
    stats.seconds = clock() - start
    if tracker.failed:
        raise DeliveryFailed(
            f"{tracker.failed} of {stats.sent} records were not delivered to {topic} "
            f"(first: {tracker.first_error})"
        )
    return stats
