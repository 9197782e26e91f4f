"""Registering a crawl from its WARC listing: the format is in the plan, and a crawl keeps it."""

import json

import pytest

from cah_assets import cli
from cah_resources.contract import FORMAT_WARC, FORMAT_WAT, segments_manifest_path
from cah_resources.crawl.common_crawl import CrawlSource
from cah_resources.crawl.segments import load_registration, register_crawl
from cah_resources.samples.sample_warc import generate_warc_crawl
from cah_resources.storage import DataRoot


@pytest.fixture(scope="module")
def warc_crawl(tmp_path_factory):
    return generate_warc_crawl(str(tmp_path_factory.mktemp("src")), "CC-MAIN-W", warc_files=3, pages_per_file=4)


def test_a_warc_crawl_plans_segments_over_its_warc_listing_and_records_the_format(warc_crawl, tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    registration = register_crawl(CrawlSource(warc_crawl.root), root, "CC-MAIN-W", 2, FORMAT_WARC)
    assert registration.format == FORMAT_WARC and registration.keys() == ["CC-MAIN-W_00000", "CC-MAIN-W_00001"]
    assert registration.files_of("CC-MAIN-W_00001") == [warc_crawl.warc_paths[2]]
    assert json.loads(root.read_bytes(segments_manifest_path(root, "CC-MAIN-W")))["format"] == FORMAT_WARC
    assert load_registration(root, "CC-MAIN-W") == registration


def test_a_crawl_keeps_the_format_it_was_registered_with(warc_crawl, tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    register_crawl(CrawlSource(warc_crawl.root), root, "CC-MAIN-W", 2, FORMAT_WARC)
    assert register_crawl(CrawlSource(warc_crawl.root), root, "CC-MAIN-W", None, FORMAT_WARC).format == FORMAT_WARC
    with pytest.raises(ValueError, match="registered as format warc, not wat"):
        register_crawl(CrawlSource(warc_crawl.root), root, "CC-MAIN-W", None, FORMAT_WAT)


def test_cah_register_format_warc_adds_the_segments(warc_crawl, capsys, tmp_path, monkeypatch):
    import dagster as dg

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    data = str(tmp_path / "data")
    args = ["register", "CC-MAIN-W", "--source", warc_crawl.root, "--data-root", data, "--files-per-segment", "1"]
    code = cli.main([*args, "--format", "warc"])
    out, _ = capsys.readouterr()
    again = cli.main(args)  # --format wat (the default) on a WARC crawl: refused in one line
    _, err = capsys.readouterr()
    assert code == 0 and "CC-MAIN-W: 3 warc files, 1 per segment, 3 segments, 3 new partitions" in out
    with dg.DagsterInstance.get() as instance:
        assert set(instance.get_dynamic_partitions("segments")) >= {f"CC-MAIN-W_{i:05d}" for i in range(3)}
    assert again == 2 and err.count("\n") == 1 and "registered as format warc, not wat" in err
