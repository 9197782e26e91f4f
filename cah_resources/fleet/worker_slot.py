"""A work unit that only waits out its slowest hosts gives its Dask thread to the next unit."""

from __future__ import annotations

import threading
from types import TracebackType


class WorkerSlot:
    """A unit's hold on its Dask worker thread, given up at most once, for the unit's tail.

    After ``leave()`` the worker starts its next unit while this one finishes. At most one unit
    per worker thread is in its tail at a time: a second one keeps its slot. So many short units
    never run all at once, and a worker never holds more than twice its units' memory and
    connections. Use as a context manager around the whole unit: leaving it ends the tail.
    """

    _lock = threading.Lock()
    _tails = 0  # units in this process that left their slot and have not ended

    def __init__(self) -> None:
        self.left = False

    def leave(self) -> bool:
        """Secede from the worker's thread pool; False outside a Dask task or while tails fill every thread."""
        if self.left:
            return True
        try:
            from distributed import get_worker, secede

            worker = get_worker()
        except (ImportError, ValueError):
            return False
        with WorkerSlot._lock:
            if WorkerSlot._tails >= worker.state.nthreads:
                return False
            WorkerSlot._tails += 1
        secede()
        self.left = True
        return True

    def __enter__(self) -> WorkerSlot:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.left:
            with WorkerSlot._lock:
                WorkerSlot._tails -= 1
