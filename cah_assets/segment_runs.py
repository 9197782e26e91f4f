"""Runs of segments that do not exist: refused when submitted, in one line naming the crawl's segments.

Dagster accepts a run for any partition key and fails it only at its first step, with a stack
trace. The instance's run coordinator (dagster.yaml: ``run_coordinator``) asks first: a run whose
segment, or whose range's ends, are not registered fails at submission, before any step starts.
"""

from collections.abc import Mapping

import dagster as dg

from cah_assets.partitions import SEGMENTS
from cah_resources.crawl.segments import parse_segment_key

PARTITION_TAG = "dagster/partition"
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


class UnknownSegment(ValueError):
    """A run asked for a segment that is not registered (its message is the one line a user sees)."""


def _crawl_of(key: str) -> str:
    try:
        return parse_segment_key(key)[0]
    except ValueError:
        return ""


def segment_problem(key: str, known: list[str]) -> str:
    """Why ``key`` cannot run, naming its crawl's registered range (or the registered crawls)."""
    crawl = _crawl_of(key)
    same_crawl = [k for k in known if _crawl_of(k) == crawl] if crawl else []
    if same_crawl:
        return f"{key} is not a segment of {crawl}: its segments are {same_crawl[0]}..{same_crawl[-1]}"
    crawls = sorted({_crawl_of(k) for k in known} - {""})
    registered = f"registered crawls: {', '.join(crawls)}" if crawls else "no crawl is registered yet"
    return f"{key} is not a registered segment ({registered}); `cah register <crawl>` first"


def unknown_segment_message(instance: dg.DagsterInstance, tags: Mapping[str, str]) -> str:
    """The one-line reason a run with ``tags`` names a segment that is not registered; empty when all are."""
    keys = [tags[tag] for tag in (PARTITION_TAG, *RANGE_TAGS) if tags.get(tag)]
    if not keys:
        return ""
    known = list(instance.get_dynamic_partitions(SEGMENTS))
    registered = set(known)
    missing = next((key for key in keys if key not in registered), None)
    return "" if missing is None else segment_problem(missing, known)


class SegmentRunCoordinator(dg.QueuedRunCoordinator):
    """Dagster's queued run coordinator, which first fails a run of an unknown segment with one line."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        problem = unknown_segment_message(self._instance, run.tags)
        if not problem:
            return super().submit_run(context)
        self._instance.report_run_failed(run, message=f"{run.job_name}: {problem}")
        failed = self._instance.get_run_by_id(run.run_id)
        assert failed is not None
        return failed
