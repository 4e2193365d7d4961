"""Ed25519 signatures of model versions: what is signed, the key files, and the trust check.

Asymmetric because the two sides differ: the trainer alone holds the private key; workers,
replay and the registry commands hold only the public key, so a worker host, a store reader
or a leaked worker config can verify models but never mint one a worker would unpickle. The
retired HMAC scheme (``FORESTREAM_SIGNING_KEY``) shared one secret between all of them.

What is signed (:func:`signed_payload`, scheme ``ed25519-v1``; never change it in place: a new
layout is a new scheme): canonical JSON (sorted keys, no spaces, ASCII) of the scheme name, the
version's ``name``, ``version``, ``created_at``, ``target``, ``classes``, ``feature_schema``
and ``sklearn_version``, and the sha256 of the artifact's bytes *as read*. So the signature
covers every byte of the pickle and every metadata field that decides how records are decoded
and labelled; copying a signed artifact to another name or version breaks it. Metrics, the
quality report and reference statistics are informative and left out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic_settings import BaseSettings, SettingsConfigDict

from forestream.errors import BadSignature, UnsignedArtifact, UserError, VersionMismatch

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from forestream.registry.metadata import ModelMetadata

SCHEME = "ed25519-v1"
SIGNED_FIELDS = (
    "name",
    "version",
    "created_at",
    "target",
    "classes",
    "feature_schema",
    "sklearn_version",
)
PRIVATE_KEY_FILE = "signing.key"
PUBLIC_KEY_FILE = "verify.pub"
DEFAULT_KEYS_DIR = Path(".forestream/keys")
LEGACY_HMAC_ENV = "FORESTREAM_SIGNING_KEY"
MIGRATION = (
    "retrain it (`forestream train` signs with FORESTREAM_SIGNING_KEY_FILE), or serve it "
    "meanwhile with --allow-unsigned and FORESTREAM_SIGNING_KEY set (the HMAC is then checked)"
)


def signed_payload(meta: ModelMetadata, artifact_sha256: str) -> bytes:
    """The exact bytes an ``ed25519-v1`` signature is over (see the module docstring)."""
    dumped = meta.model_dump(mode="json", include=set(SIGNED_FIELDS))
    body = {"scheme": SCHEME, "artifact_sha256": artifact_sha256, **dumped}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint (sha256 of the raw key) that messages can name: never the key."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    """The trainer's private key: signs each version as the store commits it."""

    private_key: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id(self.private_key.public_key())

    def sign(self, meta: ModelMetadata, artifact_sha256: str) -> str:
        return self.private_key.sign(signed_payload(meta, artifact_sha256)).hex()

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        data = _read_key(path, "signing key")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise UserError(
                f"signing key {path}: not an unencrypted Ed25519 private key in PEM "
                "(make one with `forestream keys create`)"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise UserError(f"signing key {path}: not an Ed25519 key ({type(key).__name__})")
        return cls(key)


def load_verify_key(path: Path) -> Ed25519PublicKey:
    """A public key file; a private key given here is refused: workers must never hold one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read_key(path, "verify key")
    if b"PRIVATE KEY" in data:
        raise UserError(
            f"verify key {path} is a private key: give workers the public one ({PUBLIC_KEY_FILE})"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise UserError(f"verify key {path}: not an Ed25519 public key in PEM") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UserError(f"verify key {path}: not an Ed25519 key ({type(key).__name__})")
    return key


def _read_key(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def create_key_pair(directory: Path) -> tuple[Path, Path]:
    """Write ``signing.key`` (mode 0600) and ``verify.pub`` in ``directory``; never overwrite.

    A replaced key would silently orphan every version signed with the old one, hence the
    refusal rather than a ``--force``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path, public_path = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise UserError(f"{path} already exists: refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_new(private_path, private_pem, 0o600)
        _write_new(public_path, public_pem, 0o644)
    except FileExistsError as exc:
        raise UserError(f"{exc.filename} already exists: refusing to overwrite a key") from None
    except OSError as exc:
        raise UserError(f"cannot write keys to {directory}: {exc.strerror or exc}") from None
    return private_path, public_path


def ensure_key_pair(directory: Path) -> tuple[Path, Path]:
    """The pair in ``directory``, made if there is none (the demo's: it signs and verifies
    like a deployment with nothing for the user to set up); absolute paths."""
    private, public = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    if not (private.exists() and public.exists()):
        private, public = create_key_pair(directory)
    return private.resolve(), public.resolve()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Created with its mode from the start (no window where the key is world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, mode)  # the umask may have narrowed it; never widened beyond ``mode``


@dataclass(frozen=True)
class Trust:
    """What a loader accepts: signatures by ``verify_key``, and the explicit opt-outs.

    The default (no key, nothing allowed) accepts nothing signed or unsigned: a loader never
    gets "no verification" by omission.
    """

    verify_key: Ed25519PublicKey | None = None
    allow_unsigned: bool = False
    legacy_hmac_key: bytes | None = None
    """The retired shared secret: only checked for HMAC-signed versions under
    ``allow_unsigned`` (a migration aid; anyone holding it can forge, like unsigned)."""
    allow_version_mismatch: bool = False

    @classmethod
    def from_env(cls) -> Trust:
        """The deployment's policy from ``FORESTREAM_*`` (for callers without flags)."""
        return TrustSettings().trust()

    def check(self, data: bytes, meta: ModelMetadata, where: str) -> None:
        """Raise unless ``data`` and ``meta`` carry a signature this policy accepts."""
        if not meta.signature:
            if self.allow_unsigned:
                return
            raise UnsignedArtifact(
                f"{where}: not signed; refusing it (sign with `forestream train` and "
                "FORESTREAM_SIGNING_KEY_FILE, or start with --allow-unsigned)"
            )
        if meta.signature_scheme is None:  # written before Ed25519: an HMAC hex digest
            self._check_legacy(data, meta, where)
            return
        if meta.signature_scheme != SCHEME:
            raise BadSignature(f"{where}: unknown signature scheme {meta.signature_scheme!r}")
        if self.verify_key is None:
            if self.allow_unsigned:
                return  # nothing to check it with; the start said signatures are not required
            raise UnsignedArtifact(f"{where}: signed, but no verify key is configured")
        from cryptography.exceptions import InvalidSignature

        actual = hashlib.sha256(data).hexdigest()
        try:
            signature = bytes.fromhex(meta.signature)
            self.verify_key.verify(signature, signed_payload(meta, actual))
        except (ValueError, InvalidSignature):
            theirs = meta.signing_key_id or "unknown"
            ours = key_id(self.verify_key)
            other = f" (signed by key {theirs}, verify key is {ours})" if theirs != ours else ""
            raise BadSignature(f"{where}: bad Ed25519 signature{other}; refusing it") from None

    def _check_legacy(self, data: bytes, meta: ModelMetadata, where: str) -> None:
        if not self.allow_unsigned:
            raise UnsignedArtifact(
                f"{where}: signed with the retired HMAC scheme, not Ed25519: {MIGRATION}"
            )
        if self.legacy_hmac_key is None:
            return
        digest = hmac.new(self.legacy_hmac_key, data, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(digest, str(meta.signature)):
            raise BadSignature(f"{where}: bad HMAC signature under {LEGACY_HMAC_ENV}; refusing it")

    def check_version(self, meta: ModelMetadata, where: str) -> None:
        """Refuse a model pickled by another scikit-learn major.minor (before unpickling it:
        tree internals change between minors, and a mismatched load may score wrong silently)."""
        if self.allow_version_mismatch:
            return
        ours = installed_sklearn_version()
        if _major_minor(meta.sklearn_version) != _major_minor(ours):
            raise VersionMismatch(
                f"{where}: trained with scikit-learn {meta.sklearn_version}, this process has "
                f"{ours}; retrain it, or start with --allow-version-mismatch"
            )


def installed_sklearn_version() -> str:
    """From the package metadata: no scikit-learn import (the registry commands stay fast)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scikit-learn")
    except PackageNotFoundError:
        return "none"


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


class TrustSettings(BaseSettings):
    """``FORESTREAM_VERIFY_KEY_FILE``, ``_ALLOW_UNSIGNED``, ``_ALLOW_VERSION_MISMATCH``, and the
    legacy ``FORESTREAM_SIGNING_KEY``: mixed into the settings of every command that loads or
    announces a version."""

    model_config = SettingsConfigDict(env_prefix="FORESTREAM_", extra="ignore")

    verify_key_file: Path | None = None
    allow_unsigned: bool = False
    allow_version_mismatch: bool = False

    def trust(self) -> Trust:
        return Trust(
            verify_key=load_verify_key(self.verify_key_file) if self.verify_key_file else None,
            allow_unsigned=self.allow_unsigned,
            legacy_hmac_key=legacy_hmac_key_from_env(),
            allow_version_mismatch=self.allow_version_mismatch,
        )

    def require_verification(self) -> None:
        """A long-running loader with no key and no opt-out would refuse every version: say so
        at start instead."""
        if self.verify_key_file is None and not self.allow_unsigned:
            raise UserError(
                "no verify key: set FORESTREAM_VERIFY_KEY_FILE or --verify-key to the public "
                f"key ({PUBLIC_KEY_FILE} from `forestream keys create`), or pass "
                "--allow-unsigned to serve unsigned models"
            )


class SigningSettings(BaseSettings):
    """The trainer's ``FORESTREAM_SIGNING_KEY_FILE`` (private key) and its opt-out."""

    model_config = SettingsConfigDict(env_prefix="FORESTREAM_", extra="ignore")

    signing_key_file: Path | None = None
    allow_unsigned: bool = False

    def signer(self) -> Signer | None:
        """The signer, or None under ``allow_unsigned``; refused before any fit otherwise."""
        if self.signing_key_file is not None:
            return Signer.from_file(self.signing_key_file)
        if self.allow_unsigned:
            return None
        raise UserError(
            "no signing key: set FORESTREAM_SIGNING_KEY_FILE or --signing-key (make one with "
            "`forestream keys create`), or pass --allow-unsigned to save a version workers "
            "refuse unless they allow unsigned models"
        )


def legacy_hmac_key_from_env() -> bytes | None:
    """The retired shared HMAC key (``FORESTREAM_SIGNING_KEY``), if still configured."""
    key = os.environ.get(LEGACY_HMAC_ENV)
    return key.encode() if key else None
