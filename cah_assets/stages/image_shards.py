"""The `image_shards` asset: a segment's candidates → their images in webdataset shards, and its settings resource."""

import time

import dagster as dg
import dask

from cah_assets.metadata import counts_table, rate, rows_table, stats_metadata
from cah_assets.partitions import segments
from cah_assets.policies import FOLLOWS_UPSTREAM, IMAGE_SHARDS_RETRY, permanent_errors, segment_asset
from cah_assets.resources import ComputeResource, ImageDownloader, StorageResource
from cah_assets.stages.candidates import candidates
from cah_resources.contract import COUNT, OPT_OUT_STATUSES, SUCCESSES, ShardStats
from cah_resources.image_shards.stage import (
    download_shard,
    plan_shards,
    read_marker,
    read_sample,
    read_segment_markers,
    segment_folder,
    summarize_markers,
)
from cah_resources.redaction import redact_url
from cah_resources.storage import DataRoot


@segment_asset(
    partitions_def=segments,
    deps=[candidates],
    group_name="pipeline",
    kinds={"python", "parquet", "dask"},
    retry_policy=IMAGE_SHARDS_RETRY,
    automation_condition=FOLLOWS_UPSTREAM,
)
def image_shards(
    context: dg.AssetExecutionContext,
    compute: ComputeResource,
    storage: StorageResource,
    image_downloader: ImageDownloader,
) -> dg.MaterializeResult:
    """The candidates' images, downloaded, checked and resized into webdataset shards (tar + parquet + stats)."""
    root, keys, settings = storage.data_root(), context.partition_keys, image_downloader.settings()
    with permanent_errors():  # candidates not materialized: fail now, retrying cannot make them
        units = [unit for key in keys for unit in plan_shards(root, key, settings.shard_size)]
    todo = [unit for unit in units if read_marker(unit) is None]
    context.log.info(
        f"{len(keys)} segment(s): {len(units)} shards, {len(units) - len(todo)} already done, "
        f"{len(todo)} to the compute engine"
    )

    def progress(result, done, total):
        m = ShardStats.from_dict(result.value)
        context.log.info(
            f"shard {done}/{total} {m.segment}/{m.shard:05d}: {m.successes}/{m.count} ok in {m.task_seconds:.1f} s"
        )

    started = time.perf_counter()
    # Dask workers are daemonic by default, and daemonic processes cannot start the image processes.
    with dask.config.set({"distributed.worker.daemon": False}):
        ran = [
            ShardStats.from_dict(r.value)
            for r in compute.run_units(
                download_shard, todo, on_result=progress, on_progress=context.log.info, settings=settings
            )
        ]
    seconds = time.perf_counter() - started
    speed = {
        "images_per_s": rate(sum(m.successes for m in ran), seconds),
        "urls_per_s": rate(sum(m.count for m in ran), seconds),
        "mb_per_s": rate(sum(m.bytes_fetched for m in ran) / 1e6, seconds),
        "shards_run_now": len(ran),
        "seconds": round(seconds, 2),
    }
    for key in keys if len(keys) > 1 else []:
        context.log_event(dg.AssetObservation(context.asset_key, partition=key, metadata=describe(root, key)))
    if len(keys) == 1:
        return dg.MaterializeResult(metadata={**describe(root, keys[0]), **speed})
    totals = summarize_markers([m for key in keys for m in read_segment_markers(root, key)])
    return dg.MaterializeResult(
        metadata={"segments": len(keys), COUNT: totals.count, SUCCESSES: totals.successes, **speed}
    )


def describe(root: DataRoot, key: str) -> dict:
    """What a person asks of a segment's shards: how many images came, why the others did not, a sample."""
    markers = read_segment_markers(root, key)
    totals = summarize_markers(markers)
    opted_out = {s: n for s, n in totals.status_counts.items() if s in OPT_OUT_STATUSES}
    return {
        **stats_metadata(totals),
        "shards": len(markers),
        # A slow or failing resolver shows here before it shows as missing images.
        "dns_ms_per_lookup": round(1000 * totals.dns_seconds / max(totals.dns_lookups, 1), 1),
        "opted_out": counts_table(opted_out, "status"),
        "path": dg.MetadataValue.path(redact_url(segment_folder(root, key))),
        "sample": rows_table(read_sample(root, key), ["key", "status", "width", "height", "text", "url"]),
    }
