"""Announce versions on the compacted models topic; workers follow it to know what to serve.

Key = model name, so compaction keeps the newest event per model. Every event carries
``serving`` (the promoted version at that moment, with its hash), so whatever compaction
drops, the surviving event still tells a new worker what to load and how to verify it.

Registry writes (``models promote|rollback``, ``train --publish|--promote``, and the
evaluator's promotion policy) go through :func:`change_serving` (in this shared room:
training and the evaluator both announce). The rule: **the models topic is the source of
truth** for what is served (workers follow nothing else), and the store's promotion history
follows it.

- Writers sharing a store take its lock (:meth:`ModelStore.lock`, ``flock``) for the whole
  read-decide-announce-record sequence, so two commands on one machine run one after the other.
- Across machines (or a volume without locks) the decision is a compare-and-set on the topic:
  read the newest event for the name and the partition's end offset, decide, append, then read
  what lies between that end offset and our record. An event for the name there whose
  ``serving`` differs from what we decided on means another writer won the race:

  * a promotion stands (serving the version asked for is right whatever came before it);
  * a rollback is withdrawn: it was meant to undo the version it saw served, which is no longer
    served. The other writer's event is announced again, and the command fails in one line;
  * a publication (it keeps ``serving`` unchanged) is announced again with the new ``serving``.

- The history records an entry only once its event is on the topic, and before deciding, a
  writer first makes the history agree with the topic (an entry marked ``"source": "models
  topic"``): a crash between announcing and recording, or another machine's write, is
  repaired by the next registry command.
- A decision taken on evidence (the evaluator's policy) names the version it saw served
  (``expect_served``): once the history follows the topic, a different served version means
  the evidence is stale, and nothing is announced (:func:`change_serving` returns None). The
  :class:`~forestream.wire.messages.Decision` travels on the event and into the history entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from forestream.edge.interface import Outgoing, TopicPartition
from forestream.errors import RegistryConflict, TransientKafkaError, UserError
from forestream.registry.metadata import ModelMetadata
from forestream.registry.store import HistoryAction, ModelStore
from forestream.wire.messages import Decision, ModelEvent, ServingRef

if TYPE_CHECKING:
    from forestream.edge.factory import Target
    from forestream.edge.interface import AckingProducer, PartitionReader
    from forestream.registry.signing import Trust

EventKind = Literal["published", "promoted", "rolled_back"]
Action = Literal["promote", "rollback", "publish"]

SEND_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 30.0
ATTEMPTS = 3
"""Announcements of a publication that keeps losing the race before the command gives up."""


def serving_ref(store: ModelStore, name: str) -> ServingRef | None:
    """The store's promoted version of ``name`` as the topic announces it (None if none)."""
    version = store.served(name)
    if version is None:
        return None
    meta = store.metadata(name, version)
    return ServingRef(version=meta.version, sha256=meta.artifact_sha256, signature=meta.signature)


def model_event(kind: EventKind, metadata: ModelMetadata, serving: ServingRef | None) -> ModelEvent:
    return ModelEvent(
        kind=kind,
        name=metadata.name,
        version=metadata.version,
        sha256=metadata.artifact_sha256,
        signature=metadata.signature,
        created_at=metadata.created_at,
        accuracy=metadata.metrics.get("accuracy"),
        macro_f1=metadata.metrics.get("macro_f1"),
        serving=serving,
        at=int(time.time() * 1000),
    )


def _kafka_failure(exc: Exception, kafka: Target, topic: str, doing: str) -> UserError:
    """A failure the edge did not classify fatal, as one line saying what failed."""
    from forestream.edge.factory import connection

    return UserError(f"could not {doing} {topic!r} at {connection(kafka).bootstrap}: {exc}")


@dataclass(frozen=True)
class TopicEvent:
    """One event for a model name, where it sits on the models topic."""

    offset: int
    event: ModelEvent

    @property
    def serving(self) -> str | None:
        return self.event.serving.version if self.event.serving else None


@dataclass(frozen=True)
class TopicState:
    """What the models topic said about one name when read: newest event, and the end offset."""

    end: int
    latest: TopicEvent | None


@dataclass
class ModelsTopic:
    """One command's reader and writer of the models topic, on the Kafka edge (either client).

    A name's events all live on one partition (the producers' key hash, murmur2 on both
    clients; the project creates the topic with one), so offsets on it are the total order of
    that name's announcements.
    """

    kafka: Target
    topic: str
    timeout_s: float = READ_TIMEOUT_S
    _reader: PartitionReader | None = None
    _producer: AckingProducer | None = None
    _partitions: list[int] = field(default_factory=list)

    def __enter__(self) -> ModelsTopic:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(2)  # our record is acknowledged: nothing left to wait for
        if self._reader is not None:
            self._reader.close()

    def _read(self) -> PartitionReader:
        """A group-less reader; creates the (compacted) topic on first use, and only then:
        the usual case costs no admin round trip. The producer is started first: every use
        of this class writes, and librdkafka's idempotent producer takes ~0.5 s to get its
        producer id (measured), which the reading then hides."""
        if self._reader is not None:
            return self._reader
        from forestream.edge.factory import (
            acking_producer,
            ensure_topics,
            models_topic_spec,
            partition_reader,
        )

        if self._producer is None:
            self._producer = acking_producer(
                self.kafka, client_id="forestream-registry", linger_ms=0, quick_metadata=True
            )
        reader = partition_reader(
            self.kafka,
            client_id="forestream-registry",
            fetch_max_wait_ms=20,
            quick_metadata=True,
        )
        self._reader = reader
        try:
            partitions = reader.partitions(self.topic)
            if not partitions:
                ensure_topics(self.kafka, [models_topic_spec(self.topic)])
                deadline = time.monotonic() + self.timeout_s
                while not (partitions := reader.partitions(self.topic)):
                    if time.monotonic() > deadline:
                        raise UserError(f"topic {self.topic!r} not visible after creating it")
                    time.sleep(0.1)
        except TransientKafkaError as exc:
            raise _kafka_failure(exc, self.kafka, self.topic, "read") from None
        self._partitions = sorted(partitions)
        return reader

    def _partition(self, name: str) -> TopicPartition:
        """The partition the producers' partitioner puts ``name``'s events on."""
        from forestream.wire.partitioning import partition_for_key

        self._read()
        index = partition_for_key(name.encode(), len(self._partitions))
        return TopicPartition(self.topic, self._partitions[index])

    def read(self, name: str) -> TopicState:
        """The newest event for ``name`` and the partition's end offset, read from the tail back
        (chunks growing eightfold): the topic is compacted, but not its active segment."""
        reader = self._read()
        tp = self._partition(name)
        try:
            reader.assign([tp])
            begin, end = self._watermarks(reader, tp)
            stop, chunk = end, 64
            while stop > begin:
                start = max(begin, stop - chunk)
                found = self._scan(tp, name, start, stop)
                if found:
                    return TopicState(end, found[-1])
                stop, chunk = start, chunk * 8
        except TransientKafkaError as exc:
            raise _kafka_failure(exc, self.kafka, self.topic, "read") from None
        return TopicState(end, None)

    def _watermarks(self, reader: PartitionReader, tp: TopicPartition) -> tuple[int, int]:
        """The partition's first and end offsets, asked again while its leader settles (a
        topic just created, a leader moving: librdkafka answers "not leader") for up to the
        read timeout."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return reader.beginning_offsets([tp])[tp], reader.end_offsets([tp])[tp]
            except TransientKafkaError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def events(self, name: str, start: int, stop: int) -> list[TopicEvent]:
        """``name``'s events at offsets ``start`` (inclusive) to ``stop`` (exclusive)."""
        if stop <= start:
            return []
        try:
            return self._scan(self._partition(name), name, start, stop)
        except TransientKafkaError as exc:
            raise _kafka_failure(exc, self.kafka, self.topic, "read") from None

    def _scan(self, tp: TopicPartition, name: str, start: int, stop: int) -> list[TopicEvent]:
        reader = self._read()
        reader.seek(tp, start)
        key = name.encode()
        found: list[TopicEvent] = []
        deadline = time.monotonic() + self.timeout_s
        while reader.position(tp) < stop:
            if time.monotonic() > deadline:
                raise UserError(
                    f"could not read {self.topic!r} offsets {start}-{stop} in {self.timeout_s:.0f}s"
                )
            for record in reader.poll_batch(500, 0.2):
                if record.offset >= stop or record.key != key or not record.value:
                    continue
                try:
                    event = ModelEvent.model_validate_json(record.value)
                except ValidationError:
                    continue  # workers skip it too
                found.append(TopicEvent(record.offset, event))
        return found

    def append(self, event: ModelEvent) -> int:
        """Publish ``event`` and wait for the broker's acknowledgement; returns its offset."""
        return self.put(event.name, event.model_dump_json().encode())

    def put(self, key: str, value: bytes) -> int:
        """Publish one record under ``key`` (a model name, or its shadow key) and wait for the
        broker's acknowledgement; returns its offset."""
        tp = self._partition(key)  # opens the producer too
        if self._producer is None:  # _partition() -> _read() starts it
            raise RuntimeError(f"no producer for the models topic {self.topic!r}")
        record = Outgoing(self.topic, key.encode(), value)
        try:
            return self._producer.append(record, tp.partition, SEND_TIMEOUT_S)
        except TransientKafkaError as exc:
            raise _kafka_failure(exc, self.kafka, self.topic, "publish to") from None


@dataclass
class Announced:
    """What :func:`change_serving` put on the topic, and anything the user should know."""

    event: ModelEvent
    offset: int
    notes: list[str] = field(default_factory=list)


def _describe(item: TopicEvent) -> str:
    """An event as a note or an error names it: what, where on the topic, what it serves."""
    kind = item.event.kind.replace("_", " ")
    return f"{kind} {item.event.version} at offset {item.offset}, serving {item.serving}"


def _follow(store: ModelStore, name: str, item: TopicEvent) -> bool:
    """Make the history agree with one topic event (True if an entry had to be added)."""
    if item.serving is None:
        return False  # the topic serves nothing: the history has no entry for that
    action: HistoryAction = "rollback" if item.event.kind == "rolled_back" else "promote"
    return store.follow(name, item.serving, action, offset=item.offset, **_evidence(item.event))


def decided_by_rule(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """A history entry's decision as ``models list`` shows it (the rule that made the version
    served, with its evidence); None if a person did."""
    decision = entry.get("decision") if entry else None
    if entry is None or not isinstance(decision, dict):
        return None
    action = "promoted" if entry["action"] == "promote" else "rolled back to"
    return {"action": f"{action} by rule", **decision}


def decision_line(version: str, decided: dict[str, Any]) -> str:
    """One line under ``models list``'s table: what the rule did and the numbers it saw."""
    numbers = " ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in decided.get("evidence", {}).items()
    )
    return f"{version}: {decided['action']} {decided['rule']!r} ({decided['by']}): {numbers}"


def _evidence(event: ModelEvent) -> dict[str, object]:
    """The history entry's ``decision`` field, for a change a rule made."""
    return {} if event.decision is None else {"decision": event.decision.model_dump()}


def _decide(
    store: ModelStore,
    name: str,
    action: Action,
    version: str | None,
    trust: Trust | None,
) -> ModelEvent:
    """The event for ``action`` on the history as it stands (it already follows the topic).

    A rollback's target is verified here like a promotion's: it may have been altered since.
    """
    if action == "rollback":
        target = store.rollback_target(name)
        meta = store.verify_artifact(name, target, trust=trust)
        return model_event("rolled_back", meta, _ref(meta))
    if version is None:  # change_serving's caller names the version for all but a rollback
        raise ValueError(f"{action} needs a version")
    meta = store.metadata(name, version)
    if action == "promote":
        return model_event("promoted", meta, _ref(meta))
    return model_event("published", meta, serving_ref(store, name))


def _ref(meta: ModelMetadata) -> ServingRef:
    """What workers need to load and verify ``meta``'s version."""
    return ServingRef(version=meta.version, sha256=meta.artifact_sha256, signature=meta.signature)


def change_serving(
    kafka: Target,
    topic: str,
    store: ModelStore,
    name: str,
    action: Action,
    version: str | None = None,
    *,
    trust: Trust | None = None,
    on_decided: Callable[[], None] | None = None,
) -> Announced:
    """Announce a promotion, rollback or publication as one serialized registry write.

    See the module's docstring for the rule. ``version`` is the version to promote or publish
    (verified by the caller); a rollback decides its own. ``on_decided`` (tests) runs between
    the decision and the announcement: where a writer on another machine could slip in.
    """
    done = _change(kafka, topic, store, name, action, version, trust=trust, on_decided=on_decided)
    if done is None:  # only a compare-and-set declines
        raise RuntimeError("change_serving declined without an expected served version")
    return done


def change_serving_if(
    kafka: Target,
    topic: str,
    store: ModelStore,
    name: str,
    action: Literal["promote", "rollback"],
    version: str | None = None,
    *,
    expect_served: str,
    decision: Decision,
    trust: Trust | None = None,
    on_decided: Callable[[], None] | None = None,
) -> Announced | None:
    """:func:`change_serving` as a compare-and-set: only if ``expect_served`` is still served
    (the topic's word, under the store's lock), else None and nothing announced. ``decision``
    is carried on the event and into the history entry."""
    return _change(
        kafka,
        topic,
        store,
        name,
        action,
        version,
        trust=trust,
        on_decided=on_decided,
        expect_served=expect_served,
        decision=decision,
    )


def _change(
    kafka: Target,
    topic: str,
    store: ModelStore,
    name: str,
    action: Action,
    version: str | None,
    *,
    trust: Trust | None,
    on_decided: Callable[[], None] | None,
    expect_served: str | None = None,
    decision: Decision | None = None,
) -> Announced | None:
    notes: list[str] = []
    with store.lock(name) as locked, ModelsTopic(kafka, topic) as models:
        if not locked:
            notes.append(f"note: {store.location} has no file locks; relying on the models topic")
        state = models.read(name)
        if state.latest is not None and _follow(store, name, state.latest):
            notes.append(
                "note: the promotion history did not say what the models topic serves; "
                f"recorded {state.latest.serving} from it ({_describe(state.latest)})"
            )
        based_on = store.served(name)
        if expect_served is not None and based_on != expect_served:
            return None
        event = _decide(store, name, action, version, trust)
        if decision is not None:
            event = event.model_copy(update={"decision": decision})
        if on_decided is not None:
            on_decided()
        offset = models.append(event)
        others = models.events(name, state.end, offset)
        for other in others:
            _follow(store, name, other)
        changed = [o for o in others if o.serving != based_on]
        if changed:
            if action == "rollback":
                raise _withdraw(models, store, name, event, offset, changed[-1])
            notes.append(
                f"note: another registry command changed {name} meanwhile "
                f"({_describe(changed[-1])}); "
                + (
                    f"announced {event.version} again with what that serves"
                    if action == "publish"
                    else f"{event.version} was announced after it and is served"
                )
            )
            if action == "publish":
                event, offset = _republish(models, store, name, event, offset, changed[-1])
        if action != "publish" and event.serving is not None:
            store.record(
                name,
                "rollback" if action == "rollback" else "promote",
                event.serving.version,
                offset=offset,
                **_evidence(event),
            )
        return Announced(event, offset, notes)


def _republish(
    models: ModelsTopic,
    store: ModelStore,
    name: str,
    event: ModelEvent,
    offset: int,
    theirs: TopicEvent,
) -> tuple[ModelEvent, int]:
    """A publication carried a stale ``serving``: announce it again with what ``theirs`` set,
    until no other writer slips in between (a publication must never change what is served)."""
    for _attempt in range(ATTEMPTS):
        fixed = event.model_copy(
            update={"serving": theirs.event.serving, "at": int(time.time() * 1000)}
        )
        fixed_offset = models.append(fixed)
        others = models.events(name, offset + 1, fixed_offset)
        for other in others:
            _follow(store, name, other)
        changed = [o for o in others if o.serving != theirs.serving]
        if not changed:
            return fixed, fixed_offset
        theirs, offset = changed[-1], fixed_offset
    raise RegistryConflict(
        f"other registry commands kept changing {name} on {models.topic!r}; the publication "
        f"of {event.version} may carry a stale serving version: run `forestream models promote "
        f"{theirs.serving}` to restore it"
    )


def _withdraw(
    models: ModelsTopic,
    store: ModelStore,
    name: str,
    ours: ModelEvent,
    offset: int,
    theirs: TopicEvent,
) -> RegistryConflict:
    """Announce the other writer's state again on top of our rollback, if nothing came after."""
    later = models.events(name, offset + 1, models.read(name).end)
    if not later:
        restored = theirs.event.model_copy(update={"at": int(time.time() * 1000)})
        models.append(restored)
    final = models.read(name).latest
    if final is not None:
        _follow(store, name, final)
    served = final.serving if final is not None else theirs.serving
    return RegistryConflict(
        f"conflict: another registry command changed {name} while this rollback ran "
        f"({_describe(theirs)}); rollback to {ours.version} withdrawn, {served} is served; "
        "check `forestream models list` and roll back again if still wanted"
    )


def publish_event(kafka: Target, topic: str, event: ModelEvent) -> None:
    """Send one event as is (topic created compacted on first use) and wait for the ack.

    For announcements that bypass the registry (tests, benchmarks); commands use
    :func:`change_serving`.
    """
    with ModelsTopic(kafka, topic) as models:
        models.append(event)
