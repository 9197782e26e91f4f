"""Worker processes for a shard's Pillow work: started and shut down by the shard task, each image CPU-bounded.

Pool processes are started with "spawn" and import only this module, its start-up hook and the
resizer (Pillow): what they unpickle decides what they load, so nothing here may import the
downloader, pyarrow, Dask or Dagster.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from cah_resources.fleet.lifetime import exit_with_parent
from cah_resources.freed_memory import keep_freed_memory
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
    keep_freed_memory()  # decode buffers reused, not faulted in again for every image
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


def _check_batch(items: list[tuple[int, bytes]], settings: ResizeSettings) -> list[ImageOutcome]:
    """``process_image`` on each body in turn, each within its own CPU budget."""
    budget = settings.max_decode_cpu_seconds
    return [_run_within_budget(token, budget, process_image, body, settings) for token, body in items]


# ---- in the shard task --------------------------------------------------------------------

# Images go to the workers in batches: each hand-off costs the shard task's event loop, the pool's
# two helper threads and the worker a wake-up, a pickle and a pipe round trip, so one per batch
# instead of one per image. A batch is sent at once while fewer than BATCHES_IN_FLIGHT per worker
# are out, so an idle worker gets an image without waiting; behind a busy one, images gather.
BATCHES_IN_FLIGHT = 2
BATCH_MAX_IMAGES = 32
BATCH_MAX_BYTES = 8_000_000


# An image waiting for a worker: token, body, settings, the future its URL awaits, and whether it goes alone.
_Waiting = tuple[int, bytes, ResizeSettings, "asyncio.Future[ImageOutcome]", bool]


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
        # Images waiting for a batch: (token, body, settings, future, sent alone); crashes per token.
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._crashes: dict[int, int] = {}
        self._batches_out = 0
        self._batch_tasks: set[asyncio.Task] = set()

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
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((next(self._tokens), body, settings, future, False))
        self._send_batches()
        return await future

    def _send_batches(self) -> None:
        while self._waiting and self._batches_out < BATCHES_IN_FLIGHT * self.processes:
            batch: list[_Waiting] = []
            size = 0
            settings = self._waiting[0][2]
            while self._waiting and len(batch) < BATCH_MAX_IMAGES and size < BATCH_MAX_BYTES:
                item = self._waiting[0]
                if item[3].done():  # its URL gave up (cancelled) while it waited
                    self._waiting.popleft()
                    continue
                if item[2] is not settings or (batch and (item[4] or batch[0][4])):
                    break  # one settings object per batch; an image retried after a crash goes alone
                batch.append(self._waiting.popleft())
                size += len(item[1])
            if batch:
                self._batches_out += 1
                task = asyncio.get_running_loop().create_task(self._run_batch(batch, settings))
                self._batch_tasks.add(task)  # held until done: the loop keeps only weak references
                task.add_done_callback(self._batch_tasks.discard)

    async def _run_batch(self, batch: list[_Waiting], settings: ResizeSettings) -> None:
        pool = self.executor
        outcomes: Sequence[ImageOutcome | None]  # None: no outcome yet (sent again, or failed)
        try:
            work = [(token, body) for token, body, *_ in batch]
            outcomes = await asyncio.get_running_loop().run_in_executor(pool, _check_batch, work, settings)
        except BrokenProcessPool:
            # Every image in flight in a broken pool is lost with it. The one that outlived its
            # budget gets 'decode_timeout'; the others go again on a fresh pool, each alone, and
            # only a break nobody's timeout explains (a decoder crash, the OOM killer) counts
            # against them: an image whose batch broke twice that way gets 'decoder_crashed'.
            explained = self._retire(pool)
            redone: list[ImageOutcome | None] = []
            for token, body, item_settings, future, _alone in batch:
                crashes = self._crashes[token] = self._crashes.get(token, 0) + (not explained)
                if token in self._timed_out:
                    seconds = item_settings.max_decode_cpu_seconds
                    redone.append(
                        ImageOutcome(DownloadStatus.DECODE_TIMEOUT, f"took more than {seconds} CPU seconds to decode")
                    )
                elif crashes == 2:
                    redone.append(
                        ImageOutcome(
                            DownloadStatus.DECODER_CRASHED, "the image worker died twice while decoding this image"
                        )
                    )
                else:
                    redone.append(None)
                    self._waiting.appendleft((token, body, item_settings, future, True))
            outcomes = redone
        except Exception as exc:  # the pool shut down, or a body would not pickle: its images' error
            outcomes = [None] * len(batch)
            for *_, future, _alone in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._batches_out -= 1
        for (token, _body, _settings, future, _alone), outcome in zip(batch, outcomes, strict=True):
            if outcome is not None:
                self._crashes.pop(token, None)
                if not future.done():
                    future.set_result(outcome)
        self._send_batches()

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
