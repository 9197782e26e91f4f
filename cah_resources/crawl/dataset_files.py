"""A registered dataset's files: brace ranges and globs over any fsspec URL, expanded once and sorted."""

from __future__ import annotations

import asyncio
import posixpath
import tarfile
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from braceexpand import braceexpand
from fsspec.asyn import _run_coros_in_chunks, get_loop, sync
from fsspec.core import url_to_fs
from fsspec.utils import get_protocol
from rich.console import Console
from rich.progress import Progress

from cah_resources.contract import WEBDATASET_SHARD_SUFFIXES
from cah_resources.errors import one_line
from cah_resources.redaction import redact_text, redact_url
from cah_resources.retries import existence_check

GLOB_CHARACTERS = "*?["
CHECKS_AT_ONCE = 64  # files asked for at once where a folder's listing does not show them (HTTP without index)
CHECK_RETRIES = 3  # more tries of one file's check after a broken connection, 429 or 5xx
CHECK_BACKOFF_S = 0.5
PROGRESS_FROM = 1000  # a check of this many files or more shows a progress bar on the terminal
MISSING_SHOWN = 3  # missing files named in the error
TAR_PROBE_BYTES = 64 * 1024  # what a webdataset's first tar is read by to see its first header


def options_for(url: str, root_url: str, root_options: dict[str, Any]) -> dict[str, Any]:
    """fsspec options for ``url``: the data root's (endpoint, credentials) when both are on one protocol.

    A dataset on the data root's object store is read with the root's settings; another store's
    files are left to that filesystem's own configuration (environment, ~/.aws, HF_TOKEN).
    """
    return dict(root_options) if get_protocol(url) == get_protocol(root_url) else {}


def _as_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def _is_pattern(url: str, path: str) -> bool:
    # In an HTTP URL "?" starts the query (a token, a presigned URL's signature), as fsspec's HTTP glob reads it.
    if get_protocol(url) in ("http", "https"):
        path = path.partition("?")[0]
    return any(c in path for c in GLOB_CHARACTERS)


def expand_files(patterns: Sequence[str], options: dict[str, Any] | None = None) -> list[str]:
    """Every file the patterns name, as sorted URLs (local paths stay paths); a missing one is an error.

    ``{000..231}`` ranges and ``{a,b}`` lists are expanded first (braceexpand, as webdataset does),
    then ``*``/``?``/``[...]`` are globbed on the file's filesystem. Named files (no glob) are checked
    with one listing per folder, not one request per file, so a range of 100k files costs a few
    hundred listing requests on an object store; where a folder's listing does not show its files
    (HTTP without an index page), each file is asked for, many at once (``missing_files``).
    """
    found: set[str] = set()
    wanted: dict[str, set[str]] = {}  # folder -> named files in it
    filesystems: dict[str, fsspec.AbstractFileSystem] = {}
    for pattern in patterns:
        for expanded in braceexpand(pattern):
            fs, path = url_to_fs(expanded, **(options or {}))
            if _is_pattern(expanded, path):
                matches = [p for p in fs.glob(path) if not fs.isdir(p)]
                if not matches:
                    raise FileNotFoundError(f"{redact_url(expanded)} matches no file")
                found.update(_as_url(fs, p) for p in matches)
            else:
                folder = posixpath.dirname(path)
                wanted.setdefault(folder, set()).add(path)
                filesystems[folder] = fs
    for folder, paths in wanted.items():
        fs = filesystems[folder]
        try:
            listed = {p.rstrip("/") for p in fs.ls(folder, detail=False)}
        except (FileNotFoundError, NotImplementedError, PermissionError, aiohttp.ClientResponseError):
            listed = set()  # a folder that cannot be listed (404, 403 on a presigned URL's folder): files are asked for
        unlisted = sorted(p for p in paths if p not in listed and fs._strip_protocol(p) not in listed)
        # A listing may not show what is there: an HTTP folder without an index (a CDN, Hugging Face's
        # resolve/ URLs). The files it does not show are asked for, CHECKS_AT_ONCE at a time.
        missing = missing_files(fs, unlisted) if unlisted else []
        if missing:
            shown = ", ".join(redact_url(_as_url(fs, p)) for p in missing[:MISSING_SHOWN])
            more = f" and {len(missing) - MISSING_SHOWN:,} more" if len(missing) > MISSING_SHOWN else ""
            raise FileNotFoundError(f"{len(missing):,} of the {len(paths):,} files named are missing: {shown}{more}")
        found.update(_as_url(fs, p) for p in paths)
    if not found:
        raise FileNotFoundError("the patterns name no file")
    return sorted(found)


def _is_transient(error: BaseException | None) -> bool:
    """A broken connection, a timeout, 429 or 5xx, also where the filesystem reports it as not found
    (fsspec's HTTP info turns every failure into FileNotFoundError, raised from the real one)."""
    while error is not None:
        if isinstance(error, aiohttp.ClientResponseError):
            return error.status == 429 or error.status >= 500
        if isinstance(error, (aiohttp.ClientConnectionError, TimeoutError, ConnectionError)):
            return True
        error = error.__cause__
    return False


async def _exists(fs: fsspec.AbstractFileSystem, path: str, advance: Callable[[], None]) -> bool:
    # info, not exists: fsspec's HTTP exists is a GET, which starts sending a whole tar; info is a HEAD.
    info = fs._info if fs.async_impl else lambda p: asyncio.to_thread(fs.info, p)
    try:
        async for attempt in existence_check(CHECK_RETRIES, CHECK_BACKOFF_S, _is_transient):
            with attempt:
                await info(path)
    except FileNotFoundError as error:
        if _is_transient(error):
            shown, reason = redact_url(_as_url(fs, path)), redact_text(str(error.__cause__))
            raise ConnectionError(f"cannot tell whether {shown} is there: {reason}") from None
        return False
    finally:
        advance()
    return True


def missing_files(fs: fsspec.AbstractFileSystem, paths: Sequence[str]) -> list[str]:
    """Those of ``paths`` that are not there, in order, each asked for (CHECKS_AT_ONCE requests in flight).

    fsspec gathers the requests in bounded batches on the filesystem's own event loop (a filesystem
    without one is asked from threads); a transient failure is retried (``retries.existence_check``)
    and one that lasts is an error, never a "missing". A long list shows a progress bar on stderr.
    """
    console = Console(stderr=True)
    folder = redact_url(_as_url(fs, posixpath.dirname(paths[0]))) if paths else ""
    with Progress(console=console, transient=True, disable=len(paths) < PROGRESS_FROM) as progress:
        task = progress.add_task(f"checking {len(paths):,} files at {folder}", total=len(paths))
        advance = lambda: progress.advance(task)
        coroutines = [_exists(fs, p, advance) for p in paths]
        there = sync(fs.loop if fs.async_impl else get_loop(), _run_coros_in_chunks, coroutines, CHECKS_AT_ONCE)
    return [p for p, present in zip(paths, there, strict=True) if not present]


def parquet_schema(url: str, options: dict[str, Any] | None = None) -> pa.Schema:
    """The schema of a Parquet file, from its footer only; a file that is not Parquet is one line naming it."""
    fs, path = url_to_fs(url, **(options or {}))
    with fs.open(path, "rb") as handle:
        try:
            return pq.read_schema(handle)
        except pa.ArrowInvalid as error:  # no footer, bad magic bytes, a truncated file
            raise ValueError(f"{redact_url(url)} is not a readable Parquet file ({one_line(error)})") from None


def _name(url: str) -> str:
    """A file's path without a URL's query (a token, a presigned signature); a local path as it is."""
    return urlsplit(url).path if "://" in url else url


def webdataset_problem(files: Sequence[str], options: dict[str, Any] | None = None) -> str | None:
    """Why ``files`` are not a webdataset's shards (a name that is not a tar's, or a first file whose
    first header is not a tar's: an img2dataset folder's parquet and stats files caught by a glob), or None."""
    others = [f for f in files if not _name(f).lower().endswith(WEBDATASET_SHARD_SUFFIXES)]
    if others:
        shown = ", ".join(redact_url(f) for f in others[:MISSING_SHOWN])
        return (
            f"{len(others)} of {len(files)} files are not tars ({', '.join(WEBDATASET_SHARD_SUFFIXES)}): {shown}; "
            "name the shards only (--files 'folder/*.tar')"
        )
    fs, path = url_to_fs(files[0], **(options or {}))
    with fs.open(path, "rb", block_size=TAR_PROBE_BYTES) as handle:
        try:
            with tarfile.open(fileobj=handle, mode="r|*") as tar:
                tar.next()
        except tarfile.TarError as error:
            return f"{redact_url(files[0])} is not a readable tar ({one_line(error)})"
    return None


def text_column_problem(schema: pa.Schema, column: str) -> str | None:
    """Why ``column`` of a file of pages cannot be scored (missing, or not text), or None."""
    if column not in schema.names:
        return f"has no column {column!r} (columns: {', '.join(schema.names)})"
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        return f"has column {column!r} of type {kind}, not text"
    return None
