"""The `clip_pairs` stage: a segment's image shards → every downloaded pair scored by CLIP and kept or not."""

import dagster as dg

from cah_assets.metadata import rate, rows_table, stats_metadata
from cah_assets.policies import CLIP_PAIRS_RETRY, FOLLOWS_UPSTREAM
from cah_assets.stages.runner import Output, Stage, StageRun, stage_asset
from cah_resources.clip_pairs.stage import (
    ClipPairsUnit,
    histogram_rows,
    pending_units,
    read_kept_sample,
    score_image_shard,
    shard_summaries,
    shard_units,
    summarize,
)
from cah_resources.contract import CATEGORIES, CLIP_PAIRS, IMAGE_SHARDS, PAIR_FORMATS, ClipStats, stage_folder
from cah_resources.redaction import redact_url


def image_shards_to_score(run: StageRun, key: str) -> list[ClipPairsUnit]:
    # Which shards are scored is one listing of markers, not a read per shard: is_done stays unset.
    return shard_units(run.root, key) if run.redo else pending_units(run.root, key)


def progress(value: dict, done: int, total: int) -> str:
    s = ClipStats.from_dict(value)
    return (
        f"shard {done}/{total} {s.segment}/{s.shard:05d}: {s.pairs} pairs, "
        f"kept {dict(s.kept)} ({s.shard_pairs_per_s} pairs/s)"
    )


def describe(run: StageRun, key: str) -> dict:
    """What a person asks of a segment's clip_pairs: scored and kept per category, rates, similarity, device."""
    summaries = shard_summaries(run.root, key)
    totals = summarize(summaries)
    return {
        **stats_metadata(totals),
        "shards": len(summaries),
        "similarity_histogram": rows_table(histogram_rows(totals.histogram), ["similarity", "pairs", "bar"], limit=100),
        "path": dg.MetadataValue.path(redact_url(stage_folder(run.root, CLIP_PAIRS, key))),
        "sample_kept": rows_table(
            read_kept_sample(run.root, key), ["key", "category", "similarity", "nsfw", "text", "url"]
        ),
    }


def totals(run: StageRun) -> dict:
    both = summarize([s for key in run.keys for s in shard_summaries(run.root, key)])
    return {"segments": len(run.keys), **{name: both.metadata()[name] for name in ClipStats.HEADLINE}}


def speed_and_models(run: StageRun) -> dict:
    ran, settings = [ClipStats.from_dict(value) for value in run.all_values()], run.settings
    return {
        "pairs_per_s": rate(sum(s.pairs_scored for s in ran), run.seconds),
        "shards_scored_now": len(ran),
        "seconds": round(run.seconds, 2),
        "models": rows_table(
            (
                {"category": c, "model": settings.models[c].label, "threshold": settings.thresholds[c]}
                for c in CATEGORIES
            ),
            ["category", "model", "threshold"],
        ),
    }


CLIP_PAIRS_STAGE = Stage(
    name=CLIP_PAIRS,
    formats=PAIR_FORMATS,
    outputs=(
        Output(
            CLIP_PAIRS,
            "Image–caption pairs scored with CLIP: cosine similarity, kept by LAION-5B's thresholds, "
            "NSFW/watermark tags.",
            describe,
            totals,
            kinds=frozenset({"pytorch", "parquet", "dask"}),
            deps=(IMAGE_SHARDS,),
            automation_condition=FOLLOWS_UPSTREAM,
        ),
    ),
    plan=image_shards_to_score,
    passes_redo=True,
    work=score_image_shard,
    progress=progress,
    unit_noun="image shards",
    resources=("clip_scorer",),
    settings=lambda resources: resources.clip_scorer.settings(),
    run_metadata=speed_and_models,
    gpu=True,
    retry_policy=CLIP_PAIRS_RETRY,
)
clip_pairs = stage_asset(CLIP_PAIRS_STAGE)
