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


class ServedPrediction(BaseModel):
    """On a shadow record: what the served version predicted for the same input record, so a
    shadow record alone compares candidate and served on the same record (no three-way join)."""

    version: str
    prediction: str


class Prediction(BaseModel):
    """Value of a record on the predictions topic; its key is the input record's key.

    The shadow topic carries the same shape, from the candidate, with ``served`` set.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    prediction: str
    probabilities: dict[str, float]
    model_version: str
    source: SourceRef
    event_time: int = Field(description="input record timestamp, ms since epoch")
    scored_at: int = Field(description="when the batch was scored, ms since epoch")
    served: ServedPrediction | None = Field(
        default=None, description="shadow records only: the served version's prediction"
    )


class ServingRef(BaseModel):
    """The version workers must serve, with what they need to verify it before unpickling."""

    model_config = ConfigDict(protected_namespaces=())

    version: str
    sha256: str
    signature: str | None = None


class Decision(BaseModel):
    """Why an automatic promotion or rollback happened: the rule and the fleet's counts it held
    on, so the models topic (and ``models list``) shows the evidence beside the change."""

    model_config = ConfigDict(protected_namespaces=())

    by: str = Field(description="who decided, e.g. the evaluator's id")
    rule: str = Field(description="the rule as stated, e.g. 'labelled>=2000 and ...'")
    evidence: dict[str, float | int | str | None] = Field(
        default_factory=dict, description="the numbers the rule was evaluated on"
    )


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
    decision: Decision | None = Field(
        default=None, description="set when a rule, not a person, made this change"
    )
    at: int = Field(description="event time, ms since epoch")


SHADOW_KEY_SUFFIX = "/shadow"
"""A model's shadow announcements use the key ``<name>/shadow`` on the models topic: its own
compaction key, so the newest one survives beside the newest :class:`ModelEvent`; a model name
cannot contain ``/`` (:data:`forestream.registry.metadata.NAME_RE`), so no name collides, and
readers matching the key to a model name skip it."""


def shadow_key(name: str) -> str:
    """The models topic key of ``name``'s shadow announcements."""
    return name + SHADOW_KEY_SUFFIX


class ShadowEvent(BaseModel):
    """Value of a shadow announcement on the models topic; key = ``<name>/shadow``.

    ``shadow`` is the candidate every worker scores beside the served version, or None once
    stopped: a record rather than a tombstone, so every reader parses one shape and the stop
    stays on the topic (when, by whom) until the next announcement replaces it.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: Literal["shadow"] = "shadow"
    name: str
    shadow: ServingRef | None = None
    at: int = Field(description="event time, ms since epoch")


class Label(BaseModel):
    """Value of a record on the labels topic; key = the input record's key."""

    label: str


class FeatureDrift(BaseModel):
    """Live-vs-training comparison of one feature over a worker's sliding window."""

    psi: float = Field(description="Population Stability Index of the non-missing values")
    missing_share: float = Field(description="share of window records with the value missing")
    unseen_share: float = Field(description="share of window records with an unseen category")
    drifting: bool = Field(description="psi >= the worker's threshold (with enough records)")


class VersionAccuracy(BaseModel):
    """Online accuracy of one model version over its rolling window of labelled predictions."""

    labelled: int = Field(description="labelled predictions in the window")
    accuracy: float | None = None
    macro_f1: float | None = None


class WindowCounts(BaseModel):
    """One worker's counts for one model version in one wall-clock window (by scoring time).

    Cumulative within the window for that worker: a newer report carries the same or larger
    counts for the same (worker, version, window), so a reader keeps the newest and sums across
    workers (:class:`forestream.fleet.drift.FleetDrift`). ``features`` are counts in the
    version's reference bins, in the order :func:`forestream.fleet.drift.expected_bins` gives
    (numeric: one per bin; categorical: the reference's categories, then unseen), then one
    slot for records with the value missing: each feature's counts sum to ``records``.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_version: str
    window_start: int = Field(description="window start (scoring time), ms since epoch")
    records: int = Field(description="valid records scored in the window by this version")
    features: dict[str, list[int]] = Field(
        default_factory=dict, description="feature -> counts per reference bin, then missing"
    )
    predicted: dict[str, int] = Field(
        default_factory=dict, description="predicted class -> records"
    )


class DriftReport(BaseModel):
    """Value of a record on the monitoring topic; key = worker id. Published periodically.

    Totals (``records_in``, ``predicted``, ``dead_lettered``) are cumulative since the worker
    started, so a reader only needs the newest report per worker. ``windows`` are the counts
    of the last few wall-clock windows, each cumulative within its window, for drift over the
    whole fleet (:class:`WindowCounts`).
    """

    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str | None
    worker_id: str
    window: int = Field(description="configured drift window, records")
    window_records: int = Field(description="records currently in the drift window")
    at: int = Field(description="report time, ms since epoch")
    features: dict[str, FeatureDrift] = Field(default_factory=dict)
    throughput: float = Field(default=0.0, description="records in per second, recent")
    records_in: int = 0
    predicted: int = 0
    dead_lettered: dict[str, int] = Field(default_factory=dict)
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    online: dict[str, VersionAccuracy] = Field(
        default_factory=dict, description="per model version"
    )
    labels_joined: int = 0
    fleet_window_s: float | None = Field(
        default=None, description="length of the windows in ``windows``, seconds"
    )
    windows: list[WindowCounts] = Field(
        default_factory=list, description="counts of the last few windows, for fleet drift"
    )


class EvaluationCounts(BaseModel):
    """Value of an evaluator's record on the monitoring topic; key = ``<version>/<window>``.

    A *delta*: the pairs one evaluator joined since its previous record, so the fleet's counts
    for a version and window are the sum of every record with that key, whichever instance
    wrote it. Counts, not ratios: accuracy and macro F1 of a sum are exact, of an average not.
    """

    model_config = ConfigDict(protected_namespaces=())

    kind: Literal["evaluation_counts"] = "evaluation_counts"
    evaluator_id: str
    model_version: str
    window_start: int = Field(description="label arrival window start, ms since epoch")
    window_s: float = Field(description="window length, seconds")
    labelled: int = Field(description="pairs counted in this record")
    confusion: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="true class -> predicted class -> pairs"
    )
    at: int = Field(description="publish time, ms since epoch")


class ShadowCounts(BaseModel):
    """Value of an evaluator's shadow record on the monitoring topic; key =
    ``<candidate>/shadow/<served>/<window>``.

    A *delta*, like :class:`EvaluationCounts`, over labelled shadow records: each one carries
    the candidate's and the served version's prediction for the same input record
    (:class:`ServedPrediction`), so both confusion matrices are over the same records and the
    policy's "candidate at least as accurate as served" compares like with like.
    """

    model_config = ConfigDict(protected_namespaces=())

    kind: Literal["shadow_counts"] = "shadow_counts"
    evaluator_id: str
    candidate_version: str
    served_version: str
    window_start: int = Field(description="label arrival window start, ms since epoch")
    window_s: float = Field(description="window length, seconds")
    labelled: int = Field(description="labelled shadow records counted in this record")
    agreed: int = Field(description="of those, where candidate and served predicted alike")
    candidate_confusion: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="true class -> candidate's class -> records"
    )
    served_confusion: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="true class -> served version's class -> records"
    )
    at: int = Field(description="publish time, ms since epoch")
