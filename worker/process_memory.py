"""The worker process's memory, where glibc and Linux allow it: fewer malloc arenas, a fixed mmap
threshold, LLVM's pages and the heap's free pages given back once a version is loaded.

glibc gives each thread that allocates concurrently an arena of its own, up to eight per core;
the worker's threads (librdkafka's broker threads, the model follower, the labels reader, the
metrics server) each end up holding one, partly empty. Two arenas took the librdkafka worker's
peak RSS over 100,000 records from 258-259 MB to 252-256 MB (five runs, 2 cores), at no cost
in throughput that the runs could show.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Any


def _libc(function: str) -> Any | None:
    """``function`` of the C library, None where there is none by that name (musl has no
    ``mallopt`` or ``malloc_trim``; other platforms no libc to find)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name, use_errno=True), function)
    except (OSError, AttributeError):
        return None


M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter number for the arena cap (``malloc.h``)."""
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap the arenas before any thread starts; True when it took effect. An explicit
    ``MALLOC_ARENA_MAX`` in the environment wins; other C libraries are left alone."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = _libc("mallopt")
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, arenas))


M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number for the mmap threshold (``malloc.h``)."""
MMAP_THRESHOLD = 1 << 20


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve allocations of ``threshold`` bytes and more by ``mmap`` (returned on ``free``), at
    a fixed size; True when it took effect. glibc's threshold starts at 128 KB and follows the
    largest chunk freed, up to 32 MB (the trim threshold to twice that): after a few multi-MB
    batch buffers, such chunks came from the heap and stayed resident once freed. Measured on
    the benchmark worker: peak RSS 2-7 MB lower at 1 MB (at 128 KB as well, but (c)'s rate fell
    8-11 %), rate unchanged. ``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES`` set wins."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "GLIBC_TUNABLES" in os.environ:
        return False
    mallopt = _libc("mallopt")
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, threshold))


MADV_DONTNEED = 4
MADV_PAGEOUT = 21
"""Linux ``madvise`` advice numbers (``asm-generic/mman-common.h``); PAGEOUT since 5.4."""
COMPILER_LIBRARY = "libllvmlite.so"


def release_compiler_pages(library: str = COMPILER_LIBRARY) -> int:
    """Give back the resident pages of LLVM's shared library once the forest's kernel is loaded;
    the bytes of mappings advised (0 where nothing was done).

    Importing numba and loading the cached kernel leave ~80 MB of ``libllvmlite.so`` resident
    (measured: RSS 278 -> 219 MB in a probe process), and scoring never calls LLVM again. The
    code pages are clean copies of the file, so ``MADV_DONTNEED`` only unmaps them: were LLVM
    needed again (another compile), they would be read back in on use. The other mappings are
    asked with ``MADV_PAGEOUT``, which never discards data (a page written since the load,
    such as relocated pointers, goes to swap or stays), and is skipped where the kernel lacks it.
    """
    madvise = _libc("madvise")
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return 0
    if madvise is None:
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for line in maps:
        fields = line.split()
        if len(fields) < 6 or not fields[5].endswith(library):
            continue
        start, end = (int(bound, 16) for bound in fields[0].split("-"))
        advice = MADV_DONTNEED if fields[1] == "r-xp" else MADV_PAGEOUT
        if madvise(start, end - start, advice) == 0:
            advised += end - start
    return advised


def return_free_heap() -> bool:
    """Give the free pages of every malloc arena back to the kernel (glibc's ``malloc_trim``);
    True when some were. Loading a version (the artifact's bytes, unpickling, the compiled
    copy, the parity rows) frees tens of MB that glibc otherwise keeps resident for good:
    measured ~10 MB of the worker's peak RSS. Once per version, never on the scoring path."""
    malloc_trim = _libc("malloc_trim")
    return malloc_trim is not None and bool(malloc_trim(0))
