"""A worker index claimed on this host, so exactly-once workers started by hand get distinct ids.

The default transactional id is ``forestream-<group>-<host>-<worker index>``. With the index
left at 0, a second worker started on the same host (another terminal, a second container with
the same hostname) took the first one's id and fenced it (exit 9). Instead, a worker that was
given neither an index nor a transactional id takes the lowest index whose lock file it can
``flock``: a second live worker finds 0 held and takes 1, while a restarted worker finds its
dead predecessor's lock released (the kernel drops a ``flock`` on any exit, ``kill -9``
included) and takes the same index back, so its id aborts the predecessor's open transaction
at once instead of after the transaction timeout.

The locks live in ``/tmp/forestream-<uid>/`` rather than ``$XDG_RUNTIME_DIR``: that variable is
unset under cron, ``sudo``, ``docker exec`` and system services, so two workers of one user
could look in different places and both claim 0. ``FORESTREAM_INDEX_LOCK_DIR`` moves them,
e.g. to a directory bind-mounted into every container that shares a hostname (each container
has a ``/tmp`` of its own; ``flock`` works across them on one kernel). Lock files are left in
place: deleting one races with a process about to lock it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import stat
from pathlib import Path

from forestream.errors import UserError

MAX_INDEX = 1024
"""More hand-started workers of one group on one host than this is a leak, not a deployment."""

_held: list[IndexClaim] = []
"""Claims this process keeps until it ends: the kernel releases them then, however it ends."""


class IndexClaim:
    """An exclusive ``flock`` on one (group, index) lock file, held while the descriptor is open.

    The lock belongs to the open file description, so two claims in one process conflict
    exactly as claims in two processes do."""

    def __init__(self, index: int, path: Path, fd: int) -> None:
        self.index = index
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Give the index up (closing the descriptor drops the lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def default_lock_dir() -> Path:
    """Per user, so no other user can create, replace or hold our lock files."""
    return Path("/tmp") / f"forestream-{os.getuid()}"


def lock_dir(configured: Path | None = None) -> Path:
    """The lock directory, created private (0700) if missing; refused if it is a symlink or
    another user's (someone could otherwise hold or swap our locks)."""
    directory = configured if configured is not None else default_lock_dir()
    try:
        directory.mkdir(mode=0o700, parents=configured is not None, exist_ok=True)
        info = directory.lstat()
    except OSError as exc:
        raise UserError(f"cannot use worker index lock directory {directory}: {exc}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise UserError(
            f"worker index lock directory {directory} is not a directory of this user's; "
            "remove it or set FORESTREAM_INDEX_LOCK_DIR"
        )
    return directory


def lock_path(directory: Path, group: str, index: int) -> Path:
    """One file per (group, index): readable, and a hash keeps any group name a safe name."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", group)[:80]
    digest = hashlib.sha256(group.encode()).hexdigest()[:12]
    return directory / f"{readable}-{digest}-{index}.lock"


def try_claim(directory: Path, group: str, index: int) -> IndexClaim | None:
    """The claim on ``index``, or ``None`` if a live process holds it."""
    path = lock_path(directory, group, index)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return IndexClaim(index, path, fd)


def claim_lowest(directory: Path, group: str) -> IndexClaim:
    """The lowest index of ``group`` no live process on this host holds."""
    for index in range(MAX_INDEX):
        claim = try_claim(directory, group, index)
        if claim is not None:
            return claim
    raise UserError(
        f"all {MAX_INDEX} worker indexes of group {group!r} are held on this host "
        f"(lock files in {directory})"
    )


def hold(claim: IndexClaim) -> IndexClaim:
    """Keep ``claim`` until the process ends."""
    _held.append(claim)
    return claim
