"""What ``forestream demo --format avro`` changes against the JSON demo, kept out of the story.

JSON needs the broker alone. Avro needs a Schema Registry: the demo uses the one
``FORESTREAM_SCHEMA_REGISTRY_URL`` names, else starts (or reuses) the local one
(``forestream registry start``) and stops it at the end if it started it, as it does the
broker. ``train --register-schema`` puts the model's contract under the input topic's value
subject, the feed writes Avro with it, and the workers read ``--input-format avro``.

The bad records differ too: a producer going through the Avro serializer cannot write a
missing feature or a string for a number, so the Avro demo mixes in what does reach a topic
(a cut-off body, a value sent without the serializer, an id the registry never issued, NaN and
a float32 overflow, which Avro's double carries) and each must come back under its own reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forestream.errors import UserError
from forestream.wire.headers import ReasonCode

DEMO_FORMATS = ("json", "avro")
REGISTRY_ENV = (
    "FORESTREAM_SCHEMA_REGISTRY_URL",
    "FORESTREAM_SCHEMA_REGISTRY_USERNAME",
    "FORESTREAM_SCHEMA_REGISTRY_PASSWORD",
    "FORESTREAM_SCHEMA_REGISTRY_CAFILE",
)
UNISSUED_SCHEMA_ID = 2**31 - 1
"""Framed with an id no registry of the demo has issued: dead-lettered ``unknown_schema_id``."""

AVRO_MALFORMED: tuple[str, ...] = (
    ReasonCode.UNDECODABLE_BODY,
    ReasonCode.NO_MAGIC_BYTE,
    ReasonCode.UNKNOWN_SCHEMA_ID,
    ReasonCode.NOT_FINITE,
    ReasonCode.OUT_OF_RANGE,
    ReasonCode.TOO_LARGE,
    ReasonCode.EMPTY,
)
"""The bad records of the Avro demo, in turn; each is the reason the worker must give."""


@dataclass(frozen=True)
class FormatPlan:
    """The arguments one input format adds to the demo's commands."""

    name: str
    train_args: tuple[str, ...]
    worker_args: tuple[str, ...]

    @property
    def needs_registry(self) -> bool:
        return self.name != "json"


def format_plan(name: str) -> FormatPlan:
    """The plan of ``--format name``; the worker is always told its format, so a
    ``FORESTREAM_INPUT_FORMAT`` in the user's shell cannot disagree with the feed."""
    if name not in DEMO_FORMATS:
        raise UserError(
            f"the demo streams {' or '.join(DEMO_FORMATS)}, not {name!r} "
            "(--format, or FORESTREAM_VALUE_FORMAT)"
        )
    register = ("--register-schema",) if name == "avro" else ()
    return FormatPlan(name, register, ("--input-format", name))


class DemoRegistry:
    """The Schema Registry of one Avro run: the user's (``FORESTREAM_SCHEMA_REGISTRY_URL``)
    or the local one, started only if it was not running and then stopped at the end."""

    def __init__(self, given_url: str | None, data_dir: Path | None = None) -> None:
        from forestream.local.schema_registry import registry_dir

        self.given_url = given_url.strip() if given_url and given_url.strip() else None
        self.url = self.given_url or ""
        self.data_dir = data_dir or registry_dir()
        self.started_dir: Path | None = None

    def start(self) -> str:
        if self.given_url:
            return self.url
        from forestream.local import schema_registry

        already = schema_registry.status(self.data_dir)
        info = schema_registry.start(self.data_dir)
        self.url = info.url
        if already is None:
            self.started_dir = self.data_dir
        return self.url

    def stop(self) -> None:
        if self.started_dir is not None:
            from forestream.local import schema_registry

            schema_registry.stop(self.started_dir)
            self.started_dir = None

    def env(self) -> dict[str, str | None]:
        """For the demo's subprocesses (None: remove): the user's registry is reached with
        their settings; the local one is plain HTTP without auth."""
        if self.given_url or not self.url:
            return {}
        return {name: None for name in REGISTRY_ENV} | {REGISTRY_ENV[0]: self.url}

    def access(self) -> Any:
        """How the feed reaches the registry: the same settings the subprocesses get."""
        from forestream.runtime.settings import SchemaRegistrySettings

        if not self.given_url:
            return SchemaRegistrySettings(schema_registry_url=self.url).schema_registry()
        return SchemaRegistrySettings().schema_registry()


class FeedValues:
    """Record values of the feed: a good one per row, a bad one per malformed slot."""

    def __init__(
        self,
        good: Callable[[Mapping[str, Any]], bytes],
        bad: Callable[[Mapping[str, Any]], tuple[str, bytes]],
    ) -> None:
        self.good = good
        self.bad = bad


def json_feed(mixer: Any) -> FeedValues:
    from forestream.producer.encoding import encode_row

    return FeedValues(encode_row, mixer.make)


def avro_feed(
    encode: Callable[[Mapping[str, Any]], bytes], numeric: list[str], seed: int = 7
) -> FeedValues:
    """Good rows through ``encode`` (the registered schema); bad ones from :func:`avro_bad`,
    the kinds of :data:`AVRO_MALFORMED` in turn, spoiling the required numeric features in
    turn."""
    made = 0

    def bad(row: Mapping[str, Any]) -> tuple[str, bytes]:
        nonlocal made
        kind = AVRO_MALFORMED[made % len(AVRO_MALFORMED)]
        name = numeric[(made // len(AVRO_MALFORMED) + seed) % len(numeric)] if numeric else None
        made += 1
        return kind, avro_bad(kind, row, encode, name)

    return FeedValues(encode, bad)


def avro_bad(
    kind: str,
    row: Mapping[str, Any],
    encode: Callable[[Mapping[str, Any]], bytes],
    numeric: str | None,
) -> bytes:
    """A value of ``kind`` derived from the valid ``row``: what the worker must dead-letter
    under that reason (``numeric``: the required numeric feature to spoil)."""
    from forestream.producer.encoding import encode_row
    from forestream.producer.malformed import MAX_VALUE_BYTES
    from forestream.wire.confluent import HEADER_BYTES, frame

    if kind == ReasonCode.UNDECODABLE_BODY:  # every field takes >= 1 byte: a cut body is short
        whole = encode(row)
        return whole[: HEADER_BYTES + max(1, (len(whole) - HEADER_BYTES) // 2)]
    if kind == ReasonCode.NO_MAGIC_BYTE:  # sent past the serializer, as JSON
        return encode_row(row)
    if kind == ReasonCode.UNKNOWN_SCHEMA_ID:
        return frame(UNISSUED_SCHEMA_ID, encode(row)[HEADER_BYTES:])
    if kind in (ReasonCode.NOT_FINITE, ReasonCode.OUT_OF_RANGE):
        if numeric is None:
            raise ValueError(f"no numeric feature to spoil for {kind}")
        spoilt = float("nan") if kind == ReasonCode.NOT_FINITE else 1e300
        return encode({**row, numeric: spoilt})
    if kind == ReasonCode.TOO_LARGE:  # one Avro string field would be the same size; compressible
        return encode(row) + b"x" * (MAX_VALUE_BYTES + 1)
    if kind == ReasonCode.EMPTY:
        return b""
    raise ValueError(f"unknown malformed kind {kind!r}")


def feed_values(
    plan: FormatPlan, registry: DemoRegistry, input_topic: str, mixer: Any
) -> FeedValues:
    """The feed's values for ``plan``: JSON as ``produce`` writes it, or Avro with the schema
    ``train --register-schema`` registered for ``input_topic``."""
    if not plan.needs_registry:
        return json_feed(mixer)
    from forestream.producer.registered import latest_avro_encoder

    registered = latest_avro_encoder(registry.access(), input_topic)
    numeric = list(mixer.numeric)
    return avro_feed(registered.encode, numeric)
