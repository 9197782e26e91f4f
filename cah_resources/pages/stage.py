"""The WARC pass of a segment: each WARC file read once into its image candidates and its pages."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from cah_resources.blocklists import Blocklist, blocklist
from cah_resources.candidates.image_links import CandidateFilters, base_url_of
from cah_resources.candidates.language import LanguageDetector
from cah_resources.candidates.stage import (
    LinkGroup,
    Origin,
    collect_pairs,
    label_pairs,
    part_paths,
    shared_detector,
)
from cah_resources.contract import (
    PAGES,
    PAGES_SCHEMA,
    CandidatesStats,
    DropReason,
    PageDropReason,
    PagesStats,
    pages_parts_folder,
    pages_path,
    pages_stats_path,
)
from cah_resources.crawl.common_crawl import CrawlSource
from cah_resources.pages.html_images import NOSCRIPT_PREFIX
from cah_resources.pages.html_page import PageRules, decode_html, parse_page
from cah_resources.pages.warc_records import MAX_WARC_RECORD_BYTES, iter_html_records, record_lengths
from cah_resources.storage import DataRoot

LANGUAGE_SAMPLE_BYTES = 1000  # of a page's text gcld3 reads: a reliable call at half the cost of 2000


@dataclass
class WarcFileResult:
    """What one pass over a WARC file yields: candidate pairs (unlabelled) and page rows."""

    pairs: dict[tuple[str, str], Origin]
    pages: pa.Table


def read_warc(
    path: str,
    warc_file: str,
    filters: CandidateFilters,
    rules: PageRules,
    candidates: CandidatesStats,
    pages: PagesStats,
    blocked: Blocklist | None = None,
    max_record_bytes: int = MAX_WARC_RECORD_BYTES,
) -> WarcFileResult:
    """One pass over a local WARC file: every 2xx HTML page parsed once, its images through the
    candidates' filters and dedup (counted in ``candidates``), its main text into a page row (counted
    in ``pages``, with the records' damage); ``warc_file`` is the name the rows carry."""
    starts: list[int] = []
    columns: dict[str, list] = {name: [] for name in PAGES_SCHEMA.names}
    texts: list[str] = []

    def groups() -> Iterator[LinkGroup]:
        for record in iter_html_records(path, pages, starts, rules.max_html_bytes, max_record_bytes):
            text = decode_html(record.body, record.charset, rules.max_bad_chars)
            if text is None:
                pages.drops[PageDropReason.UNDECODABLE] += 1
                continue
            parsed = parse_page(text, rules)
            if isinstance(parsed, PageDropReason):
                pages.drops[parsed] += 1
                continue
            pages.html_pages += 1
            images = parsed.images
            pages.images_without_url += images.without_url
            if images.over_cap:
                candidates.links_seen += images.over_cap
                candidates.drops[DropReason.IMAGE_CAP] += images.over_cap
            if len(parsed.text) < rules.min_text_chars:
                pages.drops[PageDropReason.TOO_SHORT] += 1
            else:
                _add_page(columns, record, parsed.title, parsed.text, warc_file)
                texts.append(parsed.text)
            yield from _link_groups(record.url, images)

    pairs = collect_pairs(groups(), filters, candidates, blocked)
    _label_languages(columns, texts, page_detector())
    file_size = os.path.getsize(path)
    columns["length"] = record_lengths(columns["offset"], starts, file_size)
    pages.pages = len(texts)
    pages.bytes = candidates.bytes = file_size
    candidates.html_pages = pages.html_pages
    candidates.damage.update(pages.damage)  # the file's damage is the candidates' too
    return WarcFileResult(pairs, pa.Table.from_pydict(columns, schema=PAGES_SCHEMA))


def _link_groups(page_url: str, images) -> Iterator[LinkGroup]:
    """The page's image links, one group per attribute they came from (the filters take a group at
    once); ``<noscript>`` groups last, so a URL found both outside and inside one is the outside's."""
    by_attribute: dict[str, list[tuple[str, object]]] = {}
    for link in images.links:
        by_attribute.setdefault(link.attribute, []).append((link.src, link.alt))
    base = base_url_of(page_url, images.base_href)
    for attribute in sorted(by_attribute, key=lambda name: name.startswith(NOSCRIPT_PREFIX)):
        yield LinkGroup(page_url, base, attribute, by_attribute[attribute])


def _add_page(columns: dict[str, list], record, title: str, text: str, warc_file: str) -> None:
    columns["record_id"].append(record.record_id)
    columns["url"].append(record.url)
    columns["title"].append(title)
    columns["text"].append(text)
    columns["chars"].append(len(text))
    columns["date"].append(record.date)
    columns["warc_file"].append(warc_file)
    columns["offset"].append(record.offset)


def _label_languages(columns: dict[str, list], texts: list[str], detector: LanguageDetector) -> None:
    for text in texts:
        language = detector.detect(text[:LANGUAGE_SAMPLE_BYTES])
        columns["language"].append(language.code)
        columns["language_prob"].append(language.probability)


_PAGE_DETECTOR: LanguageDetector | None = None


def page_detector() -> LanguageDetector:
    """One gcld3 model for page text per worker process (it reads more of a text than the alt-text one)."""
    global _PAGE_DETECTOR
    if _PAGE_DETECTOR is None:
        _PAGE_DETECTOR = LanguageDetector(max_bytes=LANGUAGE_SAMPLE_BYTES)
    return _PAGE_DETECTOR


@dataclass(frozen=True)
class WarcFileUnit:
    """One work unit: a WARC file of a segment, and where its candidates and pages parts go."""

    segment: str
    position: int
    warc_path: str
    root: DataRoot
    source: CrawlSource
    filters: CandidateFilters = field(default_factory=CandidateFilters)
    rules: PageRules = field(default_factory=PageRules)
    max_record_bytes: int = MAX_WARC_RECORD_BYTES


def pages_part_path(root: DataRoot, segment: str, position: int) -> str:
    return f"{pages_parts_folder(root, segment)}/{position:05d}.parquet"


def extract_warc_file(unit: WarcFileUnit) -> dict:
    """Read one WARC file into its candidates part and its pages part. Returns the candidates part's
    stats (CandidatesStats, as written) with the pages' (PagesStats) under ``pages``; written last,
    with the candidates part, they say the file is done, so a retry redoes nothing."""
    table_path, stats_path = part_paths(unit.root, unit.segment, unit.position)
    if unit.root.exists(stats_path):
        return unit.root.read_json(stats_path)
    started = time.perf_counter()
    candidates = CandidatesStats(wat_file=unit.warc_path, wat_files=1)
    pages = PagesStats(warc_file=unit.warc_path, warc_files=1)
    with unit.source.local_copy(unit.warc_path) as local:
        blocked = blocklist(unit.filters.blocked_url_lists)
        result = read_warc(
            local, unit.warc_path, unit.filters, unit.rules, candidates, pages, blocked, unit.max_record_bytes
        )
    detector = shared_detector()
    calls_before = detector.calls
    table = label_pairs(result.pairs, unit.warc_path, detector)
    candidates.language_calls = detector.calls - calls_before
    candidates.blocklists = [{"kind": "url", **source} for source in blocked.sources]
    candidates.candidates = table.num_rows
    candidates.task_seconds = pages.task_seconds = time.perf_counter() - started
    unit.root.write_parquet(pages_part_path(unit.root, unit.segment, unit.position), result.pages)
    unit.root.write_parquet(table_path, table)
    written = {**candidates.to_dict(), PAGES: pages.to_dict()}
    unit.root.write_json(stats_path, written)
    return written


def merge_pages(segment: str, root: DataRoot, part_stats: Iterable[dict]) -> dict:
    """Join a segment's pages parts in WARC order into its pages.parquet and stats.json, atomically."""
    part_stats = list(part_stats)
    tables = [root.read_parquet(pages_part_path(root, segment, i)) for i in range(len(part_stats))]
    table = pa.concat_tables(tables) if tables else PAGES_SCHEMA.empty_table()
    stats = PagesStats.total(PagesStats.from_dict(s[PAGES]) for s in part_stats)
    stats.warc_files, stats.warc_file, stats.pages = len(part_stats), None, table.num_rows
    root.write_parquet(pages_path(root, segment), table)
    written = stats.to_dict()
    root.write_json(pages_stats_path(root, segment), written)
    root.remove(pages_parts_folder(root, segment))
    return written
