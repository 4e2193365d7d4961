"""Signed models end to end: a running worker and ``models promote`` refuse what the public
key does not vouch for; ``--allow-unsigned`` serves it and says so.

One client (kafka-python): the checks run in the loader, before any Kafka client is involved.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.registry.local import LocalModelStore
from forestream.registry.metadata import ARTIFACT, METADATA, ModelMetadata
from forestream.registry.signing import Signer
from forestream.wire.messages import Prediction
from tests.kafka_helpers import read_topic
from tests.signing_support import other_key_pair
from tests.worker_support import (
    WorkerGroup,
    log_events,
    make_frame,
    publish_promotion,
    row_json,
    save_model,
    wait_for_event,
    worker_command,
    worker_env,
)

ROOT = Path(__file__).resolve().parents[2]
NAME = "signed"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 signed by the session key; v2 unsigned; v3 signed by another key; v4 signed, then its
    bytes changed and the recorded hash "fixed" to match (what a store writer could do)."""
    root = tmp_path_factory.mktemp("signed")
    store, frame = root / "store", make_frame(200)
    save_model(store, NAME, frame, trees=3)
    save_model(store, NAME, frame, trees=3, signed=False)
    save_model(store, NAME, frame, trees=3, signer=Signer.from_file(other_key_pair(root / "k")[0]))
    _, v4 = save_model(store, NAME, frame, trees=3)
    folder = store / NAME / v4.version
    data = bytearray((folder / ARTIFACT).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / ARTIFACT).write_bytes(bytes(data))
    forged = v4.model_copy(update={"artifact_sha256": hashlib.sha256(data).hexdigest()})
    (folder / METADATA).write_text(forged.model_dump_json())
    return store


def _meta(store: Path, version: str) -> ModelMetadata:
    return LocalModelStore(store).metadata(NAME, version)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forestream.cli", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=worker_env(),
    )  # fmt: skip


def _http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _reload_failures(port: int) -> dict[str, float]:
    text = _http(port, "/metrics")[1]
    found = re.findall(r'forestream_model_reload_failures_total\{reason="(\w+)"\} (\S+)', text)
    return {reason: float(value) for reason, value in found}


class _Worker:
    """One ``forestream worker`` on fresh topics, with its metrics endpoint."""

    def __init__(
        self, bootstrap: str, topic_name: Callable[[str], str], store: Path, logs: Path, *extra: str
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = {k: topic_name(k) for k in ("in", "out", "dlq", "models")}
        ensure_topics(bootstrap, [TopicSpec(self.topics["in"], 1)])
        command = worker_command(
            bootstrap, self.topics, store, NAME, topic_name("g"), "--metrics-port", "0", *extra
        )
        self.group = WorkerGroup(command, logs)
        self.group.start(1)
        self.log = self.group.log_paths[0]
        wait_for_event(self.log, "metrics_serving", self.group.procs[0], 60)
        self.port = int(log_events(self.log, "metrics_serving")[0]["port"])

    def announce(self, meta: ModelMetadata) -> None:
        publish_promotion(self.bootstrap, self.topics["models"], meta)

    def wait(self, event: str, version: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for entry in log_events(self.log, event):
                if entry.get("version") == version:
                    return entry
            assert self.group.procs[0].poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.1)
        raise AssertionError(f"no {event} for {version}:\n{self.log.read_text()[-3000:]}")

    def score(self, prefix: str, n: int = 20) -> set[str]:
        """Send ``n`` records; the versions their predictions name."""
        producer = make_producer(self.bootstrap)
        rows = make_frame(n, seed=3)
        keys = {f"{prefix}-{i}".encode() for i in range(n)}
        for i, (_, row) in enumerate(rows.iterrows()):
            producer.send(self.topics["in"], key=f"{prefix}-{i}".encode(), value=row_json(row))
        producer.flush(timeout=30)
        producer.close()
        records = read_topic(
            self.bootstrap,
            self.topics["out"],
            until=lambda got: keys <= {r.key for r in got},
            timeout_s=60,
        )
        return {
            Prediction.model_validate_json(r.value).model_version for r in records if r.key in keys
        }


def test_a_running_worker_refuses_unsigned_foreign_and_altered_versions(
    kafka_bootstrap: str, topic_name: Callable[[str], str], store: Path, tmp_path: Path
) -> None:
    worker = _Worker(kafka_bootstrap, topic_name, store, tmp_path)
    try:
        worker.announce(_meta(store, "v1"))
        worker.wait("model_in_use", "v1")
        expected = {
            "v2": ("UnsignedArtifact", "not signed"),
            "v3": ("BadSignature", "signed by key"),
            "v4": ("BadSignature", "bad Ed25519 signature"),
        }
        for version, (kind, text) in expected.items():
            worker.announce(_meta(store, version))
            failed = worker.wait("model_load_failed", version)
            assert failed["reason"].startswith(kind) and text in failed["reason"], failed
            assert failed["keeps_serving"] == "v1"
        time.sleep(2)  # retries back off: still one line per refused version
        for version in expected:
            lines = [
                e for e in log_events(worker.log, "model_load_failed") if e["version"] == version
            ]
            assert len(lines) == 1, lines
        failures = _reload_failures(worker.port)
        assert failures.get("UnsignedArtifact", 0) >= 1 and failures.get("BadSignature", 0) >= 2
        _status, body = _http(worker.port, "/readyz")
        assert json.loads(body)["model_version"] == "v1" and not json.loads(body)["allow_unsigned"]
        assert worker.score("after") == {"v1"}  # it kept serving its version
        assert not log_events(worker.log, "UNSIGNED_MODELS_ALLOWED")
    finally:
        worker.group.kill_all()


def test_models_promote_refuses_each_in_one_line(
    kafka_bootstrap: str, store: Path, tmp_path: Path
) -> None:
    common = ("--store", str(store), "--name", NAME, "--bootstrap-servers", kafka_bootstrap,
              "--models-topic", f"test.signed.{tmp_path.name}.models")  # fmt: skip
    for version, text in (
        ("v2", "not signed"),
        ("v3", "bad Ed25519 signature (signed by key"),
        ("v4", "bad Ed25519 signature"),
    ):
        refused = _cli("models", "promote", version, *common)
        assert refused.returncode == 2, refused
        assert refused.stderr.startswith("error: ") and text in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert _cli("models", "promote", "v1", *common).returncode == 0


def test_allow_unsigned_serves_the_unsigned_version_and_says_so(
    kafka_bootstrap: str, topic_name: Callable[[str], str], store: Path, tmp_path: Path
) -> None:
    worker = _Worker(kafka_bootstrap, topic_name, store, tmp_path, "--allow-unsigned")
    try:
        [warning] = log_events(worker.log, "UNSIGNED_MODELS_ALLOWED")
        assert warning["level"] == "warning" and "unsigned" in warning["message"]
        worker.announce(_meta(store, "v2"))
        worker.wait("model_in_use", "v2")
        assert worker.score("unsigned") == {"v2"}
        _status, body = _http(worker.port, "/readyz")
        ready = json.loads(body)
        assert ready["allow_unsigned"] is True and "unsigned" in ready["warning"]
        assert ready["model_version"] == "v2"
        worker.announce(_meta(store, "v3"))  # a verify key is still set: a bad one is refused
        assert worker.wait("model_load_failed", "v3")["reason"].startswith("BadSignature")
    finally:
        worker.group.kill_all()
