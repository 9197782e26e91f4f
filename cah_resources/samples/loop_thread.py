"""An asyncio event loop in a daemon thread: how the local web and DNS servers run beside their callers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any


def uvloop_or_asyncio() -> asyncio.AbstractEventLoop:
    """A uvloop loop where uvloop is installed (a fraction of asyncio's CPU per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LoopThread:
    """Starts a loop in a thread of its own and returns once it runs; ``close()`` stops and joins it.

    ``fast``: a uvloop loop. A peer in a process of its own (the benchmarks' web and DNS) shares
    the measured program's cores, where the real web's servers use none of them.
    """

    def __init__(self, name: str, fast: bool = False) -> None:
        self.loop = uvloop_or_asyncio() if fast else asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self._thread = threading.Thread(target=serve, name=name, daemon=True)
        self._thread.start()
        ready.wait()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        """Run ``coroutine`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)

    def call(self, function: Callable[[], object]) -> None:
        self.loop.call_soon_threadsafe(function)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()
