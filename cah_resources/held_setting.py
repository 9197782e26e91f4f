"""A process-wide setting held while any thread is inside: the first one in applies it, the last one out undoes it.

Shard tasks run side by side in one Dask worker's threads, and what they change for their event
loops (the collector's pace, malloc's thresholds) belongs to the whole process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class HeldSetting:
    """``with setting.held():`` applies ``apply`` when nobody holds it; the undo it returned runs when nobody does."""

    def __init__(self, apply: Callable[[], Callable[[], None]]) -> None:
        self._apply = apply
        self._lock = threading.Lock()
        self._holders = 0
        self._undo: Callable[[], None] | None = None

    @property
    def holders(self) -> int:
        """How many are inside now: 0 once every holder has left (and the setting is undone)."""
        return self._holders

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._undo = self._apply()
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0 and self._undo is not None:
                    undo, self._undo = self._undo, None
                    undo()
