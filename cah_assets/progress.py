"""What `cah` prints while it runs the pipeline: one line per stage per segment, and a progress bar with an ETA."""

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import dagster as dg

from cah_resources.contract import (
    CANDIDATES,
    CLIP_PAIRS,
    IMAGE_SHARDS,
    PAGE_SCORES,
    PAGES,
    RELEASE,
    SUCCESSES,
    CandidatesStats,
    ClipStats,
    PageScoreStats,
    PagesStats,
    ShardStats,
)

# Runs started by `cah` log to the instance (the UI's run view) at full detail; the terminal shows only
# errors from Dagster, and `cah`'s own lines.
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def quiet_console() -> None:
    """Keep the terminal to `cah`'s own lines while runs go on."""
    # Dask logs a worker's shutdown at WARNING ("still alive after 4 s, killing") when a run's local
    # cluster stops; that is normal there and nothing a user can act on.
    logging.getLogger("distributed").setLevel(logging.ERROR)


# What a stage's line shows: (metadata key, label) counts, then the rate key and its unit.
SUMMARY = {
    CANDIDATES: (
        tuple(zip(CandidatesStats.HEADLINE, ("records", "candidates"), strict=True)),
        "records_per_s",
        "records/s",
    ),
    IMAGE_SHARDS: (tuple(zip(ShardStats.HEADLINE, ("URLs", SUCCESSES), strict=True)), "images_per_s", "images/s"),
    CLIP_PAIRS: (tuple(zip(ClipStats.HEADLINE, ("pairs scored", "kept"), strict=True)), "pairs_per_s", "pairs/s"),
    PAGES: (tuple(zip(PagesStats.HEADLINE, ("HTML pages", "pages"), strict=True)), "pages_per_s", "pages/s"),
    PAGE_SCORES: (tuple(zip(PageScoreStats.HEADLINE, ("pages scored", "kept"), strict=True)), "pages_per_s", "pages/s"),
    RELEASE: ((("pairs", "pairs"),), "", ""),
}

# A WARC segment's candidates come from HTML pages, not WAT metadata records: where a line's count is 0 and
# its stand-in is not, the line shows the stand-in, and the rate (counted from the same) in its unit.
STAND_INS = {CandidatesStats.HEADLINE[0]: (PagesStats.HEADLINE[0], "HTML pages", "pages/s")}

# The bar a stage keeps by, added to its line's last count: "0 kept" reads as a verdict, not a fault.
KEPT_BY = {PAGE_SCORES: ("threshold", "score >= {:g}")}


# The log line a stage step writes with its counts: `cah dev`'s terminal shows these beside warnings and errors.
SUMMARY_MARK = "summary: "


def meta_value(meta: Mapping[str, Any], key: str) -> Any:
    """A metadata entry's plain value (entries are values or Dagster's metadata values); None if absent."""
    return getattr(meta[key], "value", meta[key]) if key in meta else None


def summary_line(stage: str, meta: Mapping[str, Any]) -> str:
    """A stage's counts, rate and seconds from its materialization's metadata (values or Dagster's metadata values)."""

    def value(key: str) -> Any:
        return meta_value(meta, key)

    counts, rate_key, unit = SUMMARY.get(stage, ((), "", ""))
    shown = []
    for counted, counted_as in counts:
        key, label = counted, counted_as
        stand_in = STAND_INS.get(counted)
        if stand_in is not None and not meta_value(meta, counted) and meta_value(meta, stand_in[0]):
            key, label, unit = stand_in
        if key in meta:
            shown.append(f"{value(key):,} {label}")
    kept_by = KEPT_BY.get(stage)
    if shown and kept_by is not None and meta_value(meta, kept_by[0]) is not None:
        shown[-1] += f" ({kept_by[1].format(value(kept_by[0]))})"
    if rate_key in meta:
        shown.append(f"{value(rate_key):,.0f} {unit}")
    if "seconds" in meta:
        shown.append(f"{value('seconds'):.1f} s")
    return f"{stage:<12} " + ", ".join(shown)


def _checks_line(result: dg.ExecuteInProcessResult | dg.JobExecutionResult, stage: str) -> str:
    evaluations = [e for e in result.get_asset_check_evaluations() if e.asset_key.to_user_string() == stage]
    if not evaluations:
        return ""
    failed = [e.check_name for e in evaluations if not e.passed]
    passed = len(evaluations) - len(failed)
    return f"; checks {passed}/{len(evaluations)} passed" + (f" (failed: {', '.join(failed)})" if failed else "")


def run_summary(result: dg.ExecuteInProcessResult | dg.JobExecutionResult, stages: tuple[str, ...]) -> list[str]:
    """One line per stage of the run: its counts, rate, seconds and checks; or that it did not materialize."""
    from cah_assets.policies import was_stopped

    events = result.get_asset_materialization_events()
    materialized = {e.materialization.asset_key.to_user_string(): e.materialization.metadata for e in events}
    # A stopped run's stages did not fail: the stop line that follows says where it stopped and how to go on.
    why = "stopped on request" if was_stopped(result) else "see its logs in the UI"
    lines = []
    for stage in stages:
        meta = materialized.get(stage)
        if meta is None:
            lines.append(f"{stage:<12} not materialized (run {result.run_id[:8]}: {why})")
            continue
        lines.append(summary_line(stage, meta) + _checks_line(result, stage))
    return lines


@contextlib.contextmanager
def stage_progress(total: int, label: str, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """A rich progress bar (done/total, elapsed, ETA) on the terminal; yields the function that advances it.

    Output to a file or a pipe gets no bar (and no blank line where it would close): only the lines.
    """
    from rich.console import Console

    if not enabled or not Console().is_terminal:
        yield lambda: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    # transient: the bar disappears when done, leaving the one-line-per-stage summary printed above it
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)
