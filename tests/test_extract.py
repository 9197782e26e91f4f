"""`cah extract`: candidates and pages of WAT/WARC files, local or on S3, without Dagster."""

import json
import os

import pyarrow.parquet as pq
import pytest
from s3_peer import ACCESS_KEY, REGION, SECRET_KEY, new_bucket_root, s3_endpoint

from cah_assets.cli import main
from cah_resources.contract import CANDIDATES_SCHEMA, PAGES_SCHEMA, Damage
from cah_resources.samples.sample_warc import generate_warc_crawl

DATA = os.path.join(os.path.dirname(__file__), "data", "commoncrawl")


@pytest.fixture(scope="module")
def warc_crawl(tmp_path_factory):
    return generate_warc_crawl(str(tmp_path_factory.mktemp("warc")), warc_files=2, pages_per_file=12, seed=5)


def test_extract_writes_candidates_pages_and_counts_of_local_warc_files(warc_crawl, tmp_path, capsys):
    files = [os.path.join(warc_crawl.root, rel) for rel in warc_crawl.warc_paths]
    assert main(["extract", *files, "--out", str(tmp_path / "out")]) == 0
    candidates = pq.read_table(tmp_path / "out" / "candidates.parquet")
    pages = pq.read_table(tmp_path / "out" / "pages.parquet")
    counts = json.loads((tmp_path / "out" / "counts.json").read_text())
    assert candidates.schema == CANDIDATES_SCHEMA and pages.schema == PAGES_SCHEMA
    expected = warc_crawl.expected_segment(warc_crawl.warc_paths)
    assert sorted(zip(candidates.column("url").to_pylist(), candidates.column("text").to_pylist(), strict=True)) == (
        sorted((e.url, e.text) for e in expected)
    )
    kept = [p.url for rel in warc_crawl.warc_paths for p in warc_crawl.pages[rel] if p.kept]
    assert pages.column("url").to_pylist() == kept and all(pages.column("text").to_pylist())
    assert counts["candidates"]["candidates"] == len(expected) and counts["pages"]["pages"] == len(kept)
    assert [f["format"] for f in counts["files"].values()] == ["warc", "warc"]
    assert f"{len(expected)} candidates" in capsys.readouterr().out


def test_extract_reads_wat_files_too_and_writes_no_pages_for_them(warc_crawl, tmp_path):
    files = [os.path.join(warc_crawl.root, rel) for rel in warc_crawl.wat_paths]
    assert main(["extract", *files, "--out", str(tmp_path / "out")]) == 0
    counts = json.loads((tmp_path / "out" / "counts.json").read_text())
    assert not (tmp_path / "out" / "pages.parquet").exists()
    assert [f["format"] for f in counts["files"].values()] == ["wat", "wat"]
    # The WAT twin holds every <img src>: the same pages give fewer candidates than their WARC.
    assert 0 < counts["candidates"]["candidates"] < len(warc_crawl.expected_segment(warc_crawl.warc_paths))


def test_extract_names_the_damage_it_skipped_on_its_line(tmp_path, capsys):
    """Checking a file before registering a crawl: a file cut short says so, not only "drops: none"."""
    with open(os.path.join(DATA, "whirlwind.warc.gz"), "rb") as whole:
        cut = whole.read()[:5000]  # inside the response record: an interrupted download
    (tmp_path / "cut.warc.gz").write_bytes(cut)
    assert main(["extract", str(tmp_path / "cut.warc.gz"), "--out", str(tmp_path / "out")]) == 0
    counts = json.loads((tmp_path / "out" / "counts.json").read_text())["candidates"]
    damaged = {kind: counts[kind] for kind in map(str, Damage) if counts.get(kind)}
    line = capsys.readouterr().out.splitlines()[0]
    assert damaged and line.endswith("; damaged, skipped: " + ", ".join(f"{k} {n}" for k, n in damaged.items())), line


def test_extract_of_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["extract", str(tmp_path / "nope.warc.gz"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"cah extract: {tmp_path / 'nope.warc.gz'} does not exist"


def test_extract_reads_and_writes_s3_urls(monkeypatch, tmp_path):
    with s3_endpoint() as endpoint:
        root = new_bucket_root(endpoint)
        source = root.path("in", "whirlwind.warc.gz")
        with open(os.path.join(DATA, "whirlwind.warc.gz"), "rb") as handle:
            root.write_bytes(source, handle.read())
        for name, value in (
            ("AWS_ENDPOINT_URL_S3", endpoint),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", REGION),
        ):
            monkeypatch.setenv(name, value)
        assert main(["extract", source, "--out", root.path("out")]) == 0
        pages = root.read_parquet(root.path("out", "pages.parquet")).to_pylist()
        assert [p["url"] for p in pages] == ["https://an.wikipedia.org/wiki/Escopete"]
        assert pages[0]["warc_file"] == source
        assert root.read_json(root.path("out", "counts.json"))["candidates"]["candidates"] == 5
