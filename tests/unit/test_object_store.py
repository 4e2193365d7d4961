"""The registry on object storage, against a real S3 API server (moto's) on localhost.

Atomic visibility (a half-written version does not exist), never-reused version numbers, the
append-only promotion history, verification of what is read, the worker's artifact cache (a
cached version loads with the server stopped), and one-line errors for user mistakes.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from forestream.errors import ArtifactRejected, StoreUnavailable, UserError
from forestream.registry.local import LocalModelStore
from forestream.registry.metadata import ModelMetadata
from forestream.registry.object_store import ObjectModelStore
from forestream.registry.open import open_store, store_location
from forestream.registry.signing import installed_sklearn_version
from forestream.runtime.settings import CommonSettings, load_settings
from forestream.wire.messages import ServingRef
from forestream.wire.schema import ReferenceStats
from forestream.worker.models import store_loader
from forestream.worker.settings import WorkerSettings
from tests.s3_support import S3Server, aws_test_env, new_bucket
from tests.signing_support import session_signer
from tests.worker_support import fit_pipeline, make_frame, schema_for

ROOT = Path(__file__).resolve().parents[2]
SIGNER = session_signer()


@pytest.fixture(scope="module")
def pipeline() -> Any:
    return fit_pipeline(make_frame(120), trees=3)


def _metadata(pipeline: Any) -> ModelMetadata:
    frame = make_frame(120)
    return ModelMetadata(
        name="m",
        created_at="2026-12-01T00:00:00+00:00",
        target="target",
        classes=[str(c) for c in pipeline.classes_],
        feature_schema=schema_for(frame),
        reference=ReferenceStats(features={}),
        metrics={"accuracy": 0.9},
        data_sha256="0" * 64,
        data_rows=120,
        sklearn_version=installed_sklearn_version(),
    )


def _open(server: S3Server, bucket: str) -> ObjectModelStore:
    made = open_store(f"s3://{bucket}/models", endpoint_url=server.endpoint)
    assert isinstance(made, ObjectModelStore)
    return made


@pytest.fixture
def store(s3_server: S3Server) -> ObjectModelStore:
    return _open(s3_server, new_bucket(s3_server))


def _ref(meta: ModelMetadata) -> ServingRef:
    return ServingRef(version=meta.version, sha256=meta.artifact_sha256, signature=meta.signature)


# -- locations -------------------------------------------------------------------------------
def test_store_setting_takes_paths_and_uris() -> None:
    assert store_location("models") == "models"
    assert store_location(Path("/tmp/x")) == "/tmp/x"
    assert store_location("file:///srv/models") == "/srv/models"
    assert store_location("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert isinstance(open_store("file:///tmp/fs-local"), LocalModelStore)
    assert not isinstance(open_store("file:///tmp/fs-local"), ObjectModelStore)


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("s4://bucket/p", "unknown storage scheme 's4'"),
        ("s3:///p", "no bucket"),
        ("s3://Bad_Bucket/p", "not a valid S3 bucket name"),
        ("file://relative/p", "absolute path"),
    ],
)
def test_a_bad_store_uri_is_one_line_naming_the_problem(uri: str, says: str) -> None:
    with pytest.raises(UserError, match="invalid setting model_store") as caught:
        load_settings(CommonSettings, model_store=uri)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_endpoint_setting_must_be_a_url() -> None:
    with pytest.raises(UserError, match="s3_endpoint_url"):
        load_settings(CommonSettings, s3_endpoint_url="minio:9000")
    ok = load_settings(CommonSettings, s3_endpoint_url="http://minio:9000")
    assert ok.s3_endpoint_url == "http://minio:9000"


def test_worker_caches_by_default_only_for_uri_stores(tmp_path: Path) -> None:
    assert load_settings(WorkerSettings, model_store=str(tmp_path)).cache_dir() is None
    remote = load_settings(WorkerSettings, model_store="s3://bucket/p")
    assert remote.cache_dir() == Path(".forestream/model-cache")
    given = load_settings(WorkerSettings, model_store=str(tmp_path), model_cache_dir=tmp_path)
    assert given.cache_dir() == tmp_path


# -- versions ----------------------------------------------------------------------------------
def test_save_list_show_and_load_round_trip(store: ObjectModelStore, pipeline: Any) -> None:
    first = store.save("m", pipeline, _metadata(pipeline), {"rows": 120}, signer=SIGNER)
    second = store.save("m", pipeline, _metadata(pipeline), {"rows": 120}, signer=SIGNER)
    assert (first.version, second.version) == ("v1", "v2")
    assert store.versions("m") == ["v1", "v2"] and store.names() == ["m"]
    assert store.metadata("m", "v2").artifact_sha256 == second.artifact_sha256
    assert store.quality_report("m", "v1") == {"rows": 120}
    loaded, meta = store.load_verified("m", "v1", expected_sha256=first.artifact_sha256)
    assert meta.version == "v1" and callable(loaded.predict_proba)
    assert store.version_location("m", "v1") == f"{store.uri}/m/v1"


def test_a_half_written_version_is_invisible_and_its_number_never_reused(
    store: ObjectModelStore, pipeline: Any
) -> None:
    """A trainer that died after the artifact and metadata, before the marker."""
    done = store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER)
    data = store._artifact_bytes("m", "v1")
    half = done.model_copy(update={"version": "v2"})
    for filename, body in (
        (".claim", b"{}"),
        ("model.joblib", data),
        ("metadata.json", half.model_dump_json().encode()),
    ):
        store._put(store._version_key("m", "v2", filename), body)
    assert store.versions("m") == ["v1"]
    with pytest.raises(UserError, match="has no version v2"):
        store.metadata("m", "v2")
    with pytest.raises(ArtifactRejected, match="has no version v2"):
        store.load_verified("m", "v2", expected_sha256=done.artifact_sha256)
    with pytest.raises(UserError, match="has no version v2"):
        store.promote("m", "v2")
    assert store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER).version == "v3"
    assert store.versions("m") == ["v1", "v3"]


CRASHING_TRAINER = """
import os, sys
from forestream.registry.object_store import COMPLETE, ObjectModelStore
from tests.unit.test_object_store import SIGNER, _metadata
from tests.worker_support import fit_pipeline, make_frame

store = ObjectModelStore(sys.argv[1], endpoint_url=sys.argv[2])
write = store._put

def put(key, data, *, create=False):
    if key.endswith("/" + COMPLETE):
        os._exit(9)  # the process dies between the metadata and the marker
    write(key, data, create=create)

store._put = put
pipeline = fit_pipeline(make_frame(120), trees=3)
store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER)
"""


def test_a_trainer_killed_before_the_marker_leaves_nothing_visible(
    store: ObjectModelStore, pipeline: Any, tmp_path: Path
) -> None:
    import os

    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_TRAINER, store.uri, str(store.endpoint_url)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **aws_test_env()},
    )
    assert crashed.returncode == 9, crashed.stderr
    left = store._list("m")
    assert {"v1/.claim", "v1/model.joblib", "v1/metadata.json"} <= set(left), left
    assert store.versions("m") == []
    meta = ModelMetadata.model_validate_json(
        store._cat(store._version_key("m", "v1", "metadata.json"))
    )
    load = store_loader(store, "m", tmp_path / "cache")
    with pytest.raises(ArtifactRejected, match="has no version v1"):
        load(_ref(meta))
    assert store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER).version == "v2"
    assert store.versions("m") == ["v2"]


def test_a_number_claimed_by_another_trainer_is_skipped(
    store: ObjectModelStore, pipeline: Any
) -> None:
    """The claim is a conditional create (If-None-Match: *): the loser takes the next number."""
    store._put(store._version_key("m", "v1", ".claim"), b'{"owner": "other"}', create=True)
    with pytest.raises(FileExistsError):  # the server honours the condition
        store._put(store._version_key("m", "v1", ".claim"), b'{"owner": "us"}', create=True)
    assert store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER).version == "v2"


def test_concurrent_trainers_get_distinct_versions(store: ObjectModelStore, pipeline: Any) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def train() -> None:
        try:
            other = open_store(store.uri, endpoint_url=store.endpoint_url)
            results.append(
                other.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER).version
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=train) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sorted(results) == sorted(set(results)) and len(results) == 4
    assert store.versions("m") == sorted(results, key=lambda v: int(v[1:]))


# -- promotion history -------------------------------------------------------------------------
def test_promote_rollback_and_history_on_object_storage(
    store: ObjectModelStore, pipeline: Any
) -> None:
    for _ in range(3):
        store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER)
    store.promote("m", "v1")
    store.promote("m", "v3")
    assert (store.served("m"), store.previously_served("m")) == ("v3", "v1")
    assert store.rollback("m") == "v1"
    assert [(e["action"], e["version"]) for e in store.history("m")] == [
        ("promote", "v1"),
        ("promote", "v3"),
        ("rollback", "v1"),
    ]
    with store.lock("m") as locked:
        assert locked is False  # no locks here: the models-topic check decides races


def test_history_entries_of_two_writers_are_both_kept(
    store: ObjectModelStore, pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each entry is a conditional create: a writer whose listing is stale (another writer took
    the number meanwhile) moves to the next number instead of overwriting."""
    store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER)
    store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER)
    other = open_store(store.uri, endpoint_url=store.endpoint_url)
    store.promote("m", "v1")
    stale = [store._entries("m")]
    other.promote("m", "v2")  # slips in between our listing and our write
    fresh = store._entries
    monkeypatch.setattr(store, "_entries", lambda name: stale.pop() if stale else fresh(name))
    store._append("m", "promote", "v1")
    assert [e["version"] for e in store.history("m")] == ["v1", "v2", "v1"]
    keys = [key.rsplit("/", 1)[-1] for _seq, key in fresh("m")]
    assert keys == [f"{n:012d}.json" for n in (1, 2, 3)]


def test_a_broken_history_entry_is_refused_naming_the_object(
    store: ObjectModelStore, pipeline: Any
) -> None:
    store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER)
    store._put(store._key("m", "promotions", f"{1:012d}.json"), b"not json")
    with pytest.raises(UserError, match=r"promotions/000000000001\.json: not a promotion entry"):
        store.served("m")


def test_replay_pins_and_the_producer_reads_a_version_in_the_bucket(
    store: ObjectModelStore, pipeline: Any
) -> None:
    from forestream.producer.sources import load_model_inputs
    from forestream.worker.replay import ReplaySettings, load_model, store_checkpoint_location

    store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER)
    store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER)
    store.promote("m", "v2")
    settings = ReplaySettings(
        model_store=store.uri, s3_endpoint_url=store.endpoint_url, model_name="m"
    )
    assert load_model(settings, "v1").version == "v1"  # pinned
    assert load_model(settings, None).version == "v2"  # the served one
    assert store_checkpoint_location(store.uri) == store.uri  # a resume reopens the bucket
    inputs = load_model_inputs(store.uri, "m", None, endpoint_url=store.endpoint_url)
    assert inputs.version == "v2" and inputs.schema.names


# -- verification ------------------------------------------------------------------------------
def test_a_tampered_object_is_refused_before_unpickling(
    store: ObjectModelStore, pipeline: Any
) -> None:
    meta = store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER)
    store._put(store._version_key("m", "v1", "model.joblib"), b"\x80\x04not the model")
    with pytest.raises(ArtifactRejected, match="sha256 mismatch"):
        store.load_verified("m", "v1", expected_sha256=meta.artifact_sha256)
    with pytest.raises(ArtifactRejected, match="sha256 mismatch"):
        store.verify_artifact("m", "v1")


def test_a_signature_by_another_key_is_refused(
    store: ObjectModelStore, pipeline: Any, tmp_path: Path
) -> None:
    from forestream.errors import BadSignature
    from forestream.registry.signing import Signer
    from tests.signing_support import other_key_pair, session_trust

    other = Signer.from_file(other_key_pair(tmp_path / "k")[0])
    store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER)
    store.save("m", pipeline, _metadata(pipeline), {}, signer=other)
    store.load_verified("m", "v1", trust=session_trust())
    with pytest.raises(BadSignature, match="bad Ed25519 signature"):
        store.load_verified("m", "v2", trust=session_trust())


# -- the worker's cache --------------------------------------------------------------------------
def test_a_cached_version_loads_with_the_store_stopped(
    own_s3_server: S3Server, pipeline: Any, tmp_path: Path
) -> None:
    store = _open(own_s3_server, new_bucket(own_s3_server))
    meta = store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER)
    load = store_loader(store, "m", tmp_path / "cache")
    load(_ref(meta))
    cached = tmp_path / "cache" / "sha256" / meta.artifact_sha256
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == meta.artifact_sha256
    own_s3_server.stop()
    # a new loader, as after a restart: nothing but the cache directory carries over; with the
    # server gone, any read of the store would raise StoreUnavailable instead of loading
    with structlog.testing.capture_logs() as logs:
        again, again_meta = store_loader(store, "m", tmp_path / "cache")(_ref(meta))
    assert again_meta.version == "v1" and callable(again.predict_proba)
    reads = [e for e in logs if e["event"] == "model_artifact_read"]
    assert [e["source"] for e in reads] == ["cache"], reads
    with pytest.raises(StoreUnavailable, match="EndpointConnectionError"):
        store.versions("m")  # the store really is gone


def test_a_tampered_cache_entry_is_never_unpickled(
    own_s3_server: S3Server, pipeline: Any, tmp_path: Path
) -> None:
    store = _open(own_s3_server, new_bucket(own_s3_server))
    meta = store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER)
    load = store_loader(store, "m", tmp_path / "cache")
    load(_ref(meta))
    cached = tmp_path / "cache" / "sha256" / meta.artifact_sha256
    cached.write_bytes(b"\x80\x04tampered")
    load(_ref(meta))  # refused, dropped, downloaded again
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == meta.artifact_sha256
    cached.write_bytes(b"\x80\x04tampered")
    own_s3_server.stop()
    with pytest.raises(StoreUnavailable):  # no store and no good copy: no model, no unpickling
        load(_ref(meta))
    assert not cached.exists()


def test_a_cached_artifact_is_checked_against_the_verify_key(
    store: ObjectModelStore, pipeline: Any, tmp_path: Path
) -> None:
    from forestream.errors import BadSignature
    from forestream.registry.signing import Trust, load_verify_key
    from tests.signing_support import other_key_pair, session_trust

    meta = store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER)
    store_loader(store, "m", tmp_path / "cache", trust=session_trust())(_ref(meta))  # cached
    other = Trust(verify_key=load_verify_key(other_key_pair(tmp_path / "k")[1]))
    with pytest.raises(BadSignature):  # neither the cache nor the store
        store_loader(store, "m", tmp_path / "cache", trust=other)(_ref(meta))


def test_the_announced_hash_decides_not_the_cached_metadata(
    store: ObjectModelStore, pipeline: Any, tmp_path: Path
) -> None:
    meta = store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER)
    load = store_loader(store, "m", tmp_path / "cache")
    load(_ref(meta))
    forged = ServingRef(version="v1", sha256="0" * 64)
    with pytest.raises(ArtifactRejected, match="differs from the announced"):
        load(forged)


# -- user mistakes -------------------------------------------------------------------------------
def test_a_missing_bucket_is_one_line(s3_server: S3Server) -> None:
    missing = open_store("s3://no-such-bucket-here/m", endpoint_url=s3_server.endpoint)
    with pytest.raises(UserError, match="bucket 'no-such-bucket-here' does not exist"):
        missing.versions("m")
    with pytest.raises(UserError, match="does not exist"):
        missing.check_writable()


def test_an_unreachable_endpoint_is_store_unavailable_quickly(own_s3_server: S3Server) -> None:
    endpoint = own_s3_server.endpoint
    own_s3_server.stop()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=f"endpoint: {endpoint}"):
        open_store("s3://bucket-x/m", endpoint_url=endpoint).versions("m")
    assert time.monotonic() - started < 15


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forestream.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_registry_commands_report_store_problems_in_one_line(
    s3_server: S3Server, store: ObjectModelStore, pipeline: Any
) -> None:
    import os

    store.save("m", pipeline, _metadata(pipeline), {}, signer=SIGNER)
    env = {**os.environ, **s3_server.env()}
    listed = _cli("models", "list", "--json", "--store", store.uri, "--name", "m", env=env)
    assert listed.returncode == 0, listed.stderr
    assert '"version": "v1"' in listed.stdout
    missing = _cli("models", "list", "--store", "s3://no-such-bucket-here/m", env=env)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    no_keys = {k: v for k, v in env.items() if not k.startswith("AWS_ACCESS_KEY_ID")}
    no_keys.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    shown = _cli("models", "show", "v1", "--json", "--store", store.uri, "--name", "m", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["metadata"]["version"] == "v1"
    denied = _cli("models", "show", "v1", "--store", store.uri, "--name", "m", env=no_keys)
    assert denied.returncode == 2 and "NoCredentialsError" in denied.stderr, denied.stderr
    assert "Traceback" not in denied.stderr
    bad = _cli("models", "list", "--store", "s4://x/y", env={**os.environ, **aws_test_env()})
    assert bad.returncode == 2 and "unknown storage scheme" in bad.stderr
