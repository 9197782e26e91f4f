"""The image_shards asset end to end: a generated crawl on the local image web, candidates → image_shards in Dagster."""

import dagster as dg
import pytest

from cah_assets.definitions import defs
from cah_assets.partitions import segments
from cah_assets.resources import CommonCrawl, ComputeResource, DedupIndexResource, ImageDownloader, StorageResource
from cah_assets.stages.candidates import candidates
from cah_assets.stages.image_shards import image_shards
from cah_resources.candidates.stage import output_paths
from cah_resources.contract import COUNT, SUCCESSES
from cah_resources.crawl.segments import register_crawl
from cah_resources.image_shards.stage import read_segment_markers, segment_folder
from cah_resources.samples.local_web import LocalImageWeb
from cah_resources.samples.sample_crawl import generate_crawl

# Generous timeouts: nothing in a generated crawl hangs, and a busy test machine must not turn slow answers
# into failures.
DOWNLOADER = ImageDownloader(
    allowed_networks=["127.0.0.0/8"],
    connect_timeout=10,
    read_timeout=10,
    total_timeout=30,
    retries=1,
    retry_backoff=0.05,
    shard_size=40,
    image_size=64,
)


@pytest.fixture(scope="module")
def web():
    with LocalImageWeb(n_hosts=5) as fake_web:
        yield fake_web


def registered_crawl(folder, data_root, image_base, page_base, pages_per_file=12, seed=5, files_per_segment=2):
    """A generated crawl linking images on ``image_base`` (some missing there), registered in an ephemeral instance."""
    crawl = generate_crawl(
        str(folder),
        wat_files=2,
        pages_per_file=pages_per_file,
        seed=seed,
        missing_rate=0.2,
        image_base=image_base,
        page_base=page_base,
    )
    registration = register_crawl(
        CommonCrawl(base_url=crawl.root).source(), data_root, crawl.crawl, files_per_segment=files_per_segment
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(segments.name, registration.keys())
    return crawl, registration, instance


@pytest.fixture
def crawl_on_local_web(web, tmp_path, data_root):
    """A generated crawl whose image links point at the local web (some at images it does not have)."""
    return registered_crawl(tmp_path / "crawl", data_root, web.origins[:3], web.origins[3:])


def resources(crawl, data_root, compute):
    """The code location's resources (whatever candidates needs today), pointed at this test's crawl and web."""
    return {
        **defs.resources,
        "compute": compute,
        "common_crawl": CommonCrawl(base_url=crawl.root),
        "storage": StorageResource(root=data_root.url),
        "dedup_index": DedupIndexResource(),
        "image_downloader": DOWNLOADER,
    }


def shard_rows(root, key):
    folder = segment_folder(root, key)
    return [
        r
        for n in root.listdir(folder)
        if n.endswith(".parquet")
        for r in root.read_parquet(f"{folder}/{n}").to_pylist()
    ]


def test_a_materialized_segment_downloads_every_existing_image_and_reports_it(
    crawl_on_local_web, data_root, local_compute
):
    crawl, registration, instance = crawl_on_local_web
    key = registration.keys()[0]
    result = dg.materialize(
        [candidates, image_shards],
        partition_key=key,
        instance=instance,
        resources=resources(crawl, data_root, local_compute),
    )
    assert result.success
    expected = {(r.url, r.text): r.image_exists for r in crawl.expected_segment(registration.files_of(key))}
    rows = shard_rows(data_root, key)
    assert len(rows) == len(expected)
    assert {(r["url"], r["text"]): r["status"] for r in rows} == {
        pair: "ok" if exists else "http_404" for pair, exists in expected.items()
    }
    ok = sum(expected.values())
    assert 0 < ok < len(expected)

    metadata = result.asset_materializations_for_node("image_shards")[0].metadata
    assert metadata[COUNT].value == len(expected)
    assert metadata[SUCCESSES].value == ok
    # One name end to end: the UI's figures are on disk under img2dataset's stats.json names, the same keys.
    assert (COUNT, SUCCESSES) == ("count", "successes")
    markers = read_segment_markers(data_root, key)
    assert sum(m["count"] for m in markers) == len(expected)
    assert sum(m["successes"] for m in markers) == ok
    assert metadata["success_rate"].value == round(ok / len(expected), 4)
    assert metadata["shards"].value == metadata["shards_run_now"].value == -(-len(expected) // 40)
    statuses = {r.data["status"]: r.data["count"] for r in metadata["status_counts"].records}
    assert statuses == {"ok": ok, "http_404": len(expected) - ok}
    assert metadata["images_per_s"].value > 0 and metadata["mb_per_s"].value > 0
    assert metadata["bytes_written"].value > 0
    assert any(
        (r.data["status"], r.data["width"], r.data["height"]) == ("ok", 64, 64) for r in metadata["sample"].records
    )


def test_a_rerun_reuses_every_finished_shard(crawl_on_local_web, data_root, local_compute, web):
    crawl, registration, instance = crawl_on_local_web
    key = registration.keys()[0]
    run = resources(crawl, data_root, local_compute)
    assert dg.materialize([candidates, image_shards], partition_key=key, instance=instance, resources=run).success
    folder = segment_folder(data_root, key)
    before = {n: data_root.read_bytes(f"{folder}/{n}") for n in data_root.listdir(folder)}
    web.reset_counters()
    again = dg.materialize([image_shards], partition_key=key, instance=instance, resources=run)
    assert again.success
    metadata = again.asset_materializations_for_node("image_shards")[0].metadata
    assert metadata["shards_run_now"].value == 0
    assert sum(web.requests.values()) == 0
    assert {n: data_root.read_bytes(f"{folder}/{n}") for n in data_root.listdir(folder)} == before


def test_a_redo_run_downloads_every_finished_shard_again(crawl_on_local_web, data_root, local_compute, web):
    crawl, registration, instance = crawl_on_local_web
    key = registration.keys()[0]
    run = resources(crawl, data_root, local_compute)
    assert dg.materialize([candidates, image_shards], partition_key=key, instance=instance, resources=run).success
    shards = len(read_segment_markers(data_root, key))
    web.reset_counters()
    redo = {"ops": {"image_shards": {"config": {"redo": True}}}}
    again = dg.materialize([image_shards], partition_key=key, instance=instance, resources=run, run_config=redo)
    assert again.success
    assert again.asset_materializations_for_node("image_shards")[0].metadata["shards_run_now"].value == shards > 0
    assert sum(web.requests.values()) > 0


def test_shards_run_in_dask_worker_processes(crawl_on_local_web, data_root, local_compute):
    crawl, registration, instance = crawl_on_local_web
    key = registration.keys()[0]
    assert dg.materialize(
        [candidates], partition_key=key, instance=instance, resources=resources(crawl, data_root, local_compute)
    ).success
    processes = ComputeResource(n_workers=2, processes=True, local_gpus=0)
    result = dg.materialize(
        [image_shards], partition_key=key, instance=instance, resources=resources(crawl, data_root, processes)
    )
    assert result.success
    rows = shard_rows(data_root, key)
    assert rows and {r["status"] for r in rows} == {"ok", "http_404"}
    # The asset lets Dask's worker processes have children, so images were decoded in processes.
    assert {m["image_workers"] for m in read_segment_markers(data_root, key)} == {"processes"}


def test_the_resource_hands_its_settings_to_the_shard_tasks():
    settings = ImageDownloader(
        allowed_networks=["10.1.0.0/16"],
        max_redirects=2,
        resize_mode="keep_ratio",
        allowed_formats=["jpeg"],
        shard_size=7,
    ).settings()
    assert settings.fetch.allowed_networks == ("10.1.0.0/16",) and settings.fetch.max_redirects == 2
    assert settings.resize.resize_mode == "keep_ratio" and settings.resize.allowed_formats == ("JPEG",)
    assert settings.shard_size == 7
    with pytest.raises(ValueError, match="resize_mode must be one of"):
        ImageDownloader(resize_mode="stretch").settings()


def test_a_run_of_several_segments_reports_each_segment_and_their_total(web, tmp_path, data_root, local_compute):
    crawl, registration, instance = registered_crawl(
        tmp_path / "crawl", data_root, web.origins[:3], web.origins[3:], pages_per_file=8, seed=6, files_per_segment=1
    )
    keys = registration.keys()
    run = resources(crawl, data_root, local_compute)
    key_range = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    assert dg.materialize([candidates], instance=instance, resources=run, tags=key_range).success

    result = dg.materialize([image_shards], instance=instance, resources=run, tags=key_range)
    assert result.success
    # A pair found in both segments belongs to whichever claimed it first (global dedup), so each
    # segment is checked against the candidates it was given, not against its files alone.
    exists = {
        (r.url, r.text): r.image_exists
        for r in crawl.expected_segment([f for key in keys for f in registration.files_of(key)])
    }
    given = {key: data_root.read_parquet(output_paths(data_root, key)[0]).to_pylist() for key in keys}
    observed = {
        e.partition: e.asset_observation_data.asset_observation.metadata
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION
    }
    assert sorted(observed) == keys
    for key in keys:
        assert observed[key][COUNT].value == len(given[key]) > 0
        assert observed[key][SUCCESSES].value == sum(exists[r["url"], r["text"]] for r in given[key])
    metadata = result.asset_materializations_for_node("image_shards")[0].metadata
    assert metadata["segments"].value == 2
    assert metadata[COUNT].value == sum(len(rows) for rows in given.values())
    assert metadata[SUCCESSES].value == sum(observed[key][SUCCESSES].value for key in keys)


def test_a_segment_on_named_hosts_reports_its_dns_lookups_and_failures(tmp_path, data_root, local_compute):
    with LocalImageWeb(n_hosts=3, hostnames=True) as named_web:
        port = named_web.hosts[0].rsplit(":", 1)[1]
        gone = f"http://{named_web.dns.failing_name('nxdomain', 'img')}:{port}"
        crawl, registration, instance = registered_crawl(
            tmp_path / "crawl", data_root, [*named_web.named_origins[:2], gone], named_web.named_origins[2:]
        )
        key = registration.keys()[0]
        run = {
            **resources(crawl, data_root, local_compute),
            "image_downloader": DOWNLOADER.model_copy(update={"nameservers": [named_web.nameserver]}),
        }
        result = dg.materialize([candidates, image_shards], partition_key=key, instance=instance, resources=run)
    assert result.success
    rows = shard_rows(data_root, key)
    failed = sum(r["status"] == "dns_error" for r in rows)
    assert failed and {r["status"] for r in rows} <= {"ok", "http_404", "dns_error"}
    metadata = result.asset_materializations_for_node("image_shards")[0].metadata
    # Four names (two image hosts, the page host for relative links, the missing one): one lookup each per shard task.
    assert 4 <= metadata["dns_lookups"].value <= 4 * metadata["shards"].value < len(rows)
    assert [r.data["status"] for r in metadata["dns_failures"].value.records] == ["dns_error"]
    assert {"status": "dns_error", "count": failed} in [r.data for r in metadata["status_counts"].value.records]
    assert metadata["dns_seconds"].value >= 0 and "dns_ms_per_lookup" in metadata
