"""The device models run on, and batches that fit it: the largest slices that fit, halved on out-of-memory, regrown."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Out-of-memory warnings one shard logs before it only counts them: a capped H200 run logged 8,897
# halvings of one shard, a line each, which buries everything else in a worker's log.
OOM_WARNINGS_PER_SHARD = 3
# Slices in a row that fit at a remembered size before it is doubled: memory freed since (a huge
# picture gone, another batch scored) is used again, at the cost of one failed try when it was not.
GROW_AFTER_FITS = 16


def resolve_device(requested: str = "auto") -> str:
    """The torch device to run on: the requested one, or for 'auto' CUDA, then MPS, then CPU."""
    import torch  # here, not at the top: Dagster's definitions import this module, and torch takes 3 s

    if requested != "auto":
        if requested == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


class OomTally:
    """One shard's out-of-memory events, counted across threads; only the first few are logged."""

    def __init__(self, logged: int = OOM_WARNINGS_PER_SHARD) -> None:
        self.halvings = 0  # a slice that did not fit, halved
        self.alone = 0  # a single row that did not fit
        self.decoded_on_cpu = 0  # of those, images decoded on the CPU instead of the device
        self.logged = 0
        self._quota = logged
        self._lock = threading.Lock()

    def count(self, event: str, message: str = "", *args: Any) -> None:
        """Add one ``event`` (an attribute above); log ``message``, if any, while the shard's quota lasts."""
        with self._lock:
            setattr(self, event, getattr(self, event) + 1)
            loud = bool(message) and self.logged < self._quota
            self.logged += loud
        if loud:
            log.warning(message, *args)

    def counts(self) -> dict[str, int]:
        return {"oom_halvings": self.halvings, "oom_alone": self.alone, "decoded_on_cpu": self.decoded_on_cpu}


def map_halving_on_oom(  # noqa: C901 - one loop: submit, halve on OOM, retry, collect
    run: Callable[[int, int], Any],
    n: int,
    loaded: Any = None,
    *,
    limit: str = "max_batch",
    alone: Callable[[int, BaseException], Any] | None = None,
    tally: OomTally | None = None,
) -> list[Any]:
    """``run(lo, hi)`` over ``[0, n)`` in the largest slices that fit, halving on out-of-memory.

    ``loaded`` is the loaded model the sizes belong to (a CLIP, a text classifier): any object with an
    ``int | None`` attribute named ``limit`` and a ``fit_streaks`` dict. A size that fitted after
    halving is remembered on it so that later
    batches start there, and doubled after ``GROW_AFTER_FITS`` slices in a row fit at it. A single row
    that still runs out of memory is a real failure: its result is ``alone(row, error)`` when given,
    else the error is raised. It is that row's failure, not the batch size's: the halvings that led to
    it are undone, back to the largest size that fitted. Each event goes to ``tally`` when given
    (counted, the first few logged), else to the log.
    """

    def note(event: str, message: str, *args: Any) -> None:
        if tally is not None:
            tally.count(event, message, *args)
        else:
            log.warning(message, *args)

    remembered = getattr(loaded, limit) if loaded is not None else None
    step = first_step = min(n, remembered) if remembered else n
    streaks = loaded.fit_streaks if loaded is not None else {}
    fitted, alone_before = 0, False
    results, lo = [], 0
    while lo < n:
        hi = min(n, lo + step)
        try:
            results.append(run(lo, hi))
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            streaks[limit] = 0
            # Blocks cached for another stream are no use to this one: give them back before retrying.
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if hi - lo > 1:
                step = max(1, (hi - lo) // 2)
                note("halvings", "batch of %d ran out of memory; retrying in batches of %d", hi - lo, step)
                continue
            if alone is None:
                raise
            note("alone", "row %d alone ran out of memory: %s", lo, " ".join(str(error).split())[:200])
            results.append(alone(lo, error))
            # Go on at the largest size that fitted (or the first one, when none has yet), unless the row
            # before failed alone too: then the device is full and one at a time is what is left.
            step = 1 if alone_before else fitted or first_step
            if not alone_before and loaded is not None and fitted and (getattr(loaded, limit) or n) < fitted:
                setattr(loaded, limit, fitted)
            alone_before = True
        else:
            fitted, alone_before = max(fitted, hi - lo), False
            if hi - lo == step and step < n:
                current = getattr(loaded, limit) if loaded is not None else None
                streaks[limit] = streaks.get(limit, 0) + 1
                if streaks[limit] >= GROW_AFTER_FITS:
                    step, streaks[limit] = step * 2, 0
                    current = None if current is None else max(current, step)
                elif current is None or step < current:
                    current = step
                if loaded is not None:
                    setattr(loaded, limit, current)
        lo = hi
    return results
