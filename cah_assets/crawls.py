"""Registering a crawl: record its segments and add them as partitions of every stage."""

import dagster as dg
from pydantic import Field

from cah_assets.partitions import add_segments
from cah_assets.resources import CommonCrawl, StorageResource
from cah_resources.crawl.segments import CrawlRegistration, register_crawl


class RegisterCrawlConfig(dg.Config):
    crawl: str = Field(description="Crawl id as Common Crawl names it, e.g. CC-MAIN-2024-10")
    files_per_segment: int = Field(0, description="WAT files per segment; 0 sizes the crawl to about 2000 segments")


def register_and_add(
    instance: dg.DagsterInstance,
    common_crawl: CommonCrawl,
    storage: StorageResource,
    crawl: str,
    files_per_segment: int = 0,
) -> tuple[CrawlRegistration, int]:
    """Record the crawl's segments (once, for good) and add the missing partitions in batches."""
    registration = register_crawl(common_crawl.source(), storage.data_root(), crawl, files_per_segment or None)
    return registration, add_segments(instance, registration.keys())


@dg.op(out=dg.Out(dg.Nothing))
def register_crawl_segments(
    context: dg.OpExecutionContext, config: RegisterCrawlConfig, common_crawl: CommonCrawl, storage: StorageResource
) -> None:
    """Read the crawl's WAT listing, fix its segments, and add them as partitions."""
    registration, added = register_and_add(
        context.instance, common_crawl, storage, config.crawl, config.files_per_segment
    )
    context.log.info(
        f"{registration.crawl}: {len(registration.wat_paths)} WAT files, {registration.files_per_segment} per segment, "
        f"{registration.segment_count} segments ({added} new partitions)"
    )


@dg.job(description="Register a crawl: its segments become partitions of candidates → image_shards → clip_pairs.")
def register_crawl_job():
    register_crawl_segments()
