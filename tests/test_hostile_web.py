"""The downloader against hostile servers on raw loopback sockets: compression bombs and framing lies."""

import asyncio
import gc
import json
import random
import tracemalloc
import zlib
from collections import Counter

import brotli
import pytest
from hostile_peers import RawServer, read_request, response_head

from cah_resources.image_shards.body_reader import ENCODINGS, MAX_GZIP_MEMBERS
from cah_resources.image_shards.downloader import Downloader, Fetched, FetchSettings

# These peers serve bodies, not sites: no robots.txt or tdmrep.json to ask them for.
LOOPBACK = dict(
    allowed_networks=("127.0.0.0/8",),
    connect_timeout=2,
    read_timeout=2,
    total_timeout=20,
    retries=1,
    retry_backoff=0.05,
    honour_robots_txt=False,
    honour_tdmrep=False,
)
INFLATED = 300_000_000  # what each bomb inflates to; the cap below is 1 MB


def fetch_all(urls, settings):
    async def run():
        async with Downloader(settings) as downloader:
            return await asyncio.gather(*(downloader.fetch(url) for url in urls))

    return asyncio.run(run())


def _compress(coding: str, size: int) -> bytes:
    if coding == "br":
        return brotli.compress(b"\0" * size, quality=5)
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS)
    zeros = b"\0" * 1_000_000
    return b"".join(packer.compress(zeros) for _ in range(size // len(zeros))) + packer.flush()


@pytest.fixture(scope="module")
def bombs():
    return {coding: _compress(coding, INFLATED) for coding in ("gzip", "deflate", "br")}


def serve_encoded(bodies: dict[str, tuple[str, bytes]], seen_headers: list[bytes] | None = None):
    """A server answering /<name> with ``bodies[name]`` = (Content-Encoding, bytes), keeping connections open."""

    async def handler(reader, writer):
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            if seen_headers is not None:
                seen_headers.append(head)
            name = head.split(b" ", 2)[1].decode().lstrip("/")
            coding, body = bodies[name]
            writer.write(response_head(Content_Type="image/jpeg", Content_Encoding=coding, Content_Length=len(body)))
            writer.write(body)
            await writer.drain()

    return RawServer(handler)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
def test_a_compression_bomb_is_too_large_after_little_memory(bombs, coding):
    with serve_encoded({"bomb": (coding, bombs[coding])}) as server:
        gc.collect()
        tracemalloc.start()
        try:
            (result,) = fetch_all([server.url("/bomb")], FetchSettings(**LOOPBACK, max_body_bytes=1_000_000))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.status == "too_large"
    assert "1000000 byte limit" in result.error_message
    assert peak < 16_000_000  # against 300 MB inflated: the cap, one decode step and the raw chunks


def test_compressed_bodies_are_decoded_and_only_decodable_encodings_are_asked_for():
    image = bytes(range(256)) * 4_000
    half = len(image) // 2
    bodies = {
        "gzip": ("gzip", zlib.compress(image, wbits=16 + zlib.MAX_WBITS)),
        "gzip_members": (
            "gzip",
            b"".join(zlib.compress(part, wbits=16 + zlib.MAX_WBITS) for part in (image[:half], image[half:])),
        ),
        "deflate": ("deflate", zlib.compress(image)),
        "raw_deflate": ("deflate", zlib.compress(image, wbits=-zlib.MAX_WBITS)),
        "br": ("br", brotli.compress(image)),
        "plain": ("identity", image),
    }
    seen: list[bytes] = []
    with serve_encoded(bodies, seen) as server:
        results = fetch_all([server.url(f"/{name}") for name in bodies], FetchSettings(**LOOPBACK))
    assert [r.status for r in results] == ["fetched"] * len(bodies)
    assert all(r.body == image for r in results)
    asked = {
        line.split(b":", 1)[1].strip()
        for head in seen
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"accept-encoding:")
    }
    assert asked == {", ".join(ENCODINGS).encode()} and ENCODINGS == ("gzip", "deflate", "br")


def test_a_body_of_many_empty_gzip_members_is_bad_encoding_not_a_busy_loop():
    empty = zlib.compress(b"", wbits=16 + zlib.MAX_WBITS)  # 20 bytes that inflate to nothing
    bodies = {"members": ("gzip", empty * 200_000), "few": ("gzip", empty * 3 + zlib.compress(b"x" * 9_000, wbits=31))}
    with serve_encoded(bodies) as server:
        many, few = fetch_all([server.url("/members"), server.url("/few")], FetchSettings(**LOOPBACK))
    assert many.status == "bad_encoding" and f"more than {MAX_GZIP_MEMBERS} gzip members" in many.error_message
    assert few.status == "fetched" and few.body == b"x" * 9_000


def test_an_unknown_or_stacked_content_encoding_gets_its_own_status():
    bodies = {
        "zstd": ("zstd", b"\x28\xb5\x2f\xfd" + b"\0" * 20_000),
        "stacked": ("gzip, br", b"\0" * 20_000),
        "corrupt": ("gzip", b"\x1f\x8b\x08\x00" + b"\xff" * 20_000),
    }
    with serve_encoded(bodies) as server:
        results = fetch_all([server.url(f"/{name}") for name in bodies], FetchSettings(**LOOPBACK))
    assert [r.status for r in results] == ["unsupported_encoding", "unsupported_encoding", "bad_encoding"]
    assert "'zstd' was not asked for" in results[0].error_message
    assert all(r.body is None for r in results)


def test_a_content_length_lie_does_not_poison_the_next_response_on_that_connection():
    async def liar(reader, writer):
        while (line := await read_request(reader)) is not None:
            path = line.split()[1]
            if path == "/lie":  # says 100 bytes, sends 10 MB, then reads the next request as if all was well
                writer.write(response_head(Content_Length=100) + b"a" * 100)
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(response_head(Content_Length=8) + b"INJECTED" + b"x" * 10_000_000)
            else:
                body = f"the body of {path}".encode()
                writer.write(response_head(Content_Length=len(body)) + body)
            await writer.drain()

    with RawServer(liar) as server:
        settings = FetchSettings(**{**LOOPBACK, "per_host_connections": 1, "concurrency": 1})
        lie, following, third = fetch_all([server.url(p) for p in ("/lie", "/next", "/third")], settings)
        connections = server.connections
    assert lie.status == "fetched" and lie.body == b"a" * 100
    assert (following.status, following.body) == ("fetched", b"the body of /next")
    assert (third.status, third.body) == ("fetched", b"the body of /third")
    assert connections >= 2  # the liar's connection was dropped, not handed to /next


def _fuzz_text(rng: random.Random, size: int) -> str:
    alphabet = "/a*$%?#[]:@.-_é\x00\t \\\"'{}" + "\ud800"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, size)))


def _fuzz_bytes(rng: random.Random, size: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, size)))


def fuzz_robots(rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.randint(0, 40)):
        kind = rng.choice(["User-agent", "Disallow", "Allow", "Crawl-delay", "Sitemap", "Request-rate", None])
        value = rng.choice(["cah", "*", "CAH", _fuzz_text(rng, 30)])
        lines.append(f"{kind}: {value}" if kind else _fuzz_text(rng, 30))
    text = "\n".join(lines).encode("utf-8", "surrogatepass")
    return rng.choice([text, text.replace(b"\n", b"\r"), _fuzz_bytes(rng, 300)])


def fuzz_tdmrep(rng: random.Random) -> bytes:
    def value():
        return rng.choice([1, "1", 0, None, [], {}, 1e308, -1, "x", _fuzz_text(rng, 10), "9" * 5000])

    def location():
        return rng.choice(
            [
                *(
                    "http://[/",
                    "http://h.example:99999/a",
                    "https://h.example/*a*a*a*b",
                    "/*.jpg$",
                    "*",
                    "$",
                    "",
                    "/img",
                ),
                *(_fuzz_text(rng, 40), "http://" + _fuzz_text(rng, 20), 5, None, ["x"]),
            ]
        )

    entries = [
        {"location": location(), "tdm-reservation": value(), "tdm-policy": value()} for _ in range(rng.randint(0, 8))
    ]
    as_json = json.dumps(entries, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    return rng.choice(
        [as_json, as_json, b"[" * rng.randint(1, 200_000), b'{"location": "/"}', b"null", _fuzz_bytes(rng, 200)]
    )


def fuzz_image_head(rng: random.Random, body: bytes) -> bytes:
    status = rng.choice(["200 OK", "200 OK", "301 Moved", "302 Found", "307 X", "404 No", "429 Slow", "503 Busy"])
    headers = [("Content-Length", str(len(body)))]
    for _ in range(rng.randint(0, 6)):
        name = rng.choice(
            [
                *("X-Robots-Tag", "tdm-reservation", "tdm-policy", "Location", "Retry-After", "Content-Type"),
                *("Content-Encoding", "Content-Length", "Transfer-Encoding", "X-" + _fuzz_text(rng, 5).strip()),
            ]
        )
        raw = _fuzz_bytes(rng, 120).replace(b"\r", b"").replace(b"\n", b"")
        headers.append(
            (
                name,
                rng.choice(
                    [
                        raw.decode("latin-1"),
                        _fuzz_text(rng, 60).encode("utf-8", "replace").decode("latin-1"),
                        "1",
                        "noai",
                        "cah: noimageai",
                        "/img",
                        "http://[/",
                        "99999999999999999999",
                    ]
                ),
            )
        )
    lines = [f"HTTP/1.1 {status}"] + [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


@pytest.mark.timeout(300)
def test_fetch_never_raises_whatever_robots_txt_tdmrep_json_and_headers_a_site_sends():
    """A bounded, seeded fuzz: 60 sites, each with its own robots.txt, tdmrep.json and image headers."""
    rng = random.Random(20261206)
    cases = []
    for _ in range(60):
        body = _fuzz_bytes(rng, 2_000)
        cases.append(
            {"robots": fuzz_robots(rng), "tdmrep": fuzz_tdmrep(rng), "head": fuzz_image_head(rng, body), "body": body}
        )
    current = {}

    async def site(reader, writer):
        while (line := await read_request(reader)) is not None:
            path = line.split(" ")[1] if line.count(" ") >= 2 else "/"
            if path == "/robots.txt" or path == "/.well-known/tdmrep.json":
                body = current["robots" if path == "/robots.txt" else "tdmrep"]
                writer.write(response_head(Content_Type="text/plain", Content_Length=len(body)) + body)
            else:
                writer.write(current["head"] + current["body"])
            await writer.drain()

    settings = FetchSettings(
        **{**LOOPBACK, "honour_robots_txt": True, "honour_tdmrep": True, "read_timeout": 0.5, "total_timeout": 2},
    )
    outcomes = []
    with RawServer(site) as server:
        for case in cases:
            current.update(case)

            async def run():
                async with Downloader(settings) as downloader:
                    paths = ("/img", "/a/b*c.png?x=1", "/" + "a" * 300 + "b")
                    return await asyncio.gather(
                        *(downloader.fetch(server.url(p)) for p in paths), return_exceptions=True
                    )

            outcomes += asyncio.run(run())
    raised = [o for o in outcomes if not isinstance(o, Fetched)]
    assert not raised and len(outcomes) == 180
    assert all(isinstance(o.status, str) and o.status for o in outcomes)
    assert len({o.status for o in outcomes}) >= 4  # the fuzz reached more than one way out


def test_a_tarpit_host_fails_its_remaining_urls_fast_after_its_first_timeouts():
    requests = []

    async def tarpit(reader, writer):  # 1 byte per 0.5 s: never a read timeout, always the total one
        while (line := await read_request(reader)) is not None:
            requests.append(line)
            writer.write(response_head(Content_Length=10_000))
            while True:
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.5)

    settings = FetchSettings(**{**LOOPBACK, "per_host_connections": 4, "total_timeout": 1.5, "retries": 0})

    async def run():
        async with Downloader(settings) as downloader:
            results = await asyncio.gather(*(downloader.fetch(server.url(f"/{i}.jpg")) for i in range(32)))
            return results, downloader.unresponsive_hosts

    with RawServer(tarpit) as server:
        results, unresponsive = asyncio.run(run())
    statuses = Counter(r.status for r in results)
    # The URLs already started when the 4th timed out (at most per_host_connections - 1) run out too.
    assert set(statuses) == {"timeout", "host_unresponsive"} and 4 <= statuses["timeout"] <= 4 + 3
    assert unresponsive == {f"127.0.0.1:{server.port}"} and len(requests) == statuses["timeout"]
    cut = next(r for r in results if r.status == "host_unresponsive")
    assert "timed out on 4 URLs" in cut.error_message
