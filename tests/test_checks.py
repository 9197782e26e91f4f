"""Asset checks: real segments pass, every kind of damage is named, verdicts are per segment and blocking."""

import io
import tarfile

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from contract_layout import THRESHOLDS

from cah_assets.checks import candidates_checks, clip_pairs_checks, image_shards_checks
from cah_assets.definitions import defs
from cah_assets.partitions import segments
from cah_assets.resources import ClipScorer, CommonCrawl, ComputeResource, ImageDownloader, StorageResource
from cah_assets.stages.candidates import candidates
from cah_assets.stages.clip_pairs import clip_pairs
from cah_assets.stages.image_shards import image_shards
from cah_resources.candidates.checks import CANDIDATES_CHECKS, check_candidates
from cah_resources.candidates.stage import output_paths
from cah_resources.clip_pairs.checks import CLIP_PAIRS_CHECKS, check_clip_pairs
from cah_resources.contract import ShardStats
from cah_resources.crawl.segments import register_crawl
from cah_resources.image_shards.checks import IMAGE_SHARDS_CHECKS, check_image_shards
from cah_resources.image_shards.shard_writer import ShardWriter
from cah_resources.samples.local_web import LocalImageWeb
from cah_resources.samples.sample_crawl import generate_crawl
from cah_resources.storage import DataRoot

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@pytest.fixture(scope="module")
def materialized(tmp_path_factory, sample_crawl):
    """Two real candidates segments made in one run (with their checks) on a persistent instance."""
    base = tmp_path_factory.mktemp("checks")
    root = DataRoot(str(base / "data"))
    (base / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(base / "home"))
    registration = register_crawl(CommonCrawl(base_url=sample_crawl.root).source(), root, sample_crawl.crawl, 2)
    instance.add_dynamic_partitions(segments.name, registration.keys())
    resources = {
        **defs.resources,  # one-machine defaults for whatever else the stages need
        "compute": ComputeResource(n_workers=2, processes=False),
        "common_crawl": CommonCrawl(base_url=sample_crawl.root),
        "storage": StorageResource(root=root.url),
    }
    keys = registration.keys()
    result = dg.materialize(
        [candidates, candidates_checks],
        instance=instance,
        resources=resources,
        tags={RANGE_START: keys[0], RANGE_END: keys[-1]},
    )
    assert result.success
    yield instance, root, keys, resources
    instance.dispose()


def _copy_segment(root: DataRoot, source: str, target: str) -> None:
    for path in output_paths(root, source):
        root.write_bytes(path.replace(f"/{source}/", f"/{target}/"), root.read_bytes(path))


def _verdicts_failed(verdicts) -> set[str]:
    return {name for name, verdict in verdicts.items() if not verdict.passed}


# --- candidates ---------------------------------------------------------------------------------


def test_a_multi_segment_run_records_a_passing_verdict_per_check_and_segment(materialized):
    instance, _, keys, _ = materialized
    for name in ("schema", "unique_uids", "valid_categories", "drops_add_up"):
        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("candidates"), name), limit=10
        )
        assert sorted(record.partition for record in history) == keys
        assert all(record.status.value == "SUCCEEDED" for record in history)
        evaluation = history[0].event.dagster_event.event_specific_data
        assert evaluation.target_materialization_data is not None  # the verdict is tied to the materialization it read


def test_the_verdicts_of_a_multi_segment_run_let_the_next_stage_start_on_every_segment(materialized):
    # Dagster's own condition reads the per-segment check status: a verdict that does not point at the
    # segment's latest materialization counts as stale there, and the next stage would never start.
    instance, _, keys, resources = materialized
    gate = dg.AutomationCondition.all_deps_blocking_checks_passed()
    gated = image_shards.map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=gate))
    definitions = dg.Definitions(
        assets=[candidates, gated],
        asset_checks=[candidates_checks],
        resources=resources,
    )
    result = dg.evaluate_automation_conditions(defs=definitions, instance=instance)
    assert sorted(result.get_requested_partitions(image_shards.key)) == keys


def test_real_candidates_pass_every_check(materialized):
    _, root, keys, _ = materialized
    for key in keys:
        verdicts = check_candidates(root, key)
        assert _verdicts_failed(verdicts) == set(), {k: v.description for k, v in verdicts.items()}
        assert verdicts["drops_add_up"].metadata["links_seen"] > verdicts["drops_add_up"].metadata["candidates"]


def _damaged(materialized, name: str, damage) -> dict:
    """Copy segment 0 to a fresh key, apply ``damage(table, stats) -> (table, stats)``, return verdicts."""
    _, root, keys, _ = materialized
    target = f"CC-MAIN-DAMAGED-{name}_00000"
    _copy_segment(root, keys[0], target)
    table_path, stats_path = output_paths(root, target)
    table, stats = damage(root.read_parquet(table_path), root.read_json(stats_path))
    root.write_parquet(table_path, table)
    root.write_json(stats_path, stats)
    return check_candidates(root, target)


def test_a_missing_or_mistyped_column_fails_the_schema_check(materialized):
    dropped = _damaged(materialized, "drop", lambda t, s: (t.drop_columns(["page_url"]), s))
    assert _verdicts_failed(dropped) == {"schema"}
    assert "missing ['page_url']" in dropped["schema"].description
    mistyped = _damaged(
        materialized, "type", lambda t, s: (t.set_column(6, "language_prob", pc.cast(t.column(6), pa.float64())), s)
    )
    assert _verdicts_failed(mistyped) == {"schema"}
    assert "language_prob: double (want float)" in mistyped["schema"].description


def test_a_malformed_uid_fails_the_schema_check(materialized):
    def damage(table, stats):
        uids = table.column("uid").to_pylist()
        uids[0] = "0" + uids[0][1:].upper()
        return table.set_column(0, "uid", pa.array(uids)), stats

    verdicts = _damaged(materialized, "uid", damage)
    assert "schema" in _verdicts_failed(verdicts)
    assert verdicts["schema"].metadata["bad_uids"] == 1


def test_a_duplicated_row_fails_unique_uids_and_the_counts(materialized):
    def damage(table, stats):
        return pa.concat_tables([table.slice(0, 1), table]), stats

    verdicts = _damaged(materialized, "dup", damage)
    assert _verdicts_failed(verdicts) == {"unique_uids", "drops_add_up"}
    assert verdicts["unique_uids"].metadata["duplicate_uids"] == 1


def test_rows_out_of_uid_order_fail_unique_uids(materialized):
    verdicts = _damaged(materialized, "order", lambda t, s: (t.take(list(reversed(range(t.num_rows)))), s))
    assert _verdicts_failed(verdicts) == {"unique_uids"}
    assert verdicts["unique_uids"].metadata["out_of_order"] > 0
    assert verdicts["unique_uids"].metadata["duplicate_uids"] == 0


def test_unknown_or_contradictory_categories_fail(materialized):
    def damage(table, stats):
        category = table.column("category").to_pylist()
        language = table.column("language").to_pylist()
        first_en, first_multi = category.index("en"), category.index("multi")
        other = next(i for i in range(len(category)) if i not in (first_en, first_multi))
        category[other] = "xx"
        language[first_en] = "de"
        language[first_multi] = "und"
        return table.set_column(4, "category", pa.array(category)).set_column(5, "language", pa.array(language)), stats

    verdicts = _damaged(materialized, "cat", damage)
    assert "valid_categories" in _verdicts_failed(verdicts)
    meta = verdicts["valid_categories"].metadata
    assert (meta["unknown_category"], meta["en_with_other_language"], meta["multi_with_en_or_und"]) == (1, 1, 1)
    assert "xx" in verdicts["valid_categories"].description


def test_drop_counts_that_do_not_add_up_fail(materialized):
    verdicts = _damaged(materialized, "drops", lambda t, s: (t, {**s, "drop_svg": s["drop_svg"] + 1}))
    assert _verdicts_failed(verdicts) == {"drops_add_up"}
    assert "links seen but" in verdicts["drops_add_up"].description


def test_a_segment_without_output_fails_every_check_in_one_line(materialized):
    _, root, _, _ = materialized
    verdicts = check_candidates(root, "CC-MAIN-NEVER_00000")
    assert _verdicts_failed(verdicts) == set(verdicts)
    assert all("does not exist" in v.description and "\n" not in v.description for v in verdicts.values())


def test_a_failed_blocking_check_fails_its_run_and_is_recorded_for_that_segment_only(materialized):
    instance, root, keys, resources = materialized
    table_path, _ = output_paths(root, keys[1])
    saved = root.read_bytes(table_path)
    table = root.read_parquet(table_path)
    root.write_parquet(table_path, pa.concat_tables([table, table.slice(0, 1)]))
    try:
        result = dg.materialize(
            [candidates, candidates_checks],
            instance=instance,
            resources=resources,
            raise_on_error=False,
            selection=dg.AssetSelection.checks_for_assets(candidates),
            tags={RANGE_START: keys[0], RANGE_END: keys[-1]},
        )
    finally:
        root.write_bytes(table_path, saved)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "blocking asset check" in failure.step_failure_data.error.message
    latest = {}
    for record in instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("candidates"), "unique_uids"), limit=10
    ):
        latest.setdefault(record.partition, record.status.value)
    assert latest == {keys[0]: "SUCCEEDED", keys[1]: "FAILED"}


def test_one_check_runs_alone_on_a_materialized_segment(materialized):
    instance, _, keys, resources = materialized
    check = dg.AssetCheckKey(dg.AssetKey("candidates"), "drops_add_up")
    job = dg.define_asset_job("one_check", selection=dg.AssetSelection.checks(check), partitions_def=segments)
    definitions = dg.Definitions(assets=[candidates], asset_checks=[candidates_checks], jobs=[job], resources=resources)
    result = definitions.resolve_job_def("one_check").execute_in_process(
        instance=instance, tags={"dagster/partition": keys[1]}
    )
    assert result.success
    assert not result.get_asset_materialization_events()  # the segment is not made again
    evaluations = [(e.check_name, e.partition, e.passed) for e in result.get_asset_check_evaluations()]
    assert evaluations == [("drops_add_up", keys[1], True)]
    (record,) = instance.event_log_storage.get_asset_check_execution_history(check, limit=1)
    assert (record.partition, record.status.value) == (keys[1], "SUCCEEDED")


# --- image_shards (hand-built with the real shard writer) ---------------------------------------

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"


def _outcome(ok: bool) -> dict:
    if not ok:
        return {"status": "http_404", "http_status": 404, "error_message": "not found"}
    return {
        "status": "ok",
        "http_status": 200,
        "error_message": None,
        "bytes": len(JPEG),
        "sha256": "ab" * 32,
        "width": 8,
        "height": 8,
        "original_width": 16,
        "original_height": 16,
    }


def _write_image_shards(root: DataRoot, segment: str, shard_size: int) -> pa.Table:
    """Shards of the segment's candidates, every third row failed, written by the real ShardWriter."""
    table = root.read_parquet(output_paths(root, segment)[0])
    folder = root.path("image_shards", segment)
    for shard, start in enumerate(range(0, table.num_rows, shard_size)):
        rows = table.slice(start, shard_size).to_pylist()
        with ShardWriter(root, folder, shard, len(rows), table.schema) as writer:
            for i, row in enumerate(rows):
                ok = (start + i) % 3 != 0
                writer.add(i, row, _outcome(ok), JPEG if ok else None)
            writer.close(ShardStats(start=start, stop=start + len(rows), segment=segment))
    return table


@pytest.fixture
def shards(materialized, tmp_path):
    """Segment 0's candidates with image shards of 50 rows, in a data root of its own."""
    _, source_root, keys, _ = materialized
    root = DataRoot(str(tmp_path / "data"))
    for path in output_paths(source_root, keys[0]):
        root.write_bytes(path.replace(source_root.url, root.url), source_root.read_bytes(path))
    _write_image_shards(root, keys[0], 50)
    return root, keys[0], root.path("image_shards", keys[0])


def test_shards_written_by_the_shard_writer_pass(shards):
    root, key, _ = shards
    verdicts = check_image_shards(root, key)
    assert _verdicts_failed(verdicts) == set(), {k: v.description for k, v in verdicts.items()}
    assert verdicts["rows_match_candidates"].metadata["shards"] > 2


def test_an_unfinished_shard_fails_the_row_check(shards):
    root, key, folder = shards
    root.remove(f"{folder}/00001.done")
    verdicts = check_image_shards(root, key)
    assert "rows_match_candidates" in _verdicts_failed(verdicts)
    assert "1 shards unfinished (first 00001)" in verdicts["rows_match_candidates"].description


def test_a_lost_shard_fails_the_row_count(shards):
    root, key, folder = shards
    last = max(int(n[:5]) for n in root.listdir(folder) if n.endswith(".done"))
    for suffix in (".parquet", ".tar", "_stats.json", ".done"):
        root.remove(f"{folder}/{last:05d}{suffix}")
    verdicts = check_image_shards(root, key)
    assert _verdicts_failed(verdicts) == {"rows_match_candidates"}
    assert "shard rows for" in verdicts["rows_match_candidates"].description


def test_shard_rows_in_another_order_than_the_candidates_fail(shards):
    root, key, folder = shards
    path = f"{folder}/00000.parquet"
    table = root.read_parquet(path)
    swapped = table.take([1, 0, *list(range(2, table.num_rows))])
    root.write_parquet(path, swapped.set_column(swapped.schema.get_field_index("key"), "key", table.column("key")))
    verdicts = check_image_shards(root, key)
    assert "rows_match_candidates" in _verdicts_failed(verdicts)
    assert "from row 0 on" in verdicts["rows_match_candidates"].description


def _rewrite_tar(root: DataRoot, path: str, keep) -> None:
    with root.fs.open(path, "rb") as handle, tarfile.open(fileobj=handle) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for member, data in members:
            for name in keep(member.name):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    root.write_bytes(path, out.getvalue())


def test_a_missing_or_stray_tar_member_fails_the_tar_check(shards):
    root, key, folder = shards
    _rewrite_tar(root, f"{folder}/00000.tar", lambda name: [] if name.endswith("00001.jpg") else [name])
    _rewrite_tar(
        root, f"{folder}/00001.tar", lambda name: [name, "0000100001.jpg"] if name == "0000100000.txt" else [name]
    )  # row 51 failed: no image
    verdicts = check_image_shards(root, key)
    assert _verdicts_failed(verdicts) == {"tar_members_match_ok_rows"}
    meta = verdicts["tar_members_match_ok_rows"].metadata
    assert (meta["missing"], meta["unexpected"]) == (1, 1)


def test_a_truncated_tar_is_reported_not_raised(shards):
    root, key, folder = shards
    path = f"{folder}/00002.tar"
    root.write_bytes(path, root.read_bytes(path)[:700])
    verdicts = check_image_shards(root, key)
    assert "tar_members_match_ok_rows" in _verdicts_failed(verdicts)


def test_stats_that_disagree_with_the_parquet_fail(shards):
    root, key, folder = shards
    stats = root.read_json(f"{folder}/00000_stats.json")
    root.write_json(f"{folder}/00000_stats.json", {**stats, "successes": stats["successes"] + 1})
    verdicts = check_image_shards(root, key)
    assert _verdicts_failed(verdicts) == {"stats_agree"}
    assert "00000_stats.json: successes=" in verdicts["stats_agree"].description


# --- clip_pairs (hand-built in the contract layout) ---------------------------------------------


def _write_clip_pairs(root: DataRoot, segment: str, similarity=lambda i: 0.2 + (i % 5) * 0.03) -> None:
    """A clip_pairs shard per finished image shard: its ok rows, scored, kept when above threshold."""
    image_folder, clip_folder = root.path("image_shards", segment), root.path("clip_pairs", segment)
    for name in root.listdir(image_folder):
        if not name.endswith(".done"):
            continue
        shard = name[:5]
        table = root.read_parquet(f"{image_folder}/{shard}.parquet")
        table = table.filter(pc.equal(table.column("status"), "ok"))
        sims = [similarity(i) for i in range(table.num_rows)]
        thresholds = [THRESHOLDS[c] for c in table.column("category").to_pylist()]
        extra = {
            "similarity": pa.array(sims, pa.float32()),
            "threshold": pa.array(thresholds, pa.float32()),
            "kept": pa.array(
                [
                    s >= t
                    for s, t in zip(
                        pa.array(sims, pa.float32()).to_pylist(),
                        pa.array(thresholds, pa.float32()).to_pylist(),
                        strict=False,
                    )
                ]
            ),
            "clip_model": pa.array(["tiny"] * table.num_rows),
            "nsfw": pa.array(["UNLIKELY"] * table.num_rows),
            "nsfw_score": pa.array([0.01] * table.num_rows, pa.float32()),
            "watermark_score": pa.array([0.1] * table.num_rows, pa.float32()),
        }
        for column, values in extra.items():
            table = table.append_column(column, values)
        root.write_parquet(f"{clip_folder}/{shard}.parquet", table)
        root.write_json(f"{clip_folder}/{shard}.done", {"pairs": table.num_rows})


def test_scored_shards_in_the_contract_layout_pass(shards):
    root, key, _ = shards
    _write_clip_pairs(root, key)
    verdicts = check_clip_pairs(root, key)
    assert _verdicts_failed(verdicts) == set(), {k: v.description for k, v in verdicts.items()}
    assert (
        0
        < verdicts["kept_rows_pass_threshold"].metadata["kept"]
        < verdicts["kept_rows_pass_threshold"].metadata["scored"]
    )


def test_a_kept_pair_below_its_threshold_fails(shards):
    root, key, _ = shards
    _write_clip_pairs(root, key)
    path = root.path("clip_pairs", key, "00000.parquet")
    table = root.read_parquet(path)
    kept = table.column("kept").to_pylist()
    below = next(i for i, k in enumerate(kept) if not k)
    kept[below] = True
    root.write_parquet(path, table.set_column(table.schema.get_field_index("kept"), "kept", pa.array(kept)))
    verdicts = check_clip_pairs(root, key)
    assert _verdicts_failed(verdicts) == {"kept_rows_pass_threshold"}
    assert verdicts["kept_rows_pass_threshold"].metadata["kept_below_threshold"] == 1


def test_an_unscored_shard_or_a_missing_row_fails(shards):
    root, key, _ = shards
    _write_clip_pairs(root, key)
    root.remove(root.path("clip_pairs", key, "00001.done"))
    path = root.path("clip_pairs", key, "00002.parquet")
    root.write_parquet(path, root.read_parquet(path).slice(1))
    verdicts = check_clip_pairs(root, key)
    assert _verdicts_failed(verdicts) == {"scored_rows_match_ok_rows"}
    assert verdicts["scored_rows_match_ok_rows"].metadata["problems"] == 2
    assert "shard 00001 not scored" in verdicts["scored_rows_match_ok_rows"].description


# --- the checks in real runs of the first two stages ---------------------------------------------


@pytest.fixture(scope="module")
def web():
    with LocalImageWeb(n_hosts=4) as fake_web:
        yield fake_web


@pytest.fixture
def two_segments_on_the_local_web(web, tmp_path, data_root, local_compute):
    crawl = generate_crawl(
        str(tmp_path / "crawl"),
        wat_files=2,
        pages_per_file=10,
        seed=5,
        missing_rate=0.2,
        image_base=web.origins[:2],
        page_base=web.origins[2:],
    )
    registration = register_crawl(CommonCrawl(base_url=crawl.root).source(), data_root, crawl.crawl, 1)
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
            shard_size=15,
            image_size=64,
        ),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(segments.name, registration.keys())
        yield instance, resources, registration.keys()


def _stage_steps(result) -> dict[str, str]:
    return {
        e.step_key: e.event_type_value
        for e in result.all_events
        if e.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE")
    }


def test_real_image_shards_pass_their_checks_and_a_bad_candidates_segment_blocks_its_download(
    two_segments_on_the_local_web, data_root
):
    instance, resources, (good, bad) = two_segments_on_the_local_web
    stages = [candidates, candidates_checks, image_shards, image_shards_checks]
    result = dg.materialize(stages, instance=instance, resources=resources, partition_key=good)
    assert _stage_steps(result) == {
        "candidates": "STEP_SUCCESS",
        "candidates_checks": "STEP_SUCCESS",
        "image_shards": "STEP_SUCCESS",
        "image_shards_checks": "STEP_SUCCESS",
    }
    verdicts = check_image_shards(data_root, good)
    assert (
        verdicts["rows_match_candidates"].metadata["shards"] >= 2
        and verdicts["tar_members_match_ok_rows"].metadata["members"] > 0
    )

    assert dg.materialize([candidates], instance=instance, resources=resources, partition_key=bad).success
    table_path = output_paths(data_root, bad)[0]
    table = data_root.read_parquet(table_path)
    data_root.write_parquet(table_path, pa.concat_tables([table, table.slice(0, 1)]))
    blocked = dg.materialize(
        stages,
        instance=instance,
        resources=resources,
        partition_key=bad,
        raise_on_error=False,
        selection=dg.AssetSelection.checks_for_assets(candidates) | dg.AssetSelection.assets(image_shards),
    )
    assert _stage_steps(blocked) == {"candidates_checks": "STEP_FAILURE"}  # image_shards never started
    status = instance.get_status_by_partition(image_shards.key, [good, bad], segments)
    assert status == {good: dg.AssetPartitionStatus.MATERIALIZED, bad: dg.AssetPartitionStatus.FAILED}
    assert not data_root.exists(data_root.path("image_shards", bad))


def test_a_segment_through_all_three_stages_passes_every_check(two_segments_on_the_local_web, data_root):
    instance, resources, (good, _) = two_segments_on_the_local_web
    stages = [candidates, candidates_checks, image_shards, image_shards_checks, clip_pairs, clip_pairs_checks]
    result = dg.materialize(
        stages,
        instance=instance,
        partition_key=good,
        resources={**resources, "clip_scorer": ClipScorer.tiny(batch_size=8, decode_workers=1)},
    )
    assert result.success
    evaluations = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert len(evaluations) == len(CANDIDATES_CHECKS) + len(IMAGE_SHARDS_CHECKS) + len(CLIP_PAIRS_CHECKS)
    assert all(e.passed and e.partition == good for e in evaluations), [
        (e.check_name, e.description) for e in evaluations if not e.passed
    ]
    kept = check_clip_pairs(data_root, good)["kept_rows_pass_threshold"].metadata
    assert kept["scored"] > 0 and kept["kept"] > 0  # the tiny CLIP knows the sample crawl's shapes
