"""A WARC crawl through the graph: candidates and pages from one pass, then image_shards and clip_pairs, on a
local and an S3 data root."""

import dagster as dg
import pytest
from s3_peer import ACCESS_KEY, REGION, SECRET_KEY, new_bucket_root, s3_endpoint

from cah_assets.checks import candidates_checks, clip_pairs_checks, image_shards_checks, pages_checks
from cah_assets.crawls import register_and_add
from cah_assets.definitions import defs, deployment_resources
from cah_assets.deployment import Deployment
from cah_assets.resources import (
    ComputeResource,
    DedupIndexResource,
    ImageDownloader,
    PageRulesResource,
    StorageResource,
)
from cah_resources.candidates.stage import output_paths
from cah_resources.contract import CLIP_PAIRS, IMAGE_SHARDS, PAGES, PAGES_SCHEMA, STAGES, pages_path
from cah_resources.samples.local_web import LocalImageWeb
from cah_resources.samples.sample_warc import generate_warc_crawl

DOWNLOADER = ImageDownloader(
    allowed_networks=["127.0.0.0/8"], connect_timeout=10, read_timeout=10, total_timeout=30, retries=1, shard_size=40
)


@pytest.fixture(scope="module")
def web():
    with LocalImageWeb(n_hosts=6, seed=4) as fake_web:
        yield fake_web


def _run_warc_crawl(work, web, storage: StorageResource, stages=STAGES, **more_resources):
    crawl = generate_warc_crawl(
        str(work / "crawl"),
        "CC-MAIN-WARC-T",
        warc_files=1,
        pages_per_file=10,
        images_per_page=5,
        seed=11,
        missing_rate=0.1,
        image_base=web.origins[:4],
        page_base=web.origins[4:],
    )
    resources = {
        **deployment_resources(Deployment("demo", crawl_source=crawl.root, data_root=str(work / "unused"))),
        "storage": storage,
        "compute": ComputeResource(n_workers=2, processes=False),
        "dedup_index": DedupIndexResource(url=f"sqlite:///{work}/dedup.sqlite"),
        "image_downloader": DOWNLOADER,
        **more_resources,
    }
    (work / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(work / "home"))
    registration, _ = register_and_add(
        instance, resources["common_crawl"], storage, crawl.crawl, files_per_segment=1, format="warc"
    )
    key = registration.keys()[0]
    checks = [candidates_checks, pages_checks, image_shards_checks, clip_pairs_checks][: len(stages) + 1]
    assets = [defs.get_assets_def(name) for name in stages]
    result = dg.materialize([*assets, *checks], partition_key=key, instance=instance, resources=resources)
    return crawl, key, result, storage.data_root(), instance


def _assert_warc_crawl_went_through(crawl, key, result, root):
    assert result.success
    made = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert made == {*STAGES, PAGES}
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(e.passed for e in evaluations), [e.description for e in evaluations if not e.passed]
    assert {e.asset_key.to_user_string() for e in evaluations} >= {"candidates", PAGES, IMAGE_SHARDS, CLIP_PAIRS}
    candidates = root.read_parquet(output_paths(root, key)[0])
    expected = {(e.url, e.text): e.url_attribute for e in crawl.expected_segment(crawl.warc_paths)}
    rows = candidates.to_pylist()
    assert {(r["url"], r["text"]): r["url_attribute"] for r in rows} == expected
    assert {r["url_attribute"] for r in rows} - {"src"}  # lazy, srcset, <picture>, <noscript> images went through
    pages = root.read_parquet(pages_path(root, key))
    assert pages.schema == PAGES_SCHEMA
    assert pages.column("url").to_pylist() == [p.url for p in crawl.pages[crawl.warc_paths[0]] if p.kept]
    shards = result.asset_materializations_for_node("candidates")
    assert {m.asset_key.to_user_string() for m in shards} == {"candidates", PAGES}


def test_a_warc_crawl_goes_through_every_stage_and_pages_on_a_local_root(web, tmp_path):
    storage = StorageResource(root=str(tmp_path / "data"))
    crawl, key, result, root, instance = _run_warc_crawl(tmp_path, web, storage)
    try:
        _assert_warc_crawl_went_through(crawl, key, result, root)
    finally:
        instance.dispose()


def test_a_warc_crawl_goes_through_every_stage_and_pages_on_an_s3_root(web, tmp_path):
    with s3_endpoint() as endpoint:
        bucket = new_bucket_root(endpoint)
        storage = StorageResource(
            root=bucket.url,
            endpoint_url=endpoint,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            region=REGION,
        )
        crawl, key, result, root, instance = _run_warc_crawl(tmp_path, web, storage)
        try:
            assert root.url.startswith("s3://")
            _assert_warc_crawl_went_through(crawl, key, result, root)
        finally:
            instance.dispose()


def test_the_page_rules_are_resource_settings_a_deployment_can_change(web, tmp_path):
    storage = StorageResource(root=str(tmp_path / "data"))
    strict = PageRulesResource(min_text_chars=10**6)  # no page has that much text: all too_short
    crawl, key, result, root, instance = _run_warc_crawl(tmp_path, web, storage, ("candidates",), page_rules=strict)
    try:
        assert result.success
        pages = root.read_parquet(pages_path(root, key))
        assert pages.num_rows == 0
        meta = {m.asset_key.to_user_string(): m.metadata for m in result.asset_materializations_for_node("candidates")}
        kept = [p for p in crawl.pages[crawl.warc_paths[0]] if p.kept]
        drops = {r.data["reason"]: r.data["count"] for r in meta[PAGES]["drops"].value.records}
        assert kept and drops["too_short"] >= len(kept)
        # A too-short page keeps its images: the candidates are the same as with the default rules.
        candidates = root.read_parquet(output_paths(root, key)[0]).to_pylist()
        assert {(r["url"], r["text"]) for r in candidates} == {
            (e.url, e.text) for e in crawl.expected_segment(crawl.warc_paths)
        }
    finally:
        instance.dispose()
