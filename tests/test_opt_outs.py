"""Opt-outs and blocklists against the local web: robots.txt forms, TDMRep, hash lists; what was never requested."""

import asyncio
import hashlib
import io
import os
import tarfile
from collections import Counter
from dataclasses import replace

import pytest

from cah_resources.blocklists import load_blocklist, parse_hash_lines
from cah_resources.candidates.image_links import CandidateFilters
from cah_resources.candidates.stage import extract_pairs
from cah_resources.contract import CandidatesStats, DropReason
from cah_resources.image_shards.downloader import Downloader, FetchSettings
from cah_resources.image_shards.opt_outs import parse_tdmrep
from cah_resources.image_shards.resizer import ResizeSettings
from cah_resources.image_shards.stage import ShardSettings, download_shard, plan_shards, summarize_markers
from cah_resources.samples.local_web import SITE_PROFILES, LocalImageWeb, LocalUrl, photo_like
from cah_resources.storage import DataRoot
from tests.hostile_images import BodiesWeb
from tests.test_image_shards import all_rows, shard_files, write_candidates

SEGMENT = "CC-MAIN-TEST_00000"
FETCH = FetchSettings(
    allowed_networks=("127.0.0.0/8",), connect_timeout=2, read_timeout=2, total_timeout=6, retries=1, retry_backoff=0.05
)
SETTINGS = ShardSettings(fetch=FETCH, resize=ResizeSettings(image_size=64), shard_size=100)
# (profile or None for a default host, path, status the row must end in, whether the server may see the path)
CASES = [
    ("robots_rules", "/private/jpeg/1.jpg", "robots_disallowed", False),
    ("robots_rules", "/private/open/jpeg/2.jpg", "ok", True),  # Allow overrides a shorter Disallow
    ("robots_rules", "/png/3.png", "robots_disallowed", False),  # Disallow: /*.png$
    ("robots_rules", "/jpeg/4.jpg?session=9", "robots_disallowed", False),  # Disallow: /*?session=
    ("robots_rules", "/jpeg/5.jpg", "ok", True),  # otherbot's "Disallow: /" is not ours
    ("robots_group_for_us", "/jpeg/6.jpg", "ok", True),  # our group, not *, applies
    ("robots_group_for_us", "/nocah/jpeg/7.jpg", "robots_disallowed", False),
    ("robots_5xx", "/jpeg/8.jpg", "robots_unreachable", False),
    ("robots_5xx", "/png/9.png", "robots_unreachable", False),
    ("robots_huge", "/early/jpeg/10.jpg", "robots_disallowed", False),
    ("robots_huge", "/late/jpeg/11.jpg", "ok", True),  # its rule lies past the 500 KiB read
    ("robots_redirect", "/jpeg/12.jpg", "robots_disallowed", False),  # robots.txt moved to another host
    (None, "/jpeg/13.jpg", "ok", True),
    ("tdmrep", "/reserved/jpeg/14.jpg", "tdm_reserved", False),
    ("tdmrep", "/reserved/open/jpeg/15.jpg", "ok", True),  # the first matching entry wins
    ("tdmrep", "/webp/16.webp", "tdm_reserved", False),
    ("tdmrep", "/jpeg/17.jpg", "ok", True),
    ("tdmrep", "/header/jpeg/18.jpg", "tdm_reserved", True),  # asked, answered tdm-reservation: 1
    (None, "/png/21.png", "blocklisted_image", True),
]


@pytest.fixture(scope="module")
def web():
    with LocalImageWeb(n_hosts=2, site_profiles=SITE_PROFILES) as fake_web:
        yield fake_web


def case_urls(web) -> list[LocalUrl]:
    urls = []
    for profile, path, status, _ in CASES:
        base = web.site_url(profile, "") if profile else web.origins[0]
        urls.append(LocalUrl(base + path, path, status))
    # A redirect from an allowed host into a disallowed path: the target is judged too.
    target = web.site_url("robots_rules", "/private/jpeg/19.jpg")
    urls.append(LocalUrl(f"{web.origins[1]}/redirect_to/19?to={target}", "redirect", "robots_disallowed"))
    return urls


def image_list(tmp_path, web) -> str:
    """A list naming the bytes /png/21.png serves (SHA-256), and some MD5 that matches nothing."""
    path = tmp_path / "images.sha256"
    listed = hashlib.sha256(web.body("png", 21)).hexdigest()
    path.write_text(f"# images taken down\n{listed}\n{hashlib.md5(b'nothing').hexdigest()}\n\n")
    return str(path)


@pytest.fixture(scope="module")
def downloaded(web, tmp_path_factory):
    web.reset_counters()
    tmp = tmp_path_factory.mktemp("opt_outs")
    root = DataRoot(str(tmp / "data"))
    urls = case_urls(web)
    write_candidates(root, SEGMENT, urls)
    settings = replace(SETTINGS, blocked_image_lists=(image_list(tmp, web),))
    (unit,) = plan_shards(root, SEGMENT, settings.shard_size)
    marker = download_shard(unit, settings)
    return root, urls, marker


def test_every_row_gets_the_status_its_site_opt_out_sets(downloaded):
    root, urls, _ = downloaded
    expected = {u.url: u.expected_status for u in urls}
    got = {r["url"]: (r["status"], r["error_message"]) for r in all_rows(root, SEGMENT)}
    wrong = [(url, got[url], status) for url, status in expected.items() if got[url][0] != status]
    assert not wrong


def test_a_disallowed_or_reserved_image_is_never_requested(downloaded, web):
    served = {path.split("?")[0]: may for _, path, _, may in CASES}
    never = [path for path, may in served.items() if not may]
    assert never and all(web.requests[path] == 0 for path in never), {p: web.requests[p] for p in never}
    assert web.requests["/private/jpeg/19.jpg"] == 0  # the redirect's target
    assert all(web.requests[path] >= 1 for path, may in served.items() if may)


def test_each_host_is_asked_for_robots_txt_and_tdmrep_json_once_per_task(downloaded, web):
    _, _, marker = downloaded
    asked = Counter({key: n for key, n in web.site_file_requests.items() if not key.endswith("/moved/robots.txt")})
    hosts = {*web.profile_hosts.values(), *(o.split("//")[1] for o in web.origins)}
    assert set(asked) == {f"{h}{p}" for h in hosts for p in ("/robots.txt", "/.well-known/tdmrep.json")}
    assert max(asked.values()) == 1
    assert marker["robots_txt_requests"] == len(hosts) and marker["tdmrep_requests"] == len(hosts)


def test_an_image_marked_tdm_reserved_or_blocklisted_is_never_written(downloaded):
    root, urls, marker = downloaded
    refused = {r["key"] for r in all_rows(root, SEGMENT) if r["status"] in ("tdm_reserved", "blocklisted_image")}
    tar = next(data for name, data in shard_files(root, SEGMENT).items() if name.endswith(".tar"))
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        written = {name.split(".")[0] for name in archive.getnames()}
    assert len(refused) == 4 and written and not refused & written
    assert marker["status_counts"]["ok"] == sum(u.expected_status == "ok" for u in urls)


def test_the_marker_names_the_signals_and_lists_a_release_may_claim(downloaded):
    _, _, marker = downloaded
    assert marker["opt_out_signals"] == ["robots_noai", "robots_txt", "tdmrep"]
    (listed,) = marker["blocklists"]
    assert listed["kind"] == "image" and listed["entries"] == 2 and len(listed["sha256"]) == 64
    totals = summarize_markers([marker, {**marker, "opt_out_signals": ["robots_noai"]}])
    assert totals.opt_out_signals == ["robots_noai"]  # a shard that skipped a check takes it from the release


def test_with_the_checks_off_no_site_file_is_asked_and_the_rules_do_not_apply(web, tmp_path):
    web.reset_counters()
    root = DataRoot(str(tmp_path / "data"))
    url = web.site_url("robots_rules", "/private/jpeg/31.jpg")
    write_candidates(root, SEGMENT, [LocalUrl(url, "jpeg", "ok")])
    fetch = replace(FETCH, honour_robots_txt=False, honour_tdmrep=False)
    (unit,) = plan_shards(root, SEGMENT, 10)
    marker = download_shard(unit, replace(SETTINGS, fetch=fetch))
    assert marker["status_counts"] == {"ok": 1} and not web.site_file_requests
    assert marker["opt_out_signals"] == ["robots_noai"]


def test_an_unreachable_robots_txt_disallows_its_host_for_a_bounded_time(web):
    web.reset_counters()
    url = web.site_url("robots_5xx", "/jpeg/41.jpg")

    async def twice() -> list[str]:
        async with Downloader(replace(FETCH, robots_unreachable_seconds=0.2)) as downloader:
            first = await downloader.fetch(url)
            again = await downloader.fetch(url)  # within the bounded time: the verdict is kept
            await asyncio.sleep(0.3)
            later = await downloader.fetch(url)  # asked again, still 503
            return [first.status, again.status, later.status]

    assert asyncio.run(twice()) == ["robots_unreachable"] * 3
    assert web.site_file_requests[f"{web.profile_hosts['robots_5xx']}/robots.txt"] == 2
    assert web.requests["/jpeg/41.jpg"] == 0


def test_a_dead_host_keeps_its_network_status_and_is_not_dialled_again_for_the_image(web):
    url = web.url("dead_host", 0)

    async def once():
        async with Downloader(FETCH) as downloader:
            return await downloader.fetch(url)

    result = asyncio.run(once())
    assert result.status == "connection_error" and "robots.txt unreachable" in result.error_message


def test_tdmrep_json_entries_match_paths_like_robots_txt_and_skip_malformed_ones():
    rules = parse_tdmrep(
        '[{"location": "/a/*.jpg$", "tdm-reservation": 1}, {"nolocation": 1}, '
        '{"location": "/b", "tdm-reservation": "1", "tdm-policy": "https://p.example/x"}]'
    )
    assert [(r.location, r.reserved, r.policy) for r in rules] == [
        ("/a/*.jpg$", True, None),
        ("/b", True, "https://p.example/x"),
    ]
    assert rules[0].pattern.match("/a/x/y.jpg") and not rules[0].pattern.match("/a/x.jpg?z")
    assert rules[1].pattern.match("/b/c.png") and parse_tdmrep("not json") == []


def test_a_blocklist_line_that_is_no_digest_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match=r"list.txt line 2: .* is not a SHA-256 or MD5 hex digest"):
        parse_hash_lines(b"0" * 64 + b"\nhttp://not-a-hash.example/\n", "list.txt")
    with pytest.raises(FileNotFoundError, match=r"blocklist .*missing.txt does not exist"):
        load_blocklist((str(tmp_path / "missing.txt"),))


def test_candidates_drop_a_listed_url_as_blocklisted_url(sample_crawl, tmp_path):
    rel = sample_crawl.wat_paths[0]
    path = os.path.join(sample_crawl.root, rel)
    all_pairs = extract_pairs(path, CandidateFilters(), CandidatesStats())
    listed = sorted({url for url, _ in all_pairs})[:3]
    lines = [hashlib.sha256(listed[0].encode()).hexdigest(), *(hashlib.md5(u.encode()).hexdigest() for u in listed[1:])]
    (tmp_path / "urls.txt").write_text("\n".join(lines) + "\n")
    stats = CandidatesStats()
    pairs = extract_pairs(path, CandidateFilters(blocked_url_lists=(str(tmp_path / "urls.txt"),)), stats)
    assert not {url for url, _ in pairs} & set(listed)
    assert stats.drops[DropReason.BLOCKLISTED_URL] == len(all_pairs) - len(pairs) > 0
    assert stats.drops[DropReason.DUPLICATE] == sample_crawl.counts[rel].drops[DropReason.DUPLICATE]


def jpeg_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    photo_like(200, 150, seed=seed).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


UNUSABLE_TDMREP = {
    "bracket": '[{"location": "http://[/", "tdm-reservation": 1}]',
    "port": '[{"location": "http://example.org:99999/x", "tdm-reservation": 1}]',
    "nested": "[" * 100_000,
}


@pytest.mark.parametrize("tdmrep", UNUSABLE_TDMREP.values(), ids=UNUSABLE_TDMREP.keys())
def test_a_host_with_an_unusable_tdmrep_location_is_one_row_and_the_shard_finishes(web, tmp_path, tdmrep):
    root = DataRoot(str(tmp_path / "data"))
    good = [LocalUrl(web.url("jpeg", i), "jpeg", "ok") for i in range(20)]
    with BodiesWeb({"/.well-known/tdmrep.json": tdmrep.encode(), "/a.jpg": jpeg_bytes(1)}) as hostile:
        write_candidates(root, SEGMENT, [*good, LocalUrl(hostile.url("/a.jpg"), "jpeg", "ok")])
        (unit,) = plan_shards(root, SEGMENT, 100)
        marker = download_shard(unit, SETTINGS)
        asked = hostile.requests["/.well-known/tdmrep.json"]
    assert marker["count"] == 21 and marker["status_counts"] == {"ok": 21}
    assert asked == 1  # its rules were kept for the task: none, as the entry is unusable


def test_tdmrep_json_with_an_unusable_location_keeps_its_other_entries():
    rules = parse_tdmrep(
        '[{"location": "http://[/", "tdm-reservation": 1}, {"location": "https://h.example:99999/x"},'
        ' {"location": "https://h.example/kept/*", "tdm-reservation": 1}]'
    )
    assert [(r.location, r.pattern.match("/kept/a.jpg")) for r in rules] == [("https://h.example/kept/*", True)]
    assert parse_tdmrep("[" * 100_000) == []


@pytest.mark.timeout(60)  # a backtracking matcher takes longer than the universe's age on this path
def test_a_many_star_tdmrep_location_matches_a_long_path_at_once(tmp_path):
    location = "/" + "*a" * 16 + "*b"
    path = "/" + "a" * 200 + ".jpg"
    with BodiesWeb(
        {
            "/.well-known/tdmrep.json": f'[{{"location": "{location}", "tdm-reservation": 1}}]'.encode(),
            path: jpeg_bytes(2),
        }
    ) as hostile:

        async def once():
            async with Downloader(FETCH) as downloader:
                return await downloader.fetch(hostile.url(path)), await downloader.fetch(hostile.url(path + "b"))

        fetched, reserved = asyncio.run(once())
    assert fetched.status == "fetched" and reserved.status == "tdm_reserved"


def test_a_robots_txt_with_more_rules_than_are_evaluated_refuses_its_host_without_timeouts(tmp_path):
    rules = "".join(f"Disallow: /*x{i}*y$\n" for i in range(24_000))
    robots = ("User-agent: *\n" + rules)[: 500 * 1024].encode()
    with BodiesWeb({"/robots.txt": robots, "/a.jpg": jpeg_bytes(3)}) as hostile:

        async def many():
            async with Downloader(FETCH) as downloader:
                return await asyncio.gather(*(downloader.fetch(hostile.url(f"/a.jpg?{i}")) for i in range(200)))

        results = asyncio.run(many())
        asked = dict(hostile.requests)
    assert Counter(r.status for r in results) == {"robots_too_complex": 200}
    assert "over the 2000 evaluated" in results[0].error_message
    assert asked["/robots.txt"] == 1 and not [path for path in asked if path.startswith("/a.jpg")]


def test_a_robots_txt_within_the_rule_bound_is_evaluated(tmp_path):
    robots = ("User-agent: *\n" + "".join(f"Disallow: /*x{i}*y$\n" for i in range(1_900)) + "Disallow: /no/\n").encode()
    with BodiesWeb({"/robots.txt": robots, "/a.jpg": jpeg_bytes(3)}) as hostile:

        async def two():
            async with Downloader(FETCH) as downloader:
                return [(await downloader.fetch(hostile.url(p))).status for p in ("/a.jpg", "/no/a.jpg", "/x7/zy")]

        assert asyncio.run(two()) == ["fetched", "robots_disallowed", "robots_disallowed"]
