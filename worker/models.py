"""Which model the worker serves: follow the models topic, load promotions beside the old model.

Every worker reads the whole compacted models topic on its own, group-less consumer (assign all
partitions, seek to the beginning), so each process sees every promotion, including those made
before it started. Loading (hash, signature and scikit-learn version checks, unpickling, the
schema check of :func:`forestream.wire.schema.serving_incompatibilities`, a warm-up prediction)
happens in a background thread; the scoring loop only reads :meth:`ModelFollower.current` once
per batch, so a new model takes over between two batches and a bad one never takes over at
all: the old model keeps serving, the reason is logged once (and counted by exception class,
e.g. ``BadSignature``), and the load is retried with backoff (the artifact may simply not be
visible yet on a shared store). A version superseded while it
loaded (a registry command withdrew it) is dropped instead of swapped in.

A shadow candidate (``models shadow``, key ``<name>/shadow``) is loaded the same way, with the
same checks, after the served version; :meth:`ModelFollower.shadow` hands it to the scoring
loop, and a stop (or a failed load) simply leaves nothing there: it never touches serving.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from pydantic import ValidationError

from forestream.errors import SchemaIncompatible
from forestream.wire.messages import ModelEvent, ServingRef, ShadowEvent, shadow_key
from forestream.wire.schema import (
    CategoricalFeature,
    FeatureSchema,
    NumericFeature,
    serving_incompatibilities,
)

if TYPE_CHECKING:
    from forestream.edge.factory import Target
    from forestream.errors import KafkaFatalError
    from forestream.registry.signing import Trust
    from forestream.registry.store import ModelStore

log = structlog.get_logger("forestream.worker.models")

ModelLoader = Callable[[ServingRef], tuple[Any, Any]]
"""Loads and verifies a serving ref: returns ``(pipeline, metadata)`` or raises."""


def check_servable(active: ActiveModel | None, metadata: Any) -> None:
    """Refuse a version that cannot take over the stream the active model is serving.

    Nothing is active on a worker's first load: any schema can start a stream.
    """
    if active is None:
        return
    problems = serving_incompatibilities(active.schema, metadata.feature_schema)
    if problems:
        raise SchemaIncompatible(
            f"cannot replace {active.version} on a running stream: " + "; ".join(problems)
        )


@dataclass(frozen=True)
class ActiveModel:
    """A verified, warmed-up model; ``metadata`` is a
    ``forestream.registry.metadata.ModelMetadata``."""

    version: str
    sha256: str
    pipeline: Any
    metadata: Any

    @cached_property
    def classes(self) -> list[str]:
        """As strings, once: read several times per batch."""
        return [str(c) for c in self.metadata.classes]

    @property
    def schema(self) -> FeatureSchema:
        return self.metadata.feature_schema

    @property
    def engine(self) -> str:
        """``compiled`` or ``sklearn``: the engine scoring this version now."""
        from forestream.worker.forest_engine import engine_of

        return engine_of(self.pipeline)


def store_loader(
    store: ModelStore | Path | str,
    name: str,
    cache_dir: Path | None = None,
    trust: Trust | None = None,
) -> ModelLoader:
    """The production loader: the store (a directory or a URI) with hash, signature and
    scikit-learn version checks under ``trust`` (unset: the environment's), and with
    ``cache_dir`` a local cache by content hash in front of it.

    A version already in the cache loads without touching the store: after a restart, on a
    rollback, or while the store is unreachable. Cached or downloaded, the bytes pass the same
    checks against the hash announced on the models topic before they are unpickled.
    """
    from forestream.errors import ArtifactRejected
    from forestream.registry.cache import ArtifactCache
    from forestream.registry.open import open_store
    from forestream.registry.signing import Trust
    from forestream.registry.store import ModelStore, check_artifact, unpickle_model

    model_store = store if isinstance(store, ModelStore) else open_store(store)
    policy = trust if trust is not None else Trust.from_env()
    cache = ArtifactCache(cache_dir) if cache_dir is not None else None

    def load(ref: ServingRef) -> tuple[Any, Any]:
        if cache is None:
            return model_store.load_verified(
                name, ref.version, expected_sha256=ref.sha256, trust=policy
            )
        hit = cache.get(name, ref.version, ref.sha256)
        if hit is not None:
            data, meta = hit
            where = f"cached {name} {ref.version} ({cache.artifact_path(ref.sha256)})"
            try:
                check_artifact(data, meta, where, ref.sha256, policy)
            except ArtifactRejected as exc:
                log.warning("model_cache_entry_rejected", version=ref.version, reason=str(exc))
                cache.discard(name, ref.version, ref.sha256)
            else:
                policy.check_version(meta, where)
                pipeline = unpickle_model(data, where)
                log.info("model_artifact_read", version=ref.version, source="cache")
                return pipeline, meta
        data, meta = model_store.fetch_verified(
            name, ref.version, expected_sha256=ref.sha256, trust=policy
        )
        where = model_store.version_location(name, ref.version)
        policy.check_version(meta, where)
        pipeline = unpickle_model(data, where)
        cached = cache.put(name, meta, data)
        log.info("model_artifact_read", version=ref.version, source="store", cached=cached)
        return pipeline, meta

    return load


def reference_row(schema: FeatureSchema, reference: Any = None) -> bytes:
    """One plausible input record (JSON) for a warm-up prediction before a model goes live."""
    row: dict[str, Any] = {}
    stats = getattr(reference, "features", {}) or {}
    for feature in schema.features:
        if isinstance(feature, NumericFeature):
            mean = getattr(stats.get(feature.name), "mean", None)
            row[feature.name] = float(mean if mean is not None else (feature.min or 0.0))
        elif isinstance(feature, CategoricalFeature):
            row[feature.name] = feature.categories[0] if feature.categories else ""
    return json.dumps(row).encode()


REFERENCE_ROWS = 256
"""Rows synthesised from a version's reference statistics for the engine's parity gate."""


def reference_rows(
    schema: FeatureSchema, reference: Any = None, count: int = REFERENCE_ROWS, seed: int = 0
) -> list[bytes]:
    """``count`` input records (JSON) drawn from the training distribution the version carries.

    Numeric: a quantile bin by its training share, then a value uniformly inside it (the outer
    bins reach one bin width beyond the outer edges); a missing value (null) as often as in
    training, at least 5 % when the feature was ever missing. Categorical: a category by its
    share, missing likewise, and now and then one training never saw (one-hot ignores it).
    Without statistics, values spread over the schema's min..max. Seeded: the same every time.
    """
    rng = np.random.default_rng(seed)
    stats = getattr(reference, "features", {}) or {}
    columns: dict[str, list[Any]] = {}
    for feature in schema.features:
        ref = stats.get(feature.name)
        if isinstance(feature, NumericFeature):
            values: list[Any] = _numeric_samples(feature, ref, rng, count)
        else:
            shares = dict(getattr(ref, "shares", None) or {})
            names = list(shares) or list(feature.categories) or [""]
            weights = np.asarray([shares.get(n, 1.0) for n in names], dtype=np.float64)
            p = weights / weights.sum() if weights.sum() > 0 else None
            values = [str(v) for v in rng.choice(names, size=count, p=p)]
            for j in np.flatnonzero(rng.random(count) < 0.03).tolist():
                values[j] = "~unseen~"
        if feature.missing_seen:
            share = max(float(getattr(ref, "missing_share", 0.0) or 0.0), 0.05)
            for j in np.flatnonzero(rng.random(count) < share).tolist():
                values[j] = None
        columns[feature.name] = values
    return [
        json.dumps({name: column[i] for name, column in columns.items()}).encode()
        for i in range(count)
    ]


def _numeric_samples(
    feature: NumericFeature, ref: Any, rng: np.random.Generator, count: int
) -> list[float]:
    edges = [float(e) for e in (getattr(ref, "edges", None) or [])]
    if not edges:
        low = feature.min if feature.min is not None else -1.0
        high = feature.max if feature.max is not None else 1.0
        edges = sorted({float(low), float(high)})
    spread = (edges[-1] - edges[0]) / max(len(edges) - 1, 1) or 1.0
    lows = np.asarray([edges[0] - spread, *edges])
    highs = np.asarray([*edges, edges[-1] + spread])
    shares = np.asarray(getattr(ref, "shares", None) or [], dtype=np.float64)
    weights = shares / shares.sum() if len(shares) == len(lows) and shares.sum() > 0 else None
    bins = rng.choice(len(lows), size=count, p=weights)
    values = lows[bins] + (highs[bins] - lows[bins]) * rng.random(count)
    return [float(v) for v in np.clip(values, -1e30, 1e30)]


def warm_up(pipeline: Any, metadata: Any, *, compiled: bool = True) -> None:
    """Pick the model's engine by the parity gate on reference rows, then score one reference
    row through the same path as live batches; raises if it cannot.

    The engine's gate (:func:`forestream.worker.forest_engine.prepare`) runs on the mean row plus
    :data:`REFERENCE_ROWS` rows drawn from the version's reference statistics; the first live
    batch is checked once more (:func:`forestream.worker.forest_engine.check_first_batch`).
    ``compiled=False`` keeps sklearn's path without trying (``FORESTREAM_FOREST_ENGINE=sklearn``).
    """
    from forestream.worker.decoding import decode_batch
    from forestream.worker.forest_engine import check_first_batch, prepare
    from forestream.worker.process_memory import return_free_heap
    from forestream.worker.scoring import score_frame

    schema: FeatureSchema = metadata.feature_schema
    expected = getattr(pipeline, "feature_names_in_", None)
    if expected is not None and set(map(str, expected)) != set(schema.names):
        raise ValueError(
            f"pipeline expects features {sorted(map(str, expected))}, "
            f"its metadata schema lists {sorted(schema.names)}"
        )
    classes = [str(c) for c in metadata.classes]
    fitted = getattr(pipeline, "classes_", None)
    fitted_classes = None if fitted is None else [str(c) for c in fitted]
    if fitted_classes is not None and fitted_classes != classes:
        # labels come from classes[argmax]: another order would mislabel every prediction
        raise ValueError(
            f"pipeline classes {fitted_classes} differ from the metadata's {list(metadata.classes)}"
        )
    reference = getattr(metadata, "reference", None)
    rows = [reference_row(schema, reference), *reference_rows(schema, reference)]
    decoded = decode_batch(rows, schema)
    if decoded.rejects and decoded.rejects[0].index == 0:
        raise ValueError(f"reference row rejected by its own schema: {decoded.rejects[0].detail}")
    label = str(getattr(metadata, "version", "") or "")
    prepare(pipeline, decoded.frame, label=label, compiled=compiled)
    score_frame(pipeline, decoded.frame.iloc[:1], classes)
    check_first_batch(pipeline)
    # the version is loaded: what unpickling it, its engine and these rows left free in
    # glibc's arenas goes back (~10 MB of the worker's peak), whichever engine serves
    return_free_heap()


def _same(a: ServingRef | None, b: ServingRef | None) -> bool:
    """The same version and artifact (events are new objects each time)."""
    if a is None or b is None:
        return a is b
    return (a.version, a.sha256) == (b.version, b.sha256)


class ModelFollower:
    """Background follower of the models topic for one model name."""

    def __init__(
        self,
        kafka: Target,
        models_topic: str,
        name: str,
        loader: ModelLoader,
        *,
        retry_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        on_load_failure: Callable[[str], None] | None = None,
        rebuild_without_broker_s: float | None = None,
        on_client_rebuilt: Callable[[str], None] | None = None,
        compiled: bool = True,
    ) -> None:
        self.kafka = kafka
        self.rebuild_without_broker_s = rebuild_without_broker_s
        """librdkafka: past this long without a broker, the reader is rebuilt (#5301)."""
        self.on_client_rebuilt = on_client_rebuilt
        self.models_topic = models_topic
        self.name = name
        self.loader = loader
        self.retry_backoff_s = retry_backoff_s
        self.max_backoff_s = max_backoff_s
        self.on_load_failure = on_load_failure
        """Told a short stable reason (the exception class) per failed load, e.g. a metric."""
        self.compiled = compiled
        """Offer each version the compiled forest engine (``FORESTREAM_FOREST_ENGINE=auto``)."""
        self._active: ActiveModel | None = None
        self.fatal: KafkaFatalError | None = None
        """Set when following failed for good (e.g. no ACL on the models topic): the worker
        ends on it rather than waiting for a model that cannot come."""
        self._wanted: ServingRef | None = None
        self._shadow_key = shadow_key(name)
        self._shadow_wanted: ServingRef | None = None
        self._shadow: ActiveModel | None = None
        self._shadow_failed: tuple[str, str] | None = None
        self.on_shadow_change: Callable[[str | None], None] | None = None
        """Told the shadow version (None: none) whenever it changes, e.g. a gauge."""
        self._failed: tuple[str, str] | None = None  # (version, sha256) whose failure we logged
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="model-follower", daemon=True)

    def start(self) -> ModelFollower:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def current(self) -> ActiveModel | None:
        """The model to score the next batch with (a plain attribute read: cheap per batch)."""
        return self._active

    def shadow(self) -> ActiveModel | None:
        """The candidate to shadow-score the next batch with, if any (a plain read)."""
        return self._shadow

    def wait(self, timeout_s: float) -> ActiveModel | None:
        """Block until a model is active or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._active is None and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        return self._active

    # -- background thread -------------------------------------------------------------------

    def _run(self) -> None:
        from forestream.errors import BrokersLost, KafkaFatalError, TransientKafkaError

        backoff = self.retry_backoff_s
        while not self._stop.is_set():
            try:
                self._follow()
                return
            except BrokersLost as lost:  # a new reader reads the compacted topic again
                from forestream.worker.healing import reader_rebuilt

                reader_rebuilt("model_follower", lost, self.on_client_rebuilt)
                continue
            except KafkaFatalError as fatal:
                self.fatal = fatal
                with self._changed:
                    self._changed.notify_all()
                return
            except TransientKafkaError as exc:
                log.warning("models_topic_unreachable", error=str(exc), retry_in_s=backoff)
            except Exception:  # never let the follower die silently: the loop would starve
                log.exception("model_follower_error", retry_in_s=backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def _follow(self) -> None:
        from forestream.edge.factory import partition_reader
        from forestream.edge.interface import TopicPartition

        consumer = partition_reader(
            self.kafka,
            client_id=f"forestream-model-follower-{self.name}",
            rebuild_without_broker_s=self.rebuild_without_broker_s,
        )
        try:
            partitions: set[int] = set()
            while not partitions and not self._stop.is_set():
                partitions = consumer.partitions(self.models_topic)
                if not partitions:
                    self._stop.wait(0.5)
            if self._stop.is_set() or not partitions:
                return
            tps = [TopicPartition(self.models_topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            consumer.seek_to_beginning(tps)
            next_load_at = next_shadow_at = 0.0
            backoff = shadow_backoff = self.retry_backoff_s

            def read(timeout_s: float) -> None:
                for record in consumer.poll_batch(2000, timeout_s):
                    self._on_record(record.key, record.value)

            while not self._stop.is_set():
                read(0.2)  # returns as soon as an event arrives (the fetch is a long poll)
                if self._needs_load() and time.monotonic() >= next_load_at:
                    wanted = self._wanted
                    if self._load_wanted(refresh=lambda: read(0.0)):
                        backoff = self.retry_backoff_s
                    elif not _same(self._wanted, wanted):
                        next_load_at = 0.0  # superseded while loading: load the newer one now
                    else:
                        next_load_at = time.monotonic() + backoff
                        backoff = min(backoff * 2, self.max_backoff_s)
                elif self._needs_shadow_load() and time.monotonic() >= next_shadow_at:
                    if self._load_shadow():
                        shadow_backoff = self.retry_backoff_s
                    else:
                        next_shadow_at = time.monotonic() + shadow_backoff
                        shadow_backoff = min(shadow_backoff * 2, self.max_backoff_s)
        finally:
            consumer.close()

    def _on_record(self, key: bytes | None, value: bytes | None) -> None:
        if key is not None and value and key.decode("utf-8", "replace") == self._shadow_key:
            self._on_shadow(value)
            return
        if key is None or key.decode("utf-8", "replace") != self.name or not value:
            return
        try:
            event = ModelEvent.model_validate_json(value)
        except ValidationError as exc:
            log.warning("model_event_invalid", error=str(exc).splitlines()[0])
            return
        if event.serving is None:
            return
        if self._wanted is None or (event.serving.version, event.serving.sha256) != (
            self._wanted.version,
            self._wanted.sha256,
        ):
            log.info(
                "model_promotion_seen",
                name=self.name,
                kind=event.kind,
                version=event.serving.version,
            )
        self._wanted = event.serving

    def _on_shadow(self, value: bytes) -> None:
        try:
            wanted = ShadowEvent.model_validate_json(value).shadow
        except ValidationError as exc:
            log.warning("shadow_event_invalid", error=str(exc).splitlines()[0])
            return
        if _same(wanted, self._shadow_wanted):
            return
        self._shadow_wanted = wanted
        if wanted is None:  # gone before the line: a batch after it is never shadowed
            stopped = self._shadow.version if self._shadow else None
            self._set_shadow(None)
            log.info("shadow_stopped", name=self.name, version=stopped)
        else:
            log.info("shadow_announced", name=self.name, version=wanted.version)

    def _set_shadow(self, model: ActiveModel | None) -> None:
        self._shadow = model
        if self.on_shadow_change is not None:
            with contextlib.suppress(Exception):
                self.on_shadow_change(model.version if model else None)

    def _needs_shadow_load(self) -> bool:
        wanted, shadow = self._shadow_wanted, self._shadow
        if wanted is None or self._active is None:  # the served version first
            return False
        return shadow is None or (shadow.version, shadow.sha256) != (wanted.version, wanted.sha256)

    def _load_shadow(self) -> bool:
        """Load the shadow candidate with the served version's checks; False on failure (the
        previous candidate, if any, is dropped: its predictions would be mislabelled)."""
        wanted = self._shadow_wanted
        if wanted is None:
            return False
        started = time.monotonic()
        try:
            pipeline, metadata = self.loader(wanted)
            check_servable(self._active, metadata)
            warm_up(pipeline, metadata, compiled=self.compiled)
        except Exception as exc:
            if self._shadow is not None:
                self._set_shadow(None)
            if self.on_load_failure is not None:
                with contextlib.suppress(Exception):
                    self.on_load_failure(type(exc).__name__)
            if self._shadow_failed != (wanted.version, wanted.sha256):  # once per target
                self._shadow_failed = (wanted.version, wanted.sha256)
                log.error(
                    "shadow_load_failed",
                    name=self.name,
                    version=wanted.version,
                    reason=f"{type(exc).__name__}: {exc}",
                )
            return False
        if not _same(self._shadow_wanted, wanted):  # stopped or replaced while loading
            return True
        self._shadow_failed = None
        self._set_shadow(ActiveModel(wanted.version, wanted.sha256, pipeline, metadata))
        log.info(
            "shadow_in_use",
            name=self.name,
            version=wanted.version,
            serving=self._active.version if self._active else None,
            engine=self._shadow.engine if self._shadow else None,
            load_s=round(time.monotonic() - started, 3),
        )
        return True

    def _needs_load(self) -> bool:
        wanted, active = self._wanted, self._active
        if wanted is None:
            return False
        return active is None or (active.version, active.sha256) != (wanted.version, wanted.sha256)

    def _load_wanted(self, refresh: Callable[[], None] | None = None) -> bool:
        """Load beside the active model, verify, warm up, then swap; False on failure.

        ``refresh`` reads events that arrived meanwhile: a version superseded while it loaded
        (a registry command that withdrew it) is never swapped in, not even for one batch.
        """
        wanted = self._wanted
        if wanted is None:  # callers load only after _needs_load() said there is a version
            raise RuntimeError("no model version is wanted: nothing to load")
        started = time.monotonic()
        try:
            pipeline, metadata = self.loader(wanted)
            check_servable(self._active, metadata)
            warm_up(pipeline, metadata, compiled=self.compiled)
        except Exception as exc:
            if self.on_load_failure is not None:
                with contextlib.suppress(Exception):
                    self.on_load_failure(type(exc).__name__)
            key = (wanted.version, wanted.sha256)
            if self._failed != key:  # once per target, not once per retry
                self._failed = key
                log.error(
                    "model_load_failed",
                    name=self.name,
                    version=wanted.version,
                    reason=f"{type(exc).__name__}: {exc}",
                    keeps_serving=self._active.version if self._active else None,
                )
            return False
        if refresh is not None:
            refresh()
        if not _same(self._wanted, wanted):
            log.info(
                "model_load_superseded",
                name=self.name,
                version=wanted.version,
                wanted=self._wanted.version if self._wanted else None,
            )
            return False
        previous = self._active
        with self._changed:
            self._active = ActiveModel(wanted.version, wanted.sha256, pipeline, metadata)
            self._changed.notify_all()
        self._failed = None
        log.info(
            "model_in_use",
            name=self.name,
            version=wanted.version,
            previous=previous.version if previous else None,
            classes=self._active.classes,
            features=len(self._active.schema.features),
            engine=self._active.engine,
            load_s=round(time.monotonic() - started, 3),
        )
        return True
