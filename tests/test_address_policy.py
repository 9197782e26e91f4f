"""The downloader's address guard: non-public targets are refused after resolution, before any connection."""

import asyncio
import contextlib
import socket

import pytest

from cah_resources.image_shards.address_policy import (
    AddressPolicy,
    BlockedAddressError,
    GuardedResolver,
    blocked_reason,
)
from cah_resources.image_shards.downloader import Downloader, FetchSettings
from cah_resources.samples.local_web import LocalImageWeb

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.77.3.9", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("224.0.0.251", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("240.0.0.1", "private"),
    ("100.64.0.1", "not globally routable"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("fd00::2", "private"),
    ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "link-local"),
    ("2002:7f00:1::1", "loopback"),
    ("64:ff9b::a00:1", "private"),
]


@pytest.mark.parametrize("address,reason", REFUSED)
def test_non_public_addresses_are_refused_with_their_reason(address, reason):
    assert blocked_reason(address) == reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808"])
def test_public_addresses_including_nat64_ones_are_allowed(address):
    assert blocked_reason(address) is None
    assert AddressPolicy().refusal(address) is None


def test_allowed_networks_open_exactly_their_range():
    policy = AddressPolicy.from_strings(["127.0.0.0/8"])
    assert policy.refusal("127.5.5.5") is None
    assert policy.refusal("::ffff:127.0.0.1") is None
    assert policy.refusal("10.0.0.1") == "private"
    assert policy.refusal("::1") == "loopback"
    assert AddressPolicy.from_strings([], block_private=False).refusal("10.0.0.1") is None


def test_a_malformed_allowed_network_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"allowed network '127.0.0.0/33' is not an IP network"):
        AddressPolicy.from_strings(["127.0.0.0/33"])


def test_the_resolver_refuses_a_name_whose_addresses_are_all_loopback():
    async def resolve():
        resolver = GuardedResolver(AddressPolicy())
        try:
            return await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
        finally:
            await resolver.close()

    with pytest.raises(BlockedAddressError, match="localhost resolves to blocked address"):
        asyncio.run(resolve())


def test_the_resolver_passes_allowed_addresses_through():
    async def resolve():
        resolver = GuardedResolver(AddressPolicy.from_strings(["127.0.0.0/8", "::1/128"]))
        try:
            return await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
        finally:
            await resolver.close()

    hosts = {answer["host"] for answer in asyncio.run(resolve())}
    assert hosts and hosts <= {"127.0.0.1", "::1"}


class CountingListener:
    """Listening sockets that never answer; afterwards, ``connections()`` says how many were made."""

    def __init__(self) -> None:
        self.sockets = []
        v4 = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.sockets.append(v4)
        self.port = v4.getsockname()[1]
        with contextlib.suppress(OSError):  # no IPv6 loopback here; [::1] URLs are still refused before any connect
            self.sockets.append(socket.create_server(("::1", self.port), family=socket.AF_INET6, backlog=64))

    def connections(self) -> int:
        count = 0
        for sock in self.sockets:
            sock.setblocking(False)
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                count += 1
        return count

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def _fetch_all(urls, settings):
    async def run():
        async with Downloader(settings) as downloader:
            return await asyncio.gather(*(downloader.fetch(url) for url in urls))

    return asyncio.run(run())


def test_default_settings_refuse_loopback_private_metadata_and_localhost_without_connecting():
    listener = CountingListener()
    port = listener.port
    urls = [
        f"http://127.0.0.1:{port}/a.jpg",
        f"http://10.0.0.1:{port}/a.jpg",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        f"http://[::1]:{port}/a.jpg",
        f"http://localhost:{port}/a.jpg",
        f"http://[::ffff:127.0.0.1]:{port}/a.jpg",
    ]
    try:
        results = _fetch_all(urls, FetchSettings(connect_timeout=2, read_timeout=2, total_timeout=4, retries=2))
        assert [r.status for r in results] == ["blocked_address"] * len(urls)
        assert all("blocked address" in r.error_message for r in results)
        assert listener.connections() == 0
    finally:
        listener.close()


def test_a_redirect_to_a_refused_address_is_not_followed():
    listener = CountingListener()
    with LocalImageWeb(n_hosts=1) as web:
        start = f"{web.origins[0]}/redirect_to/0?to=http://127.0.0.1:{listener.port}/secret.jpg"
        only_the_fake_web = FetchSettings(
            allowed_networks=("127.77.0.0/16",), connect_timeout=2, read_timeout=2, total_timeout=4
        )
        try:
            (result,) = _fetch_all([start], only_the_fake_web)
            assert result.status == "blocked_address"
            assert "127.0.0.1" in result.error_message
            assert listener.connections() == 0
            assert web.requests["/redirect_to/0"] == 1
        finally:
            listener.close()


def test_allowing_a_range_lets_the_downloader_reach_it():
    with LocalImageWeb(n_hosts=1) as web:
        url = web.url("jpeg", 0)
        (refused,) = _fetch_all([url], FetchSettings(total_timeout=4))
        (fetched,) = _fetch_all([url], FetchSettings(allowed_networks=("127.0.0.0/8",), total_timeout=4))
    assert refused.status == "blocked_address"
    assert fetched.status == "fetched" and fetched.body == web.body("jpeg", 0)


@pytest.mark.parametrize("allowed", [(), ("127.0.0.0/8", "169.254.0.0/16")])
def test_numeric_host_forms_that_are_not_canonical_ip_literals_are_refused_without_connecting(allowed):
    listener = CountingListener()
    port = listener.port
    hosts = ["2130706433", "0177.0.0.1", "0x7f.1", "127.1", "2852039166", "0x7f000001", "127.0.0.01", "images.0x1f"]
    try:
        settings = FetchSettings(allowed_networks=allowed, connect_timeout=2, read_timeout=2, total_timeout=4)
        results = _fetch_all([f"http://{host}:{port}/a.jpg" for host in hosts], settings)
        assert [r.status for r in results] == ["blocked_address"] * len(hosts)
        assert all("not a canonical host name or IP address" in r.error_message for r in results)
        assert listener.connections() == 0
    finally:
        listener.close()


@pytest.mark.parametrize(
    "host",
    [
        "images.example.com",
        "bücher.de",
        "xn--bcher-kva.de",
        "cdn_1.example.net",
        "localhost",
        "example.com.",
        "8.8.8.8",
        "[2606:4700:4700::1111]",
    ],
)
def test_dns_names_and_canonical_ip_literals_pass_the_literal_check(host):
    AddressPolicy().check_literal_host(host)
