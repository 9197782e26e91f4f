"""The `image_shards` stage: a segment's candidates → their images in webdataset shards."""

import dagster as dg

from cah_assets.metadata import counts_table, rate, rows_table, stats_metadata
from cah_assets.policies import FOLLOWS_UPSTREAM, IMAGE_SHARDS_RETRY
from cah_assets.stages.runner import Output, Stage, StageRun, stage_asset
from cah_resources.contract import (
    CANDIDATES,
    COUNT,
    CRAWL_FORMATS,
    IMAGE_SHARDS,
    OPT_OUT_STATUSES,
    SUCCESSES,
    ShardStats,
)
from cah_resources.image_shards.stage import (
    ShardUnit,
    download_shard,
    plan_shards,
    read_marker,
    read_sample,
    read_segment_markers,
    segment_folder,
    summarize_markers,
)
from cah_resources.redaction import redact_url


def shards(run: StageRun, key: str) -> list[ShardUnit]:
    return plan_shards(run.root, key, run.settings.shard_size)


def progress(value: dict, done: int, total: int) -> str:
    m = ShardStats.from_dict(value)
    return f"shard {done}/{total} {m.segment}/{m.shard:05d}: {m.successes}/{m.count} ok in {m.task_seconds:.1f} s"


def describe(run: StageRun, key: str) -> dict:
    """What a person asks of a segment's shards: how many images came, why the others did not, a sample."""
    markers = read_segment_markers(run.root, key)
    totals = summarize_markers(markers)
    opted_out = {s: n for s, n in totals.status_counts.items() if s in OPT_OUT_STATUSES}
    return {
        **stats_metadata(totals),
        "shards": len(markers),
        # A slow or failing resolver shows here before it shows as missing images.
        "dns_ms_per_lookup": round(1000 * totals.dns_seconds / max(totals.dns_lookups, 1), 1),
        "opted_out": counts_table(opted_out, "status"),
        "path": dg.MetadataValue.path(redact_url(segment_folder(run.root, key))),
        "sample": rows_table(read_sample(run.root, key), ["key", "status", "width", "height", "text", "url"]),
    }


def summarize(run: StageRun) -> dict:
    totals = summarize_markers([m for key in run.keys for m in read_segment_markers(run.root, key)])
    return {"segments": len(run.keys), COUNT: totals.count, SUCCESSES: totals.successes}


def speed(run: StageRun) -> dict:
    ran, seconds = [ShardStats.from_dict(value) for value in run.all_values()], run.seconds
    return {
        "images_per_s": rate(sum(m.successes for m in ran), seconds),
        "urls_per_s": rate(sum(m.count for m in ran), seconds),
        "mb_per_s": rate(sum(m.bytes_fetched for m in ran) / 1e6, seconds),
        "shards_run_now": len(ran),
        "seconds": round(seconds, 2),
    }


IMAGE_SHARDS_STAGE = Stage(
    name=IMAGE_SHARDS,
    formats=CRAWL_FORMATS,
    outputs=(
        Output(
            IMAGE_SHARDS,
            "The candidates' images, downloaded, checked and resized into webdataset shards (tar + parquet + stats).",
            describe,
            summarize,
            deps=(CANDIDATES,),
            automation_condition=FOLLOWS_UPSTREAM,
        ),
    ),
    plan=shards,
    is_done=lambda unit: read_marker(unit) is not None,  # finished shards are never redone, unless asked
    passes_redo=True,
    work=download_shard,
    progress=progress,
    unit_noun="shards",
    resources=("image_downloader",),
    settings=lambda resources: resources.image_downloader.settings(),
    run_metadata=speed,
    # Dask workers are daemonic by default, and daemonic processes cannot start the image processes.
    dask_config={"distributed.worker.daemon": False},
    retry_policy=IMAGE_SHARDS_RETRY,
)
image_shards = stage_asset(IMAGE_SHARDS_STAGE)
