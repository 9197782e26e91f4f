"""A segment of a WAT or WARC crawl, read once: its file units, the one work function, the merge of both outputs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cah_resources.candidates.image_links import CandidateFilters
from cah_resources.candidates.stage import ClaimFn, WatFileUnit, extract_wat_file, merge_segment
from cah_resources.candidates.wat import MAX_RECORD_BYTES
from cah_resources.contract import (
    CRAWL_FORMATS,
    DATASET_STAGE,
    FORMAT_WARC,
    PAGES_SCHEMA,
    PagesStats,
    pages_path,
    pages_stats_path,
)
from cah_resources.crawl.common_crawl import CrawlSource
from cah_resources.crawl.segments import CrawlRegistration
from cah_resources.pages.html_page import PageRules
from cah_resources.pages.stage import WarcFileUnit, extract_warc_file, merge_pages
from cah_resources.storage import DataRoot

PAGES_STATS = "pages_stats"  # the key under which a merged segment's candidates stats carry its pages' stats
FORMAT = "format"  # and, beside them, the crawl's format


def file_units(
    registration: CrawlRegistration,
    key: str,
    root: DataRoot,
    source: CrawlSource,
    filters: CandidateFilters,
    rules: PageRules,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> list[WatFileUnit | WarcFileUnit]:
    """One unit per file of the segment: a WARC crawl's files feed candidates and pages in one read."""
    if registration.format not in CRAWL_FORMATS:
        stage = DATASET_STAGE[registration.format]
        raise ValueError(
            f"{key} is a registered {registration.format} dataset, not a crawl's WAT or WARC files: it starts at "
            f"{stage} (`cah materialize {registration.crawl} --stage {stage}`)"
        )
    paths = registration.files_of(key)
    if registration.format == FORMAT_WARC:
        # WARC records have their own cap (MAX_WARC_RECORD_BYTES): max_record_bytes bounds WAT records' JSON.
        return [WarcFileUnit(key, i, p, root, source, filters, rules) for i, p in enumerate(paths)]
    return [WatFileUnit(key, i, p, root, source, filters, max_record_bytes) for i, p in enumerate(paths)]


def extract_crawl_file(unit: WatFileUnit | WarcFileUnit) -> dict:
    """The compute engine's one work function for both formats (a unit's type says which)."""
    return extract_warc_file(unit) if isinstance(unit, WarcFileUnit) else extract_wat_file(unit)


@dataclass(frozen=True)
class CrawlSegmentMerge:
    """One merge unit: a segment's candidates parts (and, for a WARC crawl, its pages parts) into its outputs."""

    segment: str
    root: DataRoot
    part_stats: tuple[dict, ...]
    format: str
    claim: ClaimFn | None = None


def merge_crawl_segment(unit: CrawlSegmentMerge) -> dict:
    """The segment's candidates stats, with its pages' stats under ``pages_stats``. A WAT segment's pages
    are an empty table (WAT files hold no page text), so that every segment of every crawl has both."""
    if unit.format == FORMAT_WARC:
        pages = merge_pages(unit.segment, unit.root, unit.part_stats)
    else:
        pages = write_no_pages(unit.root, unit.segment, unit.format)
    stats = merge_segment(unit.segment, unit.root, unit.part_stats, unit.claim)
    return {**stats, PAGES_STATS: {**pages, FORMAT: unit.format}}


def write_no_pages(root: DataRoot, segment: str, format: str) -> dict:
    stats = PagesStats().to_dict()
    root.write_parquet(pages_path(root, segment), PAGES_SCHEMA.empty_table())
    root.write_json(pages_stats_path(root, segment), stats)
    return stats


def merges(
    keys: Iterable[str], root: DataRoot, values: dict[str, list], formats: dict[str, str], claim: ClaimFn | None
) -> list[CrawlSegmentMerge]:
    return [CrawlSegmentMerge(key, root, tuple(values[key]), formats[key], claim) for key in keys]
