"""The model registry: versioned, hashed (optionally signed) artifacts and promotion state.

A local directory here; :func:`open_store` also takes a URI (``s3://bucket/prefix`` and the other
fsspec filesystems), served by :class:`forestream.registry.object_store.ObjectModelStore` with the
same
rules rebuilt from conditional writes.

Layout: ``<root>/<name>/<version>/{model.joblib, metadata.json, quality_report.json}``,
``<root>/<name>/promotions.jsonl`` and ``<root>/<name>/.lock``. The trainer writes, workers and
``replay`` read. joblib is pickle, so :meth:`ModelStore.load_verified` checks the artifact's bytes
against its sha256 (and HMAC when a signing key is configured) *before* unpickling, and unpickles
exactly the bytes it checked; :meth:`ModelStore.verify_artifact` makes the same checks without
unpickling (the registry commands must not pay for importing scikit-learn).

The promotion history follows the models topic, which is what workers serve from: registry
writers hold :meth:`ModelStore.lock` and record an entry only after their event is on the topic
(``forestream.training.publish.change_serving``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import io
import json
import os
import re
import shutil
import stat
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from forestream.errors import ArtifactRejected as ArtifactRejected
from forestream.errors import StoreUnavailable as StoreUnavailable
from forestream.errors import UserError
from forestream.wire.schema import FeatureSchema, ReferenceStats

ARTIFACT = "model.joblib"
METADATA = "metadata.json"
QUALITY_REPORT = "quality_report.json"
PROMOTIONS = "promotions.jsonl"
LOCK = ".lock"
LOCK_TIMEOUT_S = 60.0
SIGNING_KEY_ENV = "FORESTREAM_SIGNING_KEY"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_VERSION = re.compile(r"^v?([0-9]{1,9})$")


_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_uri(location: str | os.PathLike[str]) -> bool:
    """``scheme://...`` (an object store or another fsspec filesystem) rather than a path."""
    return isinstance(location, str) and _URI.match(location) is not None


def store_location(location: str | os.PathLike[str]) -> str:
    """The store setting as given, checked: a local path, or a URI fsspec can open.

    ``file://`` URIs become plain paths (the local store keeps its rename and ``flock``).
    """
    if not isinstance(location, str):
        return os.fspath(location)
    text = location.strip()
    if not text:
        raise UserError("the model store is empty: give a directory or a URI like s3://bucket/p")
    match = _URI.match(text)
    if match is None:
        return text
    scheme = match.group(1).lower()
    if scheme == "file":
        path = text[len("file://") :]
        if not path.startswith("/"):
            raise UserError(f"model store {text!r}: a file:// URI needs an absolute path")
        return path
    from forestream.registry.object_store import check_uri

    return check_uri(text)


def open_store(location: str | os.PathLike[str], *, endpoint_url: str | None = None) -> ModelStore:
    """The store for a path or URI: every registry command and the worker open it this way.

    ``endpoint_url`` (``FORESTREAM_S3_ENDPOINT_URL``) points S3 URIs at an S3-compatible store.
    """
    where = store_location(location)
    if is_uri(where):
        from forestream.registry.object_store import ObjectModelStore

        return ObjectModelStore(where, endpoint_url=endpoint_url)
    return ModelStore(where)


def dump_artifact(pipeline: Any) -> bytes:
    """The artifact's bytes, exactly what gets hashed, signed and stored."""
    import joblib

    buffer = io.BytesIO()
    joblib.dump(pipeline, buffer, compress=3)
    return buffer.getvalue()


def check_artifact(
    data: bytes,
    meta: ModelMetadata,
    where: str,
    expected_sha256: str | None,
    signing_key: bytes | None,
) -> None:
    """The hash and signature checks every artifact passes before unpickling, wherever its
    bytes came from (the store or a worker's local cache)."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != meta.artifact_sha256:
        raise ArtifactRejected(
            f"{where}: sha256 mismatch (recorded {meta.artifact_sha256[:12]}, "
            f"file {actual[:12]}): the artifact was altered; refusing to load it"
        )
    if expected_sha256 is not None and actual != expected_sha256:
        raise ArtifactRejected(
            f"{where}: sha256 {actual[:12]} differs from the announced {expected_sha256[:12]}"
        )
    if signing_key is not None:
        if not meta.signature:
            raise ArtifactRejected(
                f"{where}: not signed, but {SIGNING_KEY_ENV} is set; refusing to load it"
            )
        if not hmac.compare_digest(sign(data, signing_key), meta.signature):
            raise ArtifactRejected(f"{where}: bad HMAC signature; refusing to load it")


def unpickle_model(data: bytes, where: str) -> Any:
    """Unpickle bytes that already passed :func:`check_artifact`; refuse what is no model."""
    import joblib

    try:
        pipeline = joblib.load(io.BytesIO(data))
    except Exception as exc:  # anything unpickling raises means "not a usable artifact"
        raise ArtifactRejected(f"{where}: cannot unpickle ({type(exc).__name__}: {exc})") from None
    if not callable(getattr(pipeline, "predict_proba", None)):
        raise ArtifactRejected(f"{where}: {type(pipeline).__name__} has no predict_proba")
    return pipeline


class ModelMetadata(BaseModel):
    """Everything known about one trained version; written as ``metadata.json``.

    ``version``, ``artifact_sha256`` and ``signature`` are filled in by :meth:`ModelStore.save`.
    """

    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str = ""
    created_at: str
    target: str
    classes: list[str]
    feature_schema: FeatureSchema
    reference: ReferenceStats
    metrics: dict[str, Any]
    data_sha256: str
    data_rows: int
    sklearn_version: str
    artifact_sha256: str = ""
    signature: str | None = None
    params: dict[str, Any] = {}


def signing_key_from_env() -> bytes | None:
    """The HMAC key shared by trainer and workers, if the deployment configured one."""
    key = os.environ.get(SIGNING_KEY_ENV)
    return key.encode() if key else None


def sign(data: bytes, key: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def normalize_version(version: str) -> str:
    """Accept ``v3`` or ``3``; anything else is a user mistake (and never a path component)."""
    match = _VERSION.match(str(version).strip())
    if not match:
        raise UserError(f"invalid model version {version!r}: expected v<number>, e.g. v3")
    return f"v{int(match.group(1))}"


def check_name(name: str) -> str:
    """A model name is a single path component; anything else is a user mistake."""
    if not _NAME.match(name):
        raise UserError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' (max 100)"
        )
    return name


def _first_error(exc: ValidationError) -> str:
    """``field.sub: message`` of pydantic's first complaint, and how many more there are."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    text = f"{where}: {first['msg']}" if where else str(first["msg"])
    more = exc.error_count() - 1
    return text + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")


def _version_number(version: str) -> int:
    return int(version[1:])


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


HistoryAction = Literal["promote", "rollback"]


def pickled_class(data: bytes) -> str | None:
    """``module.Class`` of the object a joblib artifact pickles, read without unpickling.

    Only the first few opcodes of the (zlib, gzip or uncompressed) pickle stream are parsed:
    enough to tell an estimator from, say, a pickled dict, at no import cost. None when the
    stream does not start with a class reference; other joblib codecs are not judged here
    (``""``): unpickling on the workers still decides.
    """
    import pickletools

    head = data[:65536]
    if head[:1] == b"\x80":
        raw = head
    elif head[:1] == b"\x78" or head[:2] == b"\x1f\x8b":
        wbits = zlib.MAX_WBITS | (16 if head[:1] == b"\x1f" else 0)
        try:
            raw = zlib.decompressobj(wbits).decompress(head, 65536)
        except zlib.error:
            return None
    else:
        return ""
    strings: list[str] = []
    try:
        for opcode, arg, _pos in pickletools.genops(io.BytesIO(raw)):
            if opcode.name in ("PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                continue
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
                continue
            if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"{strings[-2]}.{strings[-1]}"
            if opcode.name == "GLOBAL":
                return str(arg).replace(" ", ".")
            return None
    except (ValueError, EOFError):  # truncated prefix or not a pickle at all
        return None
    return None


class ModelStore:
    """One directory of models; safe against concurrent trainers (versions are never reused)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def location(self) -> str:
        """The store as messages name it (a path here, a URI on object storage)."""
        return str(self.root)

    def __str__(self) -> str:
        return self.location

    def version_location(self, name: str, version: str) -> str:
        """Where a version's files are, for messages."""
        return str(self.version_dir(name, version))

    def _where(self, name: str, version: str, filename: str) -> str:
        return str(self.version_dir(name, version) / filename)

    def _os_error(self, action: str, exc: OSError) -> UserError:
        """An OSError under the store as one line naming the store, the file and the reason."""
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(self.root) else ""
        return UserError(f"cannot {action} model store {self.root}{where}: {exc.strerror or exc}")

    def _is_dir(self, path: Path) -> bool:
        """False if ``path`` does not exist yet; a UserError if it exists but is no directory."""
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._os_error("read", exc) from None
        if not stat.S_ISDIR(mode):
            raise UserError(f"model store {self.root}: {path} is not a directory")
        return True

    def check_writable(self) -> None:
        """Refuse, without writing anything, a store root that cannot become a directory.

        Run before a long fit; :meth:`save` still reports whatever the OS refuses later.
        """
        existing = self.root
        while not existing.exists() and existing != existing.parent:
            if existing.is_symlink():  # dangling link: mkdir would fail on it
                raise UserError(f"model store {self.root}: {existing} is a broken symlink")
            existing = existing.parent
        if not existing.is_dir():
            raise UserError(f"model store {self.root}: {existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"cannot write model store {self.root}: {existing} is not writable")

    def prepare(self, name: str) -> Path:
        """Create ``<root>/<name>`` now (a fit is about to start), or say why the OS refuses."""
        model_dir = self.root / check_name(name)
        try:
            model_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._os_error("write", exc) from None
        if not os.access(model_dir, os.W_OK | os.X_OK):
            raise UserError(f"cannot write model store {self.root}: {model_dir} is not writable")
        return model_dir

    # -- reading ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self._is_dir(self.root):
            return []
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))
        except OSError as exc:
            raise self._os_error("read", exc) from None

    def versions(self, name: str) -> list[str]:
        """Complete versions, oldest first (``v2`` before ``v10``)."""
        model_dir = self.root / check_name(name)
        if not self._is_dir(self.root) or not self._is_dir(model_dir):
            return []
        try:
            found = [
                p.name
                for p in model_dir.iterdir()
                if p.is_dir() and re.fullmatch(r"v[0-9]+", p.name) and (p / METADATA).is_file()
            ]
        except OSError as exc:
            raise self._os_error("read", exc) from None
        return sorted(found, key=_version_number)

    def version_dir(self, name: str, version: str) -> Path:
        return self.root / check_name(name) / normalize_version(version)

    def _metadata_bytes(self, name: str, version: str) -> bytes | None:
        """A complete version's ``metadata.json``; None when there is no such version."""
        path = self.version_dir(name, version) / METADATA
        if not path.is_file():
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ArtifactRejected(f"{path}: cannot read metadata ({exc.strerror})") from None

    def _report_bytes(self, name: str, version: str) -> bytes | None:
        path = self.version_dir(name, version) / QUALITY_REPORT
        if not path.is_file():
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise UserError(f"{path}: cannot read quality report ({exc.strerror})") from None

    def _artifact_bytes(self, name: str, version: str) -> bytes:
        path = self.version_dir(name, version) / ARTIFACT
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ArtifactRejected(f"{path}: cannot read artifact ({exc.strerror})") from None

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
            raise ArtifactRejected(f"{where}: unreadable metadata: {_first_error(exc)}") from None

    def quality_report(self, name: str, version: str) -> dict[str, Any]:
        """The saved quality report; ``{}`` if the version has none, a UserError if unreadable."""
        raw = self._report_bytes(name, version)
        if raw is None:
            return {}
        path = self._where(name, version, QUALITY_REPORT)
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
        signing_key: bytes | None,
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
        check_artifact(data, meta, where, expected_sha256, signing_key)
        return data, meta, where

    def fetch_verified(
        self,
        name: str,
        version: str,
        *,
        expected_sha256: str | None = None,
        signing_key: bytes | None = None,
    ) -> tuple[bytes, ModelMetadata]:
        """The checked bytes and metadata of a version, not unpickled (a worker caches them)."""
        data, meta, _where = self._checked_bytes(name, version, expected_sha256, signing_key)
        return data, meta

    def verify_artifact(
        self,
        name: str,
        version: str,
        *,
        expected_sha256: str | None = None,
        signing_key: bytes | None = None,
    ) -> ModelMetadata:
        """Every check of :meth:`load_verified` that needs no unpickling: metadata, sha256, HMAC,
        and that the pickle stream starts with a class (not, say, a dict).

        What a registry command runs before announcing a version: importing scikit-learn to
        unpickle would cost it seconds; workers still unpickle, warm up and refuse a non-model.
        """
        data, meta, where = self._checked_bytes(name, version, expected_sha256, signing_key)
        if pickled_class(data) is None:
            raise ArtifactRejected(f"{where}: not a pickled model (no class at the top)")
        return meta

    def load_verified(
        self,
        name: str,
        version: str,
        *,
        expected_sha256: str | None = None,
        signing_key: bytes | None = None,
    ) -> tuple[Any, ModelMetadata]:
        """Unpickle a version only after its bytes match the recorded hash (and signature).

        ``expected_sha256`` is the hash announced on the models topic: a store whose files were
        swapped (metadata included) is still caught. With a ``signing_key`` an unsigned
        artifact is refused, not trusted.
        """
        data, meta, where = self._checked_bytes(name, version, expected_sha256, signing_key)
        return unpickle_model(data, where), meta

    # -- writing ---------------------------------------------------------------------------
    def save(
        self,
        name: str,
        pipeline: Any,
        metadata: ModelMetadata,
        report: dict[str, Any],
        *,
        signing_key: bytes | None = None,
    ) -> ModelMetadata:
        """Write a new version atomically: a temp dir inside the store, renamed into place.

        The rename fails if the version exists (a concurrent trainer won it), and we take the
        next number, so versions are monotonic and never overwritten.
        """
        try:
            return self._save(name, pipeline, metadata, report, signing_key)
        except OSError as exc:  # a file as root, no permission, read-only or full disk
            raise self._os_error("write", exc) from None

    def _save(
        self,
        name: str,
        pipeline: Any,
        metadata: ModelMetadata,
        report: dict[str, Any],
        signing_key: bytes | None,
    ) -> ModelMetadata:
        model_dir = self.root / check_name(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            data = dump_artifact(pipeline)
            (tmp / ARTIFACT).write_bytes(data)
            (tmp / QUALITY_REPORT).write_text(json.dumps(report, indent=2, default=str))
            base = metadata.model_copy(
                update={
                    "name": name,
                    "artifact_sha256": hashlib.sha256(data).hexdigest(),
                    "signature": sign(data, signing_key) if signing_key else None,
                }
            )
            for _attempt in range(1000):
                existing = self.versions(name)
                number = _version_number(existing[-1]) + 1 if existing else 1
                final = base.model_copy(update={"version": f"v{number}"})
                (tmp / METADATA).write_text(final.model_dump_json(indent=2))
                try:
                    os.rename(tmp, model_dir / final.version)
                except OSError as exc:
                    if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        continue
                    raise
                return final
            raise UserError(f"could not allocate a new version under {model_dir}")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    # -- promotion -------------------------------------------------------------------------
    def _history_lines(self, name: str) -> list[tuple[str, str]]:
        """``(where, line)`` of every history entry, oldest first."""
        path = self.root / check_name(name) / PROMOTIONS
        if not self._is_dir(self.root) or not path.is_file():
            return []
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"{path}: cannot read promotion history ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise UserError(f"{path}: promotion history is not UTF-8 text") from None
        return [(f"{path} line {n}", line) for n, line in enumerate(text.splitlines(), start=1)]

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
            if not isinstance(version, str) or not _VERSION.match(version):
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

    def _write_entry(self, name: str, line: str) -> None:
        path = self.root / check_name(name) / PROMOTIONS
        # one O_APPEND write per entry: concurrent writers interleave lines, never bytes
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._os_error("write", exc) from None

    @contextlib.contextmanager
    def lock(self, name: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[bool]:
        """Hold ``<root>/<name>/.lock`` exclusively (``flock``): one registry writer at a time.

        Serializes every promote/rollback/publish sharing this store, on this machine or on a
        shared volume that honours ``flock`` (NFSv4 does). Yields False, without waiting, where
        the filesystem has no locks at all: the models-topic check of the caller still catches
        a concurrent writer. The kernel drops the lock when the process dies: nothing goes stale.
        """
        path = self.prepare(name) / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self._os_error("write", exc) from None
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise UserError(
                            f"another registry command has held {path} for {timeout_s:.0f}s; "
                            "retry when it has finished"
                        ) from None
                    time.sleep(0.02)
                except OSError as exc:
                    if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                        raise self._os_error("lock", exc) from None
                    locked = False
                    break
            yield locked
        finally:
            os.close(fd)  # releases the lock

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
        ``forestream.training.publish.change_serving``, which records after the announcement.
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
