"""glibc allocator settings applied once at process start (`mer-bench`, grid workers, benchmarks).

Why: a CIDer or transformer step allocates and frees many tensors of 10-100 MB (attention
scores, their gradients). glibc serves every block above its mmap threshold (128 KiB, adapting
up to 32 MiB) with a fresh `mmap` and returns it with `munmap` on free, so each step maps,
page-faults (zero-fills) and unmaps gigabytes: most of an epoch became kernel time, and worse
under contention. Raising the mmap threshold to 1 GiB keeps such blocks in the heap, where the
next step reuses them; turning heap trimming off stops glibc from returning the freed top of
the heap to the kernel after every step (a trim threshold of 1 GiB was not enough: a MulT step
holds about 10 GB, so each micro-batch's frees trimmed gigabytes that the next one faulted
back in, half of its time; measured 1,036 -> 533 s per unaligned epoch with trimming off). The
process keeps its peak heap, which it needs again on the next step. Blocks above 1 GiB (whole
MOSEI arrays) are still mapped, so freeing them still returns memory. Elsewhere than glibc this
is a no-op. An explicit `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` in the environment
wins, and `MER_BENCH_MALLOC=0` turns the settings off.

Cost: heap blocks fragment, so peak RSS can rise (measured: CIDer unchanged, MulT's peak higher).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # bytes: blocks below stay in the heap and are reused
TRIM_THRESHOLD = -1  # mallopt: -1 turns trimming of the heap's free top off (man mallopt)

_applied: dict[str, int] | None = None


def tune_allocator() -> dict[str, int]:
    """Apply the settings once per process; returns what was set (empty where not glibc)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = {}
    if not sys.platform.startswith("linux") or os.environ.get("MER_BENCH_MALLOC") == "0":
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return _applied
    for env, param, value in (
        ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ):
        if env not in os.environ and mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1:
            _applied[env.strip("_").lower()] = value
    return _applied
