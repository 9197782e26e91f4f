"""What runs the pipeline without a person: crawl discovery, the segment schedule, and stages following upstream."""

import json
import warnings

import dagster as dg

from cah_assets.partitions import SEGMENTS, segments
from cah_assets.policies import MAX_IN_FLIGHT
from cah_assets.resources import CommonCrawl, CrawlDiscovery, SegmentFlow, StorageResource
from cah_resources.contract import STAGES, stage_assets
from cah_resources.crawl.crawl_list import CrawlListError, choose_crawls, read_crawl_list
from cah_resources.crawl.feed import next_segments
from cah_resources.crawl.segments import register_crawl

TRIGGER_TAG = "cah/trigger"


def _load_cursor(raw: str | None) -> dict[str, int]:
    try:
        cursor = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {k: int(v) for k, v in cursor.items()} if isinstance(cursor, dict) else {}


@dg.sensor(
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Reads Common Crawl's crawl list and adds the segments of new crawls as partitions, in batches.",
)
def crawl_discovery_sensor(
    context: dg.SensorEvaluationContext,
    crawl_discovery: CrawlDiscovery,
    common_crawl: CommonCrawl,
    storage: StorageResource,
) -> dg.SensorResult | dg.SkipReason:
    # The cursor maps each crawl to how many of its segments are added. A crawl's WAT listing is read
    # once, when it is registered; later ticks read its recorded plan back from the data root.
    added = _load_cursor(context.cursor)
    try:
        crawls = choose_crawls(
            read_crawl_list(crawl_discovery.crawl_list), crawl_discovery.include, crawl_discovery.newest
        )
    except CrawlListError as error:
        return dg.SkipReason(str(error))
    budget, new_keys, notes = crawl_discovery.segments_per_tick, list[str](), list[str]()
    known = set(context.instance.get_dynamic_partitions(SEGMENTS))
    for crawl in crawls:
        if budget <= 0:
            break
        try:
            registration = register_crawl(
                common_crawl.source(), storage.data_root(), crawl, crawl_discovery.files_per_segment or None
            )
        except (ValueError, KeyError, OSError) as error:
            notes.append(f"{crawl}: {error}")
            continue
        keys = registration.keys()
        start = added.get(crawl, 0)
        batch = keys[start : start + budget]
        new_keys.extend(k for k in batch if k not in known)
        added[crawl] = start + len(batch)
        budget -= len(batch)
        if batch:
            notes.append(f"{crawl}: segments {start}..{start + len(batch) - 1} of {len(keys)}")
    for note in notes:
        context.log.info(note)
    cursor = json.dumps(added, sort_keys=True)
    if not new_keys:
        return dg.SensorResult(
            cursor=cursor, skip_reason="; ".join(notes) or f"no new segments in {crawls or 'no matching crawl'}"
        )
    return dg.SensorResult(dynamic_partitions_requests=[segments.build_add_request(new_keys)], cursor=cursor)


def pipeline_status(
    instance: dg.DagsterInstance, keys: list[str], stages: list[str]
) -> dict[str, dict[str, dg.AssetPartitionStatus | None]]:
    """Each stage's status per segment key: MATERIALIZED, FAILED, IN_PROGRESS (queued or running), or None."""
    return {stage: dict(instance.get_status_by_partition(dg.AssetKey(stage), keys, segments) or {}) for stage in stages}


def in_flight(status: dict[str, dict[str, dg.AssetPartitionStatus | None]]) -> set[str]:
    """Segments with any of the given stages queued or running."""
    return {key for by_key in status.values() for key, s in by_key.items() if s == dg.AssetPartitionStatus.IN_PROGRESS}


SEGMENT_CRON = "*/10 * * * *"  # the schedule's default; CAH_SEGMENT_CRON replaces it when the definitions are built


def segment_schedule(cron: str = SEGMENT_CRON, max_in_flight: int = MAX_IN_FLIGHT) -> dg.ScheduleDefinition:
    """The schedule that feeds segments into the pipeline, ticking on ``cron``, keeping ``max_in_flight`` at most."""

    @dg.schedule(
        name="segment_schedule",
        cron_schedule=cron,
        target=dg.AssetSelection.assets(*stage_assets(STAGES[0])),
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Requests the next pending segments of the active crawls, keeping those in flight under a cap.",
    )
    def _segment_schedule(
        context: dg.ScheduleEvaluationContext, segment_flow: SegmentFlow
    ) -> list[dg.RunRequest] | dg.SkipReason:
        keys = list(context.instance.get_dynamic_partitions(SEGMENTS))
        status = pipeline_status(context.instance, keys, list(STAGES))
        chosen, running = next_segments(
            keys,
            started={key for key, s in status[STAGES[0]].items() if s is not None},
            in_flight=in_flight(status),
            active=segment_flow.crawls,
            count=segment_flow.segments_per_tick,
            max_in_flight=max_in_flight,
        )
        if not chosen:
            return dg.SkipReason(f"{running} segments in flight (cap {max_in_flight}); none pending and allowed")
        tags = {TRIGGER_TAG: "schedule"}
        # A run key per segment: a tick the daemon retries after a crash does not launch a segment twice.
        return [dg.RunRequest(run_key=key, partition_key=key, tags=tags) for key in chosen]

    return _segment_schedule


# Evaluating in the code server is a Dagster beta; it is the only way to run a Python condition (our cap).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    segment_flow_sensor = dg.AutomationConditionSensorDefinition(
        "segment_flow_sensor",
        target=dg.AssetSelection.all(),
        use_user_code_server=True,
        # One run per segment: stages of one segment share a run, and the cap bounds the runs per tick.
        emit_backfills=False,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        run_tags={TRIGGER_TAG: "automation"},
        description=(
            "Requests image_shards and clip_pairs of segments whose upstream stage is new and passed its checks."
        ),
    )
