"""The `page_scores` stage: a segment's pages → every page scored by a text classifier and kept or not."""

import dagster as dg

from cah_assets.metadata import rate, rows_table, stats_metadata
from cah_assets.policies import PAGE_SCORES_RETRY
from cah_assets.stages.runner import Output, Stage, StageRun, stage_asset
from cah_resources.contract import PAGE_SCORES, PAGES, SCORE_EDGES, PageScoreStats, stage_folder
from cah_resources.page_scores.stage import (
    PageScoresUnit,
    kept_table,
    pending_units,
    score_page_file,
    segment_units,
    shard_summaries,
    summarize,
)
from cah_resources.redaction import redact_url


def files_to_score(run: StageRun, key: str) -> list[PageScoresUnit]:
    # A WARC segment's pages file or a Parquet dataset's files (read where they are); done: one listing of markers.
    units = segment_units(run.root, key)
    return units if run.redo else pending_units(units)


def progress(value: dict, done: int, total: int) -> str:
    s = PageScoreStats.from_dict(value)
    return (
        f"file {done}/{total} {s.segment}/{s.shard:05d}: {s.pages} pages, kept {s.pages_kept} "
        f"({s.pages_per_s} pages/s, {s.tokens_per_s} tokens/s)"
    )


def describe(run: StageRun, key: str) -> dict:
    """What a person asks of a segment's page scores: pages scored and kept, per language, speed, a sample."""
    summaries = shard_summaries(run.root, key)
    totals = summarize(summaries)
    per_language = [
        {"language": language, "pages": n, "kept": totals.kept[language], "median_bin": _median_bin(totals, language)}
        for language, n in totals.scored.most_common()
    ]
    sample = kept_table(run.root, key).slice(0, 10).to_pylist()
    return {
        **stats_metadata(totals),
        "per_language": rows_table(per_language, ["language", "pages", "kept", "median_bin"], limit=50),
        "files": len(summaries),
        "path": dg.MetadataValue.path(redact_url(stage_folder(run.root, PAGE_SCORES, key))),
        "sample_kept": rows_table(
            ({"score": round(r["score"], 2), "url": r.get("url"), "text": (r.get("text") or "")[:120]} for r in sample),
            ["score", "url", "text"],
        ),
    }


def totals(run: StageRun) -> dict:
    both = summarize([s for key in run.keys for s in shard_summaries(run.root, key)])
    return {"segments": len(run.keys), "pages_scored": both.pages_scored, "pages_kept": both.pages_kept}


def speed(run: StageRun) -> dict:
    ran = summarize(run.all_values())
    return {
        "pages_per_s": rate(ran.pages, run.seconds),
        "tokens_per_s": rate(ran.tokens, run.seconds),
        "files_scored_now": len(run.all_values()),
        "seconds": round(run.seconds, 2),
        "threshold": run.settings.threshold,
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


PAGE_SCORES_STAGE = Stage(
    name=PAGE_SCORES,
    outputs=(
        Output(
            PAGE_SCORES,
            "Pages scored by a Hugging Face classifier (FineWeb-Edu's by default) and kept at its threshold.",
            describe,
            totals,
            kinds=frozenset({"pytorch", "parquet", "dask"}),
            deps=(PAGES,),  # a WARC crawl's pages; a Parquet dataset's files are its pages, read where they are
        ),
    ),
    plan=files_to_score,
    passes_redo=True,
    work=score_page_file,
    progress=progress,
    unit_noun="files of pages",
    resources=("text_classifier",),
    settings=lambda resources: resources.text_classifier.settings(),
    run_metadata=speed,
    gpu=True,
    retry_policy=PAGE_SCORES_RETRY,
)
page_scores = stage_asset(PAGE_SCORES_STAGE)
