"""The aiohttp fetcher against the local image web: concurrency, per-host limits, retries, caps, robots."""

import asyncio
from collections import Counter

import pytest
from yarl import URL

from cah_resources.image_shards.downloader import (
    DEFAULT_USER_AGENT,
    Downloader,
    FetchSettings,
    parse_retry_after,
    robots_disallow,
)
from cah_resources.samples.local_web import OVERSIZED_BYTES, LocalImageWeb

FAST = dict(
    allowed_networks=("127.0.0.0/8",), connect_timeout=2, read_timeout=1, total_timeout=4, retries=1, retry_backoff=0.05
)


@pytest.fixture(scope="module")
def shared_web():
    with LocalImageWeb(n_hosts=4, latency=(0.2, 0.3)) as fake_web:
        yield fake_web


@pytest.fixture
def web(shared_web):
    shared_web.reset_counters()
    return shared_web


def fetch_all(urls, settings):
    async def run():
        async with Downloader(settings) as downloader:
            return await asyncio.gather(*(downloader.fetch(url) for url in urls))

    return asyncio.run(run())


def test_hundreds_of_requests_are_in_flight_at_once(web):
    urls = [web.url("jpeg", n) for n in range(400)]
    # Generous timeouts: the point is concurrency, and the web answering 300 requests at once runs
    # in this process's other thread, so on a busy 2-core CI machine a 1 s read timeout can expire.
    roomy = {**FAST, "read_timeout": 20, "total_timeout": 60}
    results = fetch_all(urls, FetchSettings(concurrency=300, per_host_connections=100, **roomy))
    assert Counter(r.status for r in results) == {"fetched": len(urls)}
    assert web.peak_in_flight >= 150


def test_no_host_gets_more_than_its_connection_limit(web):
    urls = [web.url("jpeg", n) for n in range(120)]
    results = fetch_all(urls, FetchSettings(concurrency=200, per_host_connections=3, **FAST))
    assert all(r.status == "fetched" for r in results)
    assert max(web.peak_per_host.values()) <= 3
    assert web.peak_in_flight >= 6  # the other hosts kept working meanwhile


def test_a_busy_host_does_not_starve_the_others(web):
    busy = [web.url("jpeg", 4 * n) for n in range(24)]  # all on host 0, queued first
    others = [web.url("png", n) for n in range(1, 13) if n % 4]
    fetch_all(busy + others, FetchSettings(concurrency=8, per_host_connections=2, **FAST))
    assert web.peak_per_host[web.hosts[0]] <= 2
    busy_times = sorted(t for url in busy for t in web.request_times[URL(url).path])
    other_times = [t for url in others for t in web.request_times[URL(url).path]]
    assert len(busy_times) == len(busy) and len(other_times) == len(others)
    # URLs waiting for the busy host must not sit on global slots the other hosts could use.
    assert max(other_times) < busy_times[len(busy_times) // 2]


def test_requests_identify_the_downloader(web):
    fetch_all([web.url("jpeg", 0)], FetchSettings(**FAST))
    assert list(web.user_agents) == [DEFAULT_USER_AGENT]


def test_retry_after_is_waited_for_before_the_retry(web):
    (result,) = fetch_all([web.url("rate_limited_once", 0)], FetchSettings(**FAST))
    assert result.status == "fetched"
    first, second = web.request_times["/rate_limited_once/0.jpg"]
    assert second - first >= 1.0  # the server asked for Retry-After: 1


def test_only_transient_failures_are_retried(web):
    kinds = ["not_found", "server_error", "robots_noai", "flaky_500", "redirect_loop"]
    results = fetch_all([web.url(k, 0) for k in kinds], FetchSettings(**{**FAST, "retries": 2}))
    assert [r.status for r in results] == ["http_404", "http_500", "robots_noai", "fetched", "redirect_loop"]
    assert web.requests["/not_found/0.jpg"] == 1
    assert web.requests["/server_error/0.jpg"] == 3
    assert web.requests["/robots_noai/0.jpg"] == 1
    assert web.requests["/flaky_500/0.jpg"] == 2


def test_a_url_waiting_to_retry_holds_no_slot(web):
    failing, healthy = web.url("server_error", 0), web.url("jpeg", 0)
    settings = FetchSettings(**{**FAST, "concurrency": 1, "retries": 1, "retry_backoff": 1.0})
    assert [r.status for r in fetch_all([failing, healthy], settings)] == ["http_500", "fetched"]
    first_try, retry = web.request_times["/server_error/0.jpg"]
    (fetched,) = web.request_times["/jpeg/0.jpg"]
    assert first_try < fetched < retry  # the one slot served the healthy URL during the backoff


def test_a_body_over_the_cap_is_not_read_to_the_end(web):
    urls = [web.url("oversized_chunked", 0), web.url("oversized_declared", 0)]
    results = fetch_all(urls, FetchSettings(**{**FAST, "max_body_bytes": 500_000}))
    assert [r.status for r in results] == ["too_large", "too_large"]
    assert "500000 byte limit" in results[0].error_message
    assert web.streamed_bytes["/oversized_chunked/0.jpg"] < OVERSIZED_BYTES


def test_a_redirect_chain_is_followed_and_a_long_one_is_cut(web):
    good, long = fetch_all(
        [web.url("redirect_chain", 0), web.url("redirect_too_many", 0)], FetchSettings(**{**FAST, "max_redirects": 4})
    )
    assert good.status == "fetched" and good.body == web.body("redirect_chain", 0)
    assert good.final_url.endswith("/redirect_chain/0/0")
    assert long.status == "too_many_redirects"
    assert web.requests["/redirect_too_many/0/8"] == 1 and web.requests["/redirect_too_many/0/7"] == 0


def test_hung_and_stalled_servers_time_out(web):
    results = fetch_all([web.url("hang", 0), web.url("stall_body", 0)], FetchSettings(**FAST))
    assert [r.status for r in results] == ["timeout", "timeout"]


def test_unusable_urls_are_invalid_url_not_crashes(web):
    results = fetch_all(
        ["ftp://example.com/a.jpg", "http:///nohost.jpg", "not a url at all", "http://[::1/x.jpg"],
        FetchSettings(**FAST),
    )
    assert [r.status for r in results] == ["invalid_url"] * 4


@pytest.mark.parametrize(
    "values,blocked",
    [
        (["noai"], True),
        (["noimageai, nofollow"], True),
        (["cah: noai"], True),
        (["CAH: NoImageAI"], True),
        (["otherbot: noai"], False),
        (["noindex", "otherbot: noimageai"], False),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], False),
        ([], False),
    ],
)
def test_x_robots_tag_is_read_like_img2dataset(values, blocked):
    assert (robots_disallow(values, "cah", ("noai", "noimageai")) is not None) == blocked


def test_retry_after_accepts_seconds_and_http_dates():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
