"""Registering a crawl: record its segments and add them as partitions of every stage."""

import dagster as dg
from pydantic import Field

from cah_assets.partitions import add_segments
from cah_assets.resources import CommonCrawl, StorageResource
from cah_resources.contract import CRAWL_FORMATS, FORMAT_WAT, FORMATS
from cah_resources.crawl.segments import CrawlRegistration, register_crawl, register_dataset


class RegisterCrawlConfig(dg.Config):
    crawl: str = Field(description="Crawl id as Common Crawl names it (CC-MAIN-2024-10), or a dataset's name")
    files_per_segment: int = Field(0, description="Files per segment; 0 sizes the crawl to about 2000 segments")
    format: str = Field(FORMAT_WAT, description=f"What the files are: {', '.join(FORMATS)}")
    files: list[str] = Field(
        default_factory=list, description="A dataset's files: fsspec URLs, globs, brace ranges (not for wat)"
    )
    text_column: str = Field("", description="A Parquet dataset's text column (default text)")


def register_and_add(
    instance: dg.DagsterInstance,
    common_crawl: CommonCrawl,
    storage: StorageResource,
    crawl: str,
    files_per_segment: int = 0,
    format: str = FORMAT_WAT,
    files: list[str] | tuple[str, ...] = (),
    text_column: str = "",
) -> tuple[CrawlRegistration, int]:
    """Record the crawl's (or dataset's) segments, once and for good, and add the missing partitions in batches."""
    if format in CRAWL_FORMATS:
        if files or text_column:
            raise ValueError(
                f"--files and --text-column are for datasets (--format parquet); a {format} crawl lists its own"
            )
        registration = register_crawl(
            common_crawl.source(), storage.data_root(), crawl, files_per_segment or None, format
        )
    else:
        registration = register_dataset(
            storage.data_root(), crawl, list(files), format, text_column or None, files_per_segment or None
        )
    return registration, add_segments(instance, registration.keys())


@dg.op(out=dg.Out(dg.Nothing))
def register_crawl_segments(
    context: dg.OpExecutionContext, config: RegisterCrawlConfig, common_crawl: CommonCrawl, storage: StorageResource
) -> None:
    """Read the crawl's WAT listing, fix its segments, and add them as partitions."""
    registration, added = register_and_add(
        context.instance,
        common_crawl,
        storage,
        config.crawl,
        config.files_per_segment,
        config.format,
        config.files,
        config.text_column,
    )
    context.log.info(
        f"{registration.crawl}: {len(registration.files)} {registration.format} files, "
        f"{registration.files_per_segment} per segment, {registration.segment_count} segments ({added} new partitions)"
    )


@dg.job(description="Register a crawl: its segments become partitions of candidates → image_shards → clip_pairs.")
def register_crawl_job():
    register_crawl_segments()
