"""Registering an existing Parquet dataset as a crawl: its files, expanded once, become the segments."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3_peer import new_bucket_root, s3_endpoint

from cah_assets import cli
from cah_resources.contract import FORMAT_PARQUET, FORMAT_WAT, FORMAT_WEBDATASET, segments_manifest_path
from cah_resources.crawl import dataset_files
from cah_resources.crawl.dataset_files import expand_files
from cah_resources.crawl.segments import (
    CrawlRegistration,
    load_registration,
    register_crawl,
    register_dataset,
)
from cah_resources.samples.file_web import file_web
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
    with pytest.raises(FileNotFoundError, match=r"^1 of the 3 files named are missing: .*/002\.parquet$"):
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


def test_a_text_column_that_holds_no_text_is_one_line_naming_its_type(tmp_path, data_root):
    folder = tmp_path / "pages"
    folder.mkdir()
    pq.write_table(pa.table({"text": pa.array([1, 2]), "body": ["a page", "another"]}), folder / "a.parquet")
    with pytest.raises(ValueError, match=r"a.parquet has column 'text' of type int64, not text; pass --text-column$"):
        register_dataset(data_root, "other", [f"{folder}/a.parquet"])
    assert register_dataset(data_root, "other", [f"{folder}/a.parquet"], text_column="body").text_column == "body"


def test_a_file_that_is_not_parquet_is_one_line_naming_it(tmp_path, data_root):
    folder = tmp_path / "pages"
    folder.mkdir()
    (folder / "a.parquet").write_bytes(b"PAR1 a tar, or an HTML error page, saved under a .parquet name")
    with pytest.raises(ValueError, match=rf"^{folder}/a.parquet is not a readable Parquet file \(.+\)$"):
        register_dataset(data_root, "other", [f"{folder}/*.parquet"])
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


def _empty_files(folder, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_files_a_folder_does_not_list_are_asked_for_many_at_once_never_more_than_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_files, "CHECKS_AT_ONCE", 8)  # a bound the 300 files fill many times over
    _empty_files(tmp_path / "web", [f"{i:06d}.tar" for i in range(300)])
    with file_web(str(tmp_path / "web"), delay_s=0.05) as web:
        files = expand_files([f"{web.url}/{{000000..000299}}.tar"])

    assert files == [f"{web.url}/{i:06d}.tar" for i in range(300)]
    # One at a time would peak at 1, an unbounded gather at up to 300: the bound is reached, not passed.
    assert web.peak_in_flight == 8
    assert web.requests["HEAD"] == 300 and web.requests["GET"] == 1  # the folder's page; no tar is sent


def test_missing_files_over_http_are_one_line_naming_the_first_few(tmp_path):
    _empty_files(tmp_path / "web", [f"{i:03d}.tar" for i in range(0, 10, 2)])
    with file_web(str(tmp_path / "web")) as web, pytest.raises(FileNotFoundError) as error:
        expand_files([f"{web.url}/{{000..009}}.tar"])

    assert str(error.value) == (
        f"5 of the 10 files named are missing: {web.url}/001.tar, {web.url}/003.tar, {web.url}/005.tar and 2 more"
    )


def test_a_file_the_server_answers_503_is_asked_again_and_a_server_that_stays_down_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_files, "CHECK_BACKOFF_S", 0.0)
    _empty_files(tmp_path / "web", ["000.tar", "001.tar"])
    with file_web(str(tmp_path / "web"), unavailable={"001.tar": 3}) as web:
        assert expand_files([f"{web.url}/{{000..001}}.tar"]) == [f"{web.url}/000.tar", f"{web.url}/001.tar"]
    with file_web(str(tmp_path / "web"), unavailable={"001.tar": 1000}) as web, pytest.raises(ConnectionError) as error:
        expand_files([f"{web.url}/{{000..001}}.tar"])

    assert not isinstance(error.value, FileNotFoundError)
    assert str(error.value).startswith(f"cannot tell whether {web.url}/001.tar is there: 503")


def test_a_long_check_shows_its_progress_on_the_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich draws for a terminal; capsys is none
    monkeypatch.setattr(dataset_files, "PROGRESS_FROM", 50)
    _empty_files(tmp_path / "web", [f"{i:03d}.tar" for i in range(60)])
    with file_web(str(tmp_path / "web")) as web:
        expand_files([f"{web.url}/{{000..048}}.tar"])  # one short of PROGRESS_FROM
        assert "checking" not in capsys.readouterr().err
        expand_files([f"{web.url}/{{000..059}}.tar"])

    assert f"checking 60 files at {web.url}" in capsys.readouterr().err


def test_cah_register_names_a_dataset_server_that_stays_down_once_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.setattr(dataset_files, "CHECK_BACKOFF_S", 0.0)
    _empty_files(tmp_path / "web", ["000.tar", "001.tar"])
    with file_web(str(tmp_path / "web"), unavailable={"001.tar": 1000}) as web:
        files = f"{web.url}/{{000..001}}.tar"
        code = cli.main(["register", "down", "--format", "webdataset", "--files", files, "--data-root", str(tmp_path)])
    out, err = capsys.readouterr()
    # Not the Common Crawl source's "did not answer ... attempt 1/3" lines: the dataset's own server, once.
    assert code == 2 and err.count("\n") == 1 and not out
    assert err.startswith(f"cah register: down: cannot tell whether {web.url}/001.tar is there: 503")
    assert "data.commoncrawl.org" not in err


def test_a_webdataset_glob_that_catches_other_files_is_one_line_naming_them(tmp_path, data_root):
    """img2dataset's output folder holds parquet and stats files beside its tars: `--files 'out/*'` is refused."""
    import io
    import tarfile

    folder = tmp_path / "out"
    folder.mkdir()
    for i in range(2):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(f"{i:09d}.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"cat"))
        (folder / f"{i:05d}.tar").write_bytes(buffer.getvalue())
        (folder / f"{i:05d}.parquet").write_bytes(b"PAR1")
        (folder / f"{i:05d}_stats.json").write_text("{}")
    with pytest.raises(ValueError) as error:
        register_dataset(data_root, "wds", [f"{folder}/*"], FORMAT_WEBDATASET)
    assert str(error.value) == (
        f"wds: 4 of 6 files are not tars (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz): {folder}/00000.parquet, "
        f"{folder}/00000_stats.json, {folder}/00001.parquet; name the shards only (--files 'folder/*.tar')"
    )
    assert load_registration(data_root, "wds") is None  # nothing recorded: a plan never changes

    (folder / "00000.tar").write_bytes(b"<html>an error page saved as a tar</html>")
    with pytest.raises(ValueError, match=rf"^wds: {folder}/00000.tar is not a readable tar \(.+\)$"):
        register_dataset(data_root, "wds", [f"{folder}/*.tar"], FORMAT_WEBDATASET)
    assert load_registration(data_root, "wds") is None

    (folder / "00000.tar").write_bytes((folder / "00001.tar").read_bytes())
    registration = register_dataset(data_root, "wds", [f"{folder}/*.tar"], FORMAT_WEBDATASET)
    assert registration.files == (f"{folder}/00000.tar", f"{folder}/00001.tar")


def test_cah_register_of_a_file_that_is_not_a_tar_as_a_webdataset_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "README.md").write_text("# not a webdataset")
    files = str(tmp_path / "README.md")
    code = cli.main(["register", "wds", "--format", "webdataset", "--files", files, "--data-root", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2 and not out and err.count("\n") == 1
    assert err.startswith(
        f"cah register: wds: 1 of 1 files are not tars (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz): {files};"
    )
