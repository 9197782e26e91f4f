"""Processes that leave with the one that started them, so a killed run or worker leaves no orphans."""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent_pid: int | None = None, interval_s: float = 1.0) -> None:
    """End this process as soon as ``parent_pid`` (default: its parent now) is no longer its parent.

    A child holding pipes or queues of a parent killed without cleaning up (SIGKILL, the OOM
    killer, a nanny terminating a Dask worker) would otherwise wait on them forever.
    """
    parent = os.getppid() if parent_pid is None else parent_pid

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
