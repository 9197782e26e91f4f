"""What runs the pipeline without a person: crawl discovery, the segment schedule, and stages following upstream."""

import json
import re
import warnings

import aiohttp
import dagster as dg
import fsspec

from cah_assets.partitions import segments
from cah_assets.policies import MAX_IN_FLIGHT
from cah_assets.resources import CommonCrawl, CrawlDiscovery, SegmentFlow, StorageResource
from cah_resources.contract import STAGES
from cah_resources.crawl.common_crawl import USER_AGENT
from cah_resources.crawl.segments import parse_segment_key, register_crawl
from cah_resources.errors import one_line

TRIGGER_TAG = "cah/trigger"


class CrawlListError(ValueError):
    """The crawl list could not be read or is not Common Crawl's collinfo.json format."""


def read_crawl_list(location: str, timeout_s: float = 30.0) -> list[str]:
    """Crawl ids from a collinfo.json-style list (``[{"id": "CC-MAIN-2024-10", ...}, ...]``) at a URL or path."""
    web = location.startswith(("http://", "https://"))
    options = (
        {
            "headers": {"User-Agent": USER_AGENT, "Accept": "application/json"},
            "client_kwargs": dict(timeout=aiohttp.ClientTimeout(total=timeout_s)),
            "block_size": 0,  # one streamed GET, no HEAD or range requests
        }
        if web
        else {}
    )
    try:
        with fsspec.open(location, "rb", **options) as handle:
            body = handle.read()
    except (OSError, TimeoutError, aiohttp.ClientError) as error:
        # fsspec's HTTP file system raises FileNotFoundError for an HTTP error and an unreachable host
        # alike; its cause tells them apart.
        cause = error.__cause__ or error
        if isinstance(cause, aiohttp.ClientResponseError):
            raise CrawlListError(f"crawl list {location} answered HTTP {cause.status}") from None
        raise CrawlListError(f"crawl list {location} is unreachable: {one_line(cause)}") from None
    try:
        entries = json.loads(body)
        ids = [entry["id"] for entry in entries]
    except (ValueError, TypeError, KeyError) as error:
        raise CrawlListError(
            f'crawl list {location} is not a JSON list of {{"id": ...}} objects ({one_line(error)})'
        ) from None
    if not all(isinstance(i, str) for i in ids):
        raise CrawlListError(f"crawl list {location} has non-string ids")
    return ids


def choose_crawls(ids: list[str], include: str, newest: int) -> list[str]:
    """The ``newest`` crawls whose id matches ``include``, newest first (crawl ids sort by date)."""
    pattern = re.compile(include)
    return sorted({i for i in ids if pattern.search(i)}, reverse=True)[: max(newest, 0)]


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
    budget, new_keys, notes = crawl_discovery.segments_per_tick, [], []
    known = set(context.instance.get_dynamic_partitions(segments.name))
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


def next_segments(
    keys: list[str], status: dict[str, dict], active: list[str], count: int, max_in_flight: int
) -> tuple[list[str], int]:
    """Up to ``count`` never-started segments of the active crawls, leaving at most ``max_in_flight`` in flight.

    Returns them and how many segments are in flight now. A segment whose first stage failed is not
    picked again: a person retries it (its run failed after every retry).
    """
    in_flight = {k for by_key in status.values() for k, s in by_key.items() if s == dg.AssetPartitionStatus.IN_PROGRESS}
    first = status[STAGES[0]]
    by_crawl: dict[str, list[tuple[int, str]]] = {}
    for key in keys:
        crawl, index = parse_segment_key(key)
        if first.get(key) is None and key not in in_flight:
            by_crawl.setdefault(crawl, []).append((index, key))
    order = active or sorted(by_crawl, reverse=True)
    room = max(0, min(count, max_in_flight - len(in_flight)))
    pending = [key for crawl in order for _, key in sorted(by_crawl.get(crawl, []))]
    return pending[:room], len(in_flight)


SEGMENT_CRON = "*/10 * * * *"  # the schedule's default; CAH_SEGMENT_CRON replaces it when the definitions are built


def segment_schedule(cron: str = SEGMENT_CRON, max_in_flight: int = MAX_IN_FLIGHT) -> dg.ScheduleDefinition:
    """The schedule that feeds segments into the pipeline, ticking on ``cron``, keeping ``max_in_flight`` at most."""

    @dg.schedule(
        name="segment_schedule",
        cron_schedule=cron,
        target=dg.AssetSelection.assets(STAGES[0]),
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Requests the next pending segments of the active crawls, keeping those in flight under a cap.",
    )
    def _segment_schedule(
        context: dg.ScheduleEvaluationContext, segment_flow: SegmentFlow
    ) -> list[dg.RunRequest] | dg.SkipReason:
        keys = context.instance.get_dynamic_partitions(segments.name)
        chosen, in_flight = next_segments(
            keys,
            pipeline_status(context.instance, keys, list(STAGES)),
            segment_flow.crawls,
            segment_flow.segments_per_tick,
            max_in_flight,
        )
        if not chosen:
            return dg.SkipReason(f"{in_flight} segments in flight (cap {max_in_flight}); none pending and allowed")
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
