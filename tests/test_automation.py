"""Automation: crawl discovery in batches, the segment schedule and its in-flight cap, stages following upstream."""

import functools
import http.server
import json
import threading

import dagster as dg
import pytest

from cah_assets.automation import crawl_discovery_sensor, segment_schedule
from cah_assets.checks import IMAGE_SHARDS_CHECKS, candidates_checks, clip_pairs_checks, image_shards_checks
from cah_assets.definitions import build_definitions, defs
from cah_assets.deployment import Deployment
from cah_assets.partitions import segments
from cah_assets.policies import (
    FOLLOWS_UPSTREAM,
    GPU_POOL,
    MAX_IN_FLIGHT,
    MAX_REQUESTS_PER_TICK,
    SEGMENTS_PER_RUN,
    CappedCondition,
)
from cah_assets.resources import ClipScorer, CommonCrawl, CrawlDiscovery, ImageDownloader, SegmentFlow, StorageResource
from cah_assets.stages.candidates import candidates
from cah_assets.stages.clip_pairs import clip_pairs
from cah_assets.stages.image_shards import image_shards
from cah_resources.candidates.stage import output_paths
from cah_resources.contract import STAGES, stage_assets
from cah_resources.crawl.segments import load_registration, register_crawl
from cah_resources.samples.local_web import LocalImageWeb
from cah_resources.samples.sample_crawl import generate_crawl

OLD, NEW = "CC-MAIN-2024-10", "CC-MAIN-2024-18"


@pytest.fixture(scope="module")
def crawls(tmp_path_factory):
    """A local Common Crawl with two small crawls, and a collinfo.json that lists them among others."""
    root = tmp_path_factory.mktemp("commoncrawl")
    generate_crawl(str(root), crawl=OLD, wat_files=3, pages_per_file=6, seed=1)
    generate_crawl(str(root), crawl=NEW, wat_files=2, pages_per_file=6, seed=2)
    listing = [
        {"id": i, "name": i, "cdx-api": f"https://index.commoncrawl.org/{i}-index"}
        for i in (NEW, OLD, "CC-MAIN-2023-50", "CC-MAIN-2008-2009", "CC-NEWS-2024-01")
    ]
    (root / "collinfo.json").write_text(json.dumps(listing))
    return root


@pytest.fixture(scope="module")
def crawl_list_server(crawls):
    """The crawl folder served over HTTP on loopback (the test's stand-in for index.commoncrawl.org)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(crawls))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the discovery sensor -------------------------------------------------------------------------


def _discovery_tick(instance, cursor, resources):
    """One sensor tick, with its partition requests applied to the instance as the daemon does."""
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        data = crawl_discovery_sensor.evaluate_tick(context)
    for request in data.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return data


def _discovery_resources(crawls, crawl_list, data_root, **discovery):
    return {
        "crawl_discovery": CrawlDiscovery(crawl_list=crawl_list, **discovery),
        "common_crawl": CommonCrawl(base_url=str(crawls)),
        "storage": StorageResource(root=data_root.url),
    }


def test_discovery_adds_the_newest_crawls_segments_in_batches_with_a_cursor(crawls, crawl_list_server, data_root):
    instance = dg.DagsterInstance.ephemeral()
    resources = _discovery_resources(
        crawls, f"{crawl_list_server}/collinfo.json", data_root, newest=2, files_per_segment=1, segments_per_tick=2
    )
    added_per_tick, cursor = [], None
    for _ in range(4):
        before = set(instance.get_dynamic_partitions(segments.name))
        data = _discovery_tick(instance, cursor, resources)
        cursor = data.cursor
        added_per_tick.append(sorted(set(instance.get_dynamic_partitions(segments.name)) - before))
    assert added_per_tick == [
        [f"{NEW}_00000", f"{NEW}_00001"],
        [f"{OLD}_00000", f"{OLD}_00001"],
        [f"{OLD}_00002"],
        [],
    ]
    assert json.loads(cursor) == {NEW: 2, OLD: 3}
    assert data.skip_message  # the quiet tick says why it added nothing
    assert load_registration(data_root, NEW).files_per_segment == 1  # keys mean fixed files from now on


def test_discovery_from_a_local_crawl_list_adds_nothing_twice(crawls, data_root):
    instance = dg.DagsterInstance.ephemeral()
    register_crawl(CommonCrawl(base_url=str(crawls)).source(), data_root, NEW, 1)
    instance.add_dynamic_partitions(segments.name, [f"{NEW}_00000"])  # registered by hand before
    resources = _discovery_resources(crawls, str(crawls / "collinfo.json"), data_root, newest=1)
    data = _discovery_tick(instance, None, resources)
    assert [list(r.partition_keys) for r in data.dynamic_partitions_requests] == [[f"{NEW}_00001"]]
    assert instance.get_dynamic_partitions(segments.name) == [f"{NEW}_00000", f"{NEW}_00001"]


def test_an_unreachable_crawl_list_skips_the_tick_and_keeps_the_cursor(crawls, data_root):
    instance = dg.DagsterInstance.ephemeral()
    resources = _discovery_resources(crawls, f"http://127.0.0.1:{_unused_port()}/collinfo.json", data_root)
    data = _discovery_tick(instance, json.dumps({NEW: 1}), resources)
    assert "is unreachable" in data.skip_message
    assert instance.get_dynamic_partitions(segments.name) == []


def test_a_listed_crawl_without_wat_files_yet_does_not_stop_the_others(crawls, data_root, tmp_path):
    listing = [{"id": "CC-MAIN-2024-22"}, {"id": NEW}]  # announced, but its wat.paths.gz is not published
    (tmp_path / "collinfo.json").write_text(json.dumps(listing))
    instance = dg.DagsterInstance.ephemeral()
    resources = _discovery_resources(crawls, str(tmp_path / "collinfo.json"), data_root, newest=2, files_per_segment=1)
    data = _discovery_tick(instance, None, resources)
    assert instance.get_dynamic_partitions(segments.name) == [f"{NEW}_00000", f"{NEW}_00001"]
    assert "CC-MAIN-2024-22" not in json.loads(data.cursor)


# --- the segment schedule -------------------------------------------------------------------------


@pytest.fixture
def registered(crawls, data_root):
    """Both crawls registered at one WAT file per segment: five segments, none started."""
    with dg.instance_for_test() as instance:
        for crawl in (OLD, NEW):
            registration = register_crawl(CommonCrawl(base_url=str(crawls)).source(), data_root, crawl, 1)
            instance.add_dynamic_partitions(segments.name, registration.keys())
        yield instance


def _schedule_tick(instance, max_in_flight=MAX_IN_FLIGHT, **flow):
    # As a context manager, so the instance the context opens is closed with it.
    with dg.build_schedule_context(
        instance=instance, resources={"segment_flow": SegmentFlow(**flow)}, repository_def=defs.get_repository_def()
    ) as context:
        return segment_schedule(max_in_flight=max_in_flight).evaluate_tick(context)


def _queue_run(instance, key, asset="candidates"):
    """A run of ``asset`` for ``key`` that is created and not finished: what a launch leaves behind."""
    job = defs.get_implicit_global_asset_job_def()
    return instance.create_run_for_job(
        job,
        asset_selection=frozenset(dg.AssetKey(name) for name in stage_assets(asset)),  # its step's assets, all
        tags={"dagster/partition": key},
        status=dg.DagsterRunStatus.STARTING,
    )


def test_the_schedule_requests_the_next_segments_newest_crawl_first(registered):
    data = _schedule_tick(registered, segments_per_tick=3, max_in_flight=10)
    assert [r.partition_key for r in data.run_requests] == [f"{NEW}_00000", f"{NEW}_00001", f"{OLD}_00000"]
    assert all(r.tags["cah/trigger"] == "schedule" for r in data.run_requests)
    only_old = _schedule_tick(registered, crawls=[OLD], segments_per_tick=2, max_in_flight=10)
    assert [r.partition_key for r in only_old.run_requests] == [f"{OLD}_00000", f"{OLD}_00001"]


def test_the_schedule_ticks_on_cah_segment_cron_read_when_the_definitions_are_built(monkeypatch):
    assert defs.get_schedule_def("segment_schedule").cron_schedule == "*/10 * * * *"
    monkeypatch.setenv("CAH_SEGMENT_CRON", "5 * * * *")  # after import: only a build can see it
    built = build_definitions(Deployment())
    assert built.get_schedule_def("segment_schedule").cron_schedule == "5 * * * *"


def test_the_schedule_never_lets_more_than_the_cap_in_flight(registered):
    _queue_run(registered, f"{NEW}_00000")
    _queue_run(registered, f"{NEW}_00001")
    data = _schedule_tick(registered, segments_per_tick=4, max_in_flight=3)
    assert [r.partition_key for r in data.run_requests] == [f"{OLD}_00000"]
    full = _schedule_tick(registered, segments_per_tick=4, max_in_flight=2)
    assert full.run_requests == [] and "2 segments in flight (cap 2)" in full.skip_message


def test_the_schedule_skips_done_and_failed_segments(registered, crawls, data_root, local_compute):
    resources = {
        **defs.resources,
        "compute": local_compute,
        "common_crawl": CommonCrawl(base_url=str(crawls)),
        "storage": StorageResource(root=data_root.url),
    }
    assert dg.materialize([candidates], partition_key=f"{NEW}_00000", instance=registered, resources=resources).success
    registered.report_run_failed(_queue_run(registered, f"{NEW}_00001"))  # failed after its retries
    data = _schedule_tick(registered, segments_per_tick=5, max_in_flight=10)
    assert [r.partition_key for r in data.run_requests] == [f"{OLD}_00000", f"{OLD}_00001", f"{OLD}_00002"]


# --- capped automation ----------------------------------------------------------------------------


def test_a_capped_condition_requests_a_few_per_tick_and_never_exceeds_the_in_flight_cap(registered):
    capped = CappedCondition(
        dg.AutomationCondition.missing() & ~dg.AutomationCondition.in_progress(), per_tick=2, in_flight=3
    )
    asset = candidates.map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=capped))
    requested, cursor = [], None
    for _ in range(3):
        result = dg.evaluate_automation_conditions(
            defs=dg.Definitions(assets=[asset], resources=defs.resources), instance=registered, cursor=cursor
        )
        cursor = result.cursor
        keys = sorted(result.get_requested_partitions(dg.AssetKey("candidates")))
        requested.append(keys)
        for key in keys:
            _queue_run(registered, key)  # what the daemon does with a request
    assert requested == [[f"{OLD}_00000", f"{OLD}_00001"], [f"{OLD}_00002"], []]


@pytest.fixture
def seven_segments(tmp_path, data_root):
    """A crawl of seven WAT files registered one file per segment, on a persistent test instance."""
    crawl = generate_crawl(str(tmp_path / "crawl"), crawl="CC-MAIN-2024-33", wat_files=7, pages_per_file=6, seed=3)
    with dg.instance_for_test() as instance:
        registration = register_crawl(CommonCrawl(base_url=crawl.root).source(), data_root, crawl.crawl, 1)
        instance.add_dynamic_partitions(segments.name, registration.keys())
        yield instance, crawl, registration.keys()


def _requested_checks(result, asset: str) -> dict[str, int]:
    return {
        r.key.name: r.true_subset.size
        for r in result.results
        if isinstance(r.key, dg.AssetCheckKey) and r.key.asset_key == dg.AssetKey(asset)
    }


def test_reactivated_automation_follows_good_segments_a_few_per_tick_and_holds_back_a_bad_one(
    seven_segments, data_root, local_compute
):
    instance, crawl, keys = seven_segments
    resources = {
        **defs.resources,
        "compute": local_compute,
        "common_crawl": CommonCrawl(base_url=crawl.root),
        "storage": StorageResource(root=data_root.url),
    }
    cursor = dg.evaluate_automation_conditions(
        defs=defs, instance=instance
    ).cursor  # the sensor's last tick before its pause
    # While automation is paused, a backfill makes every segment's candidates; one of them turns out bad.
    assert dg.materialize(
        [candidates, candidates_checks],
        instance=instance,
        resources=resources,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
    ).success
    bad = keys[2]
    table_path = output_paths(data_root, bad)[0]
    table = data_root.read_parquet(table_path)
    data_root.write_parquet(table_path, table.append_column("extra", table.column("uid")))
    rechecked = dg.materialize(
        [candidates, candidates_checks],
        instance=instance,
        resources=resources,
        tags={"dagster/partition": bad},
        selection=dg.AssetSelection.checks_for_assets(candidates),
        raise_on_error=False,
    )
    assert not rechecked.success

    requested = []
    for _ in range(3):
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor = result.cursor
        keys_now = sorted(result.get_requested_partitions(dg.AssetKey("image_shards")))
        requested.append(keys_now)
        # Each check of image_shards is requested with it, so it runs in the same run.
        assert _requested_checks(result, "image_shards") == {name: len(keys_now) for name in IMAGE_SHARDS_CHECKS}
        for key in keys_now:
            _queue_run(instance, key, "image_shards")
    good = [k for k in keys if k != bad]
    assert requested == [good[:MAX_REQUESTS_PER_TICK], good[MAX_REQUESTS_PER_TICK:], []]
    assert all(len(tick) <= MAX_REQUESTS_PER_TICK for tick in requested)


# --- the policies as the code location has them -------------------------------------------------


def _stage(name: str) -> dg.AssetsDefinition:
    return defs.resolve_assets_def(name)


def test_network_stages_retry_more_than_the_gpu_stage_with_backoff_and_jitter():
    policies = {name: _stage(name).op.retry_policy for name in STAGES}
    assert (
        policies["image_shards"].max_retries
        >= policies["candidates"].max_retries
        > policies["clip_pairs"].max_retries
        >= 1
    )
    for name in ("candidates", "image_shards"):
        assert (policies[name].backoff, policies[name].jitter) == (dg.Backoff.EXPONENTIAL, dg.Jitter.PLUS_MINUS)


def test_every_stage_backfills_several_segments_per_run_and_clip_pairs_takes_the_gpu_pool():
    for name in STAGES:
        assert _stage(name).backfill_policy == dg.BackfillPolicy.multi_run(SEGMENTS_PER_RUN)
    assert _stage("clip_pairs").op.pool == GPU_POOL
    assert _stage("candidates").op.pool is None and _stage("image_shards").op.pool is None


def test_later_stages_follow_upstream_and_the_automation_sensor_can_evaluate_them():
    for name in ("image_shards", "clip_pairs"):
        assert _stage(name).automation_conditions_by_key[dg.AssetKey(name)] is FOLLOWS_UPSTREAM
    sensor = defs.resolve_sensor_def("segment_flow_sensor")
    assert sensor.asset_selection.resolve(defs.resolve_asset_graph()) >= {
        dg.AssetKey("image_shards"),
        dg.AssetKey("clip_pairs"),
    }
    # the schedule feeds it
    assert _stage("candidates").automation_conditions_by_key.get(dg.AssetKey("candidates")) is None


# --- a segment without a person -------------------------------------------------------------------


@pytest.fixture(scope="module")
def web():
    with LocalImageWeb(n_hosts=4) as fake_web:
        yield fake_web


def test_a_segment_flows_through_all_three_stages_without_a_person(web, tmp_path, data_root, local_compute):
    crawl = generate_crawl(
        str(tmp_path / "crawl"),
        crawl="CC-MAIN-2024-38",
        wat_files=1,
        pages_per_file=10,
        seed=4,
        image_base=web.origins[:2],
        page_base=web.origins[2:],
    )
    (key,) = register_crawl(CommonCrawl(base_url=crawl.root).source(), data_root, crawl.crawl, 1).keys()
    resources = {
        **defs.resources,
        "compute": local_compute,
        "common_crawl": CommonCrawl(base_url=crawl.root),
        "storage": StorageResource(root=data_root.url),
        "image_downloader": ImageDownloader(
            allowed_networks=["127.0.0.0/8"],
            connect_timeout=10,
            read_timeout=10,
            total_timeout=30,
            shard_size=20,
            image_size=64,
        ),
        "clip_scorer": ClipScorer.tiny(batch_size=8, decode_workers=1),
    }
    everything = [candidates, image_shards, clip_pairs, candidates_checks, image_shards_checks, clip_pairs_checks]

    def launch(stages: list[str]) -> list[str]:
        """What the daemon does with a request: one run of the segment's requested stages and their checks."""
        result = dg.materialize(
            everything,
            instance=instance,
            resources=resources,
            partition_key=key,
            selection=dg.AssetSelection.assets(*stages).required_multi_asset_neighbors(),
        )
        assert result.success
        return [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(segments.name, [key])
        cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor
        scheduled = _schedule_tick(instance, segments_per_tick=2, max_in_flight=4).run_requests
        assert [r.partition_key for r in scheduled] == [key]
        launch(["candidates"])
        followed, steps = [], []
        for _ in range(2):
            result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            cursor = result.cursor
            stages = [s for s in STAGES if key in result.get_requested_partitions(dg.AssetKey(s))]
            followed.append(stages)
            if stages:
                steps = launch(stages)
        # Both later stages come in one run, where image_shards' blocking checks stand between them.
        assert followed == [["image_shards", "clip_pairs"], []]
        assert steps == ["image_shards", "image_shards_checks", "clip_pairs", "clip_pairs_checks"]
        status = {s: instance.get_status_by_partition(dg.AssetKey(s), [key], segments)[key] for s in STAGES}
        assert set(status.values()) == {dg.AssetPartitionStatus.MATERIALIZED}
        assert _schedule_tick(instance, segments_per_tick=2, max_in_flight=4).run_requests == []  # nothing left to feed
