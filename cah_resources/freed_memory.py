"""glibc's malloc told to keep freed memory for reuse, where large buffers are made and dropped per image.

Every decode allocates buffers of hundreds of kilobytes (a 1200x800 PNG decodes to 3.8 MB), and a
shard's event loop reads bodies and pickles batches of them; each is freed and made again for the
next image. glibc serves a block over its mmap threshold (128 KiB at first) with a fresh mapping
and unmaps it on free, and trims the heap's top past its trim threshold, so the next image faults
those pages in again. glibc raises the mmap threshold by itself as large blocks are freed, but not
once either threshold is set: Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` for its workers,
and the processes they spawn inherit it. Image workers under Dask faulted ~100 pages per image
that way, a fifth of their CPU, and the shard tasks spent 7% of theirs on it; clip_pairs' decode
threads faulted ~350 pages per image, a third of their CPU, and page_scores' model 7% of its CPU
on it (benchmarks/README.md).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable

from cah_resources.held_setting import HeldSetting

# mallopt's parameter numbers (glibc's malloc.h), and glibc's starting values for both thresholds.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
GLIBC_DEFAULT_THRESHOLD = 128 << 10

# Blocks up to MMAP_THRESHOLD come from the heap, and up to TRIM_THRESHOLD of free heap stays mapped:
# a process keeps at most that much more than it uses. 32 MiB is the most glibc's own adjustment reaches.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The process's own C library, where it is one whose ``mallopt`` takes these parameters (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def _set_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    libc = _libc()
    if libc is None:
        return False
    mallopt: Callable[[int, int], int] = libc.mallopt
    # Both calls run: mallopt returns 1 when it took the value (musl's stub returns 0).
    return all([mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1, mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1])


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set this process's malloc thresholds for good (an image worker's whole life); False where it cannot."""
    return _set_thresholds(mmap_threshold, trim_threshold)


def _environment_thresholds() -> tuple[int, int]:
    """The thresholds the process started with: its environment's, else glibc's starting values."""

    def value(name: str) -> int:
        try:
            return int(os.environ.get(name, GLIBC_DEFAULT_THRESHOLD))
        except ValueError:
            return GLIBC_DEFAULT_THRESHOLD

    return value("MALLOC_MMAP_THRESHOLD_"), value("MALLOC_TRIM_THRESHOLD_")


def _keep_then_restore() -> Callable[[], None]:
    keep_freed_memory()

    def restore() -> None:
        libc = _libc()
        if libc is not None and _set_thresholds(*_environment_thresholds()):
            libc.malloc_trim(0)

    return restore


# ``with freed_memory_kept():`` freed memory kept for reuse while any holder is inside; after the
# last, given back. For a process that outlives the block (a Dask worker running shard tasks): on
# the way out the thresholds go back to what the environment set (Dask's trim threshold) or
# glibc's starting values, and ``malloc_trim`` returns the free heap to the system. Shared by
# threads, as the thresholds are process-wide.
freed_memory_setting = HeldSetting(_keep_then_restore)
freed_memory_kept = freed_memory_setting.held
