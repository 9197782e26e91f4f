"""Crawl segments: a crawl's sorted WAT list cut into fixed slices, recorded so a key always means the same files."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from cah_resources.contract import segments_manifest_path
from cah_resources.crawl.common_crawl import CrawlSource
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
    """A crawl as registered: its WAT paths (sorted) and how many make one segment, fixed for good."""

    crawl: str
    files_per_segment: int
    wat_paths: tuple[str, ...]

    @property
    def segment_count(self) -> int:
        return math.ceil(len(self.wat_paths) / self.files_per_segment)

    def keys(self) -> list[str]:
        return [segment_key(self.crawl, i) for i in range(self.segment_count)]

    def files_of(self, key: str) -> list[str]:
        crawl, index = parse_segment_key(key)
        if crawl != self.crawl or index >= self.segment_count:
            raise KeyError(f"segment {key} is not part of {self.crawl} ({self.segment_count} segments)")
        start = index * self.files_per_segment
        return list(self.wat_paths[start : start + self.files_per_segment])

    def to_json(self) -> dict:
        return {
            "crawl": self.crawl,
            "files_per_segment": self.files_per_segment,
            "segment_count": self.segment_count,
            "wat_paths": list(self.wat_paths),
        }

    @classmethod
    def from_json(cls, doc: dict) -> CrawlRegistration:
        return cls(doc["crawl"], int(doc["files_per_segment"]), tuple(doc["wat_paths"]))


def default_files_per_segment(file_count: int, target_segments: int = DEFAULT_TARGET_SEGMENTS) -> int:
    """Smallest N giving at most ``target_segments`` segments (a few thousand for a real crawl)."""
    return max(1, math.ceil(file_count / target_segments))


def registration_path(root: DataRoot, crawl: str) -> str:
    return segments_manifest_path(root, crawl)


def load_registration(root: DataRoot, crawl: str) -> CrawlRegistration | None:
    path = registration_path(root, crawl)
    return CrawlRegistration.from_json(root.read_json(path)) if root.exists(path) else None


def register_crawl(
    source: CrawlSource, root: DataRoot, crawl: str, files_per_segment: int | None = None
) -> CrawlRegistration:
    """Record the crawl's segments once; later calls return the recorded plan unchanged."""
    check_crawl_id(crawl)
    recorded = load_registration(root, crawl)
    if recorded is not None:
        if files_per_segment and files_per_segment != recorded.files_per_segment:
            raise ValueError(
                f"{crawl} is registered with {recorded.files_per_segment} WAT files per segment; "
                f"{files_per_segment} would change what its keys mean"
            )
        return recorded
    paths = source.wat_paths(crawl)
    if not paths:
        raise ValueError(f"{crawl} lists no WAT files at {source.base}")
    n = files_per_segment or default_files_per_segment(len(paths))
    if n < 1:
        raise ValueError("files_per_segment must be at least 1")
    registration = CrawlRegistration(crawl, n, tuple(paths))
    if registration.segment_count > MAX_SEGMENTS:
        raise ValueError(f"{crawl}: {registration.segment_count} segments is too many; use more files per segment")
    root.write_json(registration_path(root, crawl), registration.to_json())
    return registration


def registration_for_key(root: DataRoot, key: str) -> CrawlRegistration:
    crawl, _ = parse_segment_key(key)
    registration = load_registration(root, crawl)
    if registration is None:
        raise KeyError(f"segment {key}: crawl {crawl} is not registered under {root.url}; register it first")
    return registration
