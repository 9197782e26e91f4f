"""Dataset-level assets: the release parquet and the report of every registered crawl."""

from typing import Any

import dagster as dg
from pydantic import Field

from cah_assets.metadata import rows_table
from cah_assets.resources import ReportLinks, StorageResource
from cah_resources.contract import (
    CLIP_PAIRS,
    CRAWLS,
    PAGE_SCORES,
    PAIR_FORMATS,
    RELEASE,
    STAGES,
    ShardStats,
    release_embeddings_folder,
    report_folder,
)
from cah_resources.crawl.segments import CrawlRegistration, load_registration
from cah_resources.dataset.release import (
    build_release,
    finished_clip_pairs_shards,
    merge_embeddings,
    release_dir,
)
from cah_resources.dataset.report import build_report
from cah_resources.redaction import redact_url
from cah_resources.storage import DataRoot

DATASET_KINDS = {"python", "parquet"}


class DatasetConfig(dg.Config):
    crawls: list[str] = Field(default_factory=list, description="Crawls to roll up; empty = every registered crawl")


def crawls_to_roll_up(root: DataRoot, config: DatasetConfig) -> dict[str, CrawlRegistration]:
    """Each crawl to roll up with its registration; an unregistered crawl is a one-line error."""
    names = config.crawls or root.listdir(root.path(CRAWLS))
    plans = {}
    for crawl in names:
        registration = load_registration(root, crawl)
        if registration is None:
            raise dg.Failure(
                f"crawl {crawl} is not registered under {redact_url(root.url)}; run `cah register {crawl}` first"
            )
        plans[crawl] = registration
    return plans


@dg.asset(deps=[CLIP_PAIRS], group_name="dataset", kinds=DATASET_KINDS)
def release(context: dg.AssetExecutionContext, config: DatasetConfig, storage: StorageResource) -> dg.MaterializeResult:
    """Kept pairs of every materialized segment in LAION's columns, as bounded parquet files per crawl."""
    root = storage.data_root()
    crawls: list[dict[str, Any]] = []
    categories: list[dict[str, Any]] = []
    nsfw: list[dict[str, Any]] = []
    embedded = 0
    for crawl, registration in crawls_to_roll_up(root, config).items():
        keys = registration.keys()
        if registration.format not in PAIR_FORMATS:
            context.log.info(
                f"{crawl}: a {registration.format} dataset of pages has no image-text pairs to release; "
                f"its kept pages are page_scores' kept files ({redact_url(root.path(PAGE_SCORES))})"
            )
            continue
        finished = finished_clip_pairs_shards(root, keys)
        summary = build_release(root, keys, release_dir(root, crawl), finished=finished)
        # One clip-retrieval folder per crawl (and model): an index of the crawl reads it as it is.
        merged = merge_embeddings(root, finished[0], release_embeddings_folder(root, crawl))
        embedded += sum(merged.values())
        context.log.info(
            f"{crawl}: {summary.rows} pairs in {len(summary.files)} files; "
            f"{len(summary.missing_segments)} of {len(keys)} segments have no clip_pairs yet"
        )
        honoured = ShardStats.from_dict(summary.honoured)
        crawls.append(
            {
                "crawl": crawl,
                "pairs": summary.rows,
                "shards": summary.shards,
                "segments_pending": len(summary.missing_segments),
                # What a publisher may state (release.json names each list with its hash).
                "opt_outs_honoured": ", ".join(honoured.opt_out_signals or []) or "none",
                "blocklists": len(honoured.blocklists),
            }
        )
        categories += [
            {
                "crawl": crawl,
                "category": category,
                "pairs": count,
                "share": round(count / summary.rows, 4) if summary.rows else 0.0,
            }
            for category, count in summary.by_category.items()
        ]
        nsfw += [{"crawl": crawl, "nsfw": tag, "pairs": count} for tag, count in summary.by_nsfw.items()]
    return dg.MaterializeResult(
        metadata={
            "pairs": sum(c["pairs"] for c in crawls),
            "crawls": rows_table(
                crawls,
                ["crawl", "pairs", "shards", "segments_pending", "opt_outs_honoured", "blocklists"],
                limit=len(crawls),
            ),
            "by_category": rows_table(categories, ["crawl", "category", "pairs", "share"], limit=len(categories)),
            "by_nsfw": rows_table(nsfw, ["crawl", "nsfw", "pairs"], limit=len(nsfw)),
            "path": dg.MetadataValue.path(redact_url(root.path(RELEASE))),
            "embedding_shards": embedded,
        }
    )


def stage_run_seconds(instance: dg.DagsterInstance, stage: str, keys: list[str]) -> float | None:
    """Seconds the runs behind the segments' latest materializations of ``stage`` took, each run counted once."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(stage), asset_partitions=keys), limit=max(len(keys), 1) * 4
    ).records
    latest: dict[str, dg.EventLogRecord] = {}
    for record in records:  # newest first
        partition = record.partition_key or ""
        latest.setdefault(partition, record)
    per_run: dict[str, float] = {}
    for record in latest.values():
        materialization = record.asset_materialization
        seconds = materialization.metadata.get("seconds") if materialization is not None else None
        if seconds is not None and isinstance(seconds.value, (int, float)):
            per_run[record.run_id] = float(seconds.value)
    return sum(per_run.values()) if per_run else None


@dg.asset(deps=[release, *STAGES], group_name="dataset", kinds={"python", "matplotlib"})
def report(
    context: dg.AssetExecutionContext, config: DatasetConfig, storage: StorageResource, report_links: ReportLinks
) -> dg.MaterializeResult:
    """The dataset and the pipeline in pictures: funnel, similarity, download statuses, domains, throughput."""
    root = storage.data_root()
    metadata: dict = {}
    for crawl, registration in crawls_to_roll_up(root, config).items():
        keys = registration.keys()
        seconds = {stage: stage_run_seconds(context.instance, stage, keys) for stage in (*STAGES, PAGE_SCORES)}
        out_dir = report_folder(root, crawl)
        images = registration.format in PAIR_FORMATS
        built = build_report(root, keys, out_dir, {s: v for s, v in seconds.items() if v}, images=images)
        context.log.info(f"{crawl}: report written to {redact_url(out_dir)}")
        for name, png in built.plots.items():
            plot = report_links.plot_markdown(root, built.paths[name], png, name)
            metadata[f"{crawl}/{name}"] = dg.MetadataValue.md(plot)
        for name, table in built.tables.items():
            metadata[f"{crawl}/{name}_table"] = rows_table(table.as_dicts(), table.columns, limit=len(table.rows))
            if table.note:
                metadata[f"{crawl}/{name}_note"] = table.note
        metadata[f"{crawl}/path"] = dg.MetadataValue.path(redact_url(built.paths["report"]))
    return dg.MaterializeResult(metadata=metadata)
