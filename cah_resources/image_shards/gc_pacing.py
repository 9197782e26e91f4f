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
from collections.abc import Callable

from cah_resources.held_setting import HeldSetting

YOUNG_OBJECTS = 10_000


def _pace() -> Callable[[], None]:
    """Collect the young generation every YOUNG_OBJECTS objects; returns what puts the pace back.

    A collector turned off (threshold 0) or already slower is left as it is.
    """
    saved = gc.get_threshold()
    first, *older = saved
    if 0 < first < YOUNG_OBJECTS:
        gc.set_threshold(YOUNG_OBJECTS, *older)
    return lambda: gc.set_threshold(*saved)


# ``with fewer_collections():`` the pace above while any holder is inside; then as before.
# Process-wide, as the collector is: shard tasks side by side in one worker's threads share the
# pace, and the last one out restores the thresholds the first one found.
fewer_collections = HeldSetting(_pace).held
