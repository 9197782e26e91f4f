"""Progress inside a long work unit (a 10,000-URL shard): throttled lines from a Dask worker to the waiting run."""

from __future__ import annotations

import time
from collections.abc import Callable

PROGRESS_TOPIC = "cah-progress"  # the Dask event topic compute.run_units subscribes to
REPORT_EVERY_S = 30.0
REPORT_EVERY_FRACTION = 0.1


def publish_to_client(message: str) -> None:
    """Send ``message`` to the client that submitted the running task; a no-op outside a Dask worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    worker.log_event(PROGRESS_TOPIC, message)


class UnitProgress:
    """Counts a unit's items and publishes a line every 10 % or every 30 s: done, rate, ETA.

    The unit's end is not published: the run's gather loop reports each finished unit already.
    """

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "images",
        publish: Callable[[str], None] = publish_to_client,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.unit, self.publish, self.clock = label, total, unit, publish, clock
        self.done = self.ok = 0
        self.started = self.last = clock()
        self.step_size = max(1, int(total * REPORT_EVERY_FRACTION))
        self.next_mark = self.step_size

    def step(self, ok: bool = True) -> None:
        self.done += 1
        self.ok += bool(ok)
        if self.done >= self.total:
            return
        now = self.clock()
        if self.done >= self.next_mark or now - self.last >= REPORT_EVERY_S:
            self.publish(self.line(now))
            self.last = now
            self.next_mark = (self.done // self.step_size + 1) * self.step_size

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        eta = (self.total - self.done) * elapsed / self.done
        return (
            f"{self.label}: {self.done:,}/{self.total:,} ({self.done / self.total:.0%}), {self.ok:,} {self.unit}, "
            f"{self.ok / elapsed:,.1f} {self.unit}/s, ETA {eta:,.0f} s"
        )
