"""A registered dataset's files: brace ranges and globs over any fsspec URL, expanded once and sorted."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

import fsspec
import pyarrow.parquet as pq
from braceexpand import braceexpand
from fsspec.core import url_to_fs
from fsspec.utils import get_protocol

from cah_resources.redaction import redact_url

GLOB_CHARACTERS = "*?["


def options_for(url: str, root_url: str, root_options: dict[str, Any]) -> dict[str, Any]:
    """fsspec options for ``url``: the data root's (endpoint, credentials) when both are on one protocol.

    A dataset on the data root's object store is read with the root's settings; another store's
    files are left to that filesystem's own configuration (environment, ~/.aws, HF_TOKEN).
    """
    return dict(root_options) if get_protocol(url) == get_protocol(root_url) else {}


def _as_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def expand_files(patterns: Sequence[str], options: dict[str, Any] | None = None) -> list[str]:
    """Every file the patterns name, as sorted URLs (local paths stay paths); a missing one is an error.

    ``{000..231}`` ranges and ``{a,b}`` lists are expanded first (braceexpand, as webdataset does),
    then ``*``/``?``/``[...]`` are globbed on the file's filesystem. Named files (no glob) are checked
    with one listing per folder, not one request per file, so a range of 100k files costs a few
    hundred listing requests on an object store; where a folder's listing does not show its files
    (HTTP without an index page), each file is asked for.
    """
    found: set[str] = set()
    wanted: dict[str, set[str]] = {}  # folder -> named files in it
    filesystems: dict[str, fsspec.AbstractFileSystem] = {}
    for pattern in patterns:
        for expanded in braceexpand(pattern):
            fs, path = url_to_fs(expanded, **(options or {}))
            if any(c in path for c in GLOB_CHARACTERS):
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
        except (FileNotFoundError, NotImplementedError):
            listed = {p for p in paths if fs.exists(p)}
        missing = sorted(p for p in paths if p not in listed and fs._strip_protocol(p) not in listed)
        if missing and fs.exists(missing[0]):
            # The listing does not show what is there: an HTTP folder without an index (a CDN, Hugging
            # Face's resolve/ URLs). Each named file is asked for instead.
            missing = [p for p in missing if not fs.exists(p)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of the files named are missing, first {redact_url(_as_url(fs, missing[0]))}"
            )
        found.update(_as_url(fs, p) for p in paths)
    if not found:
        raise FileNotFoundError("the patterns name no file")
    return sorted(found)


def parquet_columns(url: str, options: dict[str, Any] | None = None) -> list[str]:
    """Column names of a Parquet file, from its footer only."""
    fs, path = url_to_fs(url, **(options or {}))
    with fs.open(path, "rb") as handle:
        return pq.read_schema(handle).names
