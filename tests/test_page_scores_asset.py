"""The page_scores asset and its checks through Dagster: a registered Parquet dataset, local and S3 data roots."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from s3_peer import new_bucket_root, s3_endpoint

from cah_assets.checks import page_scores_checks
from cah_assets.resources import ComputeResource, DedupIndexResource, StorageResource, TextClassifier
from cah_assets.stages.page_scores import page_scores
from cah_resources.contract import Damage, PageScoreStats
from cah_resources.crawl.segments import register_dataset
from cah_resources.page_scores.stage import score_page_file, segment_units
from cah_resources.samples.sample_pages import write_page_dataset
from cah_resources.storage import DataRoot

DATASET = "fw-sample"


@pytest.fixture(scope="module")
def s3_peer():
    with s3_endpoint() as endpoint:
        yield endpoint


def _storage(root: DataRoot) -> StorageResource:
    options = root.storage_options
    if not root.url.startswith("s3://"):
        return StorageResource(root=root.url)
    region = options.get("client_kwargs", {}).get("region_name", "")
    return StorageResource(
        root=root.url,
        endpoint_url=options["endpoint_url"],
        access_key_id=options["key"],
        secret_access_key=options["secret"],
        region=region,
    )


def materialize(root: DataRoot, keys: list[str], key: str, **classifier) -> dg.ExecuteInProcessResult:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("segments", keys)
    return dg.materialize(
        [page_scores, page_scores_checks],
        partition_key=key,
        instance=instance,
        resources={
            "compute": ComputeResource(n_workers=1, processes=False, local_gpus=0),
            "storage": _storage(root),
            "text_classifier": TextClassifier.tiny(device="cpu", **classifier),
        },
        raise_on_error=False,
    )


def _register(root: DataRoot, folder: str) -> list[str]:
    write_page_dataset(folder, files=3, pages_per_file=40, seed=21, storage_options=root.storage_options)
    return register_dataset(root, DATASET, [f"{folder}/*.parquet"], files_per_segment=2).keys()


def _scored_and_checked(root: DataRoot, keys: list[str]) -> None:
    result = materialize(root, keys, keys[0])
    metadata = result.asset_materializations_for_node("page_scores")[0].metadata
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}

    assert result.success, [e.event_specific_data for e in result.all_events if e.is_failure]
    assert metadata["pages_scored"].value == 80 and metadata["files"].value == 2
    assert metadata["pages_kept"].value == sum(r.data["kept"] for r in metadata["per_language"].records)
    assert checks == {"scored_rows_match_pages": True, "kept_pages_pass_threshold": True}
    units = segment_units(root, keys[0])
    for unit in units:
        with root.fs.open(unit.source, "rb") as handle:
            pages = pq.read_table(handle)
        scored = root.read_parquet(unit.table)
        assert scored.column("id").to_pylist() == pages.column("id").to_pylist()


def test_a_parquet_dataset_is_scored_and_checked_on_a_local_data_root(tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    _scored_and_checked(root, _register(root, str(tmp_path / "fineweb")))


def test_a_parquet_dataset_on_s3_is_scored_and_checked_on_an_s3_data_root(s3_peer):
    root = new_bucket_root(s3_peer)
    bucket = root.url.split("/")[2]
    _scored_and_checked(root, _register(root, f"s3://{bucket}/datasets/fineweb"))


def test_a_kept_page_below_the_threshold_fails_its_check(tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    keys = _register(root, str(tmp_path / "fineweb"))
    assert materialize(root, keys, keys[1]).success
    unit = segment_units(root, keys[1])[0]
    marker = root.read_json(unit.marker)
    root.write_json(unit.marker, {**marker, "threshold": 4.99})  # as if a stricter run had written these rows

    result = materialize(root, keys, keys[1])  # the file is finished: only the checks read it again
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["kept_pages_pass_threshold"] is False and checks["scored_rows_match_pages"] is True


def test_a_wat_crawl_has_no_pages_to_score_and_fails_in_one_line(tmp_path, sample_crawl):
    from cah_resources.crawl.common_crawl import CrawlSource
    from cah_resources.crawl.segments import register_crawl

    root = DataRoot(str(tmp_path / "data"))
    keys = register_crawl(CrawlSource(sample_crawl.root), root, "CC-MAIN-SAMPLE", 2).keys()
    result = materialize(root, keys, keys[0])
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert not result.success
    assert "a wat crawl has none here" in str(failure.event_specific_data.error.message)


def _scored_warc_crawl(tmp_path, root: DataRoot) -> None:
    """A generated WARC crawl's segment: candidates writes its pages, page_scores scores every one of them."""
    from cah_assets.checks import pages_checks
    from cah_assets.crawls import register_and_add
    from cah_assets.definitions import defs, deployment_resources
    from cah_assets.deployment import Deployment
    from cah_resources.contract import CANDIDATES, FORMAT_WARC, PAGES, pages_path
    from cah_resources.samples.sample_warc import generate_warc_crawl

    crawl = generate_warc_crawl(str(tmp_path / "crawl"), "CC-MAIN-WARC-PS", warc_files=1, pages_per_file=12, seed=5)
    storage = _storage(root)
    resources = {
        **deployment_resources(Deployment("demo", crawl_source=crawl.root, data_root=str(tmp_path / "unused"))),
        "storage": storage,
        "compute": ComputeResource(n_workers=1, processes=False, local_gpus=0),
        "dedup_index": DedupIndexResource(url=f"sqlite:///{tmp_path}/dedup.sqlite"),
        "text_classifier": TextClassifier.tiny(device="cpu"),
    }
    (tmp_path / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "home"))
    try:
        registration, _ = register_and_add(
            instance, resources["common_crawl"], storage, crawl.crawl, files_per_segment=1, format=FORMAT_WARC
        )
        (key,) = registration.keys()
        assets = [defs.get_assets_def(CANDIDATES), pages_checks, page_scores, page_scores_checks]
        result = dg.materialize(assets, partition_key=key, instance=instance, resources=resources)
        assert result.success
        made = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert {PAGES, "page_scores"} <= made

        pages = root.read_parquet(pages_path(root, key))
        (unit,) = segment_units(root, key)
        scored = root.read_parquet(unit.table)
        kept = [p.url for p in crawl.pages[crawl.warc_paths[0]] if p.kept]
        assert pages.num_rows == len(kept) > 0
        assert scored.column("url").to_pylist() == kept
        assert scored.column("text").to_pylist() == pages.column("text").to_pylist()
        assert scored.column("score").null_count == 0
        # The main text keeps the article and drops the boilerplate, so a page scores as its article was written.
        values = {p.url: p.value for p in crawl.pages[crawl.warc_paths[0]] if p.kept and p.value is not None}
        scores = dict(zip(scored.column("url").to_pylist(), scored.column("score").to_pylist(), strict=True))
        teaching = [scores[url] for url, value in values.items() if value >= 3.5]
        other = [scores[url] for url, value in values.items() if value <= 1.5]
        assert teaching and other and min(teaching) > max(other), (teaching, other)
        metadata = result.asset_materializations_for_node("page_scores")[0].metadata
        assert metadata["pages_scored"].value == len(kept)
        per_language = {r.data["language"] for r in metadata["per_language"].records}
        assert per_language == set(pages.column("language").to_pylist())
        evaluations = result.get_asset_check_evaluations()
        checks = {e.check_name: e.passed for e in evaluations if e.asset_key == page_scores.key}
        assert checks == {"scored_rows_match_pages": True, "kept_pages_pass_threshold": True}
    finally:
        instance.dispose()


def test_a_warc_crawls_pages_are_scored_and_checked_on_a_local_data_root(tmp_path):
    _scored_warc_crawl(tmp_path, DataRoot(str(tmp_path / "data")))


def test_a_warc_crawls_pages_are_scored_and_checked_on_an_s3_data_root(tmp_path, s3_peer):
    _scored_warc_crawl(tmp_path, new_bucket_root(s3_peer))


def _break_row_group(path: str, group: int) -> None:
    """Overwrite the page header of the row group's first column: pyarrow cannot decode that group."""
    column = pq.ParquetFile(path).metadata.row_group(group).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(Path(path).read_bytes())
    data[start : start + 16] = b"\xff" * 16
    Path(path).write_bytes(bytes(data))


def test_damaged_files_of_pages_are_counted_and_the_segment_is_scored_and_checked(tmp_path):
    """A row group that does not decode and a file cut short (no footer): counted, the rest scored."""
    root = DataRoot(str(tmp_path / "data"))
    keys = _register(root, str(tmp_path / "fineweb"))
    first, second = segment_units(root, keys[0])
    pages = pq.read_table(first.source)
    pq.write_table(pages, first.source, row_group_size=10, compression="zstd")  # four row groups
    _break_row_group(first.source, 1)
    whole = Path(second.source).read_bytes()
    Path(second.source).write_bytes(whole[: len(whole) // 2])  # an interrupted copy: no footer

    result = materialize(root, keys, keys[0])

    assert result.success, [e.event_specific_data for e in result.all_events if e.is_failure]
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"scored_rows_match_pages": True, "kept_pages_pass_threshold": True}
    broken_group, unreadable = (PageScoreStats.from_dict(root.read_json(u.marker)) for u in (first, second))
    assert (broken_group.damage, broken_group.pages) == ({Damage.CORRUPT_ROW_GROUP: 10}, 30)
    assert (unreadable.damage, unreadable.pages) == ({Damage.CORRUPT_PARQUET: 1}, 0)
    ids = pages.column("id").to_pylist()
    assert root.read_parquet(first.table).column("id").to_pylist() == ids[:10] + ids[20:]  # in order, none lost
    assert not root.exists(second.table) and not root.exists(second.kept)
    metadata = result.asset_materializations_for_node("page_scores")[0].metadata
    assert metadata["pages_scored"].value == 30

    assert (
        materialize(root, keys, keys[0])
        .asset_materializations_for_node("page_scores")[0]
        .metadata["pages_scored"]
        .value
        == 30
    )  # a rerun of unchanged files scores nothing again
    assert (PageScoreStats.from_dict(root.read_json(second.marker)).task_seconds) == unreadable.task_seconds

    Path(second.source).write_bytes(whole)  # the file repaired: the next run scores it, no redo needed
    pq.write_table(pages, first.source, row_group_size=10, compression="zstd")
    repaired = materialize(root, keys, keys[0])
    assert repaired.asset_materializations_for_node("page_scores")[0].metadata["pages_scored"].value == 80
    for unit in (first, second):
        again = PageScoreStats.from_dict(root.read_json(unit.marker))
        assert (again.damage, again.pages) == ({}, 40) and root.read_parquet(unit.table).num_rows == 40
    checks = {e.check_name: e.passed for e in repaired.get_asset_check_evaluations()}
    assert checks == {"scored_rows_match_pages": True, "kept_pages_pass_threshold": True}
    again = PageScoreStats.from_dict(score_page_file(second, TextClassifier.tiny(device="cpu").settings(), redo=True))
    assert (again.damage, again.pages) == ({}, 40)  # a redo of a whole file is the same
