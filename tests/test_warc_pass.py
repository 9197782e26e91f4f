"""The WARC pass: one read of a WARC file into candidates and pages, against generated truth, a real
Common Crawl record, and hostile records that must cost only themselves."""

import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from cah_resources.candidates.image_links import CandidateFilters
from cah_resources.candidates.language import LanguageDetector
from cah_resources.candidates.stage import label_pairs, merge_segment
from cah_resources.contract import (
    CANDIDATES_SCHEMA,
    PAGES_SCHEMA,
    CandidatesStats,
    PagesStats,
    pages_path,
    pages_stats_path,
)
from cah_resources.crawl.common_crawl import CrawlSource
from cah_resources.pages.html_page import PageRules, decode_html
from cah_resources.pages.stage import WarcFileUnit, extract_warc_file, merge_pages, read_warc
from cah_resources.samples.sample_warc import generate_warc_crawl
from cah_resources.storage import DataRoot

DATA = os.path.join(os.path.dirname(__file__), "data", "commoncrawl")
ARTICLE = "<p>" + "A river boat museum opened in the old harbour town this week. " * 6 + "</p>"


@pytest.fixture(scope="module")
def warc_crawl(tmp_path_factory):
    return generate_warc_crawl(str(tmp_path_factory.mktemp("warc")), warc_files=2, pages_per_file=30, seed=3)


def _flat(*stats) -> Counter:
    """The stats as one flat counter of their numbers, under their names on disk (page_drop_*, drop_*, damage)."""
    flat: Counter = Counter()
    for one in stats:
        flat.update({k: v for k, v in one.to_dict().items() if isinstance(v, int) and k != "bytes"})
    return flat


def _read(path, rules=PageRules()):
    candidates, pages = CandidatesStats(), PagesStats()
    result = read_warc(str(path), "test.warc.gz", CandidateFilters(), rules, candidates, pages)
    flat = _flat(candidates)
    flat.update({k: v for k, v in _flat(pages).items() if k not in flat})  # html_pages: the same in both
    return result, flat


def test_every_image_the_rules_name_is_found_with_its_attribute_and_none_invented(warc_crawl):
    for rel in warc_crawl.warc_paths:
        result, _ = _read(os.path.join(warc_crawl.root, rel))
        found = {pair: attribute for pair, (_, attribute) in result.pairs.items()}
        expected = {(e.url, e.text): e.url_attribute for e in warc_crawl.candidates[rel]}
        assert found == expected
        assert {(e.url, e.text): e.page_url for e in warc_crawl.candidates[rel]} == {
            pair: page for pair, (page, _) in result.pairs.items()
        }


def test_every_drop_and_page_drop_is_counted_as_the_truth_says(warc_crawl):
    for rel in warc_crawl.warc_paths:
        _, counts = _read(os.path.join(warc_crawl.root, rel))
        truth = _flat(warc_crawl.counts[rel])
        truth.update({k: v for k, v in _flat(warc_crawl.page_counts[rel]).items() if k not in truth})
        assert +counts == +truth


def test_page_rows_hold_the_article_not_the_boilerplate_in_every_charset(warc_crawl):
    declared = set()
    for rel in warc_crawl.warc_paths:
        result, _ = _read(os.path.join(warc_crawl.root, rel))
        rows = {row["url"]: row for row in result.pages.to_pylist()}
        expected = [page for page in warc_crawl.pages[rel] if page.kept]
        assert sorted(rows) == sorted(page.url for page in expected)
        for page in expected:
            row = rows[page.url]
            assert row["title"] == page.title
            assert all(paragraph in row["text"] for paragraph in page.paragraphs), (page.charset, page.declared)
            assert not [line for line in page.boilerplate if line in row["text"]]
            assert row["chars"] == len(row["text"])
            assert row["language"] == page.language
            declared.add((page.charset, page.declared))
    assert {charset for charset, _ in declared} == {"utf-8", "windows-1252", "windows-1251", "shift_jis"}
    assert {how for _, how in declared} == {"http", "meta", "none"}


def test_a_page_row_points_at_its_record_so_it_can_be_fetched_again(warc_crawl):
    rel = warc_crawl.warc_paths[0]
    path = os.path.join(warc_crawl.root, rel)
    result, _ = _read(path)
    row = result.pages.to_pylist()[3]
    with open(path, "rb") as handle:
        handle.seek(row["offset"])
        member = handle.read(row["length"])
    record = gzip.decompress(member)  # exactly one gzip member: the record and nothing else
    assert f"WARC-Target-URI: {row['url']}".encode() in record and row["record_id"].encode() in record
    assert b"WARC-Type: response" in record


def test_the_real_common_crawl_page_gives_a_row_and_its_srcset_images():
    result, counts = _read(os.path.join(DATA, "whirlwind.warc.gz"))
    [row] = result.pages.to_pylist()
    assert row["url"] == "https://an.wikipedia.org/wiki/Escopete"
    assert row["title"].startswith("Escopete") and "Escopete" in row["text"] and row["chars"] > 1000
    assert (row["offset"], row["length"]) == (1023, 18374 - 1023)
    assert row["record_id"] == "<urn:uuid:2aabeff2-67f5-4608-8466-e87c6296e2b6>"
    attributes = Counter(attribute for _, attribute in result.pairs.values())
    assert attributes == {"srcset": 5}  # Wikipedia serves every thumbnail with a 1.5x/2x srcset
    assert counts["warc_records"] == 4 and counts["responses"] == 1 and counts["html_pages"] == 1
    assert not [k for k in counts if k.startswith(("malformed", "corrupt", "page_drop"))]


def test_warc_candidates_have_the_contract_schema_and_their_attribute(warc_crawl):
    rel = warc_crawl.warc_paths[0]
    result, _ = _read(os.path.join(warc_crawl.root, rel))
    table = label_pairs(result.pairs, rel, LanguageDetector())
    assert table.schema == CANDIDATES_SCHEMA and result.pages.schema == PAGES_SCHEMA
    expected = {(e.url, e.text): (e.category, e.url_attribute) for e in warc_crawl.candidates[rel]}
    rows = {(r["url"], r["text"]): (r["category"], r["url_attribute"]) for r in table.to_pylist()}
    assert rows == expected


def test_a_segment_of_warc_files_merges_into_candidates_and_pages(warc_crawl, tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    source = CrawlSource(warc_crawl.root)
    units = [WarcFileUnit("S_00000", i, rel, root, source) for i, rel in enumerate(warc_crawl.warc_paths)]
    parts = [extract_warc_file(unit) for unit in units]
    assert extract_warc_file(units[0]) == parts[0]  # a finished part is kept: a retry redoes nothing
    pages_stats = merge_pages("S_00000", root, parts)
    stats = merge_segment("S_00000", root, parts)
    expected = warc_crawl.expected_segment(warc_crawl.warc_paths)
    candidates = root.read_parquet(root.path("candidates", "S_00000", "candidates.parquet"))
    assert sorted(candidates.column("url").to_pylist()) == sorted(e.url for e in expected)
    assert stats["candidates"] == len(expected)
    pages = root.read_parquet(pages_path(root, "S_00000"))
    kept = [p.url for rel in warc_crawl.warc_paths for p in warc_crawl.pages[rel] if p.kept]
    assert pages.column("url").to_pylist() == kept and pages_stats["pages"] == len(kept)
    assert root.read_json(pages_stats_path(root, "S_00000"))["page_drop_too_short"] == 2
    assert not root.exists(root.path("pages", "S_00000", "parts"))


# -- hostile records ------------------------------------------------------------------------------


def _response(url: str, body: bytes, status: str = "200 OK", ctype: str = "text/html; charset=utf-8", claimed=None):
    http = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n\r\n".encode() + body
    length = len(http) if claimed is None else claimed
    head = (
        f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {url}\r\nWARC-Date: 2024-05-18T01:58:10Z\r\n"
        f"WARC-Record-ID: <urn:uuid:{abs(hash(url)):032x}>\r\nContent-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    return head.encode() + http + b"\r\n\r\n"


def _page(n: int, extra: str = "") -> bytes:
    image = f'<img src="/i/{n}.jpg" alt="picture number {n}">'
    return f"<html><body><article>{ARTICLE}{image}{extra}</article></body></html>".encode()


def _good(n: int) -> bytes:
    return gzip.compress(_response(f"https://example.org/{n}", _page(n)))


def _urls(result) -> list[str]:
    return result.pages.column("url").to_pylist()


def test_a_truncated_gzip_member_costs_only_its_record(tmp_path):
    broken = _good(1)
    path = tmp_path / "truncated.warc.gz"
    path.write_bytes(_good(0) + broken[: len(broken) // 2] + _good(2) + _good(3))
    result, counts = _read(path)
    assert _urls(result) == ["https://example.org/0", "https://example.org/2", "https://example.org/3"]
    assert counts["corrupt_gzip"] + counts["malformed_truncated"] == 1


def test_a_file_cut_in_the_middle_of_its_last_record_keeps_the_others(tmp_path):
    data = b"".join(_good(i) for i in range(3))
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(data[: len(data) - 40])
    result, counts = _read(path)
    assert _urls(result) == ["https://example.org/0", "https://example.org/1"]
    assert counts["corrupt_gzip"] + counts["malformed_truncated"] == 1


@pytest.mark.parametrize("cut", [4, 20, 200])  # the gzip trailer; into the deflate stream
def test_a_real_warc_whose_last_member_is_cut_counts_it_and_keeps_the_page(tmp_path, cut):
    # The real file ends with a metadata record after its response: cut, it still reads to the end
    # of its body, so only the gzip member's missing end tells. It was read without a word.
    data = Path(DATA, "whirlwind.warc.gz").read_bytes()
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(data[: len(data) - cut])
    result, counts = _read(path)
    assert _urls(result) == ["https://an.wikipedia.org/wiki/Escopete"]
    assert counts["corrupt_gzip_truncated"] + counts["malformed_truncated"] == 1


@pytest.mark.parametrize("claimed", [3 << 20, 5 << 20, 12 << 20])  # read; skipped as too long (twice)
def test_a_content_length_that_runs_past_the_end_costs_only_its_record(tmp_path, claimed):
    liar = gzip.compress(_response("https://example.org/liar", _page(99), claimed=claimed))
    path = tmp_path / "liar.warc.gz"
    path.write_bytes(b"".join(_good(i) for i in range(50)) + liar + b"".join(_good(i) for i in range(50, 100)))
    result, counts = _read(path, PageRules(max_html_bytes=4 << 20))
    assert _urls(result) == [f"https://example.org/{i}" for i in range(100)]
    assert counts["malformed_truncated"] == 1


def test_an_uncompressed_warc_resumes_after_a_liar_and_not_at_a_quoted_version_line(tmp_path):
    quote = "<pre>\r\nWARC/1.0\r\nWARC-Type: response</pre>"  # a version line in the liar's own body
    liar = _response("https://example.org/liar", _page(99, quote), claimed=5 << 20)  # skipped: too long
    records = [_response(f"https://example.org/{i}", _page(i)) for i in range(6)]
    path = tmp_path / "plain.warc"
    path.write_bytes(b"".join([*records[:3], liar, *records[3:]]))
    result, counts = _read(path, PageRules(max_html_bytes=4 << 20))
    assert _urls(result) == [f"https://example.org/{i}" for i in range(6)]
    assert counts["malformed_truncated"] == 1 and counts["page_drop_too_long"] == 1


def test_a_content_length_past_the_record_cap_costs_only_its_record(tmp_path):
    liar = gzip.compress(_response("https://example.org/liar", _page(99), claimed=10**12))
    path = tmp_path / "huge-liar.warc.gz"
    path.write_bytes(liar + b"".join(_good(i) for i in range(20)))
    result, counts = _read(path)
    assert _urls(result) == [f"https://example.org/{i}" for i in range(20)]
    assert counts["malformed_too_large"] == 1


def test_an_invalid_charset_falls_back_to_detection_and_binary_junk_is_undecodable(tmp_path):
    french = "<html><body><article><p>" + "Le musée présente une exposition très étendue sur les bateaux. " * 5
    records = [
        _response(
            "https://example.org/bogus",
            (french + "</p></article></body></html>").encode("cp1252"),
            ctype="text/html; charset=x-no-such-charset",
        ),
        _response("https://example.org/junk", bytes(range(256)) * 64, ctype="text/html; charset=utf-8"),
        _response("https://example.org/utf16", "<html>caf\u00e9</html>".encode("utf-16-le"), ctype="text/html"),
    ]
    path = tmp_path / "charsets.warc.gz"
    path.write_bytes(b"".join(gzip.compress(r) for r in records) + _good(0))
    result, counts = _read(path)
    rows = result.pages.to_pylist()
    assert [r["url"] for r in rows] == ["https://example.org/bogus", "https://example.org/0"]
    assert "Le musée présente" in rows[0]["text"]
    assert counts["page_drop_undecodable"] == 2


def test_decoding_prefers_the_declared_charset_then_meta_then_detection():
    text = "Größe und Übermaß des Flusses, überall Grüße aus der Hafenstadt."
    assert decode_html(text.encode("cp1252"), "windows-1252", 0.01).startswith("Größe")
    meta = f'<meta charset="windows-1251"><p>{"Музей открыл новую выставку о речных лодках. " * 4}</p>'
    assert "Музей" in decode_html(meta.encode("cp1251"), None, 0.01)
    assert "Größe" in decode_html(text.encode("cp1252"), "utf-8", 0.01)  # the declared one fails: detected


def test_a_hundred_thousand_nested_tags_are_too_deep_and_the_file_goes_on(tmp_path):
    deep = ("<div>" * 100_000 + "x" + "</div>" * 100_000).encode()
    path = tmp_path / "deep.warc.gz"
    path.write_bytes(
        _good(0) + gzip.compress(_response("https://example.org/deep", _page(7, deep.decode()))) + _good(1)
    )
    result, counts = _read(path)
    assert _urls(result) == ["https://example.org/0", "https://example.org/1"]
    assert counts["page_drop_too_deep"] == 1


def test_a_50_mb_page_is_too_long_skipped_unread_at_low_memory(tmp_path):
    path = tmp_path / "big.warc.gz"
    size = 50 << 20
    head = _response("https://example.org/big", b"", claimed=0).split(b"Content-Length: 0")[0]
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n"
    with open(path, "wb") as handle:
        handle.write(_good(0))
        member = gzip.GzipFile(fileobj=handle, mode="wb")
        member.write(head + f"Content-Length: {len(http) + size}\r\n\r\n".encode() + http)
        chunk = b"<p>" + b"x" * 1021
        for _ in range(size // len(chunk)):
            member.write(chunk)
        member.write(b"\r\n\r\n")
        member.close()
        handle.write(_good(1))
    probe = (
        "import json, resource, sys; from collections import Counter\n"
        "from cah_resources.candidates.image_links import CandidateFilters\n"
        "from cah_resources.pages.html_page import PageRules\n"
        "from cah_resources.pages.stage import read_warc\n"
        "from cah_resources.contract import CandidatesStats, PagesStats\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "pages = PagesStats()\n"
        "result = read_warc(sys.argv[1], 'big', CandidateFilters(), PageRules(), CandidatesStats(), pages)\n"
        "grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10\n"
        "print(json.dumps([result.pages.column('url').to_pylist(), pages.to_dict(), grown]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    urls, counts, grown_mib = json.loads(done.stdout)
    assert urls == ["https://example.org/0", "https://example.org/1"]
    assert counts["page_drop_too_long"] == 1 and not [
        k for k, n in counts.items() if k.startswith(("malformed", "corrupt")) and n
    ]
    assert grown_mib < 40  # peak RSS growth in MiB; reading the page would add 50


def test_a_page_over_its_time_budget_is_dropped_and_the_file_goes_on(tmp_path):
    path = tmp_path / "slow.warc.gz"
    path.write_bytes(_good(0) + _good(1))
    result, counts = _read(path, PageRules(page_budget_s=0.0))
    assert _urls(result) == [] and counts["page_drop_too_slow"] == 2


def test_non_html_non_2xx_and_non_http_responses_are_page_drops(tmp_path):
    records = [
        _response("https://example.org/img", b"\xff\xd8\xff\xe0JFIF", ctype="image/jpeg"),
        _response("https://example.org/gone", _page(5), status="404 Not Found"),
        _response("https://example.org/moved", b"", status="301 Moved Permanently"),
        _response("https://example.org/sniffed", _page(6), ctype="application/octet-stream"),
        b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: dns:example.org\r\nContent-Type: text/dns\r\n"
        b"Content-Length: 9\r\n\r\n1.2.3.4\r\n\r\n\r\n",
    ]
    path = tmp_path / "others.warc.gz"
    path.write_bytes(b"".join(gzip.compress(r) for r in records))
    result, counts = _read(path)
    assert _urls(result) == ["https://example.org/sniffed"]
    assert (counts["page_drop_not_html"], counts["page_drop_not_2xx"], counts["page_drop_not_http"]) == (1, 2, 1)


def test_one_work_function_reads_both_formats_and_every_segment_gets_pages(warc_crawl, tmp_path):
    from cah_resources.crawl.segments import register_crawl
    from cah_resources.pages.segment import PAGES_STATS, extract_crawl_file, file_units, merge_crawl_segment, merges

    root, source = DataRoot(str(tmp_path / "data")), CrawlSource(warc_crawl.root)
    for crawl, format_ in (("W", "warc"), ("T", "wat")):
        # The generator lists the same pages as WARC files and as their WAT twins.
        for name in ("warc.paths.gz", "wat.paths.gz"):
            os.makedirs(os.path.join(warc_crawl.root, "crawl-data", crawl), exist_ok=True)
            src = os.path.join(warc_crawl.root, "crawl-data", warc_crawl.crawl, name)
            dst = os.path.join(warc_crawl.root, "crawl-data", crawl, name)
            if not os.path.exists(dst):
                os.link(src, dst)
        registration = register_crawl(source, root, crawl, 2, format_)
        key = registration.keys()[0]
        units = file_units(registration, key, root, source, CandidateFilters(), PageRules())
        values = {key: [extract_crawl_file(unit) for unit in units]}
        [merge] = merges([key], root, values, {key: format_}, None)
        stats = merge_crawl_segment(merge)
        pages = root.read_parquet(pages_path(root, key))
        assert pages.schema == PAGES_SCHEMA and stats[PAGES_STATS]["pages"] == pages.num_rows
        if format_ == "warc":
            assert stats["candidates"] == len(warc_crawl.expected_segment(warc_crawl.warc_paths)) and pages.num_rows
        else:
            assert pages.num_rows == 0 and stats["candidates"] > 0
