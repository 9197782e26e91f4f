"""glibc's malloc told to keep freed memory for reuse, in processes that allocate large buffers per image.

Every decode allocates buffers of hundreds of kilobytes (a 1200x800 PNG decodes to 3.8 MB), frees
them, and allocates them again for the next image. glibc serves a block over its mmap threshold
(128 KiB at first) with a fresh mapping and gives it back on free, and trims the heap's top past
its trim threshold, so the next image faults every page in again. It raises the mmap threshold by
itself as large blocks are freed, but not once either threshold is set: Dask's nanny sets
``MALLOC_TRIM_THRESHOLD_=65536`` for its workers, and processes they spawn inherit it. Image workers
under Dask faulted ~100 pages per image that way, a fifth of their CPU (benchmarks/README.md).
"""

from __future__ import annotations

import ctypes
import sys

# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Blocks up to MMAP_THRESHOLD come from the heap, and up to TRIM_THRESHOLD of free heap stays mapped:
# an image worker's peak is one batch of bodies (8 MB) and one image being decoded, so it keeps at
# most this much more than it uses. 32 MiB is the most glibc's own adjustment would reach.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set this process's malloc thresholds; False where the C library has no ``mallopt`` that takes them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Both calls run: mallopt returns 1 when it took the value (musl's stub returns 0).
    return all([mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1, mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1])
