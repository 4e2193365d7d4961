"""A worker's local copy of the artifacts it has loaded, by content hash.

A restart, or a rollback to a version seen before, then needs no store at all: the bytes come
from ``<root>/sha256/<hex>`` and the version's metadata from ``<root>/metadata/<name>/<v>.json``.
Nothing read here is trusted: the loader runs the same sha256 and signature checks on it as on
bytes from the store, against the hash the models topic announced, before unpickling. A cache
that cannot be written (full disk, read-only) only costs the next load a download.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path

from pydantic import ValidationError

from forestream.registry.metadata import ModelMetadata, check_name, normalize_version

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ArtifactCache:
    """Artifacts by sha256 and metadata by name and version under one directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def artifact_path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / "sha256" / sha256

    def metadata_path(self, name: str, version: str) -> Path:
        return self.root / "metadata" / check_name(name) / f"{normalize_version(version)}.json"

    def get(self, name: str, version: str, sha256: str) -> tuple[bytes, ModelMetadata] | None:
        """The cached bytes and metadata of ``version`` if its metadata names ``sha256``.

        Unverified: the caller checks the bytes before using them.
        """
        try:
            raw = self.metadata_path(name, version).read_bytes()
            meta = ModelMetadata.model_validate_json(raw)
            if meta.artifact_sha256 != sha256 or meta.version != normalize_version(version):
                return None
            return self.artifact_path(sha256).read_bytes(), meta
        except (OSError, ValueError, ValidationError):
            return None

    def put(self, name: str, meta: ModelMetadata, data: bytes) -> bool:
        """Keep verified bytes and their metadata (written whole, then renamed into place)."""
        try:
            _write_atomic(self.artifact_path(meta.artifact_sha256), data)
            _write_atomic(
                self.metadata_path(name, meta.version), meta.model_dump_json(indent=2).encode()
            )
        except (OSError, ValueError):
            return False
        return True

    def discard(self, name: str, version: str, sha256: str) -> None:
        """Drop an entry that failed its checks, so the next load fetches it again."""
        for path in (self.metadata_path(name, version), self.artifact_path(sha256)):
            with contextlib.suppress(OSError):
                path.unlink()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
