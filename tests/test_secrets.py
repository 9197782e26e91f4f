"""Secrets planted in every form a user may write them never reach a message, repr, log line or metadata."""

import logging

import dagster as dg
import pytest

from cah_assets.resources import DedupIndexResource
from cah_resources.candidates.stage import SegmentMergeUnit, WatFileUnit
from cah_resources.crawl.common_crawl import CrawlSource
from cah_resources.dataset.dedup_index import DedupIndex, DedupIndexError
from cah_resources.redaction import redact_url
from cah_resources.storage import DataRoot

# Forms libpq accepts; a password may hold '#' and '?', which urllib reads as the end of the host.
DSN_SECRETS = {
    "postgresql://cah:pw1-S3CRET#frag@127.0.0.1:1/cah": "pw1-S3CRET",
    "postgresql://cah:pw2-S3CRET?query@127.0.0.1:1/cah?sslmode=disable": "pw2-S3CRET",
    "postgresql://cah@127.0.0.1:1/cah?sslmode=disable&password=pw4-S3CRET": "pw4-S3CRET",
    "postgresql://cah@127.0.0.1:1/cah?PASSWORD=pw5-S3CRET#x": "pw5-S3CRET#x",
    "postgresql://cah:ab/pw8-S3CRET@127.0.0.1:1/cah": "pw8-S3CRET",  # SQLAlchemy reads "ab/pw8-S3CRET"
    "postgresql://cah:pw9-S3CRET/x@127.0.0.1:1/cah": "pw9-S3CRET",
    "host=127.0.0.1 port=1 dbname=cah password=pw6-S3CRET": "pw6-S3CRET",
    "host=127.0.0.1 port=1 password = 'pw7 S3CRET' dbname=cah": "pw7 S3CRET",
}


def _leaks(secret: str, *texts: str) -> list[str]:
    return [text for text in texts if secret in text or secret.split()[-1] in text]


@pytest.mark.parametrize("url", DSN_SECRETS)
def test_a_dedup_index_password_in_any_form_stays_out_of_errors_reprs_and_logs(url, caplog, capsys):
    secret = DSN_SECRETS[url]
    caplog.set_level(logging.DEBUG)
    shown = [redact_url(url)]
    with pytest.raises(DedupIndexError) as error:
        index = DedupIndex(url)  # a keyword DSN is refused here, a URL when the server is not there
        shown.append(repr(index))
        index.claim("CC-MAIN-2024-10_00000", ["0" * 32])
    out = capsys.readouterr()
    assert "127.0.0.1" in str(error.value) and "***" in str(error.value)
    assert _leaks(secret, *shown, str(error.value), caplog.text, out.out, out.err) == []


def test_work_units_and_sources_show_no_storage_or_mirror_credentials():
    root = DataRoot("s3://bucket/cah", {"key": "AKIA-S3CRET-KEY", "secret": "S3CRET-SECRET", "token": "S3CRET-TOKEN"})
    source = CrawlSource(base="https://mirror:MIRROR-S3CRET@mirror.example/cc")
    claim = DedupIndex("postgresql://cah:DSN-S3CRET#x@127.0.0.1:1/cah").claim
    units = [WatFileUnit("CC-MAIN-2024-10_00000", 0, "a.wat.gz", root, source), SegmentMergeUnit("k", root, (), claim)]
    shown = "\n".join([repr(root), str(root), repr(source), *map(repr, units), *map(str, units)])
    assert "s3://bucket/cah" in shown and "mirror.example" in shown
    for secret in ("AKIA-S3CRET-KEY", "S3CRET-SECRET", "S3CRET-TOKEN", "MIRROR-S3CRET", "DSN-S3CRET"):
        assert secret not in shown


def test_a_run_that_cannot_reach_its_dedup_index_shows_no_password_in_events_logs_or_output(caplog, capsys):
    caplog.set_level(logging.DEBUG)
    root = DataRoot("s3://bucket/cah", {"key": "OPT-S3CRET"})

    @dg.asset
    def claimed(context: dg.AssetExecutionContext, dedup_index: DedupIndexResource) -> dg.MaterializeResult:
        index = dedup_index.index()
        context.log.info(f"claiming through {index!r} for {WatFileUnit('k', 0, 'a.wat.gz', root, CrawlSource())!r}")
        index.claim("CC-MAIN-2024-10_00000", ["0" * 32])
        return dg.MaterializeResult(metadata={"index": repr(index)})

    resource = DedupIndexResource(url="postgresql://cah:DSN-S3CRET#a?b@127.0.0.1:1/cah")
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([claimed], instance=instance, resources={"dedup_index": resource}, raise_on_error=False)
    assert not result.success
    events = "\n".join(str(entry) for entry in instance.all_logs(result.run_id))  # logs, errors, metadata
    assert "cannot reach the dedup index" in events and "claiming through" in events
    out = capsys.readouterr()
    for secret in ("OPT-S3CRET", "DSN-S3CRET"):
        assert _leaks(secret, events, caplog.text, out.out, out.err) == []


def test_a_dataset_files_credentials_stay_out_of_its_page_files_view_and_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cah_resources.contract import FORMAT_PARQUET
    from cah_resources.crawl.segments import register_dataset
    from cah_resources.page_scores.stage import dataset_pages_view, segment_units
    from cah_resources.samples.file_web import file_web

    root = DataRoot(str(tmp_path / "data"))
    (tmp_path / "web").mkdir()
    pq.write_table(pa.table({"body": ["a page"]}), tmp_path / "web" / "000.parquet")
    with file_web(str(tmp_path / "web"), secret="HF-S3CRET") as web:
        url = f"{web.url}/000.parquet?token=HF-S3CRET"
        with pytest.raises(ValueError) as error:
            register_dataset(root, "fineweb", [url], FORMAT_PARQUET)
        registration = register_dataset(root, "fineweb", [url], FORMAT_PARQUET, text_column="body")
        view = dataset_pages_view(root, registration, "fineweb_00000")

    shown = [str(error.value), str(view), repr(registration), *map(repr, segment_units(root, "fineweb_00000"))]
    assert view[0]["file"] == f"{web.url}/000.parquet?token=***" and view[0]["rows"] == 1
    assert str(error.value).startswith(f"{web.url}/000.parquet?token=*** has no column 'text'")
    assert _leaks("HF-S3CRET", *shown) == []
