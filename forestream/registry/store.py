"""The model registry's rules, written once: versions, verification, promotion and history.

:class:`ModelStore` holds every rule (what a version is, numbering that never reuses a number,
reading back only verified bytes, the promotion history and what it says is served) over a few
operations a backend provides on its keys (``<name>/<version>/<file>``):

- :meth:`ModelStore._read` one file's bytes (None when absent), :meth:`ModelStore._list` the
  files under a prefix, :meth:`ModelStore._list_names` the models;
- :meth:`ModelStore._commit_version`, create-if-absent for a whole version: it fails when the
  number is taken, and the version's ``COMPLETE`` file appears last, so a version is seen whole
  or not at all (a renamed directory on disk, a conditional create and a marker on objects);
- :meth:`ModelStore._history_lines` and :meth:`ModelStore._write_entry`, the promotion history
  read and appended (an ``O_APPEND`` line, or a conditionally created object per entry);
- :meth:`ModelStore.lock`, one registry writer at a time where the backend can.

Backends: :class:`forestream.registry.local.LocalModelStore` (a directory) and
:class:`forestream.registry.object_store.ObjectModelStore` (S3 and other fsspec filesystems);
``forestream.registry.open.open_store`` picks one for a path or URI.

The promotion history follows the models topic, which is what workers serve from: registry
writers hold :meth:`ModelStore.lock` and record an entry only after their event is on the topic
(``forestream.registry.announce.change_serving``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import ValidationError

from forestream.errors import ArtifactRejected, StoreUnavailable, UserError
from forestream.registry.metadata import (
    ARTIFACT,
    METADATA,
    NAME_RE,
    QUALITY_REPORT,
    VERSION_KEY_RE,
    VERSION_RE,
    ModelMetadata,
    check_name,
    dump_artifact,
    first_error,
    normalize_version,
    pickled_class,
)
from forestream.registry.metadata import check_artifact as check_artifact
from forestream.registry.signing import SCHEME, Signer, Trust, legacy_hmac_key_from_env

signing_key_from_env = legacy_hmac_key_from_env
"""Re-exported under its old name: worker/replay.py imports it here (the retired HMAC key)."""

LOCK_TIMEOUT_S = 60.0


URI_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_uri(location: str | os.PathLike[str]) -> bool:
    """``scheme://...`` (an object store or another fsspec filesystem) rather than a path."""
    return isinstance(location, str) and URI_RE.match(location) is not None


def unpickle_model(data: bytes, where: str) -> Any:
    """Unpickle bytes that already passed :func:`check_artifact`; refuse what is no model."""
    import io

    import joblib

    try:
        pipeline = joblib.load(io.BytesIO(data))
    except Exception as exc:  # anything unpickling raises means "not a usable artifact"
        raise ArtifactRejected(f"{where}: cannot unpickle ({type(exc).__name__}: {exc})") from None
    if not callable(getattr(pipeline, "predict_proba", None)):
        raise ArtifactRejected(f"{where}: {type(pipeline).__name__} has no predict_proba")
    return pipeline


def _trust(trust: Trust | None, legacy_hmac_key: bytes | None) -> Trust:
    """The caller's policy, else the environment's (never "no checks" by omission)."""
    if trust is None:
        trust = Trust.from_env()
    if legacy_hmac_key is not None and trust.legacy_hmac_key is None:
        from dataclasses import replace

        trust = replace(trust, legacy_hmac_key=legacy_hmac_key)
    return trust


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


HistoryAction = Literal["promote", "rollback"]


class ModelStore(ABC):
    """One registry (a directory or a URI prefix); safe against concurrent trainers: versions
    are never reused, and a version is seen whole or not at all."""

    COMPLETE: ClassVar[str]
    """The file a version gets last: the version exists once it does."""
    MAX_CLAIMS: ClassVar[int] = 100
    """Numbers one save tries before giving up (each loss means another trainer took one)."""

    def __init__(self, location: str) -> None:
        self.location = location
        """The store as messages name it (a path, or a URI on object storage)."""

    def __str__(self) -> str:
        return self.location

    # -- what a backend provides -------------------------------------------------------------
    @abstractmethod
    def _read(self, key: str) -> bytes | None:
        """The bytes of ``key`` (``<name>/<version>/<file>``); None when there is no such file.

        A failure is an OSError (turned into a message naming the file here) or already the
        backend's one-line UserError.
        """

    def _exists(self, key: str) -> bool:
        """Whether ``key`` exists (a backend may answer without reading it)."""
        return self._read(key) is not None

    @abstractmethod
    def _list(self, prefix: str) -> list[str]:
        """The files under ``prefix/`` (a model's own, its versions'), relative to it; [] when
        there is none."""

    @abstractmethod
    def _list_names(self) -> list[str]:
        """The entries at the top of the store (model names, unfiltered)."""

    @abstractmethod
    def _commit_version(self, name: str, meta: ModelMetadata, files: dict[str, bytes]) -> bool:
        """Create version ``meta.version`` with ``files`` (in order), then ``COMPLETE``, only if
        no one claimed that number: False if someone did (the save takes the next number)."""

    @abstractmethod
    def _history_lines(self, name: str) -> list[tuple[str, str]]:
        """``(where, line)`` of every history entry, oldest first."""

    @abstractmethod
    def _write_entry(self, name: str, line: str) -> None:
        """Append one history entry; entries of concurrent writers follow each other whole."""

    @abstractmethod
    def lock(
        self, name: str, timeout_s: float = LOCK_TIMEOUT_S
    ) -> contextlib.AbstractContextManager[bool]:
        """Hold the store's writer lock for ``name``; yields False where the backend has none
        (the models-topic check of the caller then decides races)."""

    @abstractmethod
    def check_writable(self) -> None:
        """Refuse, without writing anything, a store that cannot take a save (run before a fit)."""

    @abstractmethod
    def prepare(self, name: str) -> Any:
        """Make the place of ``name``'s versions now, or say why the store refuses."""

    def _os_error(self, action: str, exc: OSError) -> UserError:
        """An OSError under the store as one line naming the store and the reason."""
        return UserError(f"cannot {action} model store {self.location}: {exc.strerror or exc}")

    # -- where things are ----------------------------------------------------------------------
    def version_location(self, name: str, version: str) -> str:
        """Where a version's files are, for messages."""
        return f"{self.location}/{check_name(name)}/{normalize_version(version)}"

    def _where(self, name: str, version: str, filename: str) -> str:
        return f"{self.version_location(name, version)}/{filename}"

    def _file(self, name: str, version: str, filename: str) -> str:
        """The key of one file of a version."""
        return f"{check_name(name)}/{normalize_version(version)}/{filename}"

    # -- reading -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(name for name in self._list_names() if NAME_RE.match(name))

    def _numbers(self, name: str) -> tuple[set[int], set[int]]:
        """(numbers ever claimed, numbers complete) of ``name``, from one listing."""
        claimed: set[int] = set()
        complete: set[int] = set()
        for key in self._list(check_name(name)):
            head, _, tail = key.partition("/")
            if not VERSION_KEY_RE.fullmatch(head) or not tail:
                continue
            claimed.add(int(head[1:]))
            if tail == self.COMPLETE:
                complete.add(int(head[1:]))
        return claimed, complete

    def versions(self, name: str) -> list[str]:
        """Complete versions, oldest first (``v2`` before ``v10``); half-written ones never."""
        _claimed, complete = self._numbers(name)
        return [f"v{n}" for n in sorted(complete)]

    def _metadata_bytes(self, name: str, version: str) -> bytes | None:
        """A complete version's ``metadata.json``; None when there is no such version."""
        if not self._exists(self._file(name, version, self.COMPLETE)):
            return None  # a half-written version does not exist
        where = self._where(name, version, METADATA)
        try:
            raw = self._read(self._file(name, version, METADATA))
        except OSError as exc:
            raise ArtifactRejected(f"{where}: cannot read metadata ({exc.strerror})") from None
        if raw is None:
            raise ArtifactRejected(f"{where}: missing, but the version is marked complete")
        return raw

    def _artifact_bytes(self, name: str, version: str) -> bytes:
        where = self._where(name, version, ARTIFACT)
        try:
            raw = self._read(self._file(name, version, ARTIFACT))
        except OSError as exc:
            raise ArtifactRejected(f"{where}: cannot read artifact ({exc.strerror})") from None
        if raw is None:
            raise ArtifactRejected(f"{where}: cannot read artifact (no such file)")
        return raw

    def metadata(self, name: str, version: str) -> ModelMetadata:
        raw = self._metadata_bytes(name, version)
        if raw is None:
            known = ", ".join(self.versions(name)) or "none"
            raise UserError(
                f"model {name!r} has no version {normalize_version(version)} in {self.location} "
                f"(known versions: {known})"
            )
        try:
            return ModelMetadata.model_validate_json(raw)
        except ValidationError as exc:
            where = self._where(name, version, METADATA)
            raise ArtifactRejected(f"{where}: unreadable metadata: {first_error(exc)}") from None

    def quality_report(self, name: str, version: str) -> dict[str, Any]:
        """The saved quality report; ``{}`` if the version has none, a UserError if unreadable."""
        path = self._where(name, version, QUALITY_REPORT)
        try:
            raw = self._read(self._file(name, version, QUALITY_REPORT))
        except OSError as exc:
            raise UserError(f"{path}: cannot read quality report ({exc.strerror})") from None
        if raw is None:
            return {}
        try:
            report = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise UserError(f"{path}: quality report is not valid JSON ({exc})") from None
        if not isinstance(report, dict):
            raise UserError(
                f"{path}: quality report is not a JSON object (got {type(report).__name__})"
            )
        return report

    def _checked_bytes(
        self,
        name: str,
        version: str,
        expected_sha256: str | None,
        trust: Trust,
    ) -> tuple[bytes, ModelMetadata, str]:
        """The artifact's bytes, its metadata and location, after the hash and signature checks.

        A store that cannot be reached stays :class:`StoreUnavailable` (retry later), anything
        else missing or wrong is :class:`ArtifactRejected`.
        """
        try:
            meta = self.metadata(name, version)
        except (ArtifactRejected, StoreUnavailable):
            raise
        except UserError as exc:
            raise ArtifactRejected(str(exc)) from None
        where = self._where(name, version, ARTIFACT)
        data = self._artifact_bytes(name, version)
        check_artifact(data, meta, where, expected_sha256, trust)
        return data, meta, where

    def fetch_verified(
        self,
        name: str,
        version: str,
        *,
        expected_sha256: str | None = None,
        trust: Trust | None = None,
    ) -> tuple[bytes, ModelMetadata]:
        """The checked bytes and metadata of a version, not unpickled (a worker caches them)."""
        trust = _trust(trust, None)
        data, meta, _where = self._checked_bytes(name, version, expected_sha256, trust)
        return data, meta

    def verify_artifact(
        self,
        name: str,
        version: str,
        *,
        expected_sha256: str | None = None,
        trust: Trust | None = None,
    ) -> ModelMetadata:
        """Every check of :meth:`load_verified` that needs no unpickling: metadata, sha256, the
        signature, and that the pickle stream starts with a class (not, say, a dict).

        What a registry command runs before announcing a version: importing scikit-learn to
        unpickle would cost it seconds; workers still unpickle, warm up and refuse a non-model.
        """
        data, meta, where = self._checked_bytes(name, version, expected_sha256, _trust(trust, None))
        if pickled_class(data) is None:
            raise ArtifactRejected(f"{where}: not a pickled model (no class at the top)")
        return meta

    def load_verified(
        self,
        name: str,
        version: str,
        *,
        expected_sha256: str | None = None,
        trust: Trust | None = None,
        signing_key: bytes | None = None,
    ) -> tuple[Any, ModelMetadata]:
        """Unpickle a version only after its bytes match the recorded hash and signature, and
        its scikit-learn version ours (``trust`` decides both; unset: the environment's).

        ``expected_sha256`` is the hash announced on the models topic: a store whose files were
        swapped (metadata included) is still caught. ``signing_key`` is the retired HMAC key,
        still passed by replay: it only matters for HMAC versions under ``allow_unsigned``.
        """
        trust = _trust(trust, signing_key)
        data, meta, where = self._checked_bytes(name, version, expected_sha256, trust)
        trust.check_version(meta, where)
        return unpickle_model(data, where), meta

    # -- writing -----------------------------------------------------------------------------
    def save(
        self,
        name: str,
        pipeline: Any,
        metadata: ModelMetadata,
        report: dict[str, Any],
        *,
        signer: Signer | None = None,
    ) -> ModelMetadata:
        """Write a new version, whole or not at all, under the next number never claimed.

        When another trainer claims that number first, the save takes the next one: versions
        are monotonic and never overwritten. Without a ``signer`` the version is unsigned, and
        loaders refuse it unless they allow unsigned models.
        """
        try:
            return self._save(name, pipeline, metadata, report, signer)
        except OSError as exc:  # a file as root, no permission, read-only or full disk
            raise self._os_error("write", exc) from None

    def _save(
        self,
        name: str,
        pipeline: Any,
        metadata: ModelMetadata,
        report: dict[str, Any],
        signer: Signer | None,
    ) -> ModelMetadata:
        self.prepare(check_name(name))
        data = dump_artifact(pipeline)
        report_bytes = json.dumps(report, indent=2, default=str).encode()
        digest = hashlib.sha256(data).hexdigest()
        base = metadata.model_copy(
            update={
                "name": name,
                "artifact_sha256": digest,
                "signature": None,
                "signature_scheme": None,
                "signing_key_id": None,
            }
        )
        for _attempt in range(self.MAX_CLAIMS):
            claimed, _complete = self._numbers(name)
            final = base.model_copy(update={"version": f"v{max(claimed, default=0) + 1}"})
            if signer is not None:  # per claim: the version number is part of what is signed
                final = final.model_copy(
                    update={
                        "signature": signer.sign(final, digest),
                        "signature_scheme": SCHEME,
                        "signing_key_id": signer.key_id,
                    }
                )
            files = {
                ARTIFACT: data,
                QUALITY_REPORT: report_bytes,
                METADATA: final.model_dump_json(indent=2).encode(),
            }
            if self._commit_version(name, final, files):
                return final
        raise UserError(f"could not claim a new version of {name!r} in {self.location}")

    # -- promotion -------------------------------------------------------------------------
    def _history(self, name: str) -> list[dict[str, Any]]:
        """The promotion history, every line checked: a broken history is never guessed around.

        Serving the wrong version silently would be worse than refusing, so a line that is not
        a promotion entry, or names a version the store does not hold, is a UserError naming the
        file and line.
        """
        entries = []
        for where, line in self._history_lines(name):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                raise UserError(
                    f"{where}: not a promotion entry ({line[:60]!r}); fix or remove the line"
                ) from None
            if not isinstance(entry, dict) or entry.get("action") not in ("promote", "rollback"):
                raise UserError(
                    f"{where}: not a promotion entry (expected an object with action "
                    f"'promote' or 'rollback', got {line[:60]!r})"
                )
            version = entry.get("version")
            if not isinstance(version, str) or not VERSION_RE.match(version):
                raise UserError(f"{where}: invalid version {version!r}")
            entries.append({**entry, "version": normalize_version(version)})
        return entries

    def history(self, name: str) -> list[dict[str, Any]]:
        """The promotion history, oldest first: each entry names the version served after it."""
        return self._history(name)

    def _served_stack(self, name: str) -> list[str]:
        """Replays history: a promotion pushes a version, a rollback pops back to the previous.

        A rollback entry whose version is not the previous one (the history was repaired from
        the models topic, whose order decides) is taken as what it says: that version is served.
        """
        stack: list[str] = []
        for entry in self._history(name):
            version = str(entry["version"])
            if entry["action"] == "rollback" and len(stack) > 1 and stack[-2] == version:
                stack.pop()
            elif not stack or stack[-1] != version:
                stack.append(version)
        return stack

    def _append(self, name: str, action: str, version: str, **extra: Any) -> None:
        entry = {"action": action, "version": version, "at": _now_iso(), **extra}
        self._write_entry(name, json.dumps(entry) + "\n")

    def record(self, name: str, action: HistoryAction, version: str, **extra: Any) -> None:
        """Append an entry whose event is already on the models topic (``extra``: its offset)."""
        version = normalize_version(version)
        self._served_stack(name)  # never append to a history that cannot be read back
        self._append(name, action, version, **extra)

    def follow(self, name: str, version: str, action: HistoryAction, **extra: Any) -> bool:
        """Make the history say ``version`` is served, as the models topic does; True if it had
        to (an entry marked ``"source": "models topic"``), False if it already agreed."""
        version = normalize_version(version)
        if self.served(name) == version:
            return False
        self._append(name, action, version, source="models topic", **extra)
        return True

    def served(self, name: str) -> str | None:
        """As recorded: the version may have been pruned by hand since (``models list`` warns,
        loading it fails with a clear error, and promoting another one repairs it)."""
        stack = self._served_stack(name)
        return stack[-1] if stack else None

    def previously_served(self, name: str) -> str | None:
        stack = self._served_stack(name)
        return stack[-2] if len(stack) > 1 else None

    def promote(self, name: str, version: str) -> ModelMetadata:
        """Mark a version as the one workers serve; it must exist and pass verification.

        Records only: ``forestream models promote`` announces through
        ``forestream.registry.announce.change_serving``, which records after the announcement.
        """
        version = normalize_version(version)
        meta = self.metadata(name, version)
        self.record(name, "promote", version)
        return meta

    def rollback_target(self, name: str) -> str:
        """The version a rollback would serve: the one served before the current one."""
        previous = self.previously_served(name)
        if previous is None:
            current = self.served(name)
            raise UserError(
                f"model {name!r} has no previously served version to roll back to "
                f"(served now: {current or 'nothing'})"
            )
        if previous not in self.versions(name):
            raise UserError(
                f"cannot roll {name!r} back to {previous}: that version is no longer in "
                f"{self.location}; promote the version to serve instead"
            )
        return previous

    def rollback(self, name: str) -> str:
        """Serve the version that was served before the current one (records only)."""
        previous = self.rollback_target(name)
        self._append(name, "rollback", previous)
        return previous
