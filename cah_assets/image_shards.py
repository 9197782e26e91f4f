"""The `image_shards` asset: a segment's candidates → their images in webdataset shards, and its settings resource."""

import time

import dagster as dg
import dask

from cah_assets.candidates import candidates
from cah_assets.metadata import counts_table, rate, rows_table
from cah_assets.partitions import segments
from cah_assets.policies import FOLLOWS_UPSTREAM, IMAGE_SHARDS_RETRY, permanent_errors, segment_asset
from cah_resources.compute import ComputeResource
from cah_resources.downloader import DEFAULT_USER_AGENT, FetchSettings
from cah_resources.image_shards import (
    ShardSettings,
    download_shard,
    plan_shards,
    read_marker,
    read_sample,
    read_segment_markers,
    segment_folder,
    summarize_markers,
)
from cah_resources.opt_outs import OPT_OUT_STATUSES
from cah_resources.redaction import redact_url
from cah_resources.resizer import ResizeSettings
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
    # Opt-outs of image hosts, each fetched once per host per shard task: robots.txt (RFC 9309, judged
    # for user_agent_token, then *) and TDMRep (tdm-reservation header, /.well-known/tdmrep.json).
    honour_robots_txt: bool = FetchSettings.honour_robots_txt
    honour_tdmrep: bool = FetchSettings.honour_tdmrep
    robots_max_bytes: int = FetchSettings.robots_max_bytes
    robots_unreachable_seconds: float = FetchSettings.robots_unreachable_seconds
    # Image-content hash lists (SHA-256 or MD5 hex per line; paths or fsspec URLs): listed bytes
    # become 'blocklisted_image' and are never written.
    blocked_image_lists: list[str] = []
    # Private/loopback networks the downloader may reach anyway (tests, an intranet mirror).
    allowed_networks: list[str] = []
    block_private_addresses: bool = True
    verify_tls: bool = True
    # DNS: the system's nameservers unless listed here ("ip" or "ip:port"), e.g. a local caching
    # resolver (Unbound, knot-resolver); lookups have their own limit and timeout, and answers are
    # cached per shard task for their TTL clamped to dns_min_ttl..dns_max_ttl seconds.
    nameservers: list[str] = []
    dns_concurrency: int = FetchSettings.dns_concurrency
    dns_timeout: float = FetchSettings.dns_timeout
    dns_min_ttl: float = FetchSettings.dns_min_ttl
    dns_max_ttl: float = FetchSettings.dns_max_ttl
    dns_negative_ttl: float = FetchSettings.dns_negative_ttl
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
        # A slow or failing resolver shows here before it shows as missing images.
        "dns_lookups": totals["dns_lookups"],
        "dns_cache_hits": totals["dns_cache_hits"],
        "dns_failures": counts_table(totals["dns_failures"], "status"),
        "dns_seconds": totals["dns_seconds"],
        "dns_ms_per_lookup": round(1000 * totals["dns_seconds"] / max(totals["dns_lookups"], 1), 1),
        # What a release built from these shards may say it honoured.
        "opt_out_signals": ", ".join(totals["opt_out_signals"]) or "none",
        "opted_out": counts_table({s: n for s, n in totals["status_counts"].items() if s in OPT_OUT_STATUSES},
                                  "status"),
        "robots_txt_requests": totals["robots_txt_requests"],
        "blocklists": rows_table(totals["blocklists"], ["kind", "source", "entries", "sha256"]),
        "path": dg.MetadataValue.path(redact_url(segment_folder(root, key))),
        "sample": rows_table(read_sample(root, key), ["key", "status", "width", "height", "text", "url"]),
    }
