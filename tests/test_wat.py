"""Reading WAT files: real Common Crawl framing, and damage that costs only the damaged record."""

import gzip
import json
import os
import subprocess
import sys
import zlib

from cah_resources.candidates.wat import iter_pages
from cah_resources.contract import CandidatesStats, Damage, DropReason

DATA = os.path.join(os.path.dirname(__file__), "data", "commoncrawl")


def test_real_common_crawl_wat_parses_without_damage():
    counts = CandidatesStats()
    pages = list(iter_pages(os.path.join(DATA, "whirlwind.warc.wat.gz"), counts))
    assert counts.metadata_records == 1  # the warcinfo record is not a metadata record
    assert pages == []  # the one metadata record describes the request, not an HTML response
    assert not counts.damage


def test_real_uncompressed_wat_parses_too():
    counts = CandidatesStats()
    list(iter_pages(os.path.join(DATA, "whirlwind.warc.wat"), counts))
    assert counts == CandidatesStats(metadata_records=1)


def test_records_that_cannot_hold_links_are_read_but_not_parsed(tmp_path):
    counts = CandidatesStats()
    # A WARC's metadata records are not JSON at all; they carry no HTML-Metadata either.
    assert list(iter_pages(os.path.join(DATA, "whirlwind.warc.gz"), counts)) == []
    assert counts.metadata_records >= 1 and counts == CandidatesStats(metadata_records=counts.metadata_records)


def _member(body: bytes, target: str = "https://example.org/") -> bytes:
    head = (
        f"WARC/1.0\r\nWARC-Type: metadata\r\nWARC-Target-URI: {target}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return gzip.compress(head.encode() + body + b"\r\n\r\n")


def _page(url: str) -> bytes:
    links = '[{"path":"IMG@/src","url":"a.jpg","alt":"a red car"}]'
    return (
        f'{{"Envelope":{{"WARC-Header-Metadata":{{"WARC-Target-URI":"{url}"}},"Payload-Metadata":'
        f'{{"HTTP-Response-Metadata":{{"HTML-Metadata":{{"Head":{{}},"Links":{links}}}}}}}}}}}'
    ).encode()


def test_corrupt_gzip_member_costs_only_that_record(tmp_path):
    good = [_member(_page(f"https://example.org/{i}")) for i in range(4)]
    broken = good[1][: len(good[1]) // 2] + b"\x00garbage" * 8
    path = tmp_path / "damaged.wat.gz"
    path.write_bytes(good[0] + broken + good[2] + good[3])
    counts = CandidatesStats()
    urls = [p.url for p in iter_pages(str(path), counts)]
    assert urls == ["https://example.org/0", "https://example.org/2", "https://example.org/3"]
    assert counts.damage[Damage.CORRUPT_GZIP] == 1


def test_truncated_last_record_is_counted_not_fatal(tmp_path):
    whole = _member(_page("https://example.org/whole"))
    cut = _member(_page("https://example.org/cut"))
    path = tmp_path / "truncated.wat.gz"
    path.write_bytes(whole + cut[: len(cut) - 30])
    counts = CandidatesStats()
    urls = [p.url for p in iter_pages(str(path), counts)]
    assert urls == ["https://example.org/whole"]
    assert counts.damage[Damage.TRUNCATED] + counts.damage[Damage.CORRUPT_GZIP] == 1


def test_invalid_json_non_utf8_and_missing_fields_are_counted_by_kind(tmp_path):
    path = tmp_path / "bad.wat.gz"
    path.write_bytes(
        _member(b'{"Envelope": {"HTML-Metadata": ')
        + _member(_page("https://example.org/X").replace(b"/X", b"/\xff"))
        + _member(b'{"Container": {}, "HTML-Metadata": {}}')
        + _member(_page("https://example.org/ok"))
    )
    counts = CandidatesStats()
    assert [p.url for p in iter_pages(str(path), counts)] == ["https://example.org/ok"]
    assert counts.damage[Damage.INVALID_JSON] == 1
    assert counts.damage[Damage.NON_UTF8] == 1
    assert counts.damage[Damage.MISSING_FIELDS] == 1


def test_links_whose_fields_are_not_text_read_as_they_did(tmp_path):
    # Such a record does not fit the typed structs and is read by the generic path: a link whose
    # url is not text is a malformed link, an alt that is not text reaches the checks (no_alt).
    links = (
        '[{"path":"IMG@/src","url":"a.jpg","alt":42},{"path":"IMG@/src","url":7,"alt":"a red car"},'
        '{"path":5,"url":"b.jpg"},{"path":"IMG@/src","url":"c.jpg","alt":"a blue car"}]'
    )
    body = _page("https://example.org/odd").replace(
        b'[{"path":"IMG@/src","url":"a.jpg","alt":"a red car"}]', links.encode()
    )
    path = tmp_path / "odd.wat.gz"
    path.write_bytes(_member(body) + _member(_page("https://example.org/plain")))
    counts = CandidatesStats()
    pages = list(iter_pages(str(path), counts))
    assert [(p.url, p.images) for p in pages] == [
        ("https://example.org/odd", [("a.jpg", 42), ("c.jpg", "a blue car")]),
        ("https://example.org/plain", [("a.jpg", "a red car")]),
    ]
    assert counts.damage[Damage.LINK] == 1 and counts.html_pages == 2


def _record(body: bytes, claimed: int | None = None) -> bytes:
    """One WARC metadata record, uncompressed, whose Content-Length may lie."""
    length = len(body) if claimed is None else claimed
    head = f"WARC/1.0\r\nWARC-Type: metadata\r\nWARC-Target-URI: https://example.org/\r\nContent-Length: {length}\r\n"
    return head.encode() + b"\r\n" + body + b"\r\n\r\n"


def test_json_nested_past_the_recursion_limit_is_counted_and_the_file_goes_on(tmp_path):
    deep = []
    for depth in (1_500, 100_000):
        nested = ("[" * depth + "]" * depth).encode()
        # Deep where the typed structs skip a field, and deep where only the generic path looks.
        deep.append(_page("https://example.org/deep").replace(b'"Head":{}', b'"Head":{},"x":' + nested))
        deep.append(b'{"HTML-Metadata":1,"Envelope":' + nested + b"}")
    path = tmp_path / "deep.wat.gz"
    path.write_bytes(
        b"".join(_member(body) + _member(_page(f"https://example.org/{i}")) for i, body in enumerate(deep))
    )
    counts = CandidatesStats()
    urls = [p.url for p in iter_pages(str(path), counts)]
    assert urls == [f"https://example.org/{i}" for i in range(len(deep))]
    assert counts.damage[Damage.TOO_DEEP] == len(deep) and counts.metadata_records == 2 * len(deep)


def test_a_content_length_past_the_record_cap_costs_only_that_record(tmp_path):
    path = tmp_path / "liar.wat.gz"
    good = b"".join(gzip.compress(_record(_page(f"https://example.org/{i}"))) for i in range(1_000))
    path.write_bytes(gzip.compress(_record(_page("https://example.org/liar"), claimed=10**12)) + good)
    counts = CandidatesStats()
    urls = [p.url for p in iter_pages(str(path), counts)]
    assert urls == [f"https://example.org/{i}" for i in range(1_000)]
    assert counts.damage[Damage.TOO_LARGE] == 1 and counts.metadata_records == 1_001


def test_a_content_length_under_the_cap_that_runs_past_the_end_costs_only_that_record(tmp_path):
    # The lie reads on through every record behind it and ends short at the end of the file.
    records = [_record(_page(f"https://example.org/{i}")) for i in range(200)]
    records.insert(100, _record(_page("https://example.org/liar"), claimed=12 << 20))  # under the 16 MiB cap
    for name, data in (("liar.wat.gz", b"".join(map(gzip.compress, records))), ("liar.wat", b"".join(records))):
        (tmp_path / name).write_bytes(data)
        counts = CandidatesStats()
        urls = [p.url for p in iter_pages(str(tmp_path / name), counts)]
        assert urls == [f"https://example.org/{i}" for i in range(200)], name
        assert counts.damage[Damage.TRUNCATED] == 1, name


def test_a_member_inflating_past_the_record_cap_is_counted_at_low_memory(tmp_path):
    # 256 MiB of body in one gzip member, under a 1 MiB cap: counted, never read, the next record read.
    path = tmp_path / "bomb.wat.gz"
    size = 256 << 20
    with open(path, "wb") as handle:
        deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
        handle.write(deflate.compress(_record(b"", claimed=size)[:-4]))
        zeros = bytes(1 << 20)
        handle.writelines(deflate.compress(zeros) for _ in range(size >> 20))
        handle.write(deflate.compress(b"\r\n\r\n") + deflate.flush())
        handle.write(_member(_page("https://example.org/after")))
    probe = (
        "import json, resource, sys\n"
        "from cah_resources.candidates.wat import iter_pages\n"
        "from cah_resources.contract import CandidatesStats\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "counts = CandidatesStats()\n"
        "urls = [p.url for p in iter_pages(sys.argv[1], counts, max_record_bytes=int(sys.argv[2]))]\n"
        "grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10\n"
        "print(json.dumps([urls, counts.to_dict(), grown]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-c", probe, str(path), str(1 << 20)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    urls, counts, grown_mib = json.loads(done.stdout)
    assert urls == ["https://example.org/after"] and counts[Damage.TOO_LARGE] == 1
    assert grown_mib < 32  # peak RSS growth in MiB; reading the body would add 256


def test_a_last_gzip_member_cut_short_is_counted_as_truncated_gzip(tmp_path):
    whole, cut = _member(_page("https://example.org/whole")), _member(_page("https://example.org/cut"))
    for kept in (5, 40, len(cut) // 2):
        path = tmp_path / f"cut{kept}.wat.gz"
        path.write_bytes(whole + cut[:kept])
        counts = CandidatesStats()
        assert [p.url for p in iter_pages(str(path), counts)] == ["https://example.org/whole"]
        assert counts.damage[Damage.CORRUPT_GZIP_TRUNCATED] + counts.damage[Damage.TRUNCATED] == 1, (kept, counts)


def test_stray_gzip_headers_do_not_lose_the_good_records_behind_them(tmp_path):
    good = [_member(_page(f"https://example.org/{i}")) for i in range(4)]
    for stray in (b"\x1f\x8b\x08" * 64, b"".join(b"\x1f\x8b\x08" + bytes([i, 7, 99, i, 1]) for i in range(64))):
        path = tmp_path / "stray.wat.gz"
        path.write_bytes(good[0] + good[1] + stray + good[2] + good[3])
        counts = CandidatesStats()
        urls = [p.url for p in iter_pages(str(path), counts)]
        assert urls == [f"https://example.org/{i}" for i in range(4)]
        assert counts.damage[Damage.CORRUPT_GZIP] == 1


def test_a_lone_surrogate_escape_in_one_alt_keeps_the_pages_other_links(tmp_path):
    page = _page("https://example.org/p").replace(
        b'"alt":"a red car"', b'"alt":"bad \\ud800 x"},{"path":"IMG@/src","url":"b.jpg","alt":"a blue bike"'
    )
    path = tmp_path / "surrogate.wat.gz"
    path.write_bytes(_member(page) + _member(_page("https://example.org/next")))
    counts = CandidatesStats()
    pages = list(iter_pages(str(path), counts))
    assert [p.url for p in pages] == ["https://example.org/p", "https://example.org/next"]
    assert pages[0].images == [("a.jpg", "bad \ufffd x"), ("b.jpg", "a blue bike")]
    assert counts.damage[Damage.LONE_SURROGATE] == 1 and not counts.damage[Damage.INVALID_JSON]


def _page_with_links(url: str, links: list[dict]) -> bytes:
    doc = {
        "Envelope": {
            "WARC-Header-Metadata": {"WARC-Target-URI": url},
            "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Head": {}, "Links": links}}},
        }
    }
    return json.dumps(doc).encode()


def test_oversized_pages_are_dropped_by_reason_within_bounded_memory(tmp_path):
    """A page of 200k image links, one of a 10 MB alt and one of a 1 MB URL: counted drops, bounded memory."""
    import tracemalloc

    from cah_resources.candidates.image_links import CandidateFilters
    from cah_resources.candidates.stage import extract_pairs

    many = [{"path": "IMG@/src", "url": f"/{i}.jpg", "alt": "a red car"} for i in range(200_000)]
    path = tmp_path / "oversized.wat.gz"
    path.write_bytes(
        _member(_page_with_links("https://example.org/many", many))
        + _member(
            _page_with_links("https://example.org/alt", [{"path": "IMG@/src", "url": "a.jpg", "alt": "w " * 5_000_000}])
        )
        + _member(
            _page_with_links(
                "https://example.org/url", [{"path": "IMG@/src", "url": "/" + "u" * 1_000_000, "alt": "a red car"}]
            )
        )
    )
    counts = CandidatesStats()
    tracemalloc.start()
    try:
        pairs = extract_pairs(str(path), CandidateFilters(), counts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(pairs) == 5_000 and counts.drops[DropReason.TOO_MANY_LINKS] == 195_000
    assert counts.drops[DropReason.ALT_TOO_LONG] == 1 and counts.drops[DropReason.URL_TOO_LONG] == 1
    assert peak < 200_000_000  # the records are 10-11 MB each: decoded once, their links never all kept
