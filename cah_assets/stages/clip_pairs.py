"""The `clip_pairs` asset: a segment's image shards → every downloaded pair scored by CLIP and kept or not."""

import time

import dagster as dg

from cah_assets.metadata import rate, rows_table, stats_metadata
from cah_assets.partitions import segments
from cah_assets.policies import CLIP_PAIRS_RETRY, FOLLOWS_UPSTREAM, GPU_POOL, permanent_errors, segment_asset
from cah_assets.resources import ClipScorer, ComputeResource, StorageResource
from cah_assets.stages.image_shards import image_shards
from cah_resources.clip_pairs.stage import (
    histogram_rows,
    pending_units,
    read_kept_sample,
    score_image_shard,
    shard_summaries,
    summarize,
)
from cah_resources.contract import CATEGORIES, CLIP_PAIRS, ClipStats, stage_folder
from cah_resources.redaction import redact_url
from cah_resources.storage import DataRoot


@segment_asset(
    partitions_def=segments,
    deps=[image_shards],
    group_name="pipeline",
    kinds={"pytorch", "parquet", "dask"},
    retry_policy=CLIP_PAIRS_RETRY,
    automation_condition=FOLLOWS_UPSTREAM,
    pool=GPU_POOL,
)
def clip_pairs(
    context: dg.AssetExecutionContext, compute: ComputeResource, storage: StorageResource, clip_scorer: ClipScorer
) -> dg.MaterializeResult:
    """Image–caption pairs scored with CLIP: cosine similarity, kept by LAION-5B's thresholds, NSFW/watermark tags."""
    root, keys, settings = storage.data_root(), context.partition_keys, clip_scorer.settings()
    with permanent_errors():  # image shards not materialized: fail now, retrying cannot make them
        units = [unit for key in keys for unit in pending_units(root, key)]
    # GPU workers when the cluster has them; CPU workers otherwise (compute.allow_cpu_fallback).
    resources = compute.gpu_resources()
    context.log.info(
        f"{len(keys)} segment(s): {len(units)} image shards to score on {'GPU' if resources else 'CPU'} workers"
    )

    def progress(result, done, total):
        s = ClipStats.from_dict(result.value)
        context.log.info(
            f"shard {done}/{total} {s.segment}/{s.shard:05d}: {s.pairs} pairs, "
            f"kept {dict(s.kept)} ({s.shard_pairs_per_s} pairs/s)"
        )

    started = time.perf_counter()
    ran = [
        ClipStats.from_dict(r.value)
        for r in compute.run_units(score_image_shard, units, on_result=progress, resources=resources, settings=settings)
    ]
    seconds = time.perf_counter() - started
    scored_now = sum(s.pairs_scored for s in ran)
    per_key = {key: describe(root, key) for key in keys}
    for key in keys if len(keys) > 1 else []:
        context.log_event(dg.AssetObservation(context.asset_key, partition=key, metadata=per_key[key]))
    totals = summarize([s for key in keys for s in shard_summaries(root, key)])
    return dg.MaterializeResult(
        metadata={
            **(
                per_key[keys[0]]
                if len(keys) == 1
                else {"segments": len(keys), **{name: totals.metadata()[name] for name in ClipStats.HEADLINE}}
            ),
            "pairs_per_s": rate(scored_now, seconds),
            "shards_scored_now": len(ran),
            "seconds": round(seconds, 2),
            "models": rows_table(
                (
                    {"category": c, "model": settings.models[c].label, "threshold": settings.thresholds[c]}
                    for c in CATEGORIES
                ),
                ["category", "model", "threshold"],
            ),
        }
    )


def describe(root: DataRoot, key: str) -> dict:
    """What a person asks of a segment's clip_pairs: scored and kept per category, rates, similarity, device."""
    summaries = shard_summaries(root, key)
    totals = summarize(summaries)
    return {
        **stats_metadata(totals),
        "shards": len(summaries),
        "similarity_histogram": rows_table(histogram_rows(totals.histogram), ["similarity", "pairs", "bar"], limit=100),
        "path": dg.MetadataValue.path(redact_url(stage_folder(root, CLIP_PAIRS, key))),
        "sample_kept": rows_table(
            read_kept_sample(root, key), ["key", "category", "similarity", "nsfw", "text", "url"]
        ),
    }
