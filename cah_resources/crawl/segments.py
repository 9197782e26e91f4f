"""Crawl segments: a crawl's sorted file list (WAT, WARC, or a dataset's Parquet) cut into fixed slices, for good."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cah_resources.contract import (
    CRAWL_FORMATS,
    DEFAULT_TEXT_COLUMN,
    FORMAT_PARQUET,
    FORMAT_WAT,
    FORMAT_WEBDATASET,
    FORMATS,
    segments_manifest_path,
)
from cah_resources.crawl.common_crawl import CrawlSource
from cah_resources.crawl.dataset_files import (
    expand_files,
    options_for,
    parquet_schema,
    text_column_problem,
    webdataset_problem,
)
from cah_resources.redaction import redact_url
from cah_resources.storage import DataRoot

# Matched whole (fullmatch): "$" alone would let a trailing newline through into paths and keys.
CRAWL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
SEGMENT_KEY = re.compile(r"(?P<crawl>[A-Za-z0-9][A-Za-z0-9.-]*)_(?P<index>[0-9]{5})")
DEFAULT_TARGET_SEGMENTS = 2000
MAX_SEGMENTS = 99_999


def segment_key(crawl: str, index: int) -> str:
    return f"{crawl}_{index:05d}"


def parse_segment_key(key: str) -> tuple[str, int]:
    match = SEGMENT_KEY.fullmatch(key)
    if match is None or "..." in key:
        raise ValueError(f"{key!r} is not a segment key like CC-MAIN-2024-10_00042")
    return match["crawl"], int(match["index"])


def check_crawl_id(crawl: str) -> str:
    if not CRAWL_ID.fullmatch(crawl) or "..." in crawl:
        raise ValueError(
            f"{crawl!r} is not a usable crawl id: letters, digits, '-' and '.' only (like CC-MAIN-2024-10)"
        )
    return crawl


@dataclass(frozen=True)
class CrawlRegistration:
    """A crawl as registered: its files (sorted) and how many make one segment, fixed for good.

    ``files`` are WAT or WARC paths relative to the crawl source (format ``wat``, ``warc``), or the URLs
    of a Parquet dataset's files (format ``parquet``, its page text in ``text_column``) or of a
    webdataset's tars (format ``webdataset``).
    """

    crawl: str
    files_per_segment: int
    files: tuple[str, ...] = field(repr=False)  # a dataset file's URL may carry a token; and there may be 100k
    format: str = FORMAT_WAT
    text_column: str | None = None

    @property
    def segment_count(self) -> int:
        return math.ceil(len(self.files) / self.files_per_segment)

    def keys(self) -> list[str]:
        return [segment_key(self.crawl, i) for i in range(self.segment_count)]

    def files_of(self, key: str) -> list[str]:
        crawl, index = parse_segment_key(key)
        if crawl != self.crawl or index >= self.segment_count:
            raise KeyError(f"segment {key} is not part of {self.crawl} ({self.segment_count} segments)")
        start = index * self.files_per_segment
        return list(self.files[start : start + self.files_per_segment])

    def to_json(self) -> dict:
        doc = {
            "crawl": self.crawl,
            "format": self.format,
            "files_per_segment": self.files_per_segment,
            "segment_count": self.segment_count,
            "files": list(self.files),
        }
        if self.text_column is not None:
            doc["text_column"] = self.text_column
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> CrawlRegistration:
        # Plans recorded before formats existed are WAT crawls listing "wat_paths".
        files = doc["files"] if "files" in doc else doc["wat_paths"]
        return cls(
            doc["crawl"],
            int(doc["files_per_segment"]),
            tuple(files),
            doc.get("format", FORMAT_WAT),
            doc.get("text_column"),
        )


def default_files_per_segment(file_count: int, target_segments: int = DEFAULT_TARGET_SEGMENTS) -> int:
    """Smallest N giving at most ``target_segments`` segments (a few thousand for a real crawl)."""
    return max(1, math.ceil(file_count / target_segments))


def registration_path(root: DataRoot, crawl: str) -> str:
    return segments_manifest_path(root, crawl)


def load_registration(root: DataRoot, crawl: str) -> CrawlRegistration | None:
    path = registration_path(root, crawl)
    return CrawlRegistration.from_json(root.read_json(path)) if root.exists(path) else None


def _recorded(
    root: DataRoot, crawl: str, files_per_segment: int | None, format: str, text_column: str | None
) -> CrawlRegistration | None:
    """The crawl's recorded plan, if any, after checking that the request does not contradict it."""
    recorded = load_registration(root, crawl)
    if recorded is None:
        return None
    if recorded.format != format:
        raise ValueError(f"{crawl} is registered as format {recorded.format}, not {format}; a plan never changes")
    if files_per_segment and files_per_segment != recorded.files_per_segment:
        raise ValueError(
            f"{crawl} is registered with {recorded.files_per_segment} files per segment; "
            f"{files_per_segment} would change what its keys mean"
        )
    if text_column and text_column != recorded.text_column:
        raise ValueError(f"{crawl} is registered with text column {recorded.text_column!r}, not {text_column!r}")
    return recorded


def _record(root: DataRoot, registration: CrawlRegistration) -> CrawlRegistration:
    if registration.files_per_segment < 1:
        raise ValueError("files_per_segment must be at least 1")
    if registration.segment_count > MAX_SEGMENTS:
        raise ValueError(
            f"{registration.crawl}: {registration.segment_count} segments is too many; use more files per segment"
        )
    root.write_json(registration_path(root, registration.crawl), registration.to_json())
    return registration


def register_crawl(
    source: CrawlSource, root: DataRoot, crawl: str, files_per_segment: int | None = None, format: str = FORMAT_WAT
) -> CrawlRegistration:
    """Record the crawl's segments over its WAT or WARC listing once; later calls return the recorded
    plan unchanged, and a crawl keeps the format it was registered with."""
    check_crawl_id(crawl)
    if format not in CRAWL_FORMATS:
        raise ValueError(f"format {format!r} is not one of Common Crawl's listings ({', '.join(CRAWL_FORMATS)})")
    recorded = _recorded(root, crawl, files_per_segment, format, None)
    if recorded is not None:
        return recorded
    paths = source.file_paths(crawl, format)
    if not paths:
        raise ValueError(f"{crawl} lists no {format.upper()} files at {source.base}")
    n = files_per_segment or default_files_per_segment(len(paths))
    return _record(root, CrawlRegistration(crawl, n, tuple(paths), format))


def register_dataset(
    root: DataRoot,
    name: str,
    patterns: Sequence[str],
    format: str = FORMAT_PARQUET,
    text_column: str | None = None,
    files_per_segment: int | None = None,
) -> CrawlRegistration:
    """Record an existing dataset's files (brace ranges, globs, any fsspec URL) as a crawl's segments, once.

    A Parquet dataset's segments are N of its files; a webdataset's, N consecutive tars, which
    clip_pairs scores. The files are read where they are and never copied. The first file's columns are checked for
    ``text_column`` (default ``text``) so that a wrong name fails here, in one line, rather than in
    every segment.
    """
    check_crawl_id(name)
    dataset_formats = [f for f in FORMATS if f not in CRAWL_FORMATS]
    if format not in dataset_formats:
        raise ValueError(f"format {format!r} is not a dataset format; one of {', '.join(dataset_formats)}")
    recorded = _recorded(root, name, files_per_segment, format, text_column)
    if recorded is not None:
        return recorded
    if not patterns:
        raise ValueError(f"{name}: name the dataset's files (--files 's3://bucket/path/*.parquet')")
    if format == FORMAT_WEBDATASET and text_column:
        raise ValueError("--text-column is for Parquet datasets; a webdataset's captions are its .txt members")
    text_column = (text_column or DEFAULT_TEXT_COLUMN) if format == FORMAT_PARQUET else None
    options = options_for(patterns[0], root.url, root.storage_options)
    files = expand_files(patterns, options)
    if text_column is not None:  # a Parquet dataset
        problem = text_column_problem(parquet_schema(files[0], options), text_column)
        if problem is not None:
            raise ValueError(f"{redact_url(files[0])} {problem}; pass --text-column")
    elif (problem := webdataset_problem(files, options)) is not None:
        raise ValueError(f"{name}: {problem}")
    n = files_per_segment or default_files_per_segment(len(files))
    return _record(root, CrawlRegistration(name, n, tuple(files), format, text_column))


def registration_for_key(root: DataRoot, key: str) -> CrawlRegistration:
    crawl, _ = parse_segment_key(key)
    registration = load_registration(root, crawl)
    if registration is None:
        raise KeyError(
            f"segment {key}: crawl {crawl} is not registered under {redact_url(root.url)}; register it first"
        )
    return registration


def webdataset_tars(root: DataRoot, segment: str) -> list[str] | None:
    """The tars of a registered webdataset's segment, in order; None for a segment of another format."""
    try:
        crawl, _ = parse_segment_key(segment)
    except ValueError:
        return None
    registration = load_registration(root, crawl)
    if registration is None or registration.format != FORMAT_WEBDATASET:
        return None
    return registration.files_of(segment)
