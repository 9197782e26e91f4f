"""Worker processes for a shard's Pillow work: one pool per process, reused by every shard it runs.

Pool processes are started with "spawn" and import only this module, its start-up hook and the
resizer (Pillow): what they unpickle decides what they load, so nothing here may import the
downloader, pyarrow, Dask or Dagster.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from cah_resources.lifetime import exit_with_parent

# Image workers yield the CPU to the event loops that start downloads: those wait on latency,
# the image work only on throughput, which a lower priority does not take away.
IMAGE_WORKER_NICENESS = 10

_pool_lock = threading.Lock()
_pools: dict[int, Executor] = {}


def _start_image_worker(parent_pid: int) -> None:
    exit_with_parent(parent_pid)
    os.nice(IMAGE_WORKER_NICENESS)


def image_pool(processes: int) -> Executor:
    """Worker processes for Pillow work, or threads where this process may not have children.

    Dask runs its workers as daemonic processes by default and those cannot start children;
    Pillow releases the GIL while decoding, resizing and encoding, so threads still use the cores.
    """
    with _pool_lock:
        pool = _pools.get(processes)
        if pool is None:
            if multiprocessing.current_process().daemon:
                pool = ThreadPoolExecutor(max(processes, 1), thread_name_prefix="image")
            else:
                pool = ProcessPoolExecutor(max(processes, 1), mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_start_image_worker, initargs=(os.getpid(),))
            _pools[processes] = pool
        return pool


def replace_broken_pool(processes: int, broken: Executor) -> None:
    with _pool_lock:
        if _pools.get(processes) is broken:
            del _pools[processes]
    broken.shutdown(wait=False, cancel_futures=True)
