"""The registry in a bucket: train → publish → two workers whose only link to the artifacts is the
bucket → promote → roll back; the store going away mid-run; a tampered object refused.

Real parts only: the ``forestream`` CLI and ``forestream worker`` subprocesses, the session's
Kafka broker, and moto's S3 server on localhost. The registry commands use one endpoint, the
workers another onto the same objects (``tests.s3_support``): stopping the workers' endpoint is
the store becoming unreachable for them while promotions still happen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.registry.open import open_store
from forestream.wire.messages import Prediction
from tests.kafka_helpers import read_topic
from tests.s3_support import S3Server, new_bucket
from tests.worker_support import WorkerGroup, log_events, publish_promotion, worker_command

ROOT = Path(__file__).resolve().parents[2]
MODEL = "penguins"
PARTITIONS = 2


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forestream.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def must(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args[3:]} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def registry_env(server: S3Server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FORESTREAM_SIGNING_KEY"}
    return {**env, **server.env()}


@pytest.fixture(scope="module")
def trained_bucket(
    s3_server: S3Server, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """v1, v2, v3 of the penguins model (10 trees, seeds 1-3) in a bucket, none promoted; the
    last one also announced (``train --publish``) on a models topic of its own."""
    from forestream.training.demo_data import write_penguins_csv

    data = write_penguins_csv(tmp_path_factory.mktemp("s3-trained") / "penguins.csv")
    bucket = new_bucket(s3_server, "fs-trained")
    topic = f"test.s3-trained.{uuid.uuid4().hex[:8]}.models"
    for seed in (1, 2, 3):
        publish = ["--publish", "--bootstrap-servers", kafka_bootstrap, "--models-topic", topic]
        out = must(
            cli(
                registry_env(s3_server), "train", "--data", str(data), "--target", "species",
                "--trees", "10", "--seed", str(seed), "--store", f"s3://{bucket}/models",
                "--name", MODEL, *(publish if seed == 3 else []),
            )
        )  # fmt: skip
        assert f"saved {MODEL} v{seed} to s3://{bucket}/models/{MODEL}/v{seed}" in out, out
    assert f"published {MODEL} v3 on {topic}" in out, out
    store = open_store(f"s3://{bucket}/models", endpoint_url=s3_server.endpoint)
    assert store.versions(MODEL) == ["v1", "v2", "v3"]
    return bucket


@pytest.fixture
def store_uri(s3_server: S3Server, trained_bucket: str) -> str:
    """A private copy of the trained bucket: the promotion history is per test."""
    import boto3

    client: Any = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1")
    bucket = new_bucket(s3_server)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=trained_bucket)
    for page in pages:
        for item in page.get("Contents", []):
            client.copy_object(
                Bucket=bucket, Key=item["Key"], CopySource={"Bucket": trained_bucket, **item}
            )
    return f"s3://{bucket}/models"


class Fleet:
    """Topics, the registry CLI and workers on 'separate machines': each worker has its own
    cache directory and log, and reaches the artifacts only through the bucket."""

    def __init__(
        self,
        bootstrap: str,
        topic_name: Callable[[str], str],
        store_uri: str,
        registry: S3Server,
        workers_endpoint: S3Server,
        tmp: Path,
    ) -> None:
        self.bootstrap = bootstrap
        self.store_uri = store_uri
        self.registry = registry
        self.topics = {k: topic_name(k) for k in ("in", "out", "dlq", "models")}
        ensure_topics(bootstrap, [TopicSpec(self.topics["in"], PARTITIONS)])
        self.group = topic_name("group")
        self.workers_endpoint = workers_endpoint
        self.tmp = tmp
        self.machines: list[WorkerGroup] = []
        self.sent = 0

    def registry_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A command that needs only the store."""
        return cli(registry_env(self.registry), *args, "--store", self.store_uri, "--name", MODEL)

    def models(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(
            registry_env(self.registry), "models", *args, "--store", self.store_uri,
            "--name", MODEL, "--bootstrap-servers", self.bootstrap,
            "--models-topic", self.topics["models"],
        )  # fmt: skip

    def machine(self, name: str) -> WorkerGroup:
        """A worker command with its own cache and logs, pointed at the workers' endpoint."""
        command = worker_command(
            self.bootstrap, self.topics, Path("unused"), MODEL, self.group,
            "--model-cache-dir", str(self.tmp / name / "cache"), "--metrics-port", "0",
        )  # fmt: skip
        command[command.index("--store") + 1] = self.store_uri
        (self.tmp / name).mkdir()
        group = WorkerGroup(command, self.tmp / name)
        self.machines.append(group)
        return group

    def wait_log(
        self,
        logs: list[Path],
        event: str,
        match: Callable[[dict[str, Any]], bool],
        timeout_s: float = 45,
        after: dict[Path, int] | None = None,
    ) -> None:
        """Until each log has an ``event`` line that ``match``es (past ``after`` lines of it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = [
                any(match(e) for e in log_events(p, event)[(after or {}).get(p, 0) :]) for p in logs
            ]
            if all(seen):
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p}\n{p.read_text()[-2500:]}" for p in logs)
                raise AssertionError(f"no {event} in every log within {timeout_s:.0f}s:\n{tails}")
            time.sleep(0.1)

    def score(self, rows: list[bytes], count: int = 20) -> set[str]:
        """Send ``count`` records and return the model versions their predictions carry."""
        producer = make_producer(self.bootstrap)
        keys = []
        try:
            for i in range(count):
                key = f"r{self.sent + i}".encode()
                producer.send(self.topics["in"], key=key, value=rows[i % len(rows)])
                keys.append(key)
            producer.flush(timeout=30)
        finally:
            producer.close()
        self.sent += count
        wanted = set(keys)
        records = read_topic(
            self.bootstrap,
            self.topics["out"],
            until=lambda got: wanted <= {r.key for r in got},
            timeout_s=60,
        )
        return {
            Prediction.model_validate_json(r.value).model_version
            for r in records
            if r.key in wanted
        }

    def close(self) -> None:
        for group in self.machines:
            group.kill_all()


@pytest.fixture
def fleet(
    kafka_bootstrap: str,
    topic_name: Callable[[str], str],
    store_uri: str,
    s3_server: S3Server,
    own_s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    # the workers (WorkerGroup passes this process's environment on) use their own endpoint
    monkeypatch.setenv("FORESTREAM_S3_ENDPOINT_URL", own_s3_server.endpoint)
    running = Fleet(kafka_bootstrap, topic_name, store_uri, s3_server, own_s3_server, tmp_path)
    try:
        yield running
    finally:
        running.close()


def penguin_rows(store_uri: str, endpoint: str) -> list[bytes]:
    """The penguins as input records, shaped by v1's schema (missing values left out)."""
    import pandas as pd
    from palmerpenguins import load_penguins

    schema = open_store(store_uri, endpoint_url=endpoint).metadata(MODEL, "v1").feature_schema
    rows = []
    for _, row in load_penguins().head(40).iterrows():
        record = {
            f.name: float(row[f.name]) if f.kind == "numeric" else str(row[f.name])
            for f in schema.features
            if not pd.isna(row[f.name])
        }
        rows.append(json.dumps(record).encode())
    return rows


def reload_failures(log: Path, reason: str) -> float:
    """``forestream_model_reload_failures_total{reason=...}`` scraped from a worker."""
    [serving] = log_events(log, "metrics_serving")
    url = f"http://127.0.0.1:{serving['port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("forestream_model_reload_failures_total{") and reason in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_two_machines_serve_from_one_bucket_through_promotion_rollback_and_an_outage(
    fleet: Fleet,
) -> None:
    rows = penguin_rows(fleet.store_uri, fleet.registry.endpoint)
    must(fleet.models("promote", "v1"))
    a, b = fleet.machine("a"), fleet.machine("b")
    a.start(1)
    b.start(1)
    both = [a.log_paths[0], b.log_paths[0]]
    fleet.wait_log(both, "model_artifact_read", lambda e: e["version"] == "v1" and
                   e["source"] == "store")  # fmt: skip
    fleet.wait_log(both, "model_in_use", lambda e: e["version"] == "v1")
    assert fleet.score(rows) == {"v1"}

    must(fleet.models("promote", "v2"))
    fleet.wait_log(both, "model_in_use", lambda e: e["version"] == "v2")
    assert fleet.score(rows) == {"v2"}

    assert "now serving v1" in must(fleet.models("rollback"))
    fleet.wait_log(both, "model_artifact_read", lambda e: e["version"] == "v1" and
                   e["source"] == "cache")  # fmt: skip
    fleet.wait_log(both, "model_in_use", lambda e: e["version"] == "v1" and e["previous"] == "v2")
    assert fleet.score(rows) == {"v1"}

    # the store goes away for the workers: a restarted worker comes back from its cache...
    fleet.workers_endpoint.stop()
    a.stop(0)
    a.start(1)
    fleet.wait_log([a.log_paths[1]], "model_artifact_read", lambda e: e["version"] == "v1" and
                   e["source"] == "cache")  # fmt: skip
    fleet.wait_log([a.log_paths[1]], "model_in_use", lambda e: e["version"] == "v1")
    live = [a.log_paths[1], b.log_paths[0]]

    # ...and a promotion they cannot load is reported once, retried, and never half-applied
    must(fleet.models("promote", "v3"))
    fleet.wait_log(live, "model_load_failed", lambda e: e["version"] == "v3" and
                   "StoreUnavailable" in e["reason"] and e["keeps_serving"] == "v1")  # fmt: skip
    assert fleet.score(rows) == {"v1"}
    deadline = time.monotonic() + 30
    while min(reload_failures(p, "StoreUnavailable") for p in live) < 2:  # retried
        assert time.monotonic() < deadline, "no retry of the failed load within 30 s"
        time.sleep(0.5)
    for path in live:
        assert len(log_events(path, "model_load_failed")) == 1, path.read_text()[-2000:]

    fleet.workers_endpoint.start()  # back on its port: the next retry loads v3
    fleet.wait_log(live, "model_in_use", lambda e: e["version"] == "v3", timeout_s=60)
    fleet.wait_log(live, "model_artifact_read", lambda e: e["version"] == "v3" and
                   e["source"] == "store")  # fmt: skip
    assert fleet.score(rows) == {"v3"}
    listed = json.loads(must(fleet.registry_cli("models", "list", "--json")))
    assert [(r["version"], r["stage"]) for r in listed] == [
        ("v1", "previous"),
        ("v2", ""),
        ("v3", "serving"),
    ]


def test_a_tampered_object_in_the_bucket_is_refused(fleet: Fleet) -> None:
    store = open_store(fleet.store_uri, endpoint_url=fleet.registry.endpoint)
    v2 = store.metadata(MODEL, "v2")
    key = f"{fleet.store_uri.removeprefix('s3://')}/{MODEL}/v2/model.joblib"
    data = bytearray(store.fs.cat_file(key))
    data[len(data) // 2] ^= 0x01
    store.fs.pipe_file(key, bytes(data))

    refused = fleet.models("promote", "v2")
    assert refused.returncode == 2 and "sha256 mismatch" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr

    must(fleet.models("promote", "v1"))
    worker = fleet.machine("a")
    worker.start(1)
    fleet.wait_log(worker.log_paths, "model_in_use", lambda e: e["version"] == "v1")
    # altered after the CLI's check: the announcement reaches the worker, which refuses it
    publish_promotion(fleet.bootstrap, fleet.topics["models"], v2)
    fleet.wait_log(worker.log_paths, "model_load_failed", lambda e: e["version"] == "v2" and
                   "sha256 mismatch" in e["reason"] and e["keeps_serving"] == "v1")  # fmt: skip
    assert fleet.score(penguin_rows(fleet.store_uri, fleet.registry.endpoint)) == {"v1"}
