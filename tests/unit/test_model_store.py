"""The registry: atomic versioning, verification before unpickling, promotion history."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from forestream.errors import ArtifactRejected, UserError
from forestream.registry.local import PROMOTIONS, LocalModelStore
from forestream.registry.metadata import (
    ARTIFACT,
    METADATA,
    QUALITY_REPORT,
    ModelMetadata,
    normalize_version,
)
from forestream.registry.signing import Signer, Trust, installed_sklearn_version
from forestream.wire.schema import FeatureSchema, NumericFeature, ReferenceStats
from tests.signing_support import session_signer
from tests.worker_support import fit_pipeline, make_frame

SIGNER = session_signer()


def _metadata() -> ModelMetadata:
    return ModelMetadata(
        name="m",
        created_at="2026-11-25T00:00:00+00:00",
        target="target",
        classes=["high", "low", "mid"],
        feature_schema=FeatureSchema(features=[NumericFeature(name="x1")]),
        reference=ReferenceStats(features={}),
        metrics={"accuracy": 0.9},
        data_sha256="0" * 64,
        data_rows=10,
        sklearn_version=installed_sklearn_version(),
    )


@pytest.fixture(scope="module")
def pipeline():
    return fit_pipeline(make_frame(120), trees=3)


def test_versions_are_monotonic_and_files_complete(tmp_path: Path, pipeline) -> None:
    store = LocalModelStore(tmp_path)
    first = store.save("m", pipeline, _metadata(), {"rows": 10}, signer=SIGNER)
    second = store.save("m", pipeline, _metadata(), {"rows": 10}, signer=SIGNER)
    assert (first.version, second.version) == ("v1", "v2")
    folder = tmp_path / "m" / "v1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "metadata.json",
        "model.joblib",
        "quality_report.json",
    ]
    assert first.artifact_sha256 == hashlib.sha256((folder / ARTIFACT).read_bytes()).hexdigest()
    assert store.quality_report("m", "v1") == {"rows": 10}
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".tmp")]


def test_numeric_order_of_versions(tmp_path: Path, pipeline) -> None:
    store = LocalModelStore(tmp_path)
    for _ in range(10):
        store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    assert store.versions("m")[-2:] == ["v9", "v10"]
    assert store.save("m", pipeline, _metadata(), {}, signer=SIGNER).version == "v11"


def test_concurrent_saves_never_share_a_version(tmp_path: Path, pipeline) -> None:
    store = LocalModelStore(tmp_path)
    results: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                store.save("m", pipeline, _metadata(), {}, signer=SIGNER).version
            )
        )
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 7)]
    for version in results:
        meta = store.metadata("m", version)
        assert meta.version == version
        store.load_verified("m", version)


def test_round_trip_predicts_like_the_original(tmp_path: Path, pipeline) -> None:
    store = LocalModelStore(tmp_path)
    meta = store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    loaded, loaded_meta = store.load_verified(
        "m", meta.version, expected_sha256=meta.artifact_sha256
    )
    frame = make_frame(30, seed=5)
    assert loaded_meta == meta
    assert (loaded.predict(frame) == pipeline.predict(frame)).all()


def test_one_changed_byte_is_refused(tmp_path: Path, pipeline) -> None:
    store = LocalModelStore(tmp_path)
    meta = store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    path = tmp_path / "m" / meta.version / ARTIFACT
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactRejected, match="sha256 mismatch"):
        store.load_verified("m", meta.version)


class _Marker:
    """Unpickling this creates a file: proof of whether untrusted bytes were ever unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_swapped_artifact_is_never_unpickled(tmp_path: Path, pipeline) -> None:
    store = LocalModelStore(tmp_path)
    meta = store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    marker = tmp_path / "pwned"
    (tmp_path / "m" / meta.version / ARTIFACT).write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(ArtifactRejected):
        store.load_verified("m", meta.version)
    assert not marker.exists()


def test_hash_must_match_the_announced_one(tmp_path: Path, pipeline) -> None:
    """Metadata and artifact swapped together still differ from what the models topic said."""
    store = LocalModelStore(tmp_path)
    meta = store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    with pytest.raises(ArtifactRejected, match="announced"):
        store.load_verified("m", meta.version, expected_sha256="f" * 64)


def test_signatures_are_checked_with_the_public_key(tmp_path: Path, pipeline) -> None:
    """The full matrix lives in test_signing.py; here: the store runs it before unpickling."""
    from forestream.errors import BadSignature, UnsignedArtifact
    from tests.signing_support import other_key_pair, session_trust

    store = LocalModelStore(tmp_path)
    signed = store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    unsigned = store.save("m", pipeline, _metadata(), {})
    other = store.save(
        "m", pipeline, _metadata(), {}, signer=Signer.from_file(other_key_pair(tmp_path / "k")[0])
    )
    store.load_verified("m", signed.version, trust=session_trust())
    with pytest.raises(BadSignature, match="signed by key"):
        store.load_verified("m", other.version, trust=session_trust())
    with pytest.raises(UnsignedArtifact, match="not signed"):
        store.load_verified("m", unsigned.version, trust=session_trust())
    store.load_verified("m", unsigned.version, trust=session_trust(allow_unsigned=True))
    with pytest.raises(UnsignedArtifact, match="no verify key"):
        store.load_verified("m", signed.version, trust=Trust())


def test_missing_or_unloadable_artifacts(tmp_path: Path, pipeline) -> None:
    store = LocalModelStore(tmp_path)
    with pytest.raises(ArtifactRejected, match="no version v1"):
        store.load_verified("m", "v1")
    meta = store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    folder = tmp_path / "m" / meta.version
    os.remove(folder / ARTIFACT)
    with pytest.raises(ArtifactRejected, match="cannot read"):
        store.load_verified("m", meta.version)
    not_a_model = pickle.dumps({"just": "a dict"})
    (folder / ARTIFACT).write_bytes(not_a_model)
    patched = meta.model_copy(
        update={"artifact_sha256": hashlib.sha256(not_a_model).hexdigest(), "signature": None}
    )
    (folder / METADATA).write_text(patched.model_dump_json())
    with pytest.raises(ArtifactRejected, match="no predict_proba"):
        store.load_verified("m", meta.version, trust=Trust(allow_unsigned=True))


def test_promote_and_rollback_walk_the_served_history(tmp_path: Path, pipeline) -> None:
    store = LocalModelStore(tmp_path)
    for _ in range(3):
        store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    assert store.served("m") is None
    with pytest.raises(UserError, match="no previously served"):
        store.rollback("m")
    store.promote("m", "v1")
    store.promote("m", "2")
    store.promote("m", "v3")
    assert store.served("m") == "v3"
    assert store.rollback("m") == "v2"
    assert store.rollback("m") == "v1"
    assert store.served("m") == "v1"
    with pytest.raises(UserError, match="no previously served"):
        store.rollback("m")
    with pytest.raises(UserError, match="no version v9"):
        store.promote("m", "v9")


@pytest.mark.parametrize("bad", ["", "latest", "v-1", "../v1", "v1/../../x"])
def test_versions_are_never_paths(bad: str) -> None:
    with pytest.raises(UserError, match="invalid model version"):
        normalize_version(bad)


def test_names_are_never_paths(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="invalid model name"):
        LocalModelStore(tmp_path).versions("../etc")


def test_a_corrupt_quality_report_is_one_line_naming_the_file(tmp_path: Path, pipeline) -> None:
    store = LocalModelStore(tmp_path)
    store.save("m", pipeline, _metadata(), {"rows": 10}, signer=SIGNER)
    path = tmp_path / "m" / "v1" / QUALITY_REPORT
    path.write_text("x")
    with pytest.raises(UserError, match=re.escape(f"{path}: quality report is not valid JSON")):
        store.quality_report("m", "v1")
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="not a JSON object"):
        store.quality_report("m", "v1")
    path.unlink()
    assert store.quality_report("m", "v1") == {}


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (lambda d: d.pop("feature_schema"), "feature_schema: Field required"),
        (lambda d: d.update(data_rows="many"), "data_rows: Input should be a valid integer"),
        (lambda d: d.update(classes="abc", data_rows=None), r"and 1 more error\b"),
    ],
)
def test_unreadable_metadata_names_the_field_and_why(
    tmp_path: Path, pipeline, corrupt, expected: str
) -> None:
    store = LocalModelStore(tmp_path)
    store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    path = tmp_path / "m" / "v1" / METADATA
    data = json.loads(path.read_text())
    corrupt(data)
    path.write_text(json.dumps(data))
    with pytest.raises(
        ArtifactRejected, match=re.escape(f"{path}: unreadable metadata: ") + f".*{expected}"
    ):
        store.metadata("m", "v1")


def test_metadata_that_is_not_json_says_so(tmp_path: Path, pipeline) -> None:
    store = LocalModelStore(tmp_path)
    store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    (tmp_path / "m" / "v1" / METADATA).write_text("{broken")
    with pytest.raises(ArtifactRejected, match="unreadable metadata: Invalid JSON"):
        store.metadata("m", "v1")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("garbage", "line 2: not a promotion entry ('garbage')"),
        ('["promote", "v1"]', "line 2: not a promotion entry"),
        ('{"action": "demote", "version": "v1"}', "line 2: not a promotion entry"),
        ('{"action": "promote", "version": "../v1"}', "line 2: invalid version '../v1'"),
        ('{"action": "promote"}', "line 2: invalid version None"),
    ],
)
def test_a_broken_promotion_history_is_reported_not_ignored(
    tmp_path: Path, pipeline, line: str, expected: str
) -> None:
    store = LocalModelStore(tmp_path)
    store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    store.promote("m", "v1")
    history = tmp_path / "m" / PROMOTIONS
    with history.open("a") as out:
        out.write(line + "\n")
    before = history.read_bytes()
    for read in (store.served, store.previously_served, store.rollback):
        with pytest.raises(UserError, match=re.escape(f"{history} {expected}")):
            read("m")
    with pytest.raises(UserError, match=re.escape(expected)):
        store.promote("m", "v1")
    assert history.read_bytes() == before  # nothing appended to a history we cannot read


def test_blank_lines_in_the_history_are_harmless(tmp_path: Path, pipeline) -> None:
    store = LocalModelStore(tmp_path)
    store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    store.promote("m", "v1")
    with (tmp_path / "m" / PROMOTIONS).open("a") as out:
        out.write("\n  \n")
    assert store.served("m") == "v1"


def test_a_store_root_that_is_a_file_is_one_clear_error(tmp_path: Path, pipeline) -> None:
    root = tmp_path / "store"
    root.write_text("not a directory")
    store = LocalModelStore(root)
    with pytest.raises(
        UserError, match=re.escape(f"model store {root}: {root} is not a directory")
    ):
        store.check_writable()
    with pytest.raises(
        UserError, match=re.escape(f"cannot write model store {root} (") + ".*Not a directory"
    ):
        store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    for read in (store.names, lambda: store.versions("m"), lambda: store.metadata("m", "v1")):
        with pytest.raises(UserError, match="is not a directory"):
            read()
    below = LocalModelStore(root / "sub")
    with pytest.raises(
        UserError, match=re.escape(f"cannot read model store {root / 'sub'}: Not a directory")
    ):
        below.versions("m")
    with pytest.raises(UserError, match="is not a directory"):
        below.check_writable()


def test_a_missing_store_is_empty_and_checking_it_writes_nothing(tmp_path: Path) -> None:
    store = LocalModelStore(tmp_path / "a" / "b")
    store.check_writable()
    assert store.names() == [] and store.versions("m") == [] and store.served("m") is None
    assert not (tmp_path / "a").exists()


def test_os_errors_while_writing_name_the_store(tmp_path: Path, pipeline, monkeypatch) -> None:
    store = LocalModelStore(tmp_path)

    def full_disk(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(
        UserError, match=re.escape(f"cannot write model store {tmp_path} (") + ".*No space left"
    ):
        store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    monkeypatch.undo()
    assert store.versions("m") == []
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".tmp")]


def test_prepare_reports_a_refused_mkdir(tmp_path: Path, monkeypatch) -> None:
    def refused(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refused)
    with pytest.raises(
        UserError, match=re.escape(f"cannot write model store {tmp_path} ({tmp_path / 'm'})")
    ):
        LocalModelStore(tmp_path).prepare("m")


def test_pruned_versions_are_recorded_as_they_were_and_never_rolled_back_to(
    tmp_path: Path, pipeline
) -> None:
    store = LocalModelStore(tmp_path)
    store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    store.save("m", pipeline, _metadata(), {}, signer=SIGNER)
    store.promote("m", "v1")
    store.promote("m", "v2")
    shutil.rmtree(tmp_path / "m" / "v1")  # an old version pruned by hand
    assert (store.served("m"), store.previously_served("m")) == ("v2", "v1")
    with pytest.raises(UserError, match=r"cannot roll 'm' back to v1: that version is no longer"):
        store.rollback("m")
    shutil.rmtree(tmp_path / "m" / "v2")
    assert store.served("m") == "v2"  # what the history says; models list warns about it


@pytest.mark.parametrize(
    ("backend", "other"),
    [("local", "object_store"), ("object_store", "local")],
)
def test_neither_backend_imports_the_other(backend: str, other: str) -> None:
    """The rules live in registry.store; only registry.open knows both backends."""
    code = (
        "import sys\n"
        f"import forestream.registry.{backend}\n"
        f"print('forestream.registry.{other}' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
