"""The evaluator's join, pure: one :class:`PartitionJoin` per partition of the two topics.

The predictions and labels topics are co-partitioned (same partition count, same key →
same partition index), so a key's prediction and label meet in the partition of the same
number, and each partition's state is independent of every other: an instance owning a
partition owns its whole join.

Both sides wait in bounded maps (:class:`collections.OrderedDict`, oldest first, as in
:mod:`forestream.worker.evaluation`): at most ``max_pending`` per side, and no longer than
``max_wait_ms`` of *record* time (the newest timestamp seen on the partition, either topic),
so a replayed backlog expires by its own clock, not the wall's. Evictions are counted by
reason; a joined pair goes to a :class:`forestream.worker.evaluator.counts.CountsBuffer`.

The shadow topic (a candidate's predictions, each carrying the served version's prediction for
the same record) is joined with the same labels by a second, independent join per partition
whose sink is a :class:`forestream.worker.evaluator.counts.ShadowCountsBuffer`.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any, NamedTuple, Protocol

from forestream.worker.evaluation import decode_label, json_object


class Served(NamedTuple):
    """On a shadow record: the served version and what it predicted for the same record."""

    version: str
    prediction: str


class HeldPrediction(NamedTuple):
    offset: int
    timestamp: int
    prediction: str
    version: str
    classes: frozenset[str]
    served: Served | None = None


class HeldLabel(NamedTuple):
    offset: int
    timestamp: int
    label: str


class DecodedPrediction(NamedTuple):
    prediction: str
    version: str
    classes: frozenset[str]
    served: Served | None = None
    """Set on shadow records only."""


class PairSink(Protocol):
    """Where a joined pair is counted (window by the label's timestamp); ``served`` is the
    shadow record's served prediction (None on the predictions topic)."""

    def add(
        self, version: str, label: str, prediction: str, label_ts: int, served: Served | None
    ) -> None: ...


def decode_prediction(value: bytes | None) -> DecodedPrediction | None:
    """What the join reads of a JSON prediction value; ``None`` when malformed.

    The version's classes are the keys of ``probabilities``: a label naming another class
    cannot be scored against this version.
    """
    return _prediction_of(json_object(value))


def _prediction_of(obj: dict[str, Any] | None) -> DecodedPrediction | None:
    if obj is None:
        return None
    prediction, version = obj.get("prediction"), obj.get("model_version")
    probabilities = obj.get("probabilities")
    if not isinstance(prediction, str) or not isinstance(version, str) or not version:
        return None
    if not isinstance(probabilities, dict):
        return None
    return DecodedPrediction(prediction, version, frozenset(str(c) for c in probabilities))


def decode_shadow(value: bytes | None) -> tuple[DecodedPrediction | None, str | None]:
    """A shadow record as the join reads it, else (None, why): ``malformed`` as a prediction
    would be, ``no_served`` without a well-formed ``served`` (nothing to compare it with)."""
    obj = json_object(value)
    decoded = _prediction_of(obj)
    if obj is None or decoded is None:
        return None, "malformed"
    served = obj.get("served")
    if not isinstance(served, dict):
        return None, "no_served"
    version, prediction = served.get("version"), served.get("prediction")
    if not isinstance(version, str) or not version or not isinstance(prediction, str):
        return None, "no_served"
    return decoded._replace(served=Served(version, prediction)), None


class PartitionJoin:
    """One partition's waiting predictions and labels; see the module docstring.

    A key predicted again (redelivery) keeps its newest prediction. A pair is counted once:
    a joined prediction is dropped, so a duplicate label waits and expires. Map order is
    consumption order, so the first waiting entry has the side's lowest offset.
    """

    def __init__(self, sink: PairSink, max_pending: int, max_wait_ms: int) -> None:
        if max_pending < 1 or max_wait_ms < 1:
            raise ValueError("max_pending and max_wait_ms must be at least 1")
        self.sink = sink
        self.max_pending = max_pending
        self.max_wait_ms = max_wait_ms
        self.predictions: OrderedDict[bytes, HeldPrediction] = OrderedDict()
        self.labels: OrderedDict[bytes, HeldLabel] = OrderedDict()
        self.stream_time = -1
        """The newest record timestamp seen on the partition (either topic), ms."""
        self.evicted: Counter[str] = Counter()
        """``prediction_full``, ``prediction_expired``, ``label_full``, ``label_expired``."""
        self.rejected: Counter[str] = Counter()
        """Pairs never counted: ``unknown_class`` (the label is no class of the version)."""
        self.joined = 0

    def add_prediction(
        self, key: bytes, offset: int, timestamp: int, decoded: DecodedPrediction
    ) -> None:
        self._advance(timestamp)
        held = self.labels.pop(key, None)
        if held is not None:
            self._pair(
                decoded.version,
                decoded.classes,
                held.label,
                decoded.prediction,
                held.timestamp,
                decoded.served,
            )
        else:
            self.predictions[key] = HeldPrediction(
                offset, timestamp, decoded.prediction, decoded.version, decoded.classes,
                decoded.served,
            )  # fmt: skip
            self.predictions.move_to_end(key)  # a key seen again is the newest
            while len(self.predictions) > self.max_pending:
                self.predictions.popitem(last=False)
                self.evicted["prediction_full"] += 1
        self._expire()

    def add_label(self, key: bytes, offset: int, timestamp: int, label: str) -> None:
        self._advance(timestamp)
        held = self.predictions.pop(key, None)
        if held is not None:
            self._pair(held.version, held.classes, label, held.prediction, timestamp, held.served)
        else:
            self.labels[key] = HeldLabel(offset, timestamp, label)
            self.labels.move_to_end(key)
            while len(self.labels) > self.max_pending:
                self.labels.popitem(last=False)
                self.evicted["label_full"] += 1
        self._expire()

    def _pair(
        self,
        version: str,
        classes: frozenset[str],
        label: str,
        prediction: str,
        label_ts: int,
        served: Served | None,
    ) -> None:
        if label not in classes:
            self.rejected["unknown_class"] += 1
            return
        self.sink.add(version, label, prediction, label_ts, served)
        self.joined += 1

    def _advance(self, timestamp: int) -> None:
        if timestamp > self.stream_time:
            self.stream_time = timestamp

    def _expire(self) -> None:
        """Drop entries older than ``max_wait_ms`` of stream time, oldest-consumed first
        (stops at the first young one: a record far out of timestamp order waits longer)."""
        horizon = self.stream_time - self.max_wait_ms
        _expire_side(self.predictions, horizon, self.evicted, "prediction_expired")
        _expire_side(self.labels, horizon, self.evicted, "label_expired")

    def oldest_prediction_offset(self) -> int | None:
        """The lowest offset of a prediction still waiting: its partition commits no further."""
        return next(iter(self.predictions.values())).offset if self.predictions else None

    def oldest_label_offset(self) -> int | None:
        return next(iter(self.labels.values())).offset if self.labels else None


def _expire_side(
    side: OrderedDict[bytes, Any],
    horizon: int,
    evicted: Counter[str],
    reason: str,
) -> None:
    while side:
        first = next(iter(side.values()))
        if first.timestamp >= horizon:
            return
        side.popitem(last=False)
        evicted[reason] += 1


def label_or_reason(key: bytes | None, value: bytes | None) -> tuple[str | None, str | None]:
    """(label, None) for a usable labels record, else (None, the reason it is bad)."""
    if key is None:
        return None, "no_key"
    label = decode_label(value)
    if label is None:
        return None, "malformed"
    return label, None
