"""The `image_shards` asset: a segment's candidates → their images in webdataset shards, and its settings resource."""

import time

import dagster as dg
import dask

from cah_assets.metadata import counts_table, rate, rows_table
from cah_assets.partitions import segments
from cah_assets.policies import FOLLOWS_UPSTREAM, IMAGE_SHARDS_RETRY, permanent_errors, segment_asset
from cah_assets.stages.candidates import candidates
from cah_resources.fleet.compute import ComputeResource
from cah_resources.image_shards.downloader import DEFAULT_USER_AGENT
from cah_resources.image_shards.resizer import ResizeSettings
from cah_resources.image_shards.stage import (
    ShardSettings,
    download_shard,
    plan_shards,
    read_marker,
    read_sample,
    read_segment_markers,
    segment_folder,
    summarize_markers,
)
from cah_resources.redaction import redact_url
from cah_resources.resources import StorageResource
from cah_resources.storage import DataRoot


class ImageDownloader(dg.ConfigurableResource):
    """How image_shards downloads: network limits, the address guard, image checks, resizing, shard size."""

    concurrency: int = 256
    per_host_connections: int = 16
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    total_timeout: float = 60.0
    max_body_bytes: int = 20_000_000
    max_redirects: int = 5
    retries: int = 2
    retry_backoff: float = 0.5
    max_retry_after: float = 30.0
    user_agent: str = DEFAULT_USER_AGENT
    user_agent_token: str = "cah"
    honour_robots_noai: bool = True
    disallowed_robots_directives: list[str] = ["noai", "noimageai"]
    # Private/loopback networks the downloader may reach anyway (tests, an intranet mirror).
    allowed_networks: list[str] = []
    block_private_addresses: bool = True
    verify_tls: bool = True
    resize_mode: str = "border"
    image_size: int = 256
    resize_only_if_bigger: bool = False
    encode_quality: int = 95
    allowed_formats: list[str] = ["JPEG", "PNG", "WEBP"]
    min_bytes: int = 5000
    min_side: int = 0
    max_pixels: int = 89_478_485
    max_aspect_ratio: float = 10.0
    # Decode cost: JPEG scans x pixels refused before decoding ('too_costly'), CPU seconds per image
    # in its worker process ('decode_timeout'); 0 = no limit.
    max_scan_pixels: int = ResizeSettings.max_scan_pixels
    max_decode_cpu_seconds: float = ResizeSettings.max_decode_cpu_seconds
    shard_size: int = 10_000
    image_processes: int = ShardSettings.image_processes
    # Downloaded bytes waiting for the image workers per shard task; past it new downloads wait.
    image_backlog_bytes: int = ShardSettings.image_backlog_bytes

    def settings(self) -> ShardSettings:
        return ShardSettings.from_flat(self.model_dump())


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
    context.log.info(f"{len(keys)} segment(s): {len(units)} shards, {len(units) - len(todo)} already done, {len(todo)} to the compute engine")

    def progress(result, done, total):
        m = result.value
        context.log.info(f"shard {done}/{total} {m['segment']}/{m['shard']:05d}: {m['successes']}/{m['count']} ok in {m['duration']:.1f} s")

    started = time.perf_counter()
    # Dask workers are daemonic by default, and daemonic processes cannot start the image processes.
    with dask.config.set({"distributed.worker.daemon": False}):
        ran = [r.value for r in compute.run_units(download_shard, todo, on_result=progress, on_progress=context.log.info,
                                                  settings=settings)]
    seconds = time.perf_counter() - started
    speed = {
        "images_per_s": rate(sum(m["successes"] for m in ran), seconds),
        "urls_per_s": rate(sum(m["count"] for m in ran), seconds),
        "mb_per_s": rate(sum(m["bytes_fetched"] for m in ran) / 1e6, seconds),
        "shards_run_now": len(ran),
        "seconds": round(seconds, 2),
    }
    for key in keys if len(keys) > 1 else []:
        context.log_event(dg.AssetObservation(context.asset_key, partition=key, metadata=describe(root, key)))
    if len(keys) == 1:
        return dg.MaterializeResult(metadata={**describe(root, keys[0]), **speed})
    totals = summarize_markers([m for key in keys for m in read_segment_markers(root, key)])
    return dg.MaterializeResult(metadata={"segments": len(keys), "candidates": totals["count"], "images": totals["successes"], **speed})


def describe(root: DataRoot, key: str) -> dict:
    """What a person asks of a segment's shards: how many images came, why the others did not, a sample."""
    totals = summarize_markers(read_segment_markers(root, key))
    return {
        "candidates": totals["count"],
        "images": totals["successes"],
        "success_rate": totals["success_rate"],
        "statuses": counts_table(totals["status_counts"], "status"),
        "shards": totals["shards"],
        "bytes_written": totals["bytes_written"],
        "path": dg.MetadataValue.path(redact_url(segment_folder(root, key))),
        "sample": rows_table(read_sample(root, key), ["key", "status", "width", "height", "text", "url"]),
    }
