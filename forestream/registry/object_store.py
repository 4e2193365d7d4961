"""The model registry on object storage (``s3://bucket/prefix`` and the other fsspec filesystems).

The rules are :class:`forestream.registry.store.ModelStore`'s, over the same layout as the local
store; this backend keeps them on a store that has no rename and no lock, with one primitive:
the conditional create (``If-None-Match: *`` on S3, which AWS, MinIO and moto honour; s3fs sends
it for ``mode="create"``):

- **A version number is claimed** by creating ``<name>/v<N>/.claim`` (N = one past every number
  ever claimed); a trainer that loses the race takes the next number. The artifact, quality
  report and metadata follow, then the ``.complete`` marker, last. Only versions with the
  marker exist for ``list``, ``show``, promote and the workers: a trainer that dies midway
  leaves an invisible number that is never reused.
- **The promotion history is one object per entry**, ``<name>/promotions/<seq>.json``, created
  the same way: an entry is never rewritten or lost, and every reader sees one order.
- **There is no lock**: :meth:`ObjectModelStore.lock` yields False, and concurrent registry
  commands are decided by the models-topic compare-and-set of ``forestream.registry.announce``
  (the topic is what workers serve from), as on a shared volume without ``flock``.

Errors become one line: a missing bucket or a bad URI a :class:`UserError`, a store that cannot
be reached (network, credentials, timeouts) :class:`StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

from forestream.errors import StoreUnavailable, UserError
from forestream.registry.metadata import ModelMetadata, check_name
from forestream.registry.store import ModelStore

CLAIM = ".claim"
COMPLETE = ".complete"
HISTORY_DIR = "promotions"

S3_SCHEMES = ("s3", "s3a")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ENTRY = re.compile(r"^([0-9]{1,12})\.json$")

S3_CONFIG = {
    "connect_timeout": 5,
    "read_timeout": 30,
    "retries": {"max_attempts": 2, "mode": "standard"},
}
"""botocore's defaults (60 s timeouts, legacy retries) hold a command for minutes on an
unreachable endpoint; a worker retries on its own schedule anyway."""


def check_uri(uri: str) -> str:
    """A store URI fsspec knows, with a bucket where the scheme needs one; a UserError otherwise.

    Checked without importing the filesystem's library (a setting is validated at start-up).
    """
    scheme, _, rest = uri.partition("://")
    scheme = scheme.lower()
    from fsspec.registry import known_implementations, registry

    if scheme not in known_implementations and scheme not in registry:
        raise UserError(
            f"model store {uri!r}: unknown storage scheme {scheme!r} "
            "(use a directory, or s3://bucket/prefix, gs://, az://, file://)"
        )
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise UserError(f"model store {uri!r}: no bucket (expected {scheme}://bucket/prefix)")
    if scheme in S3_SCHEMES and not _BUCKET.match(bucket):
        raise UserError(
            f"model store {uri!r}: {bucket!r} is not a valid S3 bucket name "
            "(3-63 lowercase letters, digits, '.' and '-')"
        )
    return f"{scheme}://{rest.rstrip('/')}"


def _describe(exc: BaseException) -> str:
    """A client exception as one short line: its class (say EndpointConnectionError, or
    NoCredentialsError) and the first line of its message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ObjectModelStore(ModelStore):
    """The registry under one URI prefix; see the module docstring for the rules."""

    COMPLETE: ClassVar[str] = COMPLETE

    def __init__(self, uri: str, *, endpoint_url: str | None = None) -> None:
        super().__init__(uri)
        self.uri = uri
        self.endpoint_url = endpoint_url
        self._fs: Any = None
        scheme, _, rest = uri.partition("://")
        self.scheme = scheme
        self.base = rest.rstrip("/")
        self.bucket = self.base.split("/", 1)[0]

    # -- the filesystem --------------------------------------------------------------------
    @property
    def fs(self) -> Any:
        """The fsspec filesystem, made on first use (importing s3fs costs a few hundred ms)."""
        if self._fs is None:
            import fsspec

            options: dict[str, Any] = {"skip_instance_cache": True}
            if self.scheme in S3_SCHEMES:
                options.update(use_listings_cache=False, config_kwargs=dict(S3_CONFIG))
                if self.endpoint_url:
                    options["endpoint_url"] = self.endpoint_url
            try:
                self._fs = fsspec.filesystem(self.scheme, **options)
            except ImportError as exc:
                raise UserError(f"model store {self.uri}: {exc}") from None
            except (TypeError, ValueError) as exc:
                raise UserError(f"model store {self.uri}: {_describe(exc)}") from None
        return self._fs

    @contextlib.contextmanager
    def _io(self, doing: str) -> Iterator[None]:
        """Every request runs in here: what the client raises becomes one line naming the store.

        FileNotFoundError passes through: the caller knows whether absence is normal.
        """
        try:
            yield
        except (UserError, FileNotFoundError, FileExistsError):
            raise
        except PermissionError as exc:
            raise StoreUnavailable(
                f"cannot {doing} model store {self.uri}: access denied ({_describe(exc)}); "
                "check the credentials (AWS_* variables or profile) and the bucket policy"
            ) from None
        except Exception as exc:  # botocore/aiohttp errors: connection, credentials, timeouts
            hint = ""
            if "Credentials" in type(exc).__name__:
                hint = "; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            elif "Connect" in type(exc).__name__ and self.scheme in S3_SCHEMES:
                hint = f" (endpoint: {self.endpoint_url or 'the AWS default'})"
            raise StoreUnavailable(
                f"cannot {doing} model store {self.uri}: {_describe(exc)}{hint}"
            ) from None

    def _os_error(self, action: str, exc: OSError) -> UserError:
        """What ``ModelStore.save`` reports for an OSError the client let through."""
        if isinstance(exc, FileNotFoundError):
            return self._missing_bucket(exc)
        return UserError(f"cannot {action} model store {self.uri}: {_describe(exc)}")

    def _key(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def _missing_bucket(self, exc: FileNotFoundError) -> UserError:
        return UserError(
            f"model store {self.uri}: bucket {self.bucket!r} does not exist "
            f"or is not visible with these credentials ({_describe(exc)})"
        )

    def _list(self, prefix: str, doing: str = "read") -> list[str]:
        """Every object key under ``prefix/``, relative to it ([] when there is none)."""
        full = self._key(prefix) if prefix else self.base
        with self._io(doing):
            try:
                found = self.fs.find(full)
            except FileNotFoundError as exc:
                raise self._missing_bucket(exc) from None
        lead = full + "/"
        return [p[len(lead) :] for p in found if p.startswith(lead)]

    def _cat(self, key: str, doing: str = "read") -> bytes | None:
        """One object's bytes; None if it does not exist."""
        with self._io(doing):
            try:
                return bytes(self.fs.cat_file(key))
            except FileNotFoundError:
                return None

    def _put(self, key: str, data: bytes, *, create: bool = False) -> None:
        """Write one object; ``create``: only if absent (FileExistsError if it exists)."""
        with self._io("write"):
            if create:
                self.fs.pipe_file(key, data, mode="create")
            else:
                self.fs.pipe_file(key, data)

    # -- reading ---------------------------------------------------------------------------
    def check_writable(self) -> None:
        """The bucket exists and answers with these credentials (writes are checked by doing).

        One request, not a listing of the store: run before every fit.
        """
        with self._io("reach"):
            try:
                self.fs.info(self.bucket)
            except FileNotFoundError as exc:
                raise self._missing_bucket(exc) from None

    def prepare(self, name: str) -> Any:
        check_name(name)
        self.check_writable()
        return self._key(name)

    def _list_names(self) -> list[str]:
        self.check_writable()  # a listing one level deep does not tell a missing bucket
        with self._io("read"):
            found = self.fs.find(self.base, maxdepth=1, withdirs=True, detail=True)
        lead = self.base + "/"
        return [
            path[len(lead) :]
            for path, info in found.items()
            if info.get("type") == "directory" and path.startswith(lead)
        ]

    def _read(self, key: str) -> bytes | None:
        return self._cat(self._key(key))

    def _version_key(self, name: str, version: str, filename: str) -> str:
        return self._key(self._file(name, version, filename))

    # -- writing ---------------------------------------------------------------------------
    def _commit_version(self, name: str, meta: ModelMetadata, files: dict[str, bytes]) -> bool:
        """Claim the number (conditional create), write the files, then the marker, last."""
        owner = json.dumps({"owner": uuid.uuid4().hex, "created_at": meta.created_at}).encode()
        claim = self._version_key(name, meta.version, CLAIM)
        try:
            self._put(claim, owner, create=True)
        except FileExistsError:
            return False  # another trainer claimed it first: take the next number
        if self._cat(claim) != owner:  # a server that ignored If-None-Match
            return False
        for filename, data in files.items():
            self._put(self._version_key(name, meta.version, filename), data)
        self._put(self._version_key(name, meta.version, COMPLETE), meta.artifact_sha256.encode())
        return True

    # -- promotion history -----------------------------------------------------------------
    def _entries(self, name: str) -> list[tuple[int, str]]:
        """(sequence number, key) of every history entry, oldest first."""
        out = []
        for key in self._list(f"{check_name(name)}/{HISTORY_DIR}"):
            match = _ENTRY.match(key)
            if match:
                out.append((int(match.group(1)), self._key(name, HISTORY_DIR, key)))
        return sorted(out)

    def _history_lines(self, name: str) -> list[tuple[str, str]]:
        entries = self._entries(name)
        if not entries:
            return []
        with self._io("read"):
            bodies = self.fs.cat([key for _seq, key in entries], on_error="return")
        lines = []
        for _seq, key in entries:
            body = bodies.get(key)
            where = f"{self.scheme}://{key}"
            if isinstance(body, BaseException) or body is None:
                raise StoreUnavailable(f"{where}: cannot read promotion entry ({body})")
            try:
                lines.append((where, bytes(body).decode("utf-8").strip()))
            except UnicodeDecodeError:
                raise UserError(f"{where}: promotion entry is not UTF-8 text") from None
        return lines

    def _write_entry(self, name: str, line: str) -> None:
        """Create the next entry; a concurrent writer that took the number pushes us to the next
        (entries of two writers follow each other, like O_APPEND lines of the local store)."""
        for _attempt in range(self.MAX_CLAIMS):
            entries = self._entries(name)
            seq = entries[-1][0] + 1 if entries else 1
            key = self._key(check_name(name), HISTORY_DIR, f"{seq:012d}.json")
            try:
                self._put(key, line.encode(), create=True)
                return
            except FileExistsError:
                continue
        raise UserError(f"could not append to the promotion history of {name!r} in {self.uri}")

    @contextlib.contextmanager
    def lock(self, name: str, timeout_s: float = 0.0) -> Iterator[bool]:
        """No lock on object storage: False, and the models-topic check decides races."""
        check_name(name)
        yield False
