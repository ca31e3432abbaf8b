"""For executors: a worker process keeps the memory it freed, instead of handing it
back to the kernel after every batch (glibc only; elsewhere nothing changes).

A worker deserializes each batch from one buffer of about the batch's size (1 MB for
1,000 rows of 1 KB) and serializes its result into another. With glibc's defaults such a
buffer is returned to the kernel when freed (mapped apart, or trimmed off the top of
the heap), and the next batch faults the same number of pages in again. Measured on
"mp", 1M rows x 1 KB: 1.67 million page faults in the workers, 14 thousand with the
thresholds below; the run 13.9 -> 11.5 s (docs/benchmarks.md, "Issue 20, fifth pass").
In a "ray" actor, 200 batches of 1,000 rows x 1 KB: 520-538 page faults and 3.4-3.8 ms
of CPU per batch, 72-79 and 2.7-2.8 ms with them (docs/executors/ray.md).

The cost is memory the worker holds on to: at most `TRIM_THRESHOLD` of freed heap,
and blocks below `MMAP_THRESHOLD` come from the heap. Call it only in processes the
executor owns (its workers, its actors), never in the user's own (the driver)."""

from __future__ import annotations

import contextlib
import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""`mallopt` parameters (glibc's malloc.h)."""

MMAP_THRESHOLD = 32 << 20
"""Blocks at least this large are mapped apart (and unmapped when freed): glibc's own
upper bound for the threshold it adjusts by itself, fixed here so it does not start low."""

TRIM_THRESHOLD = 64 << 20
"""Freed memory at the top of the heap is returned to the kernel once it exceeds this."""


def keep_freed_memory() -> bool:
    """Set the thresholds in this process; whether it could (glibc on Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        # The process's own symbols, libc's among them (`ctypes.util.find_library` would
        # run `ldconfig` in a subprocess at every worker's start).
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return False  # musl and others: mallopt is absent or does nothing
        # mallopt returns 1 on success; both must hold, or glibc's defaults are better
        # (a fixed mmap threshold alone turns off its adjusting the trim threshold).
        if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:
            return libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return False
