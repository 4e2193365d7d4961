"""The malloc arena cap: applied on glibc, left to an explicit ``MALLOC_ARENA_MAX``."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from forestream.worker.process_memory import limit_malloc_arenas


def test_an_explicit_environment_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or ctypes.util.find_library("c") is None,
    reason="glibc only",
)
def test_glibc_takes_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is True
