"""The clip_pairs asset materialized through Dagster on an in-process Dask cluster with the tiny CLIP."""

from __future__ import annotations

import dagster as dg
import pytest

from cah_assets.resources import ClipScorer, ComputeResource, StorageResource
from cah_assets.stages.clip_pairs import clip_pairs
from cah_resources.clip_pairs.stage import shard_summaries
from cah_resources.samples.tiny_clip.shapes import ShardSample, sample_pairs, write_image_shard
from cah_resources.storage import DataRoot

SEGMENT = "CC-MAIN-2024-10_00003"


@pytest.fixture()
def data(tmp_path) -> DataRoot:
    root = DataRoot(str(tmp_path / "data"))
    pairs = sample_pairs(30, seed=11)
    for shard in range(2):
        samples = [
            ShardSample(caption, jpeg, "en" if language == "en" else "multi", language)
            for _, language, caption, jpeg in pairs[shard * 15 : (shard + 1) * 15]
        ]
        if shard == 1:
            samples.append(ShardSample("a broken download", b"not a jpeg"))
        write_image_shard(root, SEGMENT, shard, samples)
    return root


def materialize(
    root: DataRoot, compute: ComputeResource, run_config=None, raise_on_error: bool = True
) -> dg.ExecuteInProcessResult:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("segments", [SEGMENT])
    return dg.materialize(
        [clip_pairs],
        partition_key=SEGMENT,
        instance=instance,
        resources={
            "compute": compute,
            "storage": StorageResource(root=root.url),
            "clip_scorer": ClipScorer.tiny(batch_size=8, decode_workers=1),
        },
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def test_a_segment_materializes_with_the_numbers_a_person_asks_for(data):
    result = materialize(data, ComputeResource(n_workers=1, processes=False, local_gpus=0))

    metadata = result.asset_materializations_for_node("clip_pairs")[0].metadata
    assert result.success
    assert metadata["pairs_scored"].value == 30 and metadata["shards"].value == 2
    assert metadata["pairs_scored_en"].value + metadata["pairs_scored_multi"].value == 30
    kept = metadata["pairs_kept_en"].value + metadata["pairs_kept_multi"].value
    assert kept == metadata["pairs_kept"].value and 25 <= kept <= 30  # every caption here matches its picture
    assert metadata["kept_rate"].value == round(kept / 30, 4)
    assert {r.data["clip_status"]: r.data["count"] for r in metadata["not_scored"].records} == {"image_unreadable": 1}
    histogram = metadata["similarity_histogram"]
    assert [c.name for c in histogram.schema.columns] == ["similarity", "pairs", "bar"]
    assert sum(r.data["pairs"] for r in histogram.records) == 30
    assert (metadata["device"].value, metadata["precision"].value) == ("cpu", "fp32")
    assert metadata["pairs_per_s"].value > 0 and metadata["shards_scored_now"].value == 2
    assert all("cah-tiny-clip" in r.data["model"] for r in metadata["models"].records)


def test_a_rematerialized_segment_scores_nothing_again_unless_the_run_says_redo(data):
    compute = ComputeResource(n_workers=1, processes=False, local_gpus=0)
    first = materialize(data, compute).asset_materializations_for_node("clip_pairs")[0].metadata

    second = materialize(data, compute).asset_materializations_for_node("clip_pairs")[0].metadata

    assert second["shards_scored_now"].value == 0
    assert second["pairs_kept"].value == first["pairs_kept"].value
    assert second["pairs_scored"].value == first["pairs_scored"].value

    redo = materialize(data, compute, {"ops": {"clip_pairs": {"config": {"redo": True}}}})
    again = redo.asset_materializations_for_node("clip_pairs")[0].metadata
    assert again["shards_scored_now"].value == first["shards"].value > 0
    assert again["pairs_kept"].value == first["pairs_kept"].value


def test_shards_run_on_the_worker_advertising_a_gpu_when_there_is_one(data):
    result = materialize(data, ComputeResource(n_workers=2, processes=False, local_gpus=1, processes_per_gpu=1))

    assert result.success
    assert {s["worker"] for s in shard_summaries(data, SEGMENT)} == {"gpu-0"}


def _candidates(root: DataRoot, segment: str, rows: int) -> None:
    import pyarrow as pa

    from cah_resources.contract import CANDIDATES_SCHEMA, candidates_path

    row = {name: "x" for name in CANDIDATES_SCHEMA.names} | {"language_prob": 0.9}
    table = pa.Table.from_pylist([{**row, "uid": f"{i:032x}"} for i in range(rows)], schema=CANDIDATES_SCHEMA)
    root.write_parquet(candidates_path(root, segment), table)


def test_a_segment_with_candidates_and_no_image_shard_fails_in_one_line_before_any_work(tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    compute = ComputeResource(n_workers=1, processes=False, local_gpus=0)
    _candidates(root, SEGMENT, 40)  # image_shards never ran, or its files were lost

    result = materialize(root, compute, raise_on_error=False)

    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.event_specific_data.error.message.strip()
    assert not result.success and "\n" not in message
    assert f"{SEGMENT} has 40 candidates and no finished image shard under" in message
    assert message.endswith(f"materialize image_shards for {SEGMENT} first")
    assert not any(e.is_step_up_for_retry for e in result.all_events)  # a missing upstream is not retried

    _candidates(root, SEGMENT, 0)  # a segment with nothing to download has nothing to score
    empty = materialize(root, compute)
    assert empty.success
    assert empty.asset_materializations_for_node("clip_pairs")[0].metadata["pairs_scored"].value == 0
