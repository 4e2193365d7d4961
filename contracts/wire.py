"""Messages on the wire. Values are UTF-8 JSON; these pydantic models document and check them.

The worker's hot path does not build these models per record (that would cost more than the
prediction); it writes the same JSON shape with ``json.dumps``. Tests parse the output back
through these models, so the two cannot drift apart silently.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SourceRef(BaseModel):
    """Where an input record came from: the coordinates a backfill or an audit needs."""

    topic: str
    partition: int
    offset: int


class Prediction(BaseModel):
    """Value of a record on the predictions topic; its key is the input record's key."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    prediction: str
    probabilities: dict[str, float]
    model_version: str
    source: SourceRef
    event_time: int = Field(description="input record timestamp, ms since epoch")
    scored_at: int = Field(description="when the batch was scored, ms since epoch")


class ServingRef(BaseModel):
    """The version workers must serve, with what they need to verify it before unpickling."""

    model_config = ConfigDict(protected_namespaces=())

    version: str
    sha256: str
    signature: str | None = None


class ModelEvent(BaseModel):
    """Value of a record on the compacted models topic; key = model name.

    Every event carries ``serving`` (the promoted version as of this event), so compaction,
    which keeps only the newest event per model name, never loses the promotion state.
    ``kind`` says what happened: a version was published, promoted, or rolled back to.
    """

    model_config = ConfigDict(protected_namespaces=())

    kind: Literal["published", "promoted", "rolled_back"]
    name: str
    version: str
    sha256: str
    signature: str | None = None
    created_at: str
    accuracy: float | None = None
    macro_f1: float | None = None
    serving: ServingRef | None = None
    at: int = Field(description="event time, ms since epoch")


class Label(BaseModel):
    """Value of a record on the labels topic; key = the input record's key."""

    label: str
