"""clip_pairs on a registered webdataset: img2dataset-like tars read where they are, scored like own shards."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import webdataset as wds
from s3_peer import ACCESS_KEY, REGION, SECRET_KEY, new_bucket_root, s3_endpoint
from webdataset_inputs import EXTENSIONS, img2dataset_members, tar_bytes, write_webdataset

from cah_assets.resources import ClipScorer
from cah_resources.clip_pairs.clip_scorer import load_clip
from cah_resources.clip_pairs.stage import ClipPairsUnit, pending_units, score_image_shard
from cah_resources.contract import (
    EMBEDDING_KINDS,
    EMBEDDINGS,
    FORMAT_WEBDATASET,
    Damage,
    embedding_path,
    kept_path,
    release_embeddings_folder,
    shard_row_schema,
)
from cah_resources.crawl.segments import register_dataset
from cah_resources.dataset.release import read_release
from cah_resources.dataset.report import collect_facts
from cah_resources.samples.file_web import file_web
from cah_resources.samples.tiny_clip.shapes import ShardSample, sample_pairs, write_image_shard
from cah_resources.storage import DataRoot

SEGMENT = "CC-MAIN-2024-10_00003"
REPO = Path(__file__).resolve().parent.parent
IMG2DATASET_OUTPUT = REPO / "tests" / "data" / "img2dataset"  # made by img2dataset itself: see the script there


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


def test_samples_without_an_image_or_a_caption_are_rows_counted_with_their_reason(root):
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


def test_a_corrupt_member_is_counted_and_every_other_sample_scored(root):
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
    import dagster as dg

    from cah_assets.dataset import release, report
    from cah_assets.resources import ReportLinks, StorageResource

    root = DataRoot(str(tmp_path / "data"))
    pairs = samples(16, seed=6)
    urls = [f"https://img.example/{i}.jpg" if i % 2 else None for i in range(16)]
    write_webdataset(root.fs, root.path("ext"), pairs, per_tar=8, urls=urls)
    score_dataset(root, "wds", [root.path("ext", "*.tar")], per_segment=2, write_embeddings=True)
    kept = clip_table(root, "wds_00000", 0).to_pylist() + clip_table(root, "wds_00000", 1).to_pylist()
    kept = [r for r in kept if r["kept"]]

    resources = {"storage": StorageResource(root=root.url), "report_links": ReportLinks()}
    with dg.instance_for_test() as instance:
        assert dg.materialize([release, report], resources=resources, instance=instance).success
    release_rows = read_release(root, root.path("release", "wds")).to_pylist()
    facts = collect_facts(root, ["wds_00000"])

    assert kept and len(release_rows) == len(kept)
    assert [r["URL"] for r in release_rows] == [r["url"] for r in kept]
    assert {r["URL"] for r in release_rows} <= {u for u in urls if u} | {f"{i:09d}" for i in range(16)}
    assert all(r["TEXT"] and r["WIDTH"] for r in release_rows)
    assert sum(facts.funnel["downloaded"].values()) == 16 and sum(facts.funnel["kept"].values()) == len(kept)
    assert facts.missing["candidates"] == facts.missing["image_shards"] == []
    assert root.read_bytes(root.path("report", "wds", "funnel.png")).startswith(b"\x89PNG")
    # The embeddings, merged per dataset in clip-retrieval's layout: row i of img_emb/ is row i of metadata/.
    merged = f"{release_embeddings_folder(root, 'wds')}/{EMBEDDINGS}"
    images, metadata = [], []
    for tar in (0, 1):
        name = f"wds_00000-{tar:05d}"
        images.append(np.load(root.fs.open(embedding_path(merged, "img_emb", name), "rb")))
        metadata.append(root.read_parquet(embedding_path(merged, "metadata", name)))
        assert root.exists(embedding_path(merged, "text_emb", name))
    assert sorted(root.listdir(merged)) == sorted(kind for kind, _ in EMBEDDING_KINDS)
    table = pa.concat_tables(metadata)
    assert np.concatenate(images).shape[0] == table.num_rows == 16
    assert table.column("image_path").to_pylist() == [f"{i:09d}" for i in range(16)]
    assert [r["url"] for r in table.to_pylist() if r["kept"]] == [r["url"] for r in kept]


def readme_webdataset_commands() -> list[list[str]]:
    """The commands of the README's "Filtering an existing webdataset" block, as argument lists."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"### Filtering an existing webdataset.*?```bash\n(.*?)```", readme, re.S)
    assert block, "README.md has no bash block under 'Filtering an existing webdataset'"
    return [shlex.split(line, comments=True) for line in block[1].splitlines() if line.strip()]


def test_readme_filters_an_img2dataset_output_with_its_two_commands(capsys, tmp_path, monkeypatch):
    """README "Filtering an existing webdataset": its two commands as written, the bucket a local folder."""
    from cah_assets import cli
    from cah_assets.deployment import Deployment, write_deployment

    home, data, folder = tmp_path / "home", str(tmp_path / "data"), str(tmp_path / "img2dataset-output")
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    write_deployment(str(home), Deployment("demo", data_root=data))  # the demo's tiny CLIP: no weights to fetch
    write_webdataset(DataRoot(folder).fs, folder, samples(10, seed=7), per_tar=5)
    commands = readme_webdataset_commands()
    assert len(commands) == 2 and all(command[0] == "cah" for command in commands)

    codes = [cli.main([a.replace("s3://bucket/img2dataset-output", folder) for a in c[1:]]) for c in commands]
    out, _ = capsys.readouterr()
    crawl = commands[0][2]
    root = DataRoot(data)
    rows = [row for i in (0, 1) for row in clip_table(root, f"{crawl}_{i:05d}", 0).to_pylist()]
    kept = [row for i in (0, 1) for row in root.read_parquet(kept_path(root, f"{crawl}_{i:05d}", 0)).to_pylist()]

    assert codes == [0, 0], out
    assert f"{crawl}: 2 webdataset files, 1 per segment, 2 segments" in out
    assert len(rows) == 10 and all(r["clip_status"] == "scored" for r in rows)
    assert kept == [r for r in rows if r["kept"]]


def reference_similarities(samples: list[dict], extension: str, settings) -> np.ndarray:
    """What the model gives each sample's image and caption, outside the stage: one batch, PIL's decode."""
    loaded = load_clip(settings.models["en"], settings.device, settings.precision, settings.tokenizer)
    pixels = torch.stack([loaded.preprocess_jpeg(sample[extension]) for sample in samples])
    image, text = loaded.embed(pixels, loaded.tokenize([sample["txt"].decode() for sample in samples]))
    return (image * text).sum(dim=-1).numpy()


def test_img2dataset_own_output_is_read_as_the_webdataset_library_reads_it(root):
    """The tars img2dataset 1.47 wrote (jpg, png, webp; one URL 404'd), from a web on loopback."""
    tars = [str(IMG2DATASET_OUTPUT / f"{n:05d}.tar") for n in range(3)]
    captions = json.loads((IMG2DATASET_OUTPUT / "captions.json").read_text())
    options = settings()
    assert len(set(options.models.values())) == 1  # one tiny model for every category

    summaries = score_dataset(root, "img2dataset-out", [str(IMG2DATASET_OUTPUT / "*.tar")], per_segment=3)

    assert [s["pairs"] for s in summaries] == [11, 11, 11]
    for shard, (tar, extension) in enumerate(zip(tars, ("jpg", "png", "webp"), strict=True)):
        expected = list(wds.WebDataset(tar, shardshuffle=False))  # the webdataset library's own reading
        rows = clip_table(root, "img2dataset-out_00000", shard).to_pylist()
        docs = [json.loads(sample["json"]) for sample in expected]
        assert [r["key"] for r in rows] == [sample["__key__"] for sample in expected]
        assert "000000005" not in {r["key"] for r in rows}  # its URL 404'd: img2dataset wrote no sample
        assert all(r["clip_status"] == "scored" and r["wat_file"] == tar for r in rows)
        assert [r["url"] for r in rows] == [doc["url"] for doc in docs]
        assert [r["text"] for r in rows] == [captions[doc["url"]] for doc in docs]
        assert [(r["width"], r["height"]) for r in rows] == [(doc["width"], doc["height"]) for doc in docs]
        assert {(r["original_width"], r["original_height"]) for r in rows} == {(64, 64)}  # before its resize to 48
        assert [r["sha256"] for r in rows] == [doc["sha256"] for doc in docs]
        similarities = [r["similarity"] for r in rows]
        np.testing.assert_allclose(similarities, reference_similarities(expected, extension, options), atol=1e-5)


def test_the_gpu_path_decodes_jpegs_on_the_device_and_other_formats_with_pil(tmp_path):
    """decode="torch" is the GPU path (nvJPEG there, libjpeg-turbo here); PNG and WebP take PIL's decode."""
    root = DataRoot(str(tmp_path / "data"))
    write_webdataset(root.fs, root.path("ext"), samples(16, seed=8), per_tar=16)

    score_dataset(root, "pil", [root.path("ext", "000000.tar")], per_segment=1)
    score_dataset(root, "device", [root.path("ext", "000000.tar")], per_segment=1, decode="torch")
    with_pil, on_device = clip_table(root, "pil_00000", 0).to_pylist(), clip_table(root, "device_00000", 0)
    on_device = on_device.to_pylist()

    assert all(r["clip_status"] == "scored" for r in with_pil + on_device)
    by_extension = {ext: [i for i in range(16) if EXTENSIONS[i % len(EXTENSIONS)] == ext] for ext in EXTENSIONS}
    for ext in ("png", "webp"):  # decoded by PIL on both paths
        rows = by_extension[ext]
        np.testing.assert_allclose(
            [on_device[i]["similarity"] for i in rows], [with_pil[i]["similarity"] for i in rows], atol=1e-5
        )
    jpegs = by_extension["jpg"] + by_extension["jpeg"]  # another decoder and resize: close, not equal
    assert max(abs(on_device[i]["similarity"] - with_pil[i]["similarity"]) for i in jpegs) < 0.05


def test_a_brace_range_of_tars_over_http_without_a_folder_index_is_registered_and_scored(tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    folder = str(tmp_path / "web")
    write_webdataset(DataRoot(folder).fs, folder, samples(8, seed=9), per_tar=4)

    with file_web(folder) as web:
        base = web.url
        summaries = score_dataset(root, "over-http", [f"{base}/{{000000..000001}}.tar"], per_segment=1)
        with pytest.raises(FileNotFoundError, match=r"^1 of the 2 files named are missing: http://.*/000002\.tar$"):
            register_dataset(root, "gone", [f"{base}/{{000001..000002}}.tar"], FORMAT_WEBDATASET)
    rows = clip_table(root, "over-http_00000", 0).to_pylist() + clip_table(root, "over-http_00001", 0).to_pylist()

    assert [s["pairs"] for s in summaries] == [4, 4]
    assert all(r["clip_status"] == "scored" for r in rows)
    assert {r["wat_file"] for r in rows} == {f"{base}/000000.tar", f"{base}/000001.tar"}


def test_candidates_on_a_webdataset_segment_is_a_one_line_error_naming_its_stage(tmp_path):
    from cah_resources.candidates.image_links import CandidateFilters
    from cah_resources.crawl.common_crawl import CrawlSource
    from cah_resources.pages.html_page import PageRules
    from cah_resources.pages.segment import file_units

    root = DataRoot(str(tmp_path / "data"))
    write_webdataset(root.fs, root.path("ext"), samples(2, seed=10), per_tar=2)
    registration = register_dataset(root, "wds", [root.path("ext", "*.tar")], FORMAT_WEBDATASET)

    with pytest.raises(ValueError, match=r"^wds_00000 is a registered webdataset dataset.*--stage clip_pairs`\)$"):
        file_units(registration, "wds_00000", root, CrawlSource(), CandidateFilters(), PageRules())


SECRET = "TOKEN-S3CRET"


def _outputs_showing(root: DataRoot, secret: str) -> list[str]:
    """Every file under the data root whose bytes or (for parquet) rows hold ``secret``; the plan apart."""
    shown = []
    for path in root.fs.find(root.url):
        if path.endswith("segments.json"):
            continue
        data = root.fs.cat_file(path)
        rows = str(root.read_parquet(path).to_pylist()) if path.endswith(".parquet") else ""
        if secret.encode() in data or secret in rows:
            shown.append(path)
    return shown


def test_a_dataset_urls_credentials_reach_the_reader_and_no_row_file_log_or_metadata(s3_peer, tmp_path, caplog, capsys):
    import logging

    import boto3
    import dagster as dg

    from cah_assets.resources import ComputeResource, StorageResource
    from cah_assets.stages.clip_pairs import clip_pairs

    caplog.set_level(logging.INFO)
    root = new_bucket_root(s3_peer)
    folder = str(tmp_path / "web")
    write_webdataset(DataRoot(folder).fs, folder, samples(9, seed=12), per_tar=3)
    # A presigned URL as S3 writes it (X-Amz-Credential, X-Amz-Signature), to a tar in the peer's bucket.
    root.fs.put_file(f"{folder}/000002.tar", root.path("ext", "000002.tar"))
    bucket, _, key = root.path("ext", "000002.tar").removeprefix("s3://").partition("/")
    client = boto3.client(
        "s3", REGION, endpoint_url=s3_peer, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
    )
    presigned = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
    signature, credential = (
        presigned.partition(f"{name}=")[2].partition("&")[0] for name in ("X-Amz-Signature", "X-Amz-Credential")
    )
    storage = StorageResource(
        root=root.url, endpoint_url=s3_peer, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, region=REGION
    )
    with file_web(folder, secret=SECRET) as web:  # answers 403 to a request without the secret
        host = web.url.removeprefix("http://")
        patterns = [f"{web.url}/000000.tar?token={SECRET}", f"http://reader:{SECRET}@{host}/000001.tar", presigned]
        registration = register_dataset(root, "tokened", patterns, FORMAT_WEBDATASET, files_per_segment=3)
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("segments", registration.keys())
        result = dg.materialize(
            [clip_pairs],
            partition_key="tokened_00000",
            instance=instance,
            resources={
                "compute": ComputeResource(n_workers=1, processes=False, local_gpus=0),
                "storage": storage,
                "clip_scorer": ClipScorer.tiny(batch_size=8, decode_workers=1),
            },
        )
    rows = [r for shard in range(3) for r in clip_table(root, "tokened_00000", shard).to_pylist()]
    events = "\n".join(str(entry) for entry in instance.all_logs(result.run_id))  # logs, errors, metadata
    out = capsys.readouterr()

    assert result.success and len(rows) == 9 and all(r["clip_status"] == "scored" for r in rows)
    assert {r["wat_file"] for r in rows} == {
        f"{web.url}/000000.tar?token=***",
        f"http://reader:***@{host}/000001.tar",
        presigned.replace(signature, "***").replace(credential, "***"),
    }
    assert SECRET in root.fs.cat_file(root.path("crawls", "tokened", "segments.json")).decode()  # the reader's input
    for secret in (SECRET, signature):
        assert _outputs_showing(root, secret) == []
        assert secret not in events and secret not in caplog.text and secret not in out.out + out.err


def test_a_tar_gone_after_registration_is_an_error_without_the_urls_token(tmp_path):
    import traceback

    root = DataRoot(str(tmp_path / "data"))
    folder = tmp_path / "web"
    write_webdataset(DataRoot(str(folder)).fs, str(folder), samples(4, seed=13), per_tar=2)
    with file_web(str(folder), secret=SECRET) as web:
        patterns = [f"{web.url}/{{000000..000001}}.tar?token={SECRET}"]
        register_dataset(root, "gone", patterns, FORMAT_WEBDATASET, files_per_segment=2)
        (folder / "000001.tar").unlink()
        units = pending_units(root, "gone_00000")
        with pytest.raises(RuntimeError) as error:
            score_image_shard(units[1], settings())

    assert str(error.value).startswith(f"{web.url}/000001.tar?token=*** is gone (FileNotFoundError: ")
    shown = [repr(unit) for unit in units] + traceback.format_exception(error.value)
    assert "token=***" in shown[0] and not [text for text in shown if SECRET in text]
