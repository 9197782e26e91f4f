"""The `page_scores` asset: a segment's pages → every page scored by a text classifier and kept or not."""

import time

import dagster as dg

from cah_assets.metadata import rate, rows_table, stats_metadata
from cah_assets.partitions import segments
from cah_assets.policies import GPU_POOL, PAGE_SCORES_RETRY, permanent_errors, segment_asset
from cah_assets.resources import ComputeResource, StorageResource, TextClassifier
from cah_resources.contract import PAGE_SCORES, SCORE_EDGES, PageScoreStats, stage_folder
from cah_resources.page_scores.stage import (
    kept_table,
    pending_units,
    score_page_file,
    segment_units,
    shard_summaries,
    summarize,
)
from cah_resources.redaction import redact_url
from cah_resources.storage import DataRoot


@segment_asset(
    partitions_def=segments,
    group_name="text",
    kinds={"pytorch", "parquet", "dask"},
    retry_policy=PAGE_SCORES_RETRY,
    pool=GPU_POOL,
)
def page_scores(
    context: dg.AssetExecutionContext,
    compute: ComputeResource,
    storage: StorageResource,
    text_classifier: TextClassifier,
) -> dg.MaterializeResult:
    """Pages scored by a Hugging Face classifier (FineWeb-Edu's by default) and kept at its threshold."""
    root, keys, settings = storage.data_root(), context.partition_keys, text_classifier.settings()
    with permanent_errors():  # not a Parquet dataset (no pages), not registered: retrying cannot help
        units = pending_units([unit for key in keys for unit in segment_units(root, key)])
    resources = compute.gpu_resources()  # GPU workers when the cluster has them, else CPU (allow_cpu_fallback)
    context.log.info(f"{len(keys)} segment(s): {len(units)} files of pages to score on {'GPU' if resources else 'CPU'}")

    def progress(result, done, total):
        s = PageScoreStats.from_dict(result.value)
        context.log.info(
            f"file {done}/{total} {s.segment}/{s.shard:05d}: {s.pages} pages, kept {s.pages_kept} "
            f"({s.pages_per_s} pages/s, {s.tokens_per_s} tokens/s)"
        )

    started = time.perf_counter()
    ran = [
        r.value
        for r in compute.run_units(score_page_file, units, on_result=progress, resources=resources, settings=settings)
    ]
    seconds = time.perf_counter() - started
    per_key = {key: describe(root, key) for key in keys}
    for key in keys if len(keys) > 1 else []:
        context.log_event(dg.AssetObservation(context.asset_key, partition=key, metadata=per_key[key]))
    totals = summarize([s for key in keys for s in shard_summaries(root, key)])
    ran_now = summarize(ran)
    return dg.MaterializeResult(
        metadata={
            **(
                per_key[keys[0]]
                if len(keys) == 1
                else {"segments": len(keys), "pages_scored": totals.pages_scored, "pages_kept": totals.pages_kept}
            ),
            "pages_per_s": rate(ran_now.pages, seconds),
            "tokens_per_s": rate(ran_now.tokens, seconds),
            "files_scored_now": len(ran),
            "seconds": round(seconds, 2),
            "threshold": settings.threshold,
        }
    )


def describe(root: DataRoot, key: str) -> dict:
    """What a person asks of a segment's page scores: pages scored and kept, per language, speed, a sample."""
    summaries = shard_summaries(root, key)
    totals = summarize(summaries)
    per_language = [
        {"language": language, "pages": n, "kept": totals.kept[language], "median_bin": _median_bin(totals, language)}
        for language, n in totals.scored.most_common()
    ]
    sample = kept_table(root, key).slice(0, 10).to_pylist()
    return {
        **stats_metadata(totals),
        "per_language": rows_table(per_language, ["language", "pages", "kept", "median_bin"], limit=50),
        "files": len(summaries),
        "path": dg.MetadataValue.path(redact_url(stage_folder(root, PAGE_SCORES, key))),
        "sample_kept": rows_table(
            ({"score": round(r["score"], 2), "url": r.get("url"), "text": (r.get("text") or "")[:120]} for r in sample),
            ["score", "url", "text"],
        ),
    }


def _median_bin(totals: PageScoreStats, language: str) -> str:
    """The SCORE_EDGES bin holding the language's median page: a glance at where its pages sit."""
    counts = totals.histograms.get(language, [])
    total, seen = sum(counts), 0
    for i, count in enumerate(counts):
        seen += count
        if total and seen * 2 >= total:
            return f"[{SCORE_EDGES[i]:.1f}, {SCORE_EDGES[i + 1]:.1f})"
    return "n/a"
