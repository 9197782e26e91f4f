"""The `candidates` stage: a segment's WAT or WARC files → image URL + alt text pairs, and for WARC its `pages`."""

import dagster as dg

from cah_assets.metadata import rate, rows_table, stats_metadata
from cah_assets.policies import CANDIDATES_RETRY
from cah_assets.stages.runner import Output, Stage, StageRun, stage_asset
from cah_resources.candidates.stage import output_paths
from cah_resources.contract import CANDIDATES, CRAWL_FORMATS, PAGES, CandidatesStats, PagesStats, pages_path
from cah_resources.crawl.segments import registration_for_key
from cah_resources.pages.segment import (
    FORMAT,
    PAGES_STATS,
    CrawlSegmentMerge,
    extract_crawl_file,
    file_units,
    merge_crawl_segment,
    merges,
)
from cah_resources.redaction import redact_url


def crawl_files(run: StageRun, key: str) -> list:
    """One unit per file of the segment, WAT or WARC as its crawl was registered."""
    source, rules = run.resources.common_crawl.source(), run.resources.candidate_rules
    registration = registration_for_key(run.root, key)
    page_rules = run.resources.page_rules.rules()
    return file_units(registration, key, run.root, source, rules.filters(), page_rules, rules.max_record_bytes)


def segment_merges(run: StageRun) -> list[CrawlSegmentMerge]:
    claim = run.resources.dedup_index.index(run.root).claim  # pairs an earlier segment owns: duplicate_global
    formats = {key: registration_for_key(run.root, key).format for key in run.keys}
    return merges(run.keys, run.root, run.values, formats, claim)


def progress(value: dict, done: int, total: int) -> str:
    s = CandidatesStats.from_dict(value)
    read = f"{s.html_pages} HTML pages" if PAGES in value else f"{s.metadata_records} records"
    return f"file {done}/{total} {s.wat_file}: {read}, {s.candidates} candidates"


def describe(run: StageRun, key: str) -> dict:
    """What a person asks of a segment's candidates: volumes, categories, drops, damage, speed, a sample."""
    stats, seconds = CandidatesStats.from_dict(run.merged[key]), run.seconds
    table_path, _ = output_paths(run.root, key)
    sample = run.root.read_parquet(table_path).slice(0, 10).to_pylist()
    return {
        **stats_metadata(stats),
        "malformed_records": sum(stats.damage.values()),
        "mb_per_s": rate(stats.bytes / 1e6, seconds),
        "records_per_s": rate(stats.metadata_records or stats.html_pages, seconds),
        "seconds": round(seconds, 2),
        "path": dg.MetadataValue.path(redact_url(table_path)),
        "sample": rows_table(sample, ["category", "language", "url_attribute", "text", "url"]),
    }


def summarize(run: StageRun) -> dict:
    stats = {key: CandidatesStats.from_dict(value) for key, value in run.merged.items()}
    return {
        "segments": len(run.keys),
        **stats_metadata(CandidatesStats.total(stats.values())),
        "per_segment": rows_table(
            ({"segment": k, **s.metadata()} for k, s in stats.items()), ["segment", *CandidatesStats.HEADLINE], 100
        ),
    }


def describe_pages(run: StageRun, key: str) -> dict:
    """A segment's pages: responses read, pages kept, why the others were dropped, speed, a sample."""
    merged = run.merged[key][PAGES_STATS]
    stats, path = PagesStats.from_dict(merged), pages_path(run.root, key)
    sample = run.root.read_parquet(path, columns=["language", "chars", "title", "url"]).slice(0, 10).to_pylist()
    return {
        **stats_metadata(stats),
        "format": merged.get(FORMAT, ""),
        "pages_per_s": rate(stats.html_pages, run.seconds),
        "seconds": round(run.seconds, 2),
        "path": dg.MetadataValue.path(redact_url(path)),
        "sample": rows_table(sample, ["language", "chars", "title", "url"]),
    }


def summarize_pages(run: StageRun) -> dict:
    stats = {key: PagesStats.from_dict(value[PAGES_STATS]) for key, value in run.merged.items()}
    return {
        "segments": len(run.keys),
        **stats_metadata(PagesStats.total(stats.values())),
        "per_segment": rows_table(
            ({"segment": k, **s.metadata()} for k, s in stats.items()), ["segment", *PagesStats.HEADLINE], 100
        ),
    }


CANDIDATES_STAGE = Stage(
    name=CANDIDATES,
    formats=CRAWL_FORMATS,
    outputs=(
        Output(
            CANDIDATES,
            "Image links with usable alt text from the segment's WAT or WARC files: filtered, deduplicated, "
            "en/multi/nolang.",
            describe,
            summarize,
        ),
        Output(
            PAGES,
            "Main text, title and language of the segment's HTML pages, read in the same pass as its candidates "
            "(WARC crawls; a WAT crawl's pages are empty).",
            describe_pages,
            summarize_pages,
        ),
    ),
    plan=crawl_files,
    work=extract_crawl_file,
    merge=segment_merges,
    merge_work=merge_crawl_segment,
    progress=progress,
    unit_noun="crawl files",
    resources=("common_crawl", "candidate_rules", "page_rules", "dedup_index"),
    run_metadata=lambda run: {"seconds": round(run.seconds, 2)},
    retry_policy=CANDIDATES_RETRY,
)
candidates = stage_asset(CANDIDATES_STAGE)
