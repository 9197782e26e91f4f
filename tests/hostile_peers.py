"""Hostile HTTP servers on loopback, on raw asyncio sockets, for what aiohttp's own server will not do."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from cah_resources.samples.loop_thread import LoopThread

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> str | None:
    """The request line of the next request on a connection (its headers read too), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return head.split(b"\r\n", 1)[0].decode("latin-1")


def response_head(status: str = "200 OK", **headers: str | int) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class RawServer:
    """``with RawServer(handler) as server``: serves each connection on 127.0.0.1:``server.port`` with
    ``handler(reader, writer)`` in a thread of its own; ``server.connections`` counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.port = 0
        self._loop_thread: LoopThread | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client hung up, as clients of hostile servers should, or the server stops
        finally:
            writer.close()

    def __enter__(self) -> RawServer:
        self._loop_thread = LoopThread("hostile-peer")
        self._server = self._loop_thread.run(asyncio.start_server(self._serve, "127.0.0.1", 0), timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __exit__(self, *exc_info: object) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        self._loop_thread.run(stop(), timeout=10)
        self._loop_thread.close()
