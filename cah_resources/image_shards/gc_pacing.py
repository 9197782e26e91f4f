"""How often Python's cyclic garbage collector runs while shards download.

A shard's event loop makes and drops thousands of objects a second (tasks, futures, responses,
rows). At Python's default pace (a young collection every 700 objects, an older one every ten of
those) a shard task in a Dask worker spent 16% of its CPU in the collector, most of it in full
collections that walk the worker's ~250,000 long-lived objects again and again (see
benchmarks/README.md, issue 27). Collected every ``YOUNG_OBJECTS`` instead, the same work finds
the same garbage for a third of the time; memory grows by the young objects alone.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_OBJECTS = 10_000

_lock = threading.Lock()
_holders = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def fewer_collections(young: int = YOUNG_OBJECTS) -> Iterator[None]:
    """Collect the young generation every ``young`` objects while any holder is inside; then as before.

    Process-wide, as the collector is: shard tasks running side by side in one worker's threads
    share the pace, and the last one out restores the thresholds it found. A collector turned
    off (threshold 0) or already slower is left as it is.
    """
    global _holders, _saved
    with _lock:
        if _holders == 0:
            _saved = gc.get_threshold()
            first, *older = _saved
            if 0 < first < young:
                gc.set_threshold(young, *older)
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None
