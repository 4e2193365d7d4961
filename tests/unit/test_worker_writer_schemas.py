"""The worker's writer-schema cache through a registry outage, on a fake clock: ids fetched
before keep resolving, an unseen id is asked for again (held) until the bound passes, then is
``registry_unavailable`` at once until the registry answers. (The real registry, stopped under a
running worker, is tests/integration/test_schema_registry_flow.py.)"""

from __future__ import annotations

import json

from forestream.edge.schema_registry import RegisteredSchema
from forestream.errors import SchemaRegistryUnavailable
from forestream.wire.confluent import WriterSchema
from forestream.worker.framed import (
    RETRY_PAST_BOUND_S,
    Absent,
    Unavailable,
    WriterSchemas,
    writer_schemas,
)

AVRO = json.dumps({"type": "record", "name": "r", "fields": [{"name": "age", "type": "long"}]})


class Registry:
    """Answers ids 1 and 2 while up; counts the questions."""

    def __init__(self) -> None:
        self.up = True
        self.asked: list[int] = []
        self.formats: list[str | None] = []

    def schema_by_id(self, schema_id: int, fmt: str | None = None) -> RegisteredSchema | None:
        self.asked.append(schema_id)
        self.formats.append(fmt)
        if not self.up:
            raise SchemaRegistryUnavailable("connection refused")
        return RegisteredSchema(None, AVRO) if schema_id in (1, 2) else None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def cache(registry: Registry, clock: Clock, wait_s: float = 10.0) -> WriterSchemas:
    return WriterSchemas(registry, wait_s=wait_s, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]


def test_fetched_once_and_kept_through_an_outage() -> None:
    registry, clock = Registry(), Clock()
    schemas = cache(registry, clock)
    schemas.ensure([1, 1, 3])
    assert isinstance(schemas.lookup(1), WriterSchema) and isinstance(schemas.lookup(3), Absent)
    registry.up = False
    schemas.ensure([1])
    assert registry.asked == [1, 3]  # a known id is never asked again
    assert isinstance(schemas.lookup(1), WriterSchema)
    assert clock.now == 0  # and nothing waited


def test_an_unseen_id_is_held_until_the_bound_then_dead_lettered_until_the_registry_answers() -> (
    None
):
    registry, clock = Registry(), Clock()
    schemas = cache(registry, clock, wait_s=10.0)
    registry.up = False
    schemas.ensure([2])
    assert 10.0 <= clock.now < 13.0 and len(registry.asked) > 3  # retried with backoff
    found = schemas.lookup(2)
    assert isinstance(found, Unavailable) and found.since_s >= 10 and "refused" in found.error
    asked, waited_at = len(registry.asked), clock.now
    schemas.ensure([2])  # the next batch: past the bound, no second wait, no question yet
    assert clock.now == waited_at and len(registry.asked) == asked
    clock.now += RETRY_PAST_BOUND_S
    schemas.ensure([2])  # asked again, once, without waiting
    assert len(registry.asked) == asked + 1 and clock.now == waited_at + RETRY_PAST_BOUND_S
    registry.up = True
    clock.now += RETRY_PAST_BOUND_S
    schemas.ensure([2])
    assert isinstance(schemas.lookup(2), WriterSchema)


def test_a_stop_ends_the_wait() -> None:
    registry, clock = Registry(), Clock()
    registry.up = False
    cache(registry, clock, wait_s=60.0).ensure([2], keep_waiting=lambda: clock.now < 1.0)
    assert clock.now < 3.0


def test_protobuf_schemas_are_asked_for_as_serialized_descriptors() -> None:
    """``?format=serialized``, as confluent-kafka's own deserializer asks: Confluent's registry
    answers a base64 FileDescriptorProto; the other formats ask for the default."""
    for input_format, fmt in (("protobuf", "serialized"), ("avro", None), ("json-schema", None)):
        registry = Registry()
        writer_schemas(registry, input_format, 10.0).ensure([1])  # type: ignore[arg-type]
        assert registry.formats == [fmt]
