"""clip_pairs on a registered webdataset: img2dataset-like tars read where they are, scored like own shards."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from s3_peer import new_bucket_root, s3_endpoint
from webdataset_inputs import img2dataset_members, tar_bytes, write_webdataset

from cah_assets.resources import ClipScorer
from cah_resources.clip_pairs.stage import ClipPairsUnit, pending_units, score_image_shard
from cah_resources.contract import FORMAT_WEBDATASET, Damage, shard_row_schema
from cah_resources.crawl.segments import register_dataset
from cah_resources.dataset.release import build_release, read_release
from cah_resources.dataset.report import collect_facts
from cah_resources.samples.tiny_clip.shapes import ShardSample, sample_pairs, write_image_shard
from cah_resources.storage import DataRoot

SEGMENT = "CC-MAIN-2024-10_00003"


def settings(**overrides):
    return ClipScorer.tiny(**{"batch_size": 8, "decode_workers": 2, **overrides}).settings()


def samples(n: int, seed: int) -> list[ShardSample]:
    return [ShardSample(caption, jpeg, "en", language) for _, language, caption, jpeg in sample_pairs(n, seed)]


@pytest.fixture(scope="module")
def s3_peer():
    with s3_endpoint() as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> DataRoot:
    if request.param == "local":
        return DataRoot(str(tmp_path / "data"))
    return new_bucket_root(request.getfixturevalue("s3_peer"))


def score_dataset(root: DataRoot, name: str, patterns: list[str], per_segment: int, **options) -> list[dict]:
    registration = register_dataset(root, name, patterns, FORMAT_WEBDATASET, files_per_segment=per_segment)
    keys = registration.keys()  # a CrawlRegistration's segment keys (not a dict)
    return [score_image_shard(unit, settings(**options)) for key in keys for unit in pending_units(root, key)]


def clip_table(root: DataRoot, segment: str, shard: int):
    return root.read_parquet(root.path("clip_pairs", segment, f"{shard:05d}.parquet"))


def test_a_registered_webdataset_gives_the_same_similarities_as_own_shards(root):
    pairs = samples(30, seed=3)
    write_image_shard(root, SEGMENT, 0, pairs)
    score_image_shard(ClipPairsUnit(root, SEGMENT, 0), settings())
    own = clip_table(root, SEGMENT, 0)
    folder = root.path("elsewhere", "laion")
    tars = write_webdataset(root.fs, folder, pairs, per_tar=12, urls=own.column("url").to_pylist())
    before = {path: hashlib.sha256(root.read_bytes(path)).hexdigest() for path in tars}

    summaries = score_dataset(root, "laion-part", [f"{folder}/{{000000..000002}}.tar"], per_segment=2)
    first, second = clip_table(root, "laion-part_00000", 0), clip_table(root, "laion-part_00000", 1)
    last = clip_table(root, "laion-part_00001", 0)
    rows = first.to_pylist() + second.to_pylist() + last.to_pylist()

    assert [s["pairs"] for s in summaries] == [12, 12, 6]
    assert [r["clip_status"] for r in rows] == ["scored"] * 30  # jpg, jpeg, png and webp alike
    np.testing.assert_allclose([r["similarity"] for r in rows], own.column("similarity").to_numpy(), atol=1e-5)
    # img2dataset's fields are taken: url, caption, sizes; the key is the sample's own.
    assert [r["url"] for r in rows] == own.column("url").to_pylist()
    assert [r["text"] for r in rows] == own.column("text").to_pylist()
    assert [r["key"] for r in rows[:3]] == ["000000000", "000000001", "000000002"]
    assert [(r["width"], r["original_width"]) for r in rows[:2]] == [(64, 128), (64, 128)]
    assert first.column_names[: len(shard_row_schema())] == shard_row_schema().names
    # The tars are read where they are: unchanged, and no copy of them under the data root.
    assert {path: hashlib.sha256(root.read_bytes(path)).hexdigest() for path in tars} == before
    assert not [p for p in root.fs.find(root.path("clip_pairs")) if p.endswith(".tar")]
    # Done once: a second pass finds nothing pending.
    assert pending_units(root, "laion-part_00000") == []


def test_samples_without_an_image_or_a_caption_are_rows_counted_with_their_reason(tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    good = samples(3, seed=4)
    members = img2dataset_members(0, good[0], None)  # no url in the json: the key stands for it
    members += [("000000001.txt", b"a caption without its image")]
    members += [("000000002.png", img2dataset_members(2, good[2], None)[0][1])]  # an image without caption
    members += [m for m in img2dataset_members(3, good[1], None) if not m[0].endswith(".txt")]  # json caption
    root.write_bytes(root.path("ext", "000000.tar"), tar_bytes(members))

    (summary,) = score_dataset(root, "odd", [root.path("ext", "*.tar")], per_segment=1)
    rows = {r["key"]: r for r in clip_table(root, "odd_00000", 0).to_pylist()}

    assert {k: r["clip_status"] for k, r in rows.items()} == {
        "000000000": "scored",
        "000000001": "image_missing",
        "000000002": "caption_missing",
        "000000003": "scored",
    }
    assert rows["000000000"]["url"] == "000000000" and rows["000000003"]["text"] == good[1].text
    assert summary["pairs"] == 4 and summary["not_scored"] == {"image_missing": 1, "caption_missing": 1}


def test_a_corrupt_member_is_counted_and_every_other_sample_scored(tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    pairs = samples(6, seed=5)
    members = [m for i, s in enumerate(pairs) for m in img2dataset_members(i, s, None)]
    members[3 * 4] = ("000000004.jpg", b"\xff\xd8\xff not a jpeg at all")  # an image that does not decode
    data = bytearray(tar_bytes(members))
    header = data.index(b"000000002.json")  # the header of sample 2's json: its checksum no longer matches
    data[header : header + 9] = b"XXXXXXXXX"
    root.write_bytes(root.path("ext", "000000.tar"), bytes(data))
    cut = tar_bytes(members[:9])
    root.write_bytes(root.path("ext", "000001.tar"), cut[: len(cut) // 2 + 700])  # cut short inside a member

    first, second = score_dataset(root, "broken", [root.path("ext", "{000000..000001}.tar")], per_segment=2)
    statuses = {r["key"]: r["clip_status"] for r in clip_table(root, "broken_00000", 0).to_pylist()}
    cut_rows = clip_table(root, "broken_00000", 1).to_pylist()

    assert statuses == {f"00000000{i}": "scored" for i in (0, 1, 2, 3, 5)} | {"000000004": "image_unreadable"}
    assert first["damage"] == {Damage.CORRUPT_TAR: 1}
    assert second["damage"] == {Damage.CORRUPT_TAR: 1}
    assert cut_rows and all(r["clip_status"] == "scored" for r in cut_rows[:-1])


def test_release_and_report_read_a_webdataset_like_a_crawl(tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    pairs = samples(16, seed=6)
    urls = [f"https://img.example/{i}.jpg" if i % 2 else None for i in range(16)]
    write_webdataset(root.fs, root.path("ext"), pairs, per_tar=8, urls=urls)
    score_dataset(root, "wds", [root.path("ext", "*.tar")], per_segment=2, write_embeddings=True, **{})
    kept = clip_table(root, "wds_00000", 0).to_pylist() + clip_table(root, "wds_00000", 1).to_pylist()
    kept = [r for r in kept if r["kept"]]

    build_release(root, ["wds_00000"], root.path("release", "wds"))
    release = read_release(root, root.path("release", "wds")).to_pylist()
    facts = collect_facts(root, ["wds_00000"])

    assert kept and len(release) == len(kept)
    assert [r["URL"] for r in release] == [r["url"] for r in kept]
    assert {r["URL"] for r in release} <= {u for u in urls if u} | {f"{i:09d}" for i in range(16)}
    assert all(r["TEXT"] and r["WIDTH"] for r in release)
    assert sum(facts.funnel["downloaded"].values()) == 16 and sum(facts.funnel["kept"].values()) == len(kept)
    assert facts.missing["candidates"] == facts.missing["image_shards"] == []


def test_readme_filters_an_img2dataset_output_with_register_and_materialize(capsys, tmp_path, monkeypatch):
    """README "Filtering an existing webdataset": `cah register ... --format webdataset` + `cah materialize`."""
    from cah_assets import cli
    from cah_assets.deployment import Deployment, write_deployment

    home, data, folder = tmp_path / "home", str(tmp_path / "data"), str(tmp_path / "img2dataset_out")
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    write_deployment(str(home), Deployment("demo", data_root=data))  # the demo's tiny CLIP: no weights to fetch
    write_webdataset(DataRoot(folder).fs, folder, samples(10, seed=7), per_tar=5)

    registered = cli.main(
        ["register", "laion-part", "--format", "webdataset", "--files", f"{folder}/{{000000..000001}}.tar"]
    )
    materialized = cli.main(["materialize", "laion-part", "--stage", "clip_pairs"])
    out, _ = capsys.readouterr()
    root = DataRoot(data)
    rows = clip_table(root, "laion-part_00000", 0).to_pylist() + clip_table(root, "laion-part_00001", 0).to_pylist()

    assert registered == 0 and "laion-part: 2 webdataset files, 1 per segment, 2 segments" in out
    assert materialized == 0, out
    assert len(rows) == 10 and all(r["clip_status"] == "scored" for r in rows)
    kept = root.read_parquet(root.path("clip_pairs", "laion-part_00000", "kept", "00000.parquet"))
    assert kept.num_rows == sum(r["kept"] for r in rows[:5])
