"""The candidates stage: WAT files of a segment → deduplicated, language-labelled image/alt-text pairs."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from cah_resources.blocklists import Blocklist, blocklist
from cah_resources.candidates.image_links import CandidateFilters, base_url_of, check_image_links
from cah_resources.candidates.language import Language, LanguageDetector
from cah_resources.candidates.wat import MAX_RECORD_BYTES, iter_pages
from cah_resources.contract import (
    CANDIDATES_SCHEMA,
    CATEGORIES,
    URL_ATTRIBUTE_SRC,
    CandidatesStats,
    DropReason,
    candidates_parts_folder,
    candidates_path,
    candidates_stats_path,
)
from cah_resources.crawl.common_crawl import CrawlSource
from cah_resources.storage import DataRoot


def pair_uid(url: str, text: str) -> str:
    return hashlib.blake2b(f"{url}\x00{text}".encode(), digest_size=16).hexdigest()


class LinkGroup(NamedTuple):
    """Image links of one page that came from one attribute: what the filters take in one call."""

    page_url: str
    base: str  # the URL relative links resolve against (``<base href>`` or the page)
    attribute: str  # the candidates' url_attribute
    images: list[tuple[str, object]]  # (src, alt as found: str, None or junk)


# Where a kept pair was first seen: (page URL, url_attribute).
Origin = tuple[str, str]


def extract_pairs(
    path: str,
    filters: CandidateFilters,
    stats: CandidatesStats,
    max_record_bytes: int = MAX_RECORD_BYTES,
    blocked: Blocklist | None = None,
) -> dict[tuple[str, str], Origin]:
    """Usable (url, text) pairs of one WAT file, first page seen for each; drops counted in ``stats.drops``
    per reason, damage in ``stats.damage`` per kind (a record over ``max_record_bytes`` is damage).
    ``blocked`` is ``filters``' URL blocklist when the caller has loaded it already."""
    groups = (
        LinkGroup(page.url, base_url_of(page.url, page.base_href), URL_ATTRIBUTE_SRC, page.images)
        for page in iter_pages(path, stats, max_record_bytes)
    )
    return collect_pairs(groups, filters, stats, blocked)


def collect_pairs(
    groups: Iterable[LinkGroup], filters: CandidateFilters, stats: CandidatesStats, blocked: Blocklist | None = None
) -> dict[tuple[str, str], Origin]:
    """Usable (url, text) pairs of a file's link groups, in order, the first origin of each kept; drops
    counted in ``stats.drops``: every filter's reason, BLOCKLISTED_URL and DUPLICATE."""
    pairs: dict[tuple[str, str], Origin] = {}
    keep_first = pairs.setdefault
    dropped: list[str] = []
    links = kept = truncated = 0
    # The stage's innermost loop: per pair one dict operation, everything else counted in bulk.
    for group in groups:
        links += len(group.images)
        checked = check_image_links(group.images, group.base, filters)
        dropped += checked.dropped
        if checked.truncated:  # counted once per pair, as the pair: only where it is new
            truncated += len({pair for pair in checked.truncated if pair not in pairs})
        kept += len(checked.kept)
        origin = (group.page_url, group.attribute)
        for pair in checked.kept:
            keep_first(pair, origin)
    stats.links_seen += links
    stats.alt_truncated += truncated
    drops = stats.drops
    drops.update(dropped)
    if blocked is None:
        blocked = blocklist(filters.blocked_url_lists)
    listed: list[tuple[str, str]] = []
    if len(blocked):  # per distinct pair, after the cheap filters: each URL is hashed once
        listed = [pair for pair in pairs if blocked.lists_url(pair[0])]
        for pair in listed:
            del pairs[pair]
        if listed:
            drops[DropReason.BLOCKLISTED_URL] += len(listed)
    if duplicates := kept - len(pairs) - len(listed):
        drops[DropReason.DUPLICATE] += duplicates
    return pairs


def label_pairs(pairs: dict[tuple[str, str], Origin], source_file: str, detector: LanguageDetector) -> pa.Table:
    """The pairs as candidate rows; gcld3 runs once per distinct text, never on dropped links."""
    languages: dict[str, Language] = {}
    columns: dict[str, list] = {name: [] for name in CANDIDATES_SCHEMA.names}
    for (url, text), (page_url, attribute) in pairs.items():
        language = languages.get(text)
        if language is None:
            language = languages[text] = detector.detect(text)
        columns["uid"].append(pair_uid(url, text))
        columns["url"].append(url)
        columns["text"].append(text)
        columns["page_url"].append(page_url)
        columns["category"].append(language.category)
        columns["language"].append(language.code)
        columns["language_prob"].append(language.probability)
        columns["wat_file"].append(source_file)
        columns["url_attribute"].append(attribute)
    return pa.Table.from_pydict(columns, schema=CANDIDATES_SCHEMA)


@dataclass(frozen=True)
class WatFileUnit:
    """One work unit: a WAT file of a segment, and where its part of the output goes."""

    segment: str
    position: int
    wat_path: str
    root: DataRoot
    source: CrawlSource
    filters: CandidateFilters = field(default_factory=CandidateFilters)
    max_record_bytes: int = MAX_RECORD_BYTES


def part_paths(root: DataRoot, segment: str, position: int) -> tuple[str, str]:
    base = f"{candidates_parts_folder(root, segment)}/{position:05d}"
    return base + ".parquet", base + ".json"


_DETECTOR: LanguageDetector | None = None


def shared_detector() -> LanguageDetector:
    # One gcld3 model per worker process, reused by every task it runs.
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = LanguageDetector()
    return _DETECTOR


def extract_wat_file(unit: WatFileUnit) -> dict:
    """Extract one WAT file into its part file; a part already written is kept (retries redo nothing).

    Returns the part's CandidatesStats as written (``CandidatesStats.from_dict`` reads it back)."""
    table_path, stats_path = part_paths(unit.root, unit.segment, unit.position)
    if unit.root.exists(stats_path):
        return unit.root.read_json(stats_path)
    started = time.perf_counter()
    stats = CandidatesStats(wat_file=unit.wat_path, wat_files=1)
    with unit.source.local_copy(unit.wat_path) as local:
        stats.bytes = os.path.getsize(local)
        # Loaded once: the lists applied are the ones the stats name (each load checks their versions).
        blocked = blocklist(unit.filters.blocked_url_lists)
        pairs = extract_pairs(local, unit.filters, stats, unit.max_record_bytes, blocked)
    detector = shared_detector()
    calls_before = detector.calls
    table = label_pairs(pairs, unit.wat_path, detector)
    stats.language_calls = detector.calls - calls_before
    stats.blocklists = [{"kind": "url", **source} for source in blocked.sources]
    stats.candidates = table.num_rows
    stats.task_seconds = time.perf_counter() - started
    unit.root.write_parquet(table_path, table)
    written = stats.to_dict()
    unit.root.write_json(stats_path, written)
    return written


ClaimFn = Callable[[str, list[str]], set[str]]


def output_paths(root: DataRoot, segment: str) -> tuple[str, str]:
    return candidates_path(root, segment), candidates_stats_path(root, segment)


@dataclass(frozen=True)
class SegmentMergeUnit:
    """One work unit: join a segment's finished parts into its output."""

    segment: str
    root: DataRoot
    part_stats: tuple[dict, ...]
    claim: ClaimFn | None = None


def merge_unit(unit: SegmentMergeUnit) -> dict:
    return merge_segment(unit.segment, unit.root, unit.part_stats, unit.claim)


def merge_segment(segment: str, root: DataRoot, part_stats: Iterable[dict], claim: ClaimFn | None = None) -> dict:
    """Join a segment's parts in WAT order: drop pairs seen in an earlier file (and, with ``claim``,
    pairs another segment owns), sort by uid, write the segment's parquet and stats atomically."""
    part_stats = list(part_stats)
    tables = [root.read_parquet(part_paths(root, segment, i)[0]) for i in range(len(part_stats))]
    table = pa.concat_tables(tables) if tables else CANDIDATES_SCHEMA.empty_table()
    seen: set[str] = set()
    keep = []
    for uid in table.column("uid").to_pylist():
        keep.append(uid not in seen)
        seen.add(uid)
    table = table.filter(pa.array(keep, pa.bool_()))
    stats = summarize_parts(part_stats)
    stats.drops[DropReason.DUPLICATE] += keep.count(False)  # written even when 0: no duplicate is a fact
    if claim is not None:
        owned = claim(segment, table.column("uid").to_pylist())
        mask = pc.is_in(table.column("uid"), value_set=pa.array(sorted(owned), pa.string()))
        stats.drops[DropReason.DUPLICATE_GLOBAL] = table.num_rows - pc.sum(mask).as_py() if table.num_rows else 0
        table = table.filter(mask)
    table = table.sort_by("uid")
    stats.candidates = table.num_rows
    for category in CATEGORIES:
        stats.categories[category] = pc.sum(pc.equal(table.column("category"), category)).as_py() or 0
    table_path, stats_path = output_paths(root, segment)
    root.write_parquet(table_path, table)
    written = stats.to_dict()
    root.write_json(stats_path, written)
    root.remove(candidates_parts_folder(root, segment))
    return written


def summarize_parts(part_stats: list[dict]) -> CandidatesStats:
    """The parts' stats added up: records, pages, links, every drop and damage reason, task time.

    A part's own facts (its file, its candidates before the segment's dedup) do not carry over."""
    total = CandidatesStats.total(CandidatesStats.from_dict(s) for s in part_stats)
    total.wat_files, total.wat_file, total.candidates = len(part_stats), None, 0
    return total
