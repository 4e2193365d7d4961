"""The malloc arena cap: applied on glibc, left to an explicit ``MALLOC_ARENA_MAX``."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from forestream.worker.process_memory import limit_malloc_arenas

glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or ctypes.util.find_library("c") is None,
    reason="glibc only: mallopt and malloc_trim are glibc's",
)


def test_an_explicit_environment_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


@glibc_only
def test_glibc_takes_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is True


@glibc_only
def test_free_heap_pages_go_back() -> None:
    """Chunks freed in the middle of the heap (below the mmap threshold, a live one above
    them) are released by the trim: what a version's load leaves behind."""
    from forestream.worker.process_memory import return_free_heap

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    chunks = [libc.malloc(64 * 1024) for _ in range(256)]  # 16 MB
    for chunk in chunks:
        ctypes.memset(chunk, 1, 64 * 1024)  # resident
    for chunk in chunks[:-1]:
        libc.free(chunk)
    try:
        assert return_free_heap() is True
    finally:
        libc.free(chunks[-1])


def test_an_explicit_mmap_threshold_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from forestream.worker.process_memory import fix_mmap_threshold

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert fix_mmap_threshold() is False


@glibc_only
def test_glibc_takes_the_fixed_mmap_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    from forestream.worker.process_memory import fix_mmap_threshold

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert fix_mmap_threshold() is True
