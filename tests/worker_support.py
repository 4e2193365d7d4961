"""A tiny trained pipeline and its input records, shared by the worker's unit and integration tests.

Mirrors what the trainer produces (ColumnTransformer with imputers + one-hot, then a small
RandomForest) without depending on the trainer package.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from forestream.wire.schema import CategoricalFeature, FeatureSchema, NumericFeature
from forestream.worker.assignment_log import log_events, owned_partitions

if TYPE_CHECKING:
    from forestream.registry.signing import Signer

NUMERIC = ["x1", "x2", "x3"]
CATEGORICAL = ["color", "shape"]
COLORS = ["red", "green", "blue"]
SHAPES = ["circle", "square"]


def make_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """Features with some NaNs in x2 and shape (so those may be missing), and a 3-class target."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(0, 1, n),
            "x2": rng.normal(5, 2, n),
            "x3": rng.uniform(-1, 1, n),
            "color": pd.Series(rng.choice(COLORS, n), dtype=object),
            "shape": pd.Series(rng.choice(SHAPES, n), dtype=object),
        }
    )
    score = frame["x1"] + (frame["color"] == "red") * 1.5 - frame["x3"]
    frame["target"] = np.where(score > 1, "high", np.where(score < -0.5, "low", "mid"))
    frame.loc[rng.random(n) < 0.1, "x2"] = np.nan
    frame.loc[rng.random(n) < 0.1, "shape"] = np.nan
    return frame


def fit_pipeline(frame: pd.DataFrame, trees: int = 10) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    pre = ColumnTransformer(
        [
            ("num", SimpleImputer(strategy="median"), NUMERIC),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                CATEGORICAL,
            ),
        ]
    )
    pipeline = Pipeline(
        [("pre", pre), ("rf", RandomForestClassifier(n_estimators=trees, random_state=0))]
    )
    pipeline.fit(frame[NUMERIC + CATEGORICAL], frame["target"])
    return pipeline


def schema_for(frame: pd.DataFrame) -> FeatureSchema:
    features: list[NumericFeature | CategoricalFeature] = [
        NumericFeature(name=c, missing_seen=bool(frame[c].isna().any())) for c in NUMERIC
    ]
    features += [
        CategoricalFeature(
            name=c,
            categories=sorted(frame[c].dropna().unique().tolist()),
            missing_seen=bool(frame[c].isna().any()),
        )
        for c in CATEGORICAL
    ]
    return FeatureSchema(features=features)


def row_json(row: pd.Series) -> bytes:
    """One input record: missing values are left out, as a CSV-to-JSON producer would."""
    out: dict[str, Any] = {}
    for name in NUMERIC + CATEGORICAL:
        value = row[name]
        if isinstance(value, float) and math.isnan(value):
            continue
        out[name] = float(value) if name in NUMERIC else str(value)
    return json.dumps(out).encode()


# -- integration: a promoted model in a real store, worker processes, bad records ----------------


def save_model(
    store: Path,
    name: str,
    frame: pd.DataFrame,
    trees: int = 10,
    *,
    signed: bool = True,
    signer: Signer | None = None,
) -> tuple[Any, Any]:
    """Fit, save through LocalModelStore and promote: returns (pipeline, saved ModelMetadata).

    Signed with ``signer``, by default the session's key pair; ``signed=False`` saves it
    unsigned (what workers must refuse unless told otherwise)."""
    import sklearn

    from forestream.registry.local import LocalModelStore
    from forestream.registry.metadata import ModelMetadata
    from forestream.wire.schema import ReferenceStats
    from tests.signing_support import session_signer

    pipeline = fit_pipeline(frame, trees=trees)
    metadata = ModelMetadata(
        name=name,
        created_at="2026-01-01T00:00:00+00:00",
        target="target",
        classes=[str(c) for c in pipeline.classes_],
        feature_schema=schema_for(frame),
        reference=ReferenceStats(features={}),
        metrics={},
        data_sha256="0" * 64,
        data_rows=len(frame),
        sklearn_version=sklearn.__version__,
    )
    model_store = LocalModelStore(store)
    if signed and signer is None:
        signer = session_signer()
    saved = model_store.save(name, pipeline, metadata, {}, signer=signer if signed else None)
    model_store.promote(name, saved.version)
    return pipeline, saved


def publish_promotion(bootstrap: str, models_topic: str, metadata: Any) -> None:
    """What ``forestream models promote`` announces, through the trainer's own publisher."""
    from forestream.training.publish import model_event, publish_event
    from forestream.wire.messages import ServingRef

    serving = ServingRef(
        version=metadata.version, sha256=metadata.artifact_sha256, signature=metadata.signature
    )
    publish_event(bootstrap, models_topic, model_event("promoted", metadata, serving))


MAX_RECORD_BYTES = 2000
"""Workers in the integration tests run with this limit, so ``too_large`` needs no 1 MiB record."""


def malformed_records() -> list[tuple[bytes | None, str]]:
    """(value, expected reason code): every code the decoder can produce, some twice.

    Relies on the schema of :func:`make_frame`: x1, x3 and color never missing; x2 and shape
    sometimes missing (so leaving those out is valid, not a reject).
    """
    good = {"x1": 0.5, "x2": 1.0, "x3": 0.1, "color": "red", "shape": "circle"}

    def with_(**changes: Any) -> bytes:
        row = {**good, **changes}
        return json.dumps({k: v for k, v in row.items() if v is not _DROP}).encode()

    return [
        (None, "empty"),
        (b"", "empty"),
        (with_(pad="x" * (MAX_RECORD_BYTES + 10)), "too_large"),
        (b"\xff\xfe not utf-8", "not_json"),
        (b'{"x1": 1,', "not_json"),
        (b"[1, 2, 3]", "not_object"),
        (b'"just a string"', "not_object"),
        (with_(x1=_DROP), "missing_feature"),
        (with_(color=None), "missing_feature"),
        (with_(x1="1.5"), "wrong_type"),
        (with_(x3=True), "wrong_type"),
        (with_(color=3), "wrong_type"),
        (b'{"x1": NaN, "x2": 1.0, "x3": 0.1, "color": "red"}', "not_finite"),
        (b'{"x1": 1e999, "x2": 1.0, "x3": 0.1, "color": "red"}', "not_finite"),
    ]


_DROP = object()


def worker_command(
    bootstrap: str,
    topics: dict[str, str],
    store: Path,
    name: str,
    group: str,
    *extra: str,
) -> list[str]:
    """The command line of one ``forestream worker`` process for the integration tests."""
    return [
        sys.executable, "-m", "forestream.cli", "worker",
        "--bootstrap-servers", bootstrap,
        "--input-topic", topics["in"],
        "--output-topic", topics["out"],
        "--dlq-topic", topics["dlq"],
        "--models-topic", topics["models"],
        "--labels-topic", topics.get("labels", topics["in"] + ".labels"),
        "--monitoring-topic", topics.get("monitoring", topics["in"] + ".monitoring"),
        "--store", str(store),
        "--name", name,
        "--group", group,
        "--log-format", "json",
        *extra,
    ]  # fmt: skip


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FORESTREAM_SIGNING_KEY"}
    env["FORESTREAM_MAX_RECORD_BYTES"] = str(MAX_RECORD_BYTES)
    env["FORESTREAM_SUMMARY_INTERVAL_S"] = "2"
    return env


ROOT = Path(__file__).resolve().parent.parent

MEMBERSHIP_EVENTS = (
    "model_in_use", "partitions_assigned", "partitions_revoked", "partitions_released",
    "partitions_lost",
    "group_join_stalled_rejoining", "kafka_client_error", "worker_stopping",
)  # fmt: skip


def wait_for_event(path: Path, event: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Until the JSON log at ``path`` has an ``event`` line; fails with the log if ``proc``
    ends first, or when the time runs out."""
    deadline = time.monotonic() + timeout_s
    while not log_events(path, event):
        if proc.poll() is not None:
            log = path.read_text()
            raise AssertionError(f"exited ({proc.returncode}) before {event!r}:\n{log}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {event!r} in {path.name} within {timeout_s:.0f}s")
        time.sleep(0.1)


class WorkerGroup:
    """``forestream worker`` subprocesses of one consumer group, each logging JSON to its own
    file; ``kill_all`` in a ``finally`` leaves nothing running whatever the test did."""

    def __init__(self, command: list[str], logs: Path) -> None:
        self.command = command
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_paths: list[Path] = []

    def start(self, count: int = 1, *extra: str) -> int:
        """Start ``count`` more workers (``extra``: more flags for them); returns the index
        (in ``procs``) of the last one."""
        for _ in range(count):
            path = self.logs / f"worker-{len(self.procs)}.log"
            with path.open("wb") as sink:
                self.procs.append(
                    subprocess.Popen(
                        [*self.command, *extra],
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=worker_env(),
                        cwd=ROOT,
                    )
                )
            self.log_paths.append(path)
        return len(self.procs) - 1

    def live(self) -> list[int]:
        return [i for i, proc in enumerate(self.procs) if proc.poll() is None]

    def wait_balanced(self, partitions: int, timeout_s: float = 60.0) -> dict[int, list[str]]:
        """Until every live worker's newest assignment is non-empty and together they own each
        partition exactly once; returns {worker index: partitions}. A worker that died (other
        than by a test's SIGKILL or an orderly exit) fails the wait at once, with its log."""
        deadline = time.monotonic() + timeout_s
        while True:
            latest = {i: owned_partitions(self.log_paths[i]) for i in self.live()}
            owned = [p for parts in latest.values() for p in parts]
            if all(latest.values()) and len(owned) == len(set(owned)) == partitions:
                return latest
            for i, proc in enumerate(self.procs):
                if proc.returncode not in (None, 0, -signal.SIGKILL):
                    raise AssertionError(
                        f"worker {i} died ({proc.returncode}):\n{self.log_paths[i].read_text()}"
                    )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"group not balanced in {timeout_s:.0f}s: {latest}\n{self.membership_log()}"
                )
            time.sleep(0.2)

    def membership_log(self) -> str:
        """Each worker's group events in time order, for a failure message."""
        lines = []
        for i, path in enumerate(self.log_paths):
            lines.append(f"worker {i} (exit code {self.procs[i].poll()}):")
            for entry in log_events(path, *MEMBERSHIP_EVENTS):  # in the log's (time) order
                numbers = [p.rsplit("-", 1)[-1] for p in entry.get("partitions", [])]
                lines.append(f"  {entry.get('timestamp')} {entry['event']} {numbers}")
        return "\n".join(lines)

    def stop(self, i: int, timeout_s: float = 60.0) -> None:
        """SIGTERM one worker: it must finish its batch, commit, leave and exit 0."""
        proc = self.procs[i]
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {i} did not exit {timeout_s:.0f}s after SIGTERM"
            ) from None
        log = self.log_paths[i].read_text()
        assert code == 0, f"worker {i} exited {code}:\n{log[-3000:]}"
        assert log_events(self.log_paths[i], "worker_final_summary"), log[-3000:]

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
