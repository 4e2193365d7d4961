"""The model registry in a local directory (or a shared volume that honours ``flock``).

Layout: ``<root>/<name>/<version>/{model.joblib, metadata.json, quality_report.json}``,
``<root>/<name>/promotions.jsonl`` and ``<root>/<name>/.lock``. The rules are
:class:`forestream.registry.store.ModelStore`'s; this backend keeps them with what a filesystem
offers:

- **a version is committed by a rename**: its files are written into a temp directory inside the
  store, which is renamed to ``v<N>``. The rename fails when ``v<N>`` exists (another trainer
  won it), so a version appears whole (``metadata.json`` is its ``COMPLETE`` file) or not at all;
- **the history is one ``O_APPEND`` write per entry**: concurrent writers interleave lines,
  never bytes;
- **registry writers serialize on ``flock``** of ``.lock``, which the kernel drops when the
  holder dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from forestream.errors import UserError
from forestream.registry.metadata import METADATA, ModelMetadata, check_name, normalize_version
from forestream.registry.store import LOCK_TIMEOUT_S, ModelStore

PROMOTIONS = "promotions.jsonl"
LOCK = ".lock"


class LocalModelStore(ModelStore):
    """The registry under one directory."""

    COMPLETE: ClassVar[str] = METADATA
    MAX_CLAIMS: ClassVar[int] = 1000

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        super().__init__(str(self.root))

    def version_dir(self, name: str, version: str) -> Path:
        return self.root / check_name(name) / normalize_version(version)

    def version_location(self, name: str, version: str) -> str:
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

    # -- files -------------------------------------------------------------------------------
    def _read(self, key: str) -> bytes | None:
        path = self.root / key
        if not path.is_file():
            return None
        return path.read_bytes()

    def _exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def _list(self, prefix: str) -> list[str]:
        """The files under ``prefix/`` and one level below (a model's versions' files)."""
        top = self.root / prefix
        if not self._is_dir(self.root) or not self._is_dir(top):
            return []
        found = []
        try:
            children = list(top.iterdir())
        except OSError as exc:
            raise self._os_error("read", exc) from None
        for child in children:
            if child.is_file():
                found.append(child.name)
            elif child.is_dir():
                try:
                    below = [p.name for p in child.iterdir() if p.is_file()]
                except OSError:  # a trainer's temp directory renamed or removed meanwhile
                    continue
                found.extend(f"{child.name}/{name}" for name in below)
        return found

    def _list_names(self) -> list[str]:
        if not self._is_dir(self.root):
            return []
        try:
            return [p.name for p in self.root.iterdir() if p.is_dir()]
        except OSError as exc:
            raise self._os_error("read", exc) from None

    def _commit_version(self, name: str, meta: ModelMetadata, files: dict[str, bytes]) -> bool:
        """Write the files into a temp directory inside the store and rename it into place."""
        model_dir = self.root / check_name(name)
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for filename, data in files.items():
                (tmp / filename).write_bytes(data)
            try:
                os.rename(tmp, model_dir / meta.version)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    return False
                raise
            return True
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    # -- promotion history -------------------------------------------------------------------
    def _history_lines(self, name: str) -> list[tuple[str, str]]:
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
