"""Common Crawl's list of crawls (collinfo.json): read from a URL or a path, and the newest matching ids chosen."""

import json
import re

import aiohttp
import fsspec

from cah_resources.crawl.common_crawl import USER_AGENT
from cah_resources.errors import one_line


class CrawlListError(ValueError):
    """The crawl list could not be read or is not Common Crawl's collinfo.json format."""


def read_crawl_list(location: str, timeout_s: float = 30.0) -> list[str]:
    """Crawl ids from a collinfo.json-style list (``[{"id": "CC-MAIN-2024-10", ...}, ...]``) at a URL or path."""
    web = location.startswith(("http://", "https://"))
    options = (
        {
            "headers": {"User-Agent": USER_AGENT, "Accept": "application/json"},
            "client_kwargs": dict(timeout=aiohttp.ClientTimeout(total=timeout_s)),
            "block_size": 0,  # one streamed GET, no HEAD or range requests
        }
        if web
        else {}
    )
    try:
        with fsspec.open(location, "rb", **options) as handle:
            body = handle.read()
    except (OSError, TimeoutError, aiohttp.ClientError) as error:
        # fsspec's HTTP file system raises FileNotFoundError for an HTTP error and an unreachable host
        # alike; its cause tells them apart.
        cause = error.__cause__ or error
        if isinstance(cause, aiohttp.ClientResponseError):
            raise CrawlListError(f"crawl list {location} answered HTTP {cause.status}") from None
        raise CrawlListError(f"crawl list {location} is unreachable: {one_line(cause)}") from None
    try:
        entries = json.loads(body)
        ids = [entry["id"] for entry in entries]
    except (ValueError, TypeError, KeyError) as error:
        raise CrawlListError(
            f'crawl list {location} is not a JSON list of {{"id": ...}} objects ({one_line(error)})'
        ) from None
    if not all(isinstance(i, str) for i in ids):
        raise CrawlListError(f"crawl list {location} has non-string ids")
    return ids


def choose_crawls(ids: list[str], include: str, newest: int) -> list[str]:
    """The ``newest`` crawls whose id matches ``include``, newest first (crawl ids sort by date)."""
    pattern = re.compile(include)
    return sorted({i for i in ids if pattern.search(i)}, reverse=True)[: max(newest, 0)]
