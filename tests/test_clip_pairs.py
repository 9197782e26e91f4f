"""The clip_pairs stage on hand-built image shards: scored rows, corrupt images, outputs, idempotence."""

from __future__ import annotations

import io
import os
import random
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from stops import files_under, stopped_on_open

from cah_assets.resources import ClipScorer
from cah_resources.clip_pairs.stage import (
    ClipPairsUnit,
    pending_units,
    score_image_shard,
    shard_summaries,
    summarize,
)
from cah_resources.contract import CLIP_FIELDS, shard_row_schema
from cah_resources.samples.tiny_clip.shapes import ALL_SHAPES, ShardSample, captions, sample_pairs, write_image_shard
from cah_resources.storage import DataRoot

SEGMENT = "CC-MAIN-2024-10_00007"
STAGE2_COLUMNS = shard_row_schema().names
CLIP_COLUMNS = CLIP_FIELDS.names


def shape_samples(n: int, seed: int) -> tuple[list[ShardSample], list[bool]]:
    """``n`` samples in every category, half of them with a caption for another shape."""
    rng = random.Random(seed)
    samples, matching = [], []
    for item, language, _, jpeg in sample_pairs(n, seed):
        category = "en" if language == "en" else rng.choice(["multi", "nolang"])
        match = rng.random() < 0.5
        shown = item if match else rng.choice([s for s in ALL_SHAPES if s != item])
        samples.append(ShardSample(rng.choice(captions(shown, language)), jpeg, category, language))
        matching.append(match)
    return samples, matching


@pytest.fixture()
def root(tmp_path) -> DataRoot:
    return DataRoot(str(tmp_path / "data"))


def settings(**overrides):
    return ClipScorer.tiny(**{"batch_size": 8, "decode_workers": 2, **overrides}).settings()


def read(root: DataRoot, *parts: str):
    return root.read_parquet(root.path("clip_pairs", SEGMENT, *parts))


def test_every_ok_row_is_scored_with_similarity_threshold_kept_and_unknown_tags_from_the_tiny_model(root):
    samples, matching = shape_samples(40, seed=1)
    failed = ShardSample("a red circle", None, status="http_error")
    write_image_shard(root, SEGMENT, 0, [*samples, failed])

    summary = score_image_shard(ClipPairsUnit(root, SEGMENT, 0), settings())
    table = read(root, "00000.parquet")

    assert table.column_names[: len(STAGE2_COLUMNS)] == STAGE2_COLUMNS
    assert set(CLIP_COLUMNS) <= set(table.column_names)
    assert table.num_rows == 40 and set(table.column("status").to_pylist()) == {"ok"}
    rows = table.to_pylist()
    assert all(r["clip_status"] == "scored" for r in rows)
    assert all(r["kept"] == (r["similarity"] >= r["threshold"]) for r in rows)
    assert all(r["threshold"] == pytest.approx(0.28 if r["category"] in ("en", "nolang") else 0.26) for r in rows)
    # The tiny model is a local checkpoint that never learnt the tag prompts: its tags are unknown, not NSFW.
    assert all(r["nsfw"] is None and r["nsfw_score"] is None and r["watermark_score"] is None for r in rows)
    agreement = np.mean([r["kept"] == m for r, m in zip(rows, matching, strict=False)])
    assert agreement >= 0.9
    assert summary["pairs"] == 40 and sum(summary["kept"].values()) == sum(r["kept"] for r in rows)
    assert summary["device"] == "cpu" and summary["precision"] == "fp32"


def test_a_corrupt_image_yields_an_unreadable_row_and_every_other_row_is_scored(root):
    samples, _ = shape_samples(12, seed=2)
    good = samples[5].image
    samples[5] = ShardSample(samples[5].text, good[: len(good) // 3], samples[5].category)  # truncated JPEG
    samples[8] = ShardSample(samples[8].text, b"<html>not an image</html>", samples[8].category)
    write_image_shard(root, SEGMENT, 0, samples)

    summary = score_image_shard(ClipPairsUnit(root, SEGMENT, 0), settings())
    rows = read(root, "00000.parquet").to_pylist()

    broken = {i: rows[i] for i in (5, 8)}
    assert all(r["clip_status"] == "image_unreadable" and r["clip_error"] for r in broken.values())
    assert all(r["similarity"] is None and r["kept"] is False and r["nsfw"] is None for r in broken.values())
    others = [r for i, r in enumerate(rows) if i not in broken]
    assert len(others) == 10 and all(r["clip_status"] == "scored" and r["similarity"] is not None for r in others)
    assert summary["not_scored"] == {"image_unreadable": 2}


def test_decoding_on_the_model_device_isolates_a_corrupt_image_and_agrees_with_pil(root):
    samples, _ = shape_samples(12, seed=2)
    samples[6] = ShardSample(samples[6].text, b"\xff\xd8\xff\xe0 not really a jpeg", samples[6].category)
    write_image_shard(root, SEGMENT, 0, samples)
    unit = ClipPairsUnit(root, SEGMENT, 0)
    score_image_shard(unit, settings())
    with_pil = read(root, "00000.parquet").to_pylist()
    root.remove(root.path("clip_pairs"))

    # torchvision's decoder on the model's device: nvJPEG on a GPU, libjpeg-turbo here.
    score_image_shard(unit, settings(decode="torch"))
    on_device = read(root, "00000.parquet").to_pylist()

    assert on_device[6]["clip_status"] == "image_unreadable" and on_device[6]["clip_error"]
    others = [i for i in range(12) if i != 6]
    assert all(on_device[i]["clip_status"] == "scored" for i in others)
    assert [on_device[i]["kept"] for i in others] == [with_pil[i]["kept"] for i in others]
    assert max(abs(on_device[i]["similarity"] - with_pil[i]["similarity"]) for i in others) < 0.05


def test_an_ok_row_without_an_image_in_the_tar_is_recorded_as_missing(root):
    samples, _ = shape_samples(6, seed=3)
    write_image_shard(root, SEGMENT, 0, samples)
    tar_path = root.path("image_shards", SEGMENT, "00000.tar")
    kept_members = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(root.read_bytes(tar_path))) as source,
        tarfile.open(fileobj=kept_members, mode="w") as out,
    ):
        for member in source.getmembers():
            if not member.name.startswith("0000000002."):
                out.addfile(member, source.extractfile(member))
    root.write_bytes(tar_path, kept_members.getvalue())

    score_image_shard(ClipPairsUnit(root, SEGMENT, 0), settings())
    rows = read(root, "00000.parquet").to_pylist()

    assert rows[2]["clip_status"] == "image_missing" and rows[2]["kept"] is False
    assert [r["clip_status"] for i, r in enumerate(rows) if i != 2] == ["scored"] * 5


def test_an_unknown_category_is_recorded_not_scored(root):
    samples, _ = shape_samples(4, seed=4)
    samples[1] = ShardSample(samples[1].text, samples[1].image, category="klingon")
    write_image_shard(root, SEGMENT, 0, samples)

    score_image_shard(ClipPairsUnit(root, SEGMENT, 0), settings())
    rows = read(root, "00000.parquet").to_pylist()

    assert rows[1]["clip_status"] == "unknown_category" and "klingon" in rows[1]["clip_error"]
    assert [r["clip_status"] for i, r in enumerate(rows) if i != 1] == ["scored"] * 3


def test_kept_view_holds_exactly_the_kept_pairs(root):
    samples, _ = shape_samples(24, seed=5)
    write_image_shard(root, SEGMENT, 0, samples)

    score_image_shard(ClipPairsUnit(root, SEGMENT, 0), settings())
    everything, kept = read(root, "00000.parquet"), read(root, "kept", "00000.parquet")

    assert kept.to_pylist() == [r for r in everything.to_pylist() if r["kept"]]
    assert 0 < kept.num_rows < everything.num_rows


def test_clip_retrieval_embedding_layout_loads_with_numpy_and_pyarrow(root):
    samples, _ = shape_samples(20, seed=6)
    samples[3] = ShardSample(samples[3].text, b"garbage", samples[3].category)
    write_image_shard(root, SEGMENT, 0, samples)

    score_image_shard(ClipPairsUnit(root, SEGMENT, 0), settings(write_embeddings=True))
    folder = root.path("clip_pairs", SEGMENT, "embeddings")
    images = np.load(f"{folder}/img_emb/img_emb_00000.npy")
    texts = np.load(f"{folder}/text_emb/text_emb_00000.npy")
    metadata = pq.read_table(f"{folder}/metadata/metadata_00000.parquet")
    scored_rows = [r for r in read(root, "00000.parquet").to_pylist() if r["clip_status"] == "scored"]

    assert images.dtype == np.float16 and texts.dtype == np.float16
    assert images.shape == texts.shape == (19, 64) == (metadata.num_rows, 64)
    assert metadata.column("image_path").to_pylist() == [r["key"] for r in scored_rows]
    assert metadata.column("caption").to_pylist() == [r["text"] for r in scored_rows]
    np.testing.assert_allclose(np.linalg.norm(images.astype(np.float32), axis=1), 1.0, atol=2e-3)
    recomputed = (images.astype(np.float32) * texts.astype(np.float32)).sum(1)
    np.testing.assert_allclose(recomputed, metadata.column("similarity").to_numpy(), atol=5e-3)


def test_a_finished_shard_is_never_redone(root):
    samples, _ = shape_samples(8, seed=7)
    write_image_shard(root, SEGMENT, 0, samples)
    unit = ClipPairsUnit(root, SEGMENT, 0)
    first = score_image_shard(unit, settings())
    parquet = root.path("clip_pairs", SEGMENT, "00000.parquet")
    before = root.read_bytes(parquet)
    root.write_bytes(root.path("image_shards", SEGMENT, "00000.tar"), b"")  # would fail if read again

    again = score_image_shard(unit, settings())

    assert again == first and root.read_bytes(parquet) == before
    assert pending_units(root, SEGMENT) == []


def test_a_redo_keeps_the_scored_shard_and_its_marker_until_new_outputs_replace_them(root):
    """A redo run stopped part way (Ctrl-C, Terminate) must not leave a scored shard unmarked."""
    samples, _ = shape_samples(8, seed=9)
    write_image_shard(root, SEGMENT, 0, samples)
    unit = ClipPairsUnit(root, SEGMENT, 0)
    first = score_image_shard(unit, settings())
    scores = read(root, "00000.parquet").column("similarity")
    folder = root.path("clip_pairs", SEGMENT)
    before = files_under(folder)

    with stopped_on_open(root.path("image_shards", SEGMENT, "00000.tar")):  # scoring its images
        score_image_shard(unit, settings(), redo=True)

    assert files_under(folder) == before and pending_units(root, SEGMENT) == []
    written = {path: os.stat(path).st_mtime_ns for path in (unit.marker, unit.table)}
    again = score_image_shard(unit, settings(), redo=True)
    assert all(os.stat(path).st_mtime_ns > made for path, made in written.items())  # made again
    assert root.read_json(unit.marker) == again
    assert {**again, "task_seconds": 0} == {**first, "task_seconds": 0}  # the same model on the same images
    assert np.allclose(read(root, "00000.parquet").column("similarity").to_numpy(), scores.to_numpy(), atol=1e-5)


def test_a_shard_rerun_after_an_interruption_gives_the_same_rows(root):
    samples, _ = shape_samples(10, seed=8)
    samples[4] = ShardSample(samples[4].text, b"\xff\xd8\xff\xe0 broken", samples[4].category)
    write_image_shard(root, SEGMENT, 0, samples)
    unit = ClipPairsUnit(root, SEGMENT, 0)
    score_image_shard(unit, settings())
    first = read(root, "00000.parquet")
    root.remove(unit.marker)  # as if the worker died before writing it

    assert pending_units(root, SEGMENT) == [unit]
    score_image_shard(unit, settings())

    assert read(root, "00000.parquet").equals(first)


def test_other_batch_sizes_give_the_same_rows_up_to_float_rounding(root):
    write_image_shard(root, SEGMENT, 0, shape_samples(10, seed=8)[0])
    unit = ClipPairsUnit(root, SEGMENT, 0)
    score_image_shard(unit, settings())
    first = read(root, "00000.parquet")
    root.remove(unit.marker)

    score_image_shard(unit, settings(batch_size=3, decode_workers=1))
    again = read(root, "00000.parquet")

    scores = ["similarity", "nsfw_score", "watermark_score"]
    assert again.drop_columns(scores).equals(first.drop_columns(scores))
    for column in scores:
        np.testing.assert_allclose(again.column(column).to_numpy(), first.column(column).to_numpy(), atol=1e-5)


def test_pending_units_are_finished_image_shards_without_a_clip_pairs_marker(root):
    for shard in range(3):
        write_image_shard(root, SEGMENT, shard, shape_samples(2, seed=shard)[0])
    root.remove(root.path("image_shards", SEGMENT, "00002.done"))  # stage 2 still writing it
    score_image_shard(ClipPairsUnit(root, SEGMENT, 0), settings())

    assert pending_units(root, SEGMENT) == [ClipPairsUnit(root, SEGMENT, 1)]


def test_a_truncated_tar_fails_the_shard_with_a_one_line_error(root):
    samples, _ = shape_samples(6, seed=9)
    write_image_shard(root, SEGMENT, 0, samples)
    tar_path = root.path("image_shards", SEGMENT, "00000.tar")
    data = root.read_bytes(tar_path)
    root.write_bytes(tar_path, data[: len(data) // 2 + 100])

    with pytest.raises(RuntimeError, match=r"00000.tar is unreadable .* rematerialize image_shards") as error:
        score_image_shard(ClipPairsUnit(root, SEGMENT, 0), settings())
    assert "\n" not in str(error.value)
    assert not root.exists(ClipPairsUnit(root, SEGMENT, 0).marker)


def test_a_shard_with_no_ok_rows_writes_an_empty_table_and_its_marker(root):
    write_image_shard(root, SEGMENT, 0, [ShardSample("a red circle", None, status="http_error")])

    summary = score_image_shard(ClipPairsUnit(root, SEGMENT, 0), settings())

    assert read(root, "00000.parquet").num_rows == 0 and summary["pairs"] == 0
    assert root.exists(ClipPairsUnit(root, SEGMENT, 0).marker)


def test_segment_summary_adds_up_shards_per_category(root):
    for shard in range(2):
        write_image_shard(root, SEGMENT, shard, shape_samples(10, seed=20 + shard)[0])
        score_image_shard(ClipPairsUnit(root, SEGMENT, shard), settings())
    tables = [read(root, f"{s:05d}.parquet").to_pylist() for s in range(2)]
    rows = tables[0] + tables[1]

    totals = summarize(shard_summaries(root, SEGMENT))

    assert totals.pairs_scored == 20 == sum(totals.histogram)
    assert totals.kept == {c: sum(r["kept"] for r in rows if r["category"] == c) for c in totals.kept}
    assert totals.kept_rate == round(sum(r["kept"] for r in rows) / 20, 4)
