"""Where a crawl's files come from: Common Crawl over HTTPS, a mirror, or a local folder laid out the same way."""

from __future__ import annotations

import asyncio
import gzip
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp

from cah_resources import retries as retry_policies
from cah_resources.contract import FORMAT_WAT
from cah_resources.redaction import redact_url

COMMON_CRAWL_URL = "https://data.commoncrawl.org"
CRAWL_LIST_URL = "https://index.commoncrawl.org/collinfo.json"  # every crawl's id, newest first
USER_AGENT = "cah/0.1 (Crawling@Home on Dagster; +https://github.com/) aiohttp"
CHUNK = 1 << 20


class CrawlFileMissing(FileNotFoundError):
    """A path the crawl's listing names is not at the source (a 404, or absent from the folder)."""


@dataclass(frozen=True, repr=False)
class CrawlSource:
    """Reads ``crawl-data/<CRAWL>/wat.paths.gz`` (or ``warc.paths.gz``) and its files from a base URL or a folder.

    Remote files are streamed to a temporary file under ``cache_dir``; a download that breaks off
    or comes back shorter than its Content-Length is retried with backoff and jitter.
    """

    base: str = COMMON_CRAWL_URL
    """Where crawl-data/<CRAWL>/ is: Common Crawl's HTTPS endpoint, a mirror's URL or a local folder."""
    cache_dir: str = ""
    """Folder for a remote file while it is read; empty: the system's temporary folder."""
    retries: int = 5
    """More tries of a download that breaks off or comes back short, with backoff and jitter."""
    timeout_s: float = 900.0
    """Seconds one file's download may take in all."""
    backoff_s: float = 2.0
    """Seconds before the first retry, doubled (with jitter) for each next one."""

    def __repr__(self) -> str:
        # A mirror's URL may carry a password (https://user:password@mirror/): shown redacted.
        return f"CrawlSource(base={redact_url(self.base)!r}, cache_dir={self.cache_dir!r})"

    @property
    def is_remote(self) -> bool:
        return self.base.startswith(("http://", "https://"))

    def _local_path(self, rel_path: str) -> str:
        root = self.base[len("file://") :] if self.base.startswith("file://") else self.base
        return os.path.join(root, rel_path)

    def file_paths(self, crawl: str, format: str = FORMAT_WAT) -> list[str]:
        """The crawl's WAT (or WARC) file paths (relative to the base), sorted, from its <format>.paths.gz."""
        with (
            self.local_copy(f"crawl-data/{crawl}/{format}.paths.gz") as path,
            gzip.open(path, "rt", encoding="utf-8") as handle,
        ):
            return sorted(line.strip() for line in handle if line.strip())

    @contextmanager
    def local_copy(self, rel_path: str) -> Iterator[str]:
        """A local file holding ``rel_path``: the file itself for a folder, else a complete download."""
        if not self.is_remote:
            path = self._local_path(rel_path)
            if not os.path.exists(path):
                raise CrawlFileMissing(f"{rel_path} is not in {redact_url(self.base)}")
            yield path
            return
        directory = self.cache_dir or tempfile.gettempdir()
        os.makedirs(directory, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="cah-", suffix="-" + os.path.basename(rel_path), dir=directory)
        os.close(fd)
        try:
            asyncio.run(self._download(f"{self.base.rstrip('/')}/{rel_path}", path))
            yield path
        finally:
            os.unlink(path)

    async def _download(self, url: str, path: str) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=30, sock_read=120)
        async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": USER_AGENT}) as session:
            policy = retry_policies.crawl_download(self.retries, self.backoff_s, _BROKEN_OFF)
            try:
                await policy(_stream_to_file, session, url, path)
            except _BROKEN_OFF as error:
                attempts = policy.statistics.get("attempt_number", self.retries + 1)
                raise IncompleteDownload(
                    f"{redact_url(url)}: gave up after {attempts} attempts ({type(error).__name__}: {error})"
                ) from error


class IncompleteDownload(IOError):
    """A download that ended before its announced length, or failed every retry."""


# What a retry may cure; a 404 (CrawlFileMissing) is final.
_BROKEN_OFF = (aiohttp.ClientError, asyncio.TimeoutError, IncompleteDownload)


async def _stream_to_file(session: aiohttp.ClientSession, url: str, path: str) -> None:
    shown = redact_url(url)
    async with session.get(url) as response:
        if response.status == 404:
            raise CrawlFileMissing(f"{shown} answered 404")
        if response.status >= 500 or response.status == 429:
            raise IncompleteDownload(f"{shown} answered {response.status}")
        if response.status != 200:
            raise CrawlFileMissing(f"{shown} answered {response.status}")
        expected = response.content_length
        received = 0
        with open(path, "wb") as handle:
            async for chunk in response.content.iter_chunked(CHUNK):
                handle.write(chunk)
                received += len(chunk)
        if expected is not None and received != expected:
            raise IncompleteDownload(f"{shown}: got {received} of {expected} bytes")
