"""Records in the Confluent wire format (``--input-format avro|json-schema|protobuf``): the
writer schemas they name, fetched from the Schema Registry once, and the parser that turns their
bodies into the same dicts the JSON path validates
(:func:`forestream.worker.decoding.decode_batch`).

A registry outage never stops a worker that has the ids it needs: every schema fetched is kept
for the life of the process. A record whose id was never fetched while the registry is away is
held: :meth:`WriterSchemas.ensure` asks again with backoff, the batch waiting, until the
registry answers or ``FORESTREAM_SCHEMA_REGISTRY_WAIT_S`` has passed since the outage began;
past that bound (and until the registry answers again) such records are dead-lettered as
``registry_unavailable``, at once, so a long outage costs one wait, not one per batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from forestream.edge.schema_registry import SchemaRegistryAccess
from forestream.errors import SchemaRegistryUnavailable
from forestream.runtime.logs import RateLimited
from forestream.wire.confluent import (
    HEADER_BYTES,
    REGISTRY_FORMATS,
    WriterSchema,
    finite_markers,
    not_framed,
    schema_id_of,
    writer_schema,
)
from forestream.wire.headers import ReasonCode
from forestream.wire.schema import FeatureSchema
from forestream.worker.decoding import Parser, Reject, json_value, non_finite, size_reject

log = structlog.get_logger("forestream.worker")

ABSENT_RECHECK_S = 30.0
"""An id the registry said it does not have is asked for again after this long (a record may
have been produced against a registry that replicates to ours late)."""
_BACKOFF_S = (0.25, 0.5, 1.0, 2.0)
RETRY_PAST_BOUND_S = 5.0
"""Past the bound, an unfetched id is asked for at most this often (not once per batch)."""
_told_implicit: set[tuple[int, tuple[int, ...], tuple[str, ...]]] = set()
"""Protobuf messages already logged as ``protobuf_features_without_presence``."""


class Absent:
    """The registry answered: no schema under this id."""


class Unavailable:
    """The registry did not answer, past the outage bound."""

    def __init__(self, since_s: float, error: str) -> None:
        self.since_s = since_s
        self.error = error


ABSENT = Absent()
Lookup = Callable[[int], WriterSchema | Absent | Unavailable]


class WriterSchemas:
    """Writer schemas by id: fetched once each, kept for good (ids are immutable)."""

    def __init__(
        self,
        access: SchemaRegistryAccess,
        wait_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        fmt: str | None = None,
    ) -> None:
        self.access = access
        self.wait_s = wait_s
        self.fmt = fmt
        """The registry's ``format`` to ask for: ``serialized`` for Protobuf (see
        :func:`writer_schemas`)."""
        self.clock = clock
        self.sleep = sleep
        self.known: dict[int, WriterSchema] = {}
        self._absent: dict[int, float] = {}
        self._outage_since: float | None = None
        self._outage_error = ""
        self._last_try = float("-inf")
        self._warn = RateLimited(10.0)

    def ensure(self, ids: Iterable[int], keep_waiting: Callable[[], bool] = lambda: True) -> None:
        """Fetch every id not known yet; while the registry is away, wait (within the bound,
        and while ``keep_waiting()``: a stop or a health tick) before giving up on one."""
        for schema_id in ids:
            if schema_id in self.known or self._recently_absent(schema_id):
                continue
            if self._past_bound() and self.clock() - self._last_try < RETRY_PAST_BOUND_S:
                continue
            attempt = 0
            while not self._fetch(schema_id):
                if self._past_bound() or not keep_waiting():
                    break
                self.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
                attempt += 1

    def lookup(self, schema_id: int) -> WriterSchema | Absent | Unavailable:
        known = self.known.get(schema_id)
        if known is not None:
            return known
        if self._recently_absent(schema_id):
            return ABSENT
        since = self._outage_since if self._outage_since is not None else self.clock()
        return Unavailable(self.clock() - since, self._outage_error)

    def _recently_absent(self, schema_id: int) -> bool:
        at = self._absent.get(schema_id)
        return at is not None and self.clock() - at < ABSENT_RECHECK_S

    def _past_bound(self) -> bool:
        since = self._outage_since
        return since is not None and self.clock() - since >= self.wait_s

    def _fetch(self, schema_id: int) -> bool:
        """True once the registry answered for ``schema_id`` (found or not)."""
        self._last_try = self.clock()
        try:
            found = self.access.schema_by_id(schema_id, self.fmt)
        except SchemaRegistryUnavailable as exc:
            if self._outage_since is None:
                self._outage_since = self.clock()
            self._outage_error = str(exc)
            if self._warn.ready():
                log.warning(
                    "schema_registry_unavailable",
                    schema_id=schema_id,
                    error=str(exc),
                    outage_s=round(self.clock() - self._outage_since, 1),
                    holding_until_s=self.wait_s,
                    suppressed=self._warn.take_suppressed(),
                )
            return False
        if self._outage_since is not None:
            log.info("schema_registry_back", outage_s=round(self.clock() - self._outage_since, 1))
            self._outage_since = None
        if found is None:
            self._absent[schema_id] = self.clock()
            return True
        self._absent.pop(schema_id, None)
        schema = writer_schema(schema_id, found.schema_type, found.text)
        self.known[schema_id] = schema
        log.info("writer_schema_fetched", schema_id=schema_id, schema_type=schema.schema_type)
        return True


def writer_schemas(access: SchemaRegistryAccess, input_format: str, wait_s: float) -> WriterSchemas:
    """The cache for ``input_format``. Protobuf schemas are asked for ``?format=serialized``:
    Confluent's registry then returns a base64 ``FileDescriptorProto`` (no .proto text to
    parse), as confluent-kafka's own deserializer asks; Apicurio ignores it and returns what was
    registered, which :class:`forestream.wire.protobuf_framing.ProtobufFile` reads either way."""
    fmt = "serialized" if input_format == "protobuf" else None
    return WriterSchemas(access, wait_s=wait_s, fmt=fmt)


def schema_ids(values: Sequence[bytes | None]) -> set[int]:
    """The distinct schema ids the framed values of a batch name."""
    ids = set()
    for value in values:
        if value:
            schema_id = schema_id_of(value)
            if schema_id is not None:
                ids.add(schema_id)
    return ids


def framed_parser(input_format: str, lookup: Lookup, features: FeatureSchema) -> Parser:
    """A :data:`forestream.worker.decoding.Parser` for ``input_format`` (``avro``,
    ``json-schema`` or ``protobuf``) that resolves ids with ``lookup`` (after
    :meth:`WriterSchemas.ensure`)."""
    expected = REGISTRY_FORMATS[input_format]
    required = [f.name for f in features.features if not f.missing_seen]
    may_miss = [f.name for f in features.features if f.missing_seen]
    binary = expected != "JSON"
    indexes_of = _indexes_reader() if expected == "PROTOBUF" else None

    def parse(
        values: Sequence[bytes | None], max_record_bytes: int, rejects: dict[int, Reject]
    ) -> tuple[list[int], list[dict[str, Any]]]:
        positions: list[int] = []
        objects: list[dict[str, Any]] = []
        # per id (per id and message indexes for Protobuf), judged once a batch
        usable: dict[object, WriterSchema | tuple[str, str]] = {}
        for i, value in enumerate(values):
            if not value or len(value) > max_record_bytes:
                rejects[i] = size_reject(i, value, max_record_bytes)
                continue
            schema_id = schema_id_of(value)
            if schema_id is None:
                rejects[i] = Reject(i, ReasonCode.NO_MAGIC_BYTE, not_framed(value))
                continue
            schema = usable.get(schema_id)
            if schema is None:
                schema = usable[schema_id] = _judge(
                    schema_id, lookup(schema_id), expected, required
                )
            start = HEADER_BYTES
            if indexes_of and isinstance(schema, WriterSchema) and schema.messages is not None:
                try:
                    indexes, start = indexes_of(value, HEADER_BYTES)
                except ValueError as exc:
                    detail = f"schema id {schema_id}: {exc}"[:200]
                    rejects[i] = Reject(i, ReasonCode.UNDECODABLE_BODY, detail)
                    continue
                key = (schema_id, indexes)
                message = usable.get(key)
                if message is None:
                    message = usable[key] = _message(
                        schema_id, schema.messages, indexes, required, may_miss
                    )
                schema = message
            if not isinstance(schema, WriterSchema):
                rejects[i] = Reject(i, *schema)
                continue
            body = value[start:]
            try:
                obj = schema.read(body) if schema.read is not None else json_value(body)
            except Exception as exc:  # whatever a reader raises on hostile bytes: one reject
                why = f"{type(exc).__name__}: {exc}" if binary else str(exc)
                detail = f"schema id {schema_id}: {why}"[:200]
                rejects[i] = Reject(i, ReasonCode.UNDECODABLE_BODY, detail)
                continue
            if type(obj) is not dict:
                kind = "Avro" if expected == "AVRO" else expected
                rejects[i] = Reject(
                    i, ReasonCode.NOT_OBJECT, f"{kind} {type(obj).__name__}, expected a record"
                )
                continue
            positions.append(i)
            objects.append(finite_markers(obj, non_finite) if binary else obj)
        return positions, objects

    return parse


def _indexes_reader() -> Callable[[bytes, int], tuple[tuple[int, ...], int]]:
    """Protobuf's message-index reader, imported only by a Protobuf worker: protobuf and the
    .proto parser add ~6 MB to a process."""
    from forestream.wire.protobuf_framing import message_indexes

    return message_indexes


def _message(
    schema_id: int,
    messages: Callable[[tuple[int, ...]], WriterSchema],
    indexes: tuple[int, ...],
    required: list[str],
    may_miss: list[str],
) -> WriterSchema | tuple[str, str]:
    """The Protobuf message ``indexes`` name in a file's ``messages``, or why none of its
    records can be scored. Features training saw missing that the message declares without
    presence are said once: their records are scored, an unset value read as 0 or ""."""
    try:
        message = messages(indexes)
    except Exception as exc:  # indexes naming no message, or a type the pool cannot build
        return ReasonCode.UNDECODABLE_BODY, f"schema id {schema_id}: {exc}"[:200]
    implicit = tuple(name for name in may_miss if name in message.implicit)
    if implicit and (schema_id, indexes, implicit) not in _told_implicit:
        _told_implicit.add((schema_id, indexes, implicit))
        log.warning(
            "protobuf_features_without_presence",
            schema_id=schema_id,
            message_indexes=list(indexes),
            features=list(implicit),
            hint="unset, these read as 0 or an empty string, never as missing: declare them "
            "optional (or as a google.protobuf wrapper) to send a missing value",
        )
    return _lacking(schema_id, message, required)


def _judge(
    schema_id: int,
    found: WriterSchema | Absent | Unavailable,
    expected: str,
    required: list[str],
) -> WriterSchema | tuple[str, str]:
    """The schema, or (reason, detail): why no record of ``schema_id`` can be scored."""
    if isinstance(found, Absent):
        return ReasonCode.UNKNOWN_SCHEMA_ID, f"schema id {schema_id} is not in the registry"
    if isinstance(found, Unavailable):
        detail = (
            f"schema id {schema_id} never fetched: the registry has not answered for "
            f"{found.since_s:.0f}s ({found.error})"
        )
        return ReasonCode.REGISTRY_UNAVAILABLE, detail[:200]
    if found.problem is not None:
        return ReasonCode.UNDECODABLE_BODY, f"schema id {schema_id}: {found.problem}"[:200]
    if found.schema_type != expected:
        return (
            ReasonCode.UNDECODABLE_BODY,
            f"schema id {schema_id} is a {found.schema_type} schema; this worker reads {expected}",
        )
    return _lacking(schema_id, found, required)


def _lacking(
    schema_id: int, found: WriterSchema, required: list[str]
) -> WriterSchema | tuple[str, str]:
    missing = found.missing(required)
    if missing:
        names = ", ".join(repr(n) for n in missing[:5])
        detail = f"writer schema {schema_id} has no field for required feature(s) {names}"
        return ReasonCode.SCHEMA_MISSING_FEATURE, detail[:200]
    return found
