"""The `candidates` stage: a segment's WAT files → image URL + alt text pairs, language-split."""

import dagster as dg

from cah_assets.metadata import rate, rows_table, stats_metadata
from cah_assets.policies import CANDIDATES_RETRY
from cah_assets.stages.runner import Output, Stage, StageRun, stage_asset
from cah_resources.candidates.stage import (
    SegmentMergeUnit,
    WatFileUnit,
    extract_wat_file,
    merge_unit,
    output_paths,
)
from cah_resources.contract import CANDIDATES, CandidatesStats
from cah_resources.crawl.segments import registration_for_key
from cah_resources.redaction import redact_url


def wat_files(run: StageRun, key: str) -> list[WatFileUnit]:
    source, rules = run.resources.common_crawl.source(), run.resources.candidate_rules
    filters = rules.filters()
    return [
        WatFileUnit(key, i, path, run.root, source, filters, rules.max_record_bytes)
        for i, path in enumerate(registration_for_key(run.root, key).files_of(key))
    ]


def segment_merges(run: StageRun) -> list[SegmentMergeUnit]:
    claim = run.resources.dedup_index.index(run.root).claim  # pairs an earlier segment owns: duplicate_global
    return [SegmentMergeUnit(key, run.root, tuple(run.values[key]), claim) for key in run.keys]


def progress(value: dict, done: int, total: int) -> str:
    s = CandidatesStats.from_dict(value)
    return f"WAT {done}/{total} {s.wat_file}: {s.metadata_records} records, {s.candidates} candidates"


def describe(run: StageRun, key: str) -> dict:
    """What a person asks of a segment's candidates: volumes, categories, drops, damage, speed, a sample."""
    stats, seconds = CandidatesStats.from_dict(run.merged[key]), run.seconds
    table_path, _ = output_paths(run.root, key)
    sample = run.root.read_parquet(table_path).slice(0, 10).to_pylist()
    return {
        **stats_metadata(stats),
        "malformed_records": sum(stats.damage.values()),
        "mb_per_s": rate(stats.bytes / 1e6, seconds),
        "records_per_s": rate(stats.metadata_records, seconds),
        "seconds": round(seconds, 2),
        "path": dg.MetadataValue.path(redact_url(table_path)),
        "sample": rows_table(sample, ["category", "language", "text", "url"]),
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


CANDIDATES_STAGE = Stage(
    name=CANDIDATES,
    outputs=(
        Output(
            CANDIDATES,
            "Image links with usable alt text from the segment's WAT files: filtered, deduplicated, en/multi/nolang.",
            describe,
            summarize,
        ),
    ),
    plan=wat_files,
    work=extract_wat_file,
    merge=segment_merges,
    merge_work=merge_unit,
    progress=progress,
    unit_noun="WAT files",
    resources=("common_crawl", "candidate_rules", "dedup_index"),
    run_metadata=lambda run: {"seconds": round(run.seconds, 2)},
    retry_policy=CANDIDATES_RETRY,
)
candidates = stage_asset(CANDIDATES_STAGE)
