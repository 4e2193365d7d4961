"""Ed25519 signing of model versions: what is signed, the keys, and the trust policy."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forestream.errors import BadSignature, UnsignedArtifact, UserError, VersionMismatch
from forestream.registry.metadata import ModelMetadata, check_artifact
from forestream.registry.signing import (
    SCHEME,
    Signer,
    Trust,
    create_key_pair,
    installed_sklearn_version,
    load_verify_key,
    signed_payload,
)
from forestream.wire.schema import FeatureSchema, NumericFeature, ReferenceStats
from tests.signing_support import other_key_pair, session_keys_dir, session_signer, session_trust

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = bytes(range(256)) * 8  # any bytes: the check never unpickles


def _meta(**changes: object) -> ModelMetadata:
    base = ModelMetadata(
        name="m",
        version="v3",
        created_at="2026-11-25T00:00:00+00:00",
        target="y",
        classes=["a", "b"],
        feature_schema=FeatureSchema(features=[NumericFeature(name="x1")]),
        reference=ReferenceStats(features={}),
        metrics={"accuracy": 0.9},
        data_sha256="0" * 64,
        data_rows=10,
        sklearn_version=installed_sklearn_version(),
        artifact_sha256=hashlib.sha256(ARTIFACT).hexdigest(),
    )
    return base.model_copy(update=changes)


def _signed(signer: Signer | None = None, data: bytes = ARTIFACT) -> ModelMetadata:
    signer = signer or session_signer()
    meta = _meta(artifact_sha256=hashlib.sha256(data).hexdigest())
    return meta.model_copy(
        update={
            "signature": signer.sign(meta, meta.artifact_sha256),
            "signature_scheme": SCHEME,
            "signing_key_id": signer.key_id,
        }
    )


def test_the_signed_payload_is_pinned() -> None:
    """Changing what is signed orphans every version signed before: make it a new scheme."""
    payload = signed_payload(_meta(sklearn_version="1.5.2"), "ab" * 32)
    assert payload == (
        b'{"artifact_sha256":"' + b"ab" * 32 + b'","classes":["a","b"],'
        b'"created_at":"2026-11-25T00:00:00+00:00","feature_schema":{"features":[{"kind":'
        b'"numeric","max":null,"min":null,"missing_seen":false,"name":"x1"}]},"name":"m",'
        b'"scheme":"ed25519-v1","sklearn_version":"1.5.2","target":"y","version":"v3"}'
    )
    # metrics, reference statistics and the quality report are informative, not signed
    assert signed_payload(_meta(metrics={"accuracy": 0.1}), "ab" * 32) == signed_payload(
        _meta(), "ab" * 32
    )


def test_a_good_signature_passes() -> None:
    meta = _signed()
    check_artifact(ARTIFACT, meta, "here", meta.artifact_sha256, session_trust())


@given(position=st.integers(min_value=0, max_value=len(ARTIFACT) - 1), flip=st.integers(1, 255))
def test_changing_any_byte_of_the_artifact_after_signing_is_refused(
    position: int, flip: int
) -> None:
    meta = _signed()
    tampered = bytearray(ARTIFACT)
    tampered[position] ^= flip
    with pytest.raises(BadSignature, match="bad Ed25519 signature"):
        session_trust().check(bytes(tampered), meta, "here")
    # and with the metadata's hash "fixed" to match the new bytes, the signature still fails
    fixed = meta.model_copy(update={"artifact_sha256": hashlib.sha256(tampered).hexdigest()})
    with pytest.raises(BadSignature):
        check_artifact(bytes(tampered), fixed, "here", None, session_trust())


@given(
    field=st.sampled_from(["name", "version", "created_at", "target", "sklearn_version"]),
    suffix=st.text(min_size=1, max_size=5),
)
def test_changing_a_signed_metadata_field_is_refused(field: str, suffix: str) -> None:
    meta = _signed()
    altered = meta.model_copy(update={field: getattr(meta, field) + suffix})
    with pytest.raises(BadSignature):
        session_trust().check(ARTIFACT, altered, "here")


def test_classes_and_schema_are_signed() -> None:
    meta = _signed()
    for altered in (
        meta.model_copy(update={"classes": ["b", "a"]}),
        meta.model_copy(
            update={"feature_schema": FeatureSchema(features=[NumericFeature(name="x2")])}
        ),
    ):
        with pytest.raises(BadSignature):
            session_trust().check(ARTIFACT, altered, "here")


@given(position=st.integers(min_value=0, max_value=63), flip=st.integers(1, 255))
def test_changing_any_byte_of_the_signature_is_refused(position: int, flip: int) -> None:
    meta = _signed()
    raw = bytearray(bytes.fromhex(str(meta.signature)))
    raw[position] ^= flip
    with pytest.raises(BadSignature):
        session_trust().check(ARTIFACT, meta.model_copy(update={"signature": raw.hex()}), "x")


def test_a_signature_by_another_key_names_both_keys(tmp_path: Path) -> None:
    other = Signer.from_file(other_key_pair(tmp_path)[0])
    meta = _signed(other)
    with pytest.raises(BadSignature, match=f"signed by key {other.key_id}, verify key is"):
        session_trust().check(ARTIFACT, meta, "m v3")


def test_unsigned_is_refused_unless_allowed() -> None:
    with pytest.raises(UnsignedArtifact, match=r"not signed.*--allow-unsigned"):
        session_trust().check(ARTIFACT, _meta(), "m v3")
    session_trust(allow_unsigned=True).check(ARTIFACT, _meta(), "m v3")
    # allowing unsigned does not let a bad signature through while a key can check it
    bad = _signed().model_copy(update={"classes": ["z"]})
    with pytest.raises(BadSignature):
        session_trust(allow_unsigned=True).check(ARTIFACT, bad, "m v3")


def test_retired_hmac_versions_are_refused_naming_the_migration() -> None:
    legacy = _meta(signature=hmac.new(b"old", ARTIFACT, hashlib.sha256).hexdigest())
    with pytest.raises(UnsignedArtifact, match=r"retired HMAC scheme.*retrain it"):
        session_trust().check(ARTIFACT, legacy, "m v3")
    # the migration window: allowed, and checked when the old key is still configured
    Trust(allow_unsigned=True, legacy_hmac_key=b"old").check(ARTIFACT, legacy, "m v3")
    Trust(allow_unsigned=True).check(ARTIFACT, legacy, "m v3")
    with pytest.raises(BadSignature, match="bad HMAC"):
        Trust(allow_unsigned=True, legacy_hmac_key=b"new").check(ARTIFACT, legacy, "m v3")


def test_another_sklearn_minor_is_refused_naming_both_versions() -> None:
    ours = installed_sklearn_version()
    major, minor = ours.split(".")[:2]
    other = f"{major}.{int(minor) + 1}.0"
    with pytest.raises(VersionMismatch) as refused:
        Trust().check_version(_meta(sklearn_version=other), "m v3")
    message = str(refused.value)
    assert f"scikit-learn {other}, this process has {ours}" in message
    assert "--allow-version-mismatch" in message and "\n" not in message
    Trust(allow_version_mismatch=True).check_version(_meta(sklearn_version=other), "m v3")
    Trust().check_version(_meta(sklearn_version=f"{major}.{minor}.99"), "m v3")  # patch: fine


def test_key_files(tmp_path: Path) -> None:
    private, public = create_key_pair(tmp_path / "keys")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert Signer.from_file(private).key_id
    load_verify_key(public)
    with pytest.raises(UserError, match="already exists"):
        create_key_pair(tmp_path / "keys")
    with pytest.raises(UserError, match="is a private key"):
        load_verify_key(private)
    with pytest.raises(UserError, match="cannot read verify key"):
        load_verify_key(tmp_path / "missing.pub")
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(UserError, match="not an unencrypted Ed25519 private key"):
        Signer.from_file(tmp_path / "junk")


def _forestream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forestream.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


def test_keys_create_writes_a_pair_once(tmp_path: Path) -> None:
    done = _forestream("keys", "create", "--dir", str(tmp_path / "k"))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((tmp_path / "k" / "signing.key").stat().st_mode) == 0o600
    again = _forestream("keys", "create", "--dir", str(tmp_path / "k"))
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "refusing to overwrite" in again.stderr


def test_train_without_a_signing_key_refuses_before_the_fit(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "FORESTREAM_SIGNING_KEY_FILE"}
    csv = tmp_path / "p.csv"
    assert _forestream("demo-data", "--out", str(csv)).returncode == 0
    args = ("train", "--data", str(csv), "--target", "species", "--store", str(tmp_path / "s"))
    refused = _forestream(*args, env=env)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: no signing key") and "Traceback" not in refused.stderr
    assert not (tmp_path / "s").exists()
    signed = _forestream(
        *args, "--trees", "5", "--signing-key", str(session_keys_dir() / "signing.key"), env=env
    )
    assert signed.returncode == 0, signed.stderr
    assert "signed by key" in signed.stdout


def test_the_help_names_every_new_setting_with_its_env_twin() -> None:
    worker = _forestream("worker", "--help").stdout
    for flag, env in (
        ("--verify-key", "FORESTREAM_VERIFY_KEY_FILE"),
        ("--allow-unsigned", "FORESTREAM_ALLOW_UNSIGNED"),
        ("--allow-version-mismatch", "FORESTREAM_ALLOW_VERSION_MISMATCH"),
        ("--metrics-host", "FORESTREAM_METRICS_HOST"),
    ):
        assert flag in worker and env in worker, flag
    train = _forestream("train", "--help").stdout
    assert "--signing-key" in train and "FORESTREAM_SIGNING_KEY_FILE" in train
    promote = _forestream("models", "promote", "--help").stdout
    assert "--verify-key" in promote and "FORESTREAM_ALLOW_UNSIGNED" in promote


def test_verify_key_is_never_required_of_json_consumers() -> None:
    """The metadata keeps the old ``signature`` field: older readers still parse it."""
    assert json.loads(_signed().model_dump_json())["signature"]
