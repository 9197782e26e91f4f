"""Worker processes for a shard's Pillow work: started and shut down by the shard task, each image CPU-bounded.

Pool processes are started with "spawn" and import only this module, its start-up hook and the
resizer (Pillow): what they unpickle decides what they load, so nothing here may import the
downloader, pyarrow, Dask or Dagster.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from cah_resources.fleet.lifetime import exit_with_parent
from cah_resources.image_shards.resizer import ImageOutcome, ResizeSettings, process_image
from cah_resources.vocabulary import DownloadStatus

# Image workers yield the CPU to the event loops that start downloads: those wait on latency,
# the image work only on throughput, which a lower priority does not take away.
IMAGE_WORKER_NICENESS = 10

# ---- inside a worker process --------------------------------------------------------------

_job: tuple[int, float] | None = None  # (token, CPU-time deadline) of the image being worked on
_job_started = threading.Event()
_timeouts: Any = None  # the pool's SimpleQueue: tokens of images stopped for their CPU budget


def _start_image_worker(parent_pid: int, timeouts: Any) -> None:
    global _timeouts
    exit_with_parent(parent_pid)
    os.nice(IMAGE_WORKER_NICENESS)
    _timeouts = timeouts
    threading.Thread(target=_watch_cpu_budget, name="cpu-budget", daemon=True).start()


def _watch_cpu_budget() -> None:
    """End this process when an image outlives its CPU budget: a decoder inside C cannot be interrupted.

    CPU time never runs faster than the clock on one thread, so sleeping for the budget still
    left wakes this thread no later than needed, and not at all while images finish in time.
    """
    while True:
        job = _job
        if job is None:
            _job_started.wait()
            _job_started.clear()
            continue
        left = job[1] - time.process_time()
        if left > 0:
            time.sleep(left)
        elif _job is job:
            _timeouts.put(job[0])  # written to the pipe before exiting, so the parent sees it with the break
            os._exit(1)


def _run_within_budget(token: int, cpu_seconds: float, work: Callable[..., Any], *args: Any) -> Any:
    global _job
    if cpu_seconds and _timeouts is not None:
        _job = (token, time.process_time() + cpu_seconds)
        _job_started.set()
    try:
        return work(*args)
    finally:
        _job = None


# ---- in the shard task --------------------------------------------------------------------


class ImageWorkers:
    """A shard task's Pillow workers; ``with ImageWorkers(n) as workers:`` shuts them down on the way out.

    Processes where this process may have children, each image bounded by the resize settings'
    ``max_decode_cpu_seconds``; threads in a daemonic process (Dask's default workers), which
    cannot have children: Pillow releases the GIL while decoding, resizing and encoding, so
    threads still use the cores, but they cannot be stopped mid-image.
    """

    def __init__(self, processes: int) -> None:
        self.processes = max(processes, 1)
        self.kind = "threads" if multiprocessing.current_process().daemon else "processes"
        self._tokens = itertools.count()
        self._timed_out: set[int] = set()
        self._broken_by_timeout: dict[Executor, bool] = {}
        self._pool: Executor | None = None
        self._queue: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> ImageWorkers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    @property
    def executor(self) -> Executor:
        """The pool now in use, started on first use."""
        with self._lock:
            if self._pool is None:
                if self.kind == "threads":
                    self._pool = ThreadPoolExecutor(self.processes, thread_name_prefix="image")
                else:
                    context = multiprocessing.get_context("spawn")
                    self._queue = context.SimpleQueue()
                    self._pool = ProcessPoolExecutor(
                        self.processes,
                        mp_context=context,
                        initializer=_start_image_worker,
                        initargs=(os.getpid(), self._queue),
                    )
            return self._pool

    def _retire(self, broken: Executor) -> bool:
        """Drop a broken pool (once, whoever sees it first); True when an image's timeout broke it."""
        with self._lock:
            if self._pool is broken:
                self._pool = None
                queue, self._queue = self._queue, None
                broken.shutdown(wait=False, cancel_futures=True)
                stopped = set()
                while not queue.empty():
                    stopped.add(queue.get())
                self._timed_out |= stopped
                self._broken_by_timeout[broken] = bool(stopped)
            return self._broken_by_timeout.get(broken, False)

    async def check(self, body: bytes, settings: ResizeSettings) -> ImageOutcome:
        """``process_image`` in a worker: a timeout is the image's own status, a crash gets one more try."""
        loop, token, crashes = asyncio.get_running_loop(), next(self._tokens), 0
        while True:
            pool = self.executor
            try:
                work = (_run_within_budget, token, settings.max_decode_cpu_seconds, process_image, body, settings)
                return await loop.run_in_executor(pool, *work)
            except BrokenProcessPool:
                # Every image in flight in a broken pool is lost with it. The one that outlived
                # its budget gets 'decode_timeout'; the others go again on a fresh pool, and only
                # a break nobody's timeout explains (a decoder crash, the OOM killer) counts
                # against them.
                explained = self._retire(pool)
                if token in self._timed_out:
                    return ImageOutcome(
                        DownloadStatus.DECODE_TIMEOUT,
                        f"took more than {settings.max_decode_cpu_seconds} CPU seconds to decode",
                    )
                crashes += not explained
                if crashes == 2:
                    return ImageOutcome(
                        DownloadStatus.DECODER_CRASHED, "the image worker died twice while decoding this image"
                    )

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
