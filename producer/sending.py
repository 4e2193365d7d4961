"""The produce loop: build keyed records from rows, pace them, send, and prove delivery.

Every record gets a key (the ``--key-column`` value, else ``<run-id>-<n>``) so any prediction
or dead letter can be traced back to the exact record that caused it. Records go out through
the Kafka edge's acknowledging producer (:class:`forestream.edge.interface.AckingProducer`), so the
same
loop runs on kafka-python and on librdkafka.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from forestream.edge.interface import Outgoing
from forestream.errors import DeliveryFailed
from forestream.producer.encoding import encode_row
from forestream.producer.malformed import MalformedMixer
from forestream.producer.pacing import RateSchedule

if TYPE_CHECKING:
    from forestream.edge.factory import Target
    from forestream.edge.interface import AckingProducer, Delivery

OVERSIZE_REQUEST_BYTES = 8 * 1024 * 1024
OVERSIZE_BYTES = 1_000_000
"""Values this big go through a compressing producer: the broker's 1 MiB limit is on the
(compressed) batch, so deliberately too-large test records still reach the worker."""

FLUSH_TIMEOUT_S = 120.0
CHUNK = 500
"""Records due together (no pacing, or a burst catching up) are handed over this many at a
time: one ``send`` call and one delivery to track per chunk, not per record."""


def make_oversize_producer(kafka: Target, **options: Any) -> AckingProducer:
    """A producer that may send a ``too_large`` test record (> 1 MiB, compressible): gzip gets it
    under the broker's message limit, the raised request size past the client's own check."""
    from forestream.edge.factory import acking_producer

    return acking_producer(
        kafka,
        client_id="forestream-producer-oversize",
        compression="gzip",
        max_request_bytes=OVERSIZE_REQUEST_BYTES,
        **options,
    )


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
    encode: Callable[[Mapping[str, Any]], bytes] = encode_row,
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
            (key if key is not None else f"{run_id}-{n}").encode(), encode(row), None
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
    """Records of finished sends the broker acknowledged (see :meth:`acknowledged_now`)."""
    in_flight_acknowledged: Callable[[], int] = field(default=lambda: 0, repr=False)
    """Acknowledged records of sends still in flight, counted when asked."""

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def acknowledged_now(self) -> int:
        """Every acknowledgement so far: for a shutdown that cannot wait for the rest (the
        watchdog's thread asks while the loop may be stuck in the client)."""
        return self.acknowledged + self.in_flight_acknowledged()

    def summary(self) -> str:
        line = f"sent {self.sent} records in {self.seconds:.1f} s ({self.rate:.0f} rec/s)"
        return line + (" (stopped early)" if self.interrupted else "")


class _Deliveries:
    """The sends not yet settled, oldest first, and the outcome of those that are.

    A delivery leaves once every record of it is acknowledged or failed; its counts go into
    ``stats``. A failure the client classifies as fatal (an ACL refused, say) ends the run
    at once, as it would have at ``send`` on the other client.
    """

    def __init__(self, stats: SendStats, topic: str) -> None:
        self._lock = threading.Lock()
        self._open: deque[tuple[AckingProducer, Delivery]] = deque()
        self.stats = stats
        self.topic = topic
        self.failed = 0
        self.first_error: BaseException | None = None
        stats.in_flight_acknowledged = self._acknowledged_in_flight

    def add(self, producer: AckingProducer, delivery: Delivery) -> None:
        with self._lock:
            self._open.append((producer, delivery))

    def harvest(self) -> None:
        """Count the settled sends at the front; raise a fatal failure among them."""
        while True:
            with self._lock:
                if not self._open or not self._open[0][1].settled():
                    return
                producer, delivery = self._open.popleft()
                handed = delivery.handed_over()
                failed = len([i for i in delivery.unacknowledged() if i < handed])
                self.stats.acknowledged += handed - failed
            if failed:
                self._failed(producer, failed, delivery.error())

    def _failed(self, producer: AckingProducer, count: int, error: BaseException | None) -> None:
        self.failed += count
        if error is None:
            return
        fatal = producer.fatal(error, self.topic)
        if fatal is not None:
            raise fatal
        if self.first_error is None:
            self.first_error = error

    def _acknowledged_in_flight(self) -> int:
        with self._lock:
            return sum(d.handed_over() - len(d.unacknowledged()) for _p, d in self._open)

    def finish(self, producers: list[AckingProducer], clock: Callable[[], float]) -> None:
        """Wait until every record has an outcome (ack or error), within ``FLUSH_TIMEOUT_S``."""
        deadline = clock() + FLUSH_TIMEOUT_S
        for producer in producers:
            if not producer.flush(max(deadline - clock(), 0.1)):
                self._unconfirmed()
        while True:
            self.harvest()
            with self._lock:
                if not self._open:
                    return
                producer, delivery = self._open[0]
            if not producer.await_delivery(delivery, max(deadline - clock(), 0.0)):
                self._unconfirmed()

    def _unconfirmed(self) -> None:
        raise DeliveryFailed(
            f"{self.stats.sent} records sent but not all acknowledged within {FLUSH_TIMEOUT_S:.0f}s"
        )


def send_records(
    producer: AckingProducer,
    topic: str,
    records: Iterable[OutgoingRecord],
    *,
    rate: float = 0.0,
    count: int | None = None,
    oversize_producer: Callable[[], AckingProducer] | None = None,
    on_sent: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    stats: SendStats | None = None,
) -> SendStats:
    """Send ``records`` (at most ``count``) at ``rate``/s, then flush and check every ack.

    ``should_stop`` ends the sending early (SIGINT/SIGTERM): what was sent is still flushed
    and checked, so an interrupted run reports true numbers. Raises :class:`DeliveryFailed`
    if any record was not acknowledged by the broker, or the fatal error a client error
    amounts to. ``stats`` (filled in and returned) lets the caller watch progress while this
    runs, e.g. to say what a forced exit left unconfirmed. The caller closes ``producer``.
    """
    stats = stats if stats is not None else SendStats()
    deliveries = _Deliveries(stats, topic)
    big: AckingProducer | None = None
    due: list[OutgoingRecord] = []

    def hand_over() -> None:
        nonlocal big
        if not due:
            return
        small: list[OutgoingRecord] = []
        large: list[OutgoingRecord] = []
        for r in due:
            oversize = len(r.value) >= OVERSIZE_BYTES and oversize_producer is not None
            (large if oversize else small).append(r)
        if small:
            _send(producer, small)
        if large and oversize_producer is not None:
            big = big or oversize_producer()
            _send(big, large)
        due.clear()
        deliveries.harvest()

    def _send(client: AckingProducer, chunk: list[OutgoingRecord]) -> None:
        delivery = client.send([Outgoing(topic, r.key, r.value) for r in chunk])
        handed = delivery.handed_over()
        deliveries.add(client, delivery)
        stats.sent += handed
        for record in chunk[:handed]:
            if record.malformed:
                stats.malformed[record.malformed] += 1
        if on_sent is not None and handed:
            on_sent(handed)
        if handed < len(chunk):
            error = delivery.error()
            fatal = client.fatal(error, topic) if error is not None else None
            if fatal is not None:
                raise fatal
            raise DeliveryFailed(f"sending to {topic} failed after {stats.sent} records: {error}")

    start = clock()
    schedule = RateSchedule(rate=rate, start=start)
    try:
        for record in itertools.islice(records, count):
            wait = schedule.wait_s(clock())
            if wait > 0.0005:
                hand_over()  # what is due goes out before we sleep
            # shorter waits cost more in sleep overhead than they pace; long ones stay stoppable
            while wait > 0.0005 and not should_stop():
                sleep(min(wait, 0.25))
                wait = schedule.wait_s(clock())
            if should_stop():
                stats.interrupted = True
                break
            due.append(record)
            schedule.mark_sent()
            if len(due) >= CHUNK:
                hand_over()
        hand_over()
        deliveries.finish([p for p in (producer, big) if p is not None], clock)
    finally:
        if big is not None:
            big.close(5)
    stats.seconds = clock() - start
    if deliveries.failed:
        raise DeliveryFailed(
            f"{deliveries.failed} of {stats.sent} records were not delivered to {topic} "
            f"(first: {_described(deliveries.first_error)})"
        )
    return stats


def _described(error: BaseException | None) -> str:
    return "unknown" if error is None else f"{type(error).__name__}: {error}"
