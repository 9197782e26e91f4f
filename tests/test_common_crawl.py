"""Reading a crawl from a base URL: streamed downloads that are checked for completeness and retried."""

import asyncio
import gzip
import threading
from pathlib import Path

import pytest
from aiohttp import web

from cah_resources.crawl.common_crawl import CrawlFileMissing, CrawlSource, IncompleteDownload

WAT_BYTES = bytes(range(256)) * 4000  # 1 MB


class FlakyMirror:
    """A loopback HTTP server: the first ``breaks`` requests for a file stop half-way."""

    def __init__(self, files: dict[str, bytes], breaks: int) -> None:
        self.files, self.breaks, self.requests = files, breaks, 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = self.files.get(request.path.lstrip("/"))
        if body is None:
            return web.Response(status=404)
        response = web.StreamResponse(headers={"Content-Length": str(len(body))})
        await response.prepare(request)
        if self.requests <= self.breaks:
            await response.write(body[: len(body) // 2])
            request.transport.close()
            return response
        await response.write(body)
        await response.write_eof()
        return response

    def __enter__(self) -> str:
        self.thread.start()
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        asyncio.run_coroutine_threadsafe(self.runner.setup(), self.loop).result(5)
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        asyncio.run_coroutine_threadsafe(site.start(), self.loop).result(5)
        port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_a_download_that_breaks_off_is_retried_until_complete(tmp_path):
    with FlakyMirror({"crawl-data/X/a.wat.gz": WAT_BYTES}, breaks=2) as url:
        source = CrawlSource(url, str(tmp_path), retries=3, backoff_s=0.01)
        with source.local_copy("crawl-data/X/a.wat.gz") as path:
            assert Path(path).read_bytes() == WAT_BYTES
    assert not list(tmp_path.iterdir())  # the temporary copy is gone afterwards


def test_a_download_that_keeps_breaking_fails_with_a_clear_error(tmp_path):
    with FlakyMirror({"a.wat.gz": WAT_BYTES}, breaks=10) as url:
        source = CrawlSource(url, str(tmp_path), retries=1, backoff_s=0.01)
        with pytest.raises(IncompleteDownload, match="gave up after 2 attempts"), source.local_copy("a.wat.gz"):
            pass


def test_a_missing_file_is_not_retried(tmp_path):
    mirror = FlakyMirror({}, breaks=0)
    with (
        mirror as url,
        pytest.raises(CrawlFileMissing, match="404"),
        CrawlSource(url, str(tmp_path), retries=3, backoff_s=0.01).local_copy("nope.gz"),
    ):
        pass
    assert mirror.requests == 1


def test_wat_listing_is_read_sorted_from_a_mirror(tmp_path):
    listing = gzip.compress(b"crawl-data/X/b.wat.gz\ncrawl-data/X/a.wat.gz\n\n")
    with FlakyMirror({"crawl-data/X/wat.paths.gz": listing}, breaks=0) as url:
        assert CrawlSource(url, str(tmp_path)).file_paths("X") == ["crawl-data/X/a.wat.gz", "crawl-data/X/b.wat.gz"]
