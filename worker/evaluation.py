"""Online evaluation from late labels: join labels to predictions by record key.

Labels (topic value ``{"label": ...}``, key = the input record's key) usually arrive after the
prediction, sometimes before. :class:`OnlineEvaluator` keeps both sides in bounded maps, joins
them by key and keeps, per model version, a rolling window of (label, prediction) pairs from which
accuracy and macro F1 are computed with numpy.

Memory bound: at most ``max_pending`` unlabelled predictions plus ``max_pending`` unmatched
labels (oldest evicted first, evictions counted), plus ``max_versions × window`` joined pairs.
With the defaults (100,000 / 100,000 / 8 × 10,000) and short keys that is a few tens of MB.

:class:`LabelConsumer` is the Kafka edge: a thread reading the labels topic into the evaluator.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import structlog

from forestream.wire.messages import VersionAccuracy

if TYPE_CHECKING:
    from forestream.edge.factory import Target
    from forestream.edge.interface import InputRecord, PartitionReader
    from forestream.errors import KafkaFatalError
    from forestream.worker.batch import ScoredBatch

log = structlog.get_logger("forestream.labels")


def accuracy_score(labels: Sequence[str] | np.ndarray, predictions: Any) -> float | None:
    """Share of predictions equal to the label; ``None`` with no pairs."""
    y_true = np.asarray(labels, dtype=object)
    if len(y_true) == 0:
        return None
    return float(np.mean(y_true == np.asarray(predictions, dtype=object)))


def macro_f1_score(labels: Sequence[str] | np.ndarray, predictions: Any) -> float | None:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions.

    Same as ``sklearn.metrics.f1_score(average="macro")`` with its default label set:
    per class F1 = 2·tp / (2·tp + fp + fn), which is 0 for a class never predicted correctly.
    """
    y_true = np.asarray(labels, dtype=object).astype(str)
    y_pred = np.asarray(predictions, dtype=object).astype(str)
    if len(y_true) == 0:
        return None
    classes, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    t, p = codes[: len(y_true)], codes[len(y_true) :]
    k = len(classes)
    tp = np.bincount(t[t == p], minlength=k)
    true_count = np.bincount(t, minlength=k)
    pred_count = np.bincount(p, minlength=k)
    f1 = 2 * tp / (true_count + pred_count)  # 2tp + fp + fn; > 0 for every present class
    return float(f1.mean())


class OnlineEvaluator:
    """Joins late labels to predictions by key; rolling accuracy/macro F1 per model version.

    A :class:`forestream.worker.batch.BatchObserver` for the prediction side; ``add_labels`` is
    called by
    :class:`LabelConsumer` from its own thread, hence the lock. Records without a key cannot be
    joined and are ignored. A key predicted again (redelivery) keeps its newest prediction; a
    pair is counted once: a joined prediction is dropped, so a duplicate label waits as pending.
    """

    def __init__(self, max_pending: int = 100_000, window: int = 10_000, max_versions: int = 8):
        if max_pending < 1 or window < 1 or max_versions < 1:
            raise ValueError("max_pending, window and max_versions must be at least 1")
        self.max_pending = max_pending
        self.window = window
        self.max_versions = max_versions
        self._lock = threading.Lock()
        # plain dicts keep insertion order: the first key is the oldest, evicted first
        # OrderedDict, not dict: evicting the oldest of a dict (``next(iter(d))``) walks the
        # slots its earlier deletions emptied, so each eviction slowed until the next resize;
        # a soak saw a worker fall from 5,000 to 1,200 rec/s at 100,000 pending keys
        self._predictions: OrderedDict[bytes, tuple[str, str]] = OrderedDict()
        self._labels: OrderedDict[bytes, str] = OrderedDict()
        self._pairs: dict[str, deque[tuple[str, str]]] = {}
        self.labels_joined = 0
        self.evicted_predictions = 0
        self.evicted_labels = 0

    # -- feeding --------------------------------------------------------------------------------

    def on_batch(self, batch: ScoredBatch) -> None:
        self.add_predictions(batch.keys, batch.predictions, batch.model_version)

    def add_predictions(
        self, keys: Iterable[bytes | None], predictions: Iterable[Any], model_version: str
    ) -> None:
        with self._lock:
            for key, prediction in zip(keys, predictions, strict=True):
                if key is None:
                    continue
                label = self._labels.pop(key, None)
                if label is not None:
                    self._record(model_version, label, str(prediction))
                    continue
                self._predictions[key] = (str(prediction), model_version)
                self._predictions.move_to_end(key)  # a key seen again is the newest
            while len(self._predictions) > self.max_pending:
                self._predictions.popitem(last=False)
                self.evicted_predictions += 1

    def add_labels(self, keys: Iterable[bytes | None], labels: Iterable[Any]) -> None:
        with self._lock:
            for key, label in zip(keys, labels, strict=True):
                if key is None:
                    continue
                held = self._predictions.pop(key, None)
                if held is not None:
                    self._record(held[1], str(label), held[0])
                    continue
                self._labels[key] = str(label)
                self._labels.move_to_end(key)
            while len(self._labels) > self.max_pending:
                self._labels.popitem(last=False)
                self.evicted_labels += 1

    def _record(self, version: str, label: str, prediction: str) -> None:
        pairs = self._pairs.get(version)
        if pairs is None:
            if len(self._pairs) >= self.max_versions:
                del self._pairs[next(iter(self._pairs))]  # the oldest version seen
            pairs = self._pairs[version] = deque(maxlen=self.window)
        pairs.append((label, prediction))
        self.labels_joined += 1

    # -- reading --------------------------------------------------------------------------------

    @property
    def pending_predictions(self) -> int:
        return len(self._predictions)

    @property
    def pending_labels(self) -> int:
        return len(self._labels)

    def pairs(self, version: str) -> list[tuple[str, str]]:
        """The (label, prediction) pairs in ``version``'s window, oldest first."""
        with self._lock:
            return list(self._pairs.get(version, ()))

    def accuracy(self, version: str) -> float | None:
        labels, predictions = self._columns(version)
        return accuracy_score(labels, predictions)

    def macro_f1(self, version: str) -> float | None:
        labels, predictions = self._columns(version)
        return macro_f1_score(labels, predictions)

    def _columns(self, version: str) -> tuple[np.ndarray, np.ndarray]:
        pairs = self.pairs(version)
        if not pairs:
            return np.array([], dtype=object), np.array([], dtype=object)
        both = np.array(pairs, dtype=object)
        return both[:, 0], both[:, 1]

    def snapshot(self) -> dict[str, VersionAccuracy]:
        """Per model version: labelled pairs in the window, accuracy and macro F1."""
        with self._lock:
            versions = list(self._pairs)
        out: dict[str, VersionAccuracy] = {}
        for version in versions:
            labels, predictions = self._columns(version)
            out[version] = VersionAccuracy(
                labelled=len(labels),
                accuracy=accuracy_score(labels, predictions),
                macro_f1=macro_f1_score(labels, predictions),
            )
        return out


def json_object(value: bytes | None) -> dict[str, Any] | None:
    """A record value as a JSON object; ``None`` when empty, not JSON or not an object."""
    if not value:
        return None
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def decode_label(value: bytes | None) -> str | None:
    """The label of a labels-topic value ``{"label": ...}``; ``None`` when malformed.

    Integer labels are accepted as their decimal string, since predictions are class names as
    strings; anything else (floats, objects, missing field) is malformed.
    """
    obj = json_object(value)
    if obj is None:
        return None
    label = obj.get("label")
    if isinstance(label, str):
        return label
    if isinstance(label, int) and not isinstance(label, bool):
        return str(label)
    return None


StartAt = Literal["earliest", "latest"]


class LabelConsumer:
    """Reads the labels topic into an :class:`OnlineEvaluator` from a daemon thread.

    No consumer group: it assigns itself every partition, because a worker's predictions may be
    for any key and labels are cheap. By default it starts at the *latest* offsets: a worker
    holds only predictions made since it started, so older labels could never join and would
    only fill the pending-labels map. ``start_at="earliest"`` replays the whole topic (tests,
    offline re-evaluation). New partitions are picked up every ``refresh_s`` seconds.
    """

    def __init__(
        self,
        kafka: Target,
        topic: str,
        evaluator: OnlineEvaluator,
        start_at: StartAt = "latest",
        refresh_s: float = 30.0,
        rebuild_without_broker_s: float | None = None,
        on_client_rebuilt: Callable[[str], None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.rebuild_without_broker_s = rebuild_without_broker_s
        """librdkafka: past this long without a broker, the reader is rebuilt (#5301)."""
        self.on_client_rebuilt = on_client_rebuilt
        self._positions: dict[int, int] = {}
        """The next offset per partition: where a rebuilt reader goes on from."""
        self.topic = topic
        self.evaluator = evaluator
        self.start_at = start_at
        self.refresh_s = refresh_s
        self.labels_read = 0
        self.malformed = 0
        self.fatal: KafkaFatalError | None = None
        """Set when reading labels failed for good (e.g. no ACL): the worker ends on it."""
        self.ready = threading.Event()
        """Set once every partition is assigned and positioned (tests, demos wait on it)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LabelConsumer:
        self._thread = threading.Thread(target=self.run, name="forestream-labels", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def run(self) -> None:
        """Poll until :meth:`stop`; Kafka errors are retried, never raised into the worker."""
        from forestream.edge.factory import partition_reader
        from forestream.errors import BrokersLost, KafkaFatalError, TransientKafkaError
        from forestream.runtime.logs import RateLimited

        warn = RateLimited(10.0)
        consumer: PartitionReader | None = None
        assigned: set[int] = set()
        refreshed = float("-inf")
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = partition_reader(
                        self.kafka,
                        client_id="forestream-labels",
                        rebuild_without_broker_s=self.rebuild_without_broker_s,
                    )
                if time.monotonic() - refreshed >= self.refresh_s or not assigned:
                    assigned = self._assign(consumer, assigned)
                    refreshed = time.monotonic()
                    if not assigned:
                        self._stop.wait(0.2)
                        continue
                self._feed(consumer.poll_batch(2000, 0.2))
            except BrokersLost as lost:  # a new reader goes on from the positions reached
                from forestream.worker.healing import reader_rebuilt

                reader_rebuilt("labels_reader", lost, self.on_client_rebuilt)
                if consumer is not None:
                    consumer.close()
                consumer, assigned = None, set()
            except KafkaFatalError as fatal:
                self.fatal = fatal
                break
            except TransientKafkaError as exc:
                if warn.ready():
                    log.warning(
                        "labels_consumer_error", error=str(exc), suppressed=warn.take_suppressed()
                    )
                self._stop.wait(1.0)
            except Exception as exc:  # the UserError of an unreachable broker, for one
                if warn.ready():
                    log.warning("labels_consumer_error", error=str(exc))
                self._stop.wait(1.0)
        if consumer is not None:
            consumer.close()

    def _assign(self, consumer: PartitionReader, assigned: set[int]) -> set[int]:
        from forestream.edge.interface import TopicPartition

        partitions = consumer.partitions(self.topic)
        if not partitions or partitions == assigned:
            return partitions
        new = [TopicPartition(self.topic, p) for p in sorted(partitions - assigned)]
        consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
        # partitions added while running are read from their start: none of it was seen
        known = [tp for tp in new if tp.partition in self._positions]  # a rebuilt reader's
        fresh = [tp for tp in new if tp.partition not in self._positions]
        if fresh and (assigned or self.start_at == "earliest"):
            consumer.seek_to_beginning(fresh)
        elif fresh:
            consumer.seek_to_end(fresh)
        for tp in known:
            consumer.seek(tp, self._positions[tp.partition])
        for tp in new:  # resolve the lazy seek now, so `ready` means "reading from here"
            self._positions[tp.partition] = consumer.position(tp)
        if not self.ready.is_set():
            log.info(
                "labels_following", topic=self.topic, partitions=len(partitions), at=self.start_at
            )
        self.ready.set()
        return partitions

    def _feed(self, records: Sequence[InputRecord]) -> None:
        keys: list[bytes | None] = []
        labels: list[str] = []
        for record in records:
            self._positions[record.partition] = record.offset + 1
            label = decode_label(record.value)
            if label is None or record.key is None:
                self.malformed += 1
                continue
            keys.append(record.key)
            labels.append(label)
        self.labels_read += len(labels)
        self.evaluator.add_labels(keys, labels)
