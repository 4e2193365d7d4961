"""Worker indexes claimed on one host: the lowest free one, given back by the kernel however its
holder ends, so a restart reclaims its predecessor's index (and transactional id) while a
second live worker gets the next one."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from forestream.errors import UserError
from forestream.runtime.settings import load_settings
from forestream.worker import index_claim
from forestream.worker.cli import _claim_index
from forestream.worker.index_claim import (
    IndexClaim,
    claim_lowest,
    lock_dir,
    lock_path,
    try_claim,
)
from forestream.worker.settings import WorkerSettings

GROUP = "scoring"

_HOLDER = """
import sys
from pathlib import Path
from forestream.worker.index_claim import claim_lowest
claim = claim_lowest(Path(sys.argv[1]), sys.argv[2])
print(claim.index, flush=True)
sys.stdin.read()
"""


@pytest.fixture(autouse=True)
def _release_held() -> Iterator[None]:
    """Claims ``_claim_index`` keeps for the process's lifetime end with each test here."""
    yield
    while index_claim._held:
        index_claim._held.pop().release()


@pytest.fixture
def claims() -> Iterator[list[IndexClaim]]:
    taken: list[IndexClaim] = []
    yield taken
    for claim in taken:
        claim.release()


def test_a_second_live_claim_gets_the_next_index(tmp_path: Path, claims: list[IndexClaim]) -> None:
    claims += [claim_lowest(tmp_path, GROUP), claim_lowest(tmp_path, GROUP)]
    assert [c.index for c in claims] == [0, 1]


def test_a_released_index_is_reclaimed_first(tmp_path: Path, claims: list[IndexClaim]) -> None:
    claims += [claim_lowest(tmp_path, GROUP) for _ in range(3)]
    claims[0].release()
    claims[1].release()
    claims.append(claim_lowest(tmp_path, GROUP))
    assert claims[-1].index == 0
    claims.append(claim_lowest(tmp_path, GROUP))
    assert claims[-1].index == 1  # 2 is still held


def test_groups_claim_independently(tmp_path: Path, claims: list[IndexClaim]) -> None:
    claims += [claim_lowest(tmp_path, GROUP), claim_lowest(tmp_path, "billing")]
    assert [c.index for c in claims] == [0, 0]


def test_a_held_index_cannot_be_claimed_until_released(
    tmp_path: Path, claims: list[IndexClaim]
) -> None:
    claims.append(claim_lowest(tmp_path, GROUP))
    assert try_claim(tmp_path, GROUP, 0) is None
    claims[0].release()
    again = try_claim(tmp_path, GROUP, 0)
    assert again is not None
    claims.append(again)


def test_a_claim_held_by_another_process_is_freed_by_kill_9(
    tmp_path: Path, claims: list[IndexClaim]
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path), GROUP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"0"
        claims.append(claim_lowest(tmp_path, GROUP))
        assert claims[-1].index == 1  # the other process's claim counts
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        claims.append(claim_lowest(tmp_path, GROUP))
        assert claims[-1].index == 0  # what a restarted worker gets: its predecessor's index
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_lock_files_have_safe_names_per_group(tmp_path: Path) -> None:
    odd = lock_path(tmp_path, "../a/b c", 3)
    assert odd.parent == tmp_path and odd.name.endswith("-3.lock") and "/" not in odd.name
    assert lock_path(tmp_path, "a/b", 0) != lock_path(tmp_path, "a_b", 0)


def test_the_lock_dir_is_created_private(tmp_path: Path) -> None:
    directory = lock_dir(tmp_path / "locks")
    assert directory.is_dir() and (directory.stat().st_mode & 0o777) == 0o700


def test_a_symlinked_lock_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UserError, match="not a directory of this user's"):
        lock_dir(tmp_path / "link")


def _settings(tmp_path: Path, **given: object) -> WorkerSettings:
    return load_settings(
        WorkerSettings, group=GROUP, guarantee="exactly-once", index_lock_dir=tmp_path, **given
    )


def test_an_exactly_once_worker_without_index_claims_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FORESTREAM_WORKER_INDEX", raising=False)
    log = structlog.get_logger("test")
    first = _claim_index(log, _settings(tmp_path))
    second = _claim_index(log, _settings(tmp_path))
    assert (first.worker_index, second.worker_index) == (0, 1)
    assert first.transactional_id_or_default() != second.transactional_id_or_default()


def test_an_explicit_index_or_id_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = structlog.get_logger("test")
    monkeypatch.setenv("FORESTREAM_WORKER_INDEX", "0")
    assert _claim_index(log, _settings(tmp_path)).worker_index == 0
    assert _claim_index(log, _settings(tmp_path)).worker_index == 0  # held: warned, kept
    monkeypatch.delenv("FORESTREAM_WORKER_INDEX")
    named = _claim_index(log, _settings(tmp_path, transactional_id="billing-7"))
    assert named.worker_index == 0 and named.transactional_id_or_default() == "billing-7"
    assert _claim_index(log, _settings(tmp_path)).worker_index == 1  # 0 held by the first


def test_at_least_once_claims_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORESTREAM_WORKER_INDEX", raising=False)
    settings = load_settings(WorkerSettings, group=GROUP, index_lock_dir=tmp_path)
    _claim_index(structlog.get_logger("test"), settings)
    assert list(tmp_path.iterdir()) == []
