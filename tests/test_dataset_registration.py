"""Registering an existing Parquet dataset as a crawl: its files, expanded once, become the segments."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3_peer import new_bucket_root, s3_endpoint

from cah_assets import cli
from cah_resources.contract import FORMAT_PARQUET, FORMAT_WAT, segments_manifest_path
from cah_resources.crawl.dataset_files import expand_files
from cah_resources.crawl.segments import (
    CrawlRegistration,
    load_registration,
    register_crawl,
    register_dataset,
)
from cah_resources.storage import DataRoot


def _write_files(fs, folder: str, names: list[str], column: str = "text") -> None:
    fs.makedirs(folder, exist_ok=True)
    for name in names:
        with fs.open(f"{folder}/{name}", "wb") as handle:
            pq.write_table(pa.table({column: [f"page of {name}"], "url": [f"https://x/{name}"]}), handle)


@pytest.fixture(scope="module")
def s3_peer():
    with s3_endpoint() as endpoint:
        yield endpoint


def test_brace_ranges_and_globs_name_every_file_once_sorted(tmp_path):
    folder = str(tmp_path / "fineweb")
    _write_files(DataRoot(folder).fs, folder, [f"{i:03d}.parquet" for i in range(12)] + ["notes.txt"])

    by_range = expand_files([f"{folder}/{{000..011}}.parquet"])
    by_glob = expand_files([f"{folder}/*.parquet"])
    overlapping = expand_files([f"{folder}/00[0-5].parquet", f"{folder}/{{004..011}}.parquet"])

    assert by_range == by_glob == overlapping == [f"{folder}/{i:03d}.parquet" for i in range(12)]


def test_a_range_naming_a_missing_file_is_refused_naming_it(tmp_path):
    folder = str(tmp_path / "d")
    _write_files(DataRoot(folder).fs, folder, ["000.parquet", "001.parquet"])
    with pytest.raises(FileNotFoundError, match=r"1 of the files named are missing, first .*/002\.parquet"):
        expand_files([f"{folder}/{{000..002}}.parquet"])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_files([f"{folder}/*.jsonl"])


def test_a_parquet_dataset_is_recorded_with_its_format_text_column_and_segments(tmp_path, data_root):
    folder = str(tmp_path / "pages")
    _write_files(data_root.fs, folder, [f"{i:02d}.parquet" for i in range(5)], column="body")

    registration = register_dataset(
        data_root, "fineweb-sample", [f"{folder}/*.parquet"], text_column="body", files_per_segment=2
    )
    recorded = data_root.read_json(segments_manifest_path(data_root, "fineweb-sample"))

    assert registration.keys() == ["fineweb-sample_00000", "fineweb-sample_00001", "fineweb-sample_00002"]
    assert registration.files_of("fineweb-sample_00002") == [f"{folder}/04.parquet"]
    assert recorded["format"] == FORMAT_PARQUET and recorded["text_column"] == "body"
    assert load_registration(data_root, "fineweb-sample") == registration
    # Registering again is a no-op, also without repeating the options; contradicting the plan is refused.
    assert register_dataset(data_root, "fineweb-sample", []) == registration
    with pytest.raises(ValueError, match="registered with text column 'body'"):
        register_dataset(data_root, "fineweb-sample", [], text_column="text")
    with pytest.raises(ValueError, match="registered as format parquet, not wat"):
        register_crawl(None, data_root, "fineweb-sample")


def test_a_text_column_the_files_lack_is_one_line_naming_the_columns(tmp_path, data_root):
    folder = str(tmp_path / "pages")
    _write_files(data_root.fs, folder, ["a.parquet"], column="content")
    with pytest.raises(ValueError, match=r"has no column 'text' \(columns: content, url\); pass --text-column"):
        register_dataset(data_root, "other", [f"{folder}/a.parquet"])
    assert load_registration(data_root, "other") is None


def test_a_plan_recorded_before_formats_reads_as_a_wat_crawl(data_root):
    old = {"crawl": "CC-MAIN-2024-10", "files_per_segment": 1, "segment_count": 1, "wat_paths": ["a.wat.gz"]}
    data_root.write_json(segments_manifest_path(data_root, "CC-MAIN-2024-10"), old)
    registration = load_registration(data_root, "CC-MAIN-2024-10")
    assert registration == CrawlRegistration("CC-MAIN-2024-10", 1, ("a.wat.gz",), FORMAT_WAT, None)


def test_a_dataset_on_s3_is_registered_in_place_with_the_data_roots_endpoint(s3_peer):
    root = new_bucket_root(s3_peer)
    bucket = root.url.split("/")[2]
    _write_files(root.fs, f"{bucket}/datasets/fw", [f"{i:05d}.parquet" for i in range(3)])

    registration = register_dataset(root, "fw", [f"s3://{bucket}/datasets/fw/{{00000..00002}}.parquet"])

    assert registration.files == tuple(f"s3://{bucket}/datasets/fw/{i:05d}.parquet" for i in range(3))
    assert root.fs.exists(f"{bucket}/datasets/fw/00000.parquet")  # read where it is, never moved
    assert json.loads(root.read_bytes(segments_manifest_path(root, "fw")))["format"] == FORMAT_PARQUET


def test_cah_register_takes_a_parquet_dataset_and_adds_its_segments(capsys, tmp_path, monkeypatch):
    import dagster as dg

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    folder = str(tmp_path / "pages")
    _write_files(DataRoot(folder).fs, folder, ["0.parquet", "1.parquet", "2.parquet"])
    data = str(tmp_path / "data")

    code = cli.main(
        [
            "register",
            "pages-2024",
            "--format",
            "parquet",
            "--files",
            f"{folder}/*.parquet",
            "--files-per-segment",
            "2",
            "--data-root",
            data,
        ]
    )
    out, _ = capsys.readouterr()
    missing = cli.main(
        [
            "register",
            "typo",
            "--format",
            "parquet",
            "--files",
            f"{folder}/*.parquet",
            "--text-column",
            "txt",
            "--data-root",
            data,
        ]
    )
    _, err = capsys.readouterr()

    assert code == 0 and "pages-2024: 3 parquet files, 2 per segment, 2 segments, 2 new partitions" in out
    with dg.DagsterInstance.get() as instance:
        assert set(instance.get_dynamic_partitions("segments")) >= {"pages-2024_00000", "pages-2024_00001"}
    assert missing == 2 and err.count("\n") == 1 and "has no column 'txt'" in err
    nothing = cli.main(["register", "none", "--format", "parquet", "--files", f"{folder}/*.jsonl", "--data-root", data])
    _, err = capsys.readouterr()
    assert nothing == 2 and err.count("\n") == 1 and "matches no file" in err  # at once: not retried as unreachable
