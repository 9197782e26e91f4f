"""The `candidates` asset: a segment's WAT files → image URL + alt text pairs, language-split."""

import time

import dagster as dg

from cah_assets.metadata import rate, rows_table, stats_metadata
from cah_assets.partitions import segments
from cah_assets.policies import CANDIDATES_RETRY, permanent_errors, segment_asset
from cah_assets.resources import CandidateRules, CommonCrawl, ComputeResource, DedupIndexResource, StorageResource
from cah_resources.candidates.stage import (
    SegmentMergeUnit,
    WatFileUnit,
    extract_wat_file,
    merge_unit,
    output_paths,
)
from cah_resources.contract import CandidatesStats
from cah_resources.crawl.segments import registration_for_key
from cah_resources.redaction import redact_url
from cah_resources.storage import DataRoot


@segment_asset(
    partitions_def=segments, group_name="pipeline", kinds={"python", "parquet", "dask"}, retry_policy=CANDIDATES_RETRY
)
def candidates(
    context: dg.AssetExecutionContext,
    compute: ComputeResource,
    common_crawl: CommonCrawl,
    storage: StorageResource,
    candidate_rules: CandidateRules,
    dedup_index: DedupIndexResource,
) -> dg.MaterializeResult:
    """Image links with usable alt text from the segment's WAT files: filtered, deduplicated, en/multi/nolang."""
    root, keys, started = storage.data_root(), context.partition_keys, time.perf_counter()
    source, filters = common_crawl.source(), candidate_rules.filters()
    with permanent_errors():  # a crawl not registered: fail now, retrying cannot register it
        units = [
            WatFileUnit(key, i, path, root, source, filters, candidate_rules.max_record_bytes)
            for key in keys
            for i, path in enumerate(registration_for_key(root, key).files_of(key))
        ]
    context.log.info(f"{len(keys)} segment(s), {len(units)} WAT files to the compute engine")

    def progress(result, done, total):
        s = CandidatesStats.from_dict(result.value)
        context.log.info(f"WAT {done}/{total} {s.wat_file}: {s.metadata_records} records, {s.candidates} candidates")

    parts = compute.run_units(extract_wat_file, units, on_result=progress)
    claim = dedup_index.index(root).claim  # pairs an earlier segment owns are dropped as duplicate_global
    merges = [
        SegmentMergeUnit(key, root, tuple(r.value for r in parts if r.unit.segment == key), claim) for key in keys
    ]
    stats = {r.unit.segment: CandidatesStats.from_dict(r.value) for r in compute.run_units(merge_unit, merges)}
    seconds = time.perf_counter() - started
    for key in keys if len(keys) > 1 else []:
        context.log_event(
            dg.AssetObservation(context.asset_key, partition=key, metadata=describe(root, key, stats[key], seconds))
        )
    if len(keys) == 1:
        return dg.MaterializeResult(metadata=describe(root, keys[0], stats[keys[0]], seconds))
    return dg.MaterializeResult(
        metadata={
            "segments": len(keys),
            **stats_metadata(CandidatesStats.total(stats.values())),
            "per_segment": rows_table(
                ({"segment": k, **s.metadata()} for k, s in stats.items()), ["segment", *CandidatesStats.HEADLINE], 100
            ),
            "seconds": round(seconds, 2),
        }
    )


def describe(root: DataRoot, key: str, stats: CandidatesStats, seconds: float) -> dict:
    """What a person asks of a segment's candidates: volumes, categories, drops, damage, speed, a sample."""
    table_path, _ = output_paths(root, key)
    sample = root.read_parquet(table_path).slice(0, 10).to_pylist()
    return {
        **stats_metadata(stats),
        "malformed_records": sum(stats.damage.values()),
        "mb_per_s": rate(stats.bytes / 1e6, seconds),
        "records_per_s": rate(stats.metadata_records, seconds),
        "seconds": round(seconds, 2),
        "path": dg.MetadataValue.path(redact_url(table_path)),
        "sample": rows_table(sample, ["category", "language", "text", "url"]),
    }
