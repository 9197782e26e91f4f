"""The release: kept pairs of many segments in LAION-style parquet files of bounded size."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from contract_layout import Pair, write_segment

from cah_resources.dataset.release import (
    RELEASE_SCHEMA,
    build_release,
    read_release,
    release_dir,
)
from cah_resources.storage import DataRoot

LAION_COLUMNS = ["URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "LANGUAGE", "NSFW", "punsafe", "pwatermark"]


def segment_pairs(tag: str) -> list[Pair]:
    return [
        Pair(f"http://a.test/{tag}/1.jpg", f"a red bicycle {tag}", original_size=(800, 600)),
        Pair(f"http://a.test/{tag}/2.jpg", f"ein Hund {tag}", "multi", "de", similarity=0.27),
        Pair(f"http://b.test/{tag}/3.jpg", f"{tag} 12345", "nolang", "und", similarity=0.29),
        Pair(f"http://b.test/{tag}/4.jpg", f"a cat {tag}", similarity=0.20),  # below threshold
        Pair(f"http://c.test/{tag}/5.jpg", f"a tree {tag}", status="http_404"),
        Pair(f"http://c.test/{tag}/6.jpg", f"une maison {tag}", "multi", "fr", similarity=0.25),
        Pair(f"http://d.test/{tag}/7.jpg", f"a beach {tag}", nsfw="UNSURE", nsfw_score=0.6),
    ]


@pytest.fixture
def root(tmp_path) -> DataRoot:
    return DataRoot(str(tmp_path / "data"))


def test_release_holds_exactly_the_kept_pairs_of_every_segment_in_laion_columns(root):
    written = {s: write_segment(root, s, segment_pairs(s)) for s in ("CC-X_00000", "CC-X_00001")}
    out = release_dir(root, "CC-X")
    summary = build_release(root, written, out)
    table = read_release(root, out)

    assert table.schema == RELEASE_SCHEMA
    assert table.column_names[: len(LAION_COLUMNS)] == LAION_COLUMNS
    expected = {(s, p.uid) for s, pairs in written.items() for p in pairs if p.kept}
    assert set(zip(table.column("segment").to_pylist(), table.column("uid").to_pylist(), strict=False)) == expected
    assert summary.rows == table.num_rows == len(expected) == 8
    by_uid = {row["uid"]: row for row in table.to_pylist()}
    bicycle = next(p for p in written["CC-X_00000"] if p.text.startswith("a red bicycle"))
    row = by_uid[bicycle.uid]
    assert (row["URL"], row["TEXT"], row["WIDTH"], row["HEIGHT"]) == (bicycle.url, bicycle.text, 800, 600)
    assert row["LANGUAGE"] == "en" and row["category"] == "en" and row["NSFW"] == "UNLIKELY"
    beach = next(p for p in written["CC-X_00001"] if p.text.startswith("a beach"))
    assert by_uid[beach.uid]["NSFW"] == "UNSURE"
    assert by_uid[beach.uid]["punsafe"] == pytest.approx(0.6)


def test_release_counts_pairs_per_category_nsfw_language_and_segment(root):
    segments = ["CC-X_00000", "CC-X_00001", "CC-X_00002"]
    for segment in segments:
        write_segment(root, segment, segment_pairs(segment))
    summary = build_release(root, segments, release_dir(root, "CC-X"))
    assert summary.by_category == {"en": 6, "multi": 3, "nolang": 3}
    assert summary.by_nsfw == {"UNLIKELY": 9, "UNSURE": 3}
    assert summary.by_language == {"de": 3, "en": 6, "und": 3}
    assert summary.by_segment == {s: 4 for s in segments}
    assert summary.pairs_scored == 18  # the 404s never reached clip_pairs
    manifest = root.read_json(f"{release_dir(root, 'CC-X')}/release.json")
    assert manifest["by_category"] == summary.by_category and manifest["rows"] == 12


def test_release_files_hold_at_most_rows_per_file_rows_in_segment_and_shard_order(root):
    segments = ["CC-X_00001", "CC-X_00000"]
    for segment in segments:
        write_segment(root, segment, segment_pairs(segment), shard_size=2)
    out = release_dir(root, "CC-X")
    summary = build_release(root, segments, out, rows_per_file=3)

    assert [f.rows for f in summary.files] == [3, 3, 2]
    for file in summary.files:
        assert pq.read_metadata(f"{out}/{file.path}").num_rows == file.rows
    keys = list(zip(*(read_release(root, out).column(c).to_pylist() for c in ("segment", "key")), strict=False))
    assert keys == sorted(keys)


def test_a_rebuild_of_the_same_inputs_is_byte_identical(root):
    write_segment(root, "CC-X_00000", segment_pairs("x"))
    out = release_dir(root, "CC-X")
    first = build_release(root, ["CC-X_00000"], out, rows_per_file=2)
    before = {f.path: root.read_bytes(f"{out}/{f.path}") for f in first.files}
    second = build_release(root, ["CC-X_00000"], out, rows_per_file=2)
    assert second.build == first.build
    assert {f.path: root.read_bytes(f"{out}/{f.path}") for f in second.files} == before


def test_a_new_segment_makes_a_new_build_and_removes_the_old_one(root):
    write_segment(root, "CC-X_00000", segment_pairs("x"))
    out = release_dir(root, "CC-X")
    old = build_release(root, ["CC-X_00000"], out)
    write_segment(root, "CC-X_00001", segment_pairs("y"))
    new = build_release(root, ["CC-X_00000", "CC-X_00001"], out)
    assert new.build != old.build
    assert root.listdir(out) == sorted([new.build, "release.json"])
    assert read_release(root, out).num_rows == 8


def test_unfinished_shards_and_unscored_segments_are_left_out_and_named(root):
    write_segment(root, "CC-X_00000", segment_pairs("x"), shard_size=4, finish_clip_shards=1)
    summary = build_release(root, ["CC-X_00000", "CC-X_00009"], release_dir(root, "CC-X"))
    assert summary.unfinished_shards == ["CC-X_00000/00001"]
    assert summary.missing_segments == ["CC-X_00009"]
    assert summary.shards == 1
    table = read_release(root, release_dir(root, "CC-X"))
    assert set(table.column("key").to_pylist()) <= {f"00000{i:05d}" for i in range(4)}


def test_a_release_of_nothing_is_an_empty_table_with_the_release_columns(root):
    out = release_dir(root, "CC-X")
    summary = build_release(root, [], out)
    assert summary.rows == 0 and summary.files == []
    assert read_release(root, out).schema == RELEASE_SCHEMA


def test_clip_pairs_without_a_required_column_fail_in_one_line_naming_the_file(root):
    write_segment(root, "CC-X_00000", segment_pairs("x"))
    path = root.path("clip_pairs", "CC-X_00000", "00000.parquet")
    root.write_parquet(path, root.read_parquet(path).drop_columns(["nsfw"]))
    with pytest.raises(ValueError, match=r"00000\.parquet lacks columns \['nsfw'\]") as error:
        build_release(root, ["CC-X_00000"], release_dir(root, "CC-X"))
    assert "\n" not in str(error.value)


def test_width_and_height_fall_back_to_the_stored_size_when_the_original_is_unknown(root):
    write_segment(root, "CC-X_00000", segment_pairs("x"))
    path = root.path("clip_pairs", "CC-X_00000", "00000.parquet")
    table = root.read_parquet(path)
    nulls = pa.nulls(table.num_rows, pa.int32())
    table = table.set_column(table.schema.get_field_index("original_width"), "original_width", nulls)
    root.write_parquet(path, table)
    build_release(root, ["CC-X_00000"], release_dir(root, "CC-X"))
    release = read_release(root, release_dir(root, "CC-X")).to_pylist()
    first_shard = [row for row in release if row["key"].startswith("00000")]
    assert first_shard and all(row["WIDTH"] == 256 for row in first_shard)


def test_merged_embeddings_of_a_crawl_read_as_one_clip_retrieval_folder(root):
    import numpy as np

    from cah_assets.resources import ClipScorer
    from cah_resources.clip_pairs.stage import ClipPairsUnit, score_image_shard
    from cah_resources.contract import release_embeddings_folder
    from cah_resources.dataset.release import finished_clip_pairs_shards, merge_embeddings
    from cah_resources.samples.tiny_clip.shapes import ShardSample, sample_pairs, write_image_shard

    settings = ClipScorer.tiny(batch_size=8, decode_workers=1, write_embeddings=True).settings()
    segments = ("CC-X_00000", "CC-X_00001")
    for seed, segment in enumerate(segments):  # shard 00000 in both: the per-segment file names collide
        samples = [ShardSample(caption, jpeg, "en", "en") for _, _, caption, jpeg in sample_pairs(6, seed)]
        write_image_shard(root, segment, 0, samples)
        score_image_shard(ClipPairsUnit(root, segment, 0), settings)
    out = release_embeddings_folder(root, "CC-X")
    assert merge_embeddings(root, finished_clip_pairs_shards(root, segments)[0], out) == {"embeddings": 2}

    # What autofaiss / clip-retrieval do: every .npy of img_emb/ in name order, metadata/ in the same order.
    folder = f"{out}/embeddings"
    names = {kind: root.listdir(f"{folder}/{kind}") for kind in ("img_emb", "text_emb", "metadata")}
    assert len(names["img_emb"]) == len(set(names["img_emb"])) == 2
    parts = [[n.removeprefix(f"{kind}_").rsplit(".", 1)[0] for n in names[kind]] for kind in names]
    assert parts[0] == parts[1] == parts[2] == ["CC-X_00000-00000", "CC-X_00001-00000"]
    images = np.concatenate([np.load(root.fs.open(f"{folder}/img_emb/{n}", "rb")) for n in names["img_emb"]])
    texts = np.concatenate([np.load(root.fs.open(f"{folder}/text_emb/{n}", "rb")) for n in names["text_emb"]])
    metadata = pa.concat_tables(
        [pq.read_table(root.fs.open(f"{folder}/metadata/{n}", "rb")) for n in names["metadata"]]
    )
    assert images.shape[0] == texts.shape[0] == metadata.num_rows == 12
    assert len(set(metadata.column("uid").to_pylist())) == 12
    # Row i of the embeddings is row i of the metadata: their product is the similarity recorded for that pair.
    similarity = (images.astype(np.float32) * texts.astype(np.float32)).sum(axis=1)
    np.testing.assert_allclose(similarity, metadata.column("similarity").to_numpy(), atol=2e-2)
    try:
        import faiss
    except ImportError:
        return  # faiss-cpu is optional: the numpy reading above is what its readers do
    index = faiss.IndexFlatIP(images.shape[1])
    index.add(images.astype(np.float32))
    assert index.ntotal == metadata.num_rows


def test_merging_again_removes_embeddings_of_shards_no_longer_finished(root):
    from cah_resources.dataset.release import ClipPairsShard, merge_embeddings

    stale = f"{root.path('release', 'CC-X')}/embeddings/embeddings/img_emb/img_emb_CC-X_00009-00000.npy"
    root.write_bytes(stale, b"old")
    out = root.path("release", "CC-X", "embeddings")
    assert merge_embeddings(root, [ClipPairsShard("CC-X_00000", "00000", "", b"")], out) == {}
    assert not root.exists(stale)


def test_the_manifest_names_the_signals_every_shard_honoured_and_each_list_once(root):
    url_list = {"kind": "url", "source": "s3://lists/urls.sha256", "entries": 12, "sha256": "ab" * 32}
    image_list = {"kind": "image", "source": "/lists/images.md5", "entries": 3, "sha256": "cd" * 32}
    for n, segment in enumerate(("CC-X_00000", "CC-X_00001")):
        write_segment(root, segment, segment_pairs(segment), shard_size=4)
        stats_path = root.path("candidates", segment, "stats.json")
        root.write_json(stats_path, {**root.read_json(stats_path), "blocklists": [url_list]})
        folder = root.path("image_shards", segment)
        for i, name in enumerate(sorted(n for n in root.listdir(folder) if n.endswith(".done"))):
            # The very last shard ran with the TDMRep check off: the release cannot claim it.
            signals = ["robots_noai", "robots_txt"] + ([] if (n, i) == (1, 1) else ["tdmrep"])
            root.write_json(
                f"{folder}/{name}",
                {**root.read_json(f"{folder}/{name}"), "opt_out_signals": signals, "blocklists": [image_list]},
            )
    out = release_dir(root, "CC-X")
    build_release(root, ["CC-X_00000", "CC-X_00001"], out)
    manifest = root.read_json(f"{out}/release.json")
    assert manifest["honoured"] == {
        "opt_out_signals": ["robots_noai", "robots_txt"],
        "blocklists": [image_list, url_list],
    }
