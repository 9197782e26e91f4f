"""A fake image web on loopback: many 127.x.y.z hosts serving real Pillow images and every fault we handle.

Each URL it hands out comes with the status the image_shards downloader must record for it, so
tests can check every row, and the benchmark and the offline demo get a realistic web without
the internet. With ``hostnames=True`` every URL gets a hostname of its own, answered by a local
DNS server (cah_resources.samples.local_dns) that the downloader must be pointed at
(``web.nameserver``). Expected statuses assume the downloader allows 127.0.0.0/8 and otherwise runs
with its default checks, at least one retry, ``max_retry_after`` under an hour, ``max_redirects``
between 3 and 11 and ``max_body_bytes`` under 25 MB (``LocalImageWeb.assumed_fetch_limits``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import io
import json
import math
import random
import struct
import sys
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from aiohttp import web
from PIL import Image, ImageDraw

from cah_resources.contract import DownloadStatus, http_status_failure
from cah_resources.image_shards.opt_outs import ROBOTS_PATH, TDMREP_PATH
from cah_resources.samples.loop_thread import LoopThread
from cah_resources.samples.sample_crawl import SHAPES, parse_image_name

if TYPE_CHECKING:  # imported when a web with hostnames starts (it pulls in dnslib)
    from cah_resources.samples.local_dns import LocalDns

# kind -> status the downloader must record. Kinds marked "once" fail on their first request only.
EXPECTED_STATUS = {
    "jpeg": DownloadStatus.OK,
    "png": DownloadStatus.OK,
    "png_alpha": DownloadStatus.OK,
    "webp": DownloadStatus.OK,
    "jpeg_exif_rotated": DownloadStatus.OK,
    "jpeg_mislabelled": DownloadStatus.OK,
    "robots_other_bot": DownloadStatus.OK,
    "flaky_500": DownloadStatus.OK,
    "rate_limited_once": DownloadStatus.OK,
    "reset_once": DownloadStatus.OK,
    "redirect_chain": DownloadStatus.OK,
    "not_found": http_status_failure(404),
    "server_error": http_status_failure(500),
    "rate_limited_forever": http_status_failure(429),
    "reset": DownloadStatus.CONNECTION_ERROR,
    "dead_host": DownloadStatus.CONNECTION_ERROR,
    "hang": DownloadStatus.TIMEOUT,
    "stall_body": DownloadStatus.TIMEOUT,
    "truncated_transfer": DownloadStatus.TRUNCATED,
    "truncated_image": DownloadStatus.CORRUPT_IMAGE,
    "corrupt_jpeg": DownloadStatus.CORRUPT_IMAGE,
    "html": DownloadStatus.NOT_AN_IMAGE,
    "gif": DownloadStatus.FORMAT_NOT_ALLOWED,
    "tiny": DownloadStatus.TOO_SMALL,
    "banner": DownloadStatus.ASPECT_RATIO_TOO_LARGE,
    "bomb": DownloadStatus.TOO_MANY_PIXELS,
    "redirect_loop": DownloadStatus.REDIRECT_LOOP,
    "redirect_too_many": DownloadStatus.TOO_MANY_REDIRECTS,
    "redirect_to_metadata": DownloadStatus.BLOCKED_ADDRESS,
    "oversized_declared": DownloadStatus.TOO_LARGE,
    "oversized_chunked": DownloadStatus.TOO_LARGE,
    "robots_noai": DownloadStatus.ROBOTS_NOAI,
    "robots_noimageai": DownloadStatus.ROBOTS_NOAI,
}

# A web-like mix for benchmarks and demos: mostly good images, the usual share of dead links,
# a few of everything else. Weights are relative.
WEB_MIX = {
    "jpeg": 560,
    "png": 60,
    "png_alpha": 20,
    "webp": 60,
    "jpeg_exif_rotated": 10,
    "jpeg_mislabelled": 10,
    "redirect_chain": 30,
    "flaky_500": 5,
    "rate_limited_once": 3,
    "reset_once": 3,
    "robots_other_bot": 2,
    "not_found": 90,
    "server_error": 10,
    "rate_limited_forever": 2,
    "reset": 3,
    "dead_host": 10,
    "hang": 2,
    "stall_body": 2,
    "truncated_transfer": 3,
    "truncated_image": 5,
    "corrupt_jpeg": 5,
    "html": 30,
    "gif": 20,
    "tiny": 30,
    "banner": 10,
    "bomb": 1,
    "redirect_loop": 2,
    "redirect_too_many": 2,
    "redirect_to_metadata": 1,
    "oversized_declared": 1,
    "oversized_chunked": 1,
    "robots_noai": 3,
    "robots_noimageai": 2,
}

# Opt-in hosts of their own, each answering /robots.txt and /.well-known/tdmrep.json in one of the
# forms the web uses. The other hosts answer as most of the web does: two names in three serve a
# robots.txt like a CMS's (TYPICAL_ROBOTS: nothing an image URL here matches), the rest 404 it,
# and all 404 tdmrep.json. Paths under a profile host are
# /<any folders>/<kind>/<n>.<ext>: the folders are what the rules match, the kind what is served.
ROBOTS_FOR_EVERY_BOT = (
    "# a comment, then groups\nUser-agent: otherbot\nDisallow: /\n\n"
    "User-agent: *\nDisallow: /private/\nAllow: /private/open/\nDisallow: /*.png$\nDisallow: /*?session=\n"
)
ROBOTS_GROUP_FOR_US = "User-agent: *\nDisallow: /\n\nUser-agent: CAH\nDisallow: /nocah/\n"
TYPICAL_ROBOTS = (
    "# robots.txt as a blog or shop serves it\nUser-agent: *\nDisallow: /wp-admin/\n"
    "Allow: /wp-admin/admin-ajax.php\nDisallow: /cgi-bin/\nDisallow: /search\nDisallow: /*?replytocom=\n"
    "Disallow: /tag/*/feed/\nDisallow: /cart/\nDisallow: /checkout/\nDisallow: /account/\n\n"
    "User-agent: GPTBot\nDisallow: /\n\nUser-agent: CCBot\nDisallow: /\n\n"
    "Sitemap: https://example.com/sitemap_index.xml\n"
)
TDM_HEADER_FOLDER = "/header/"  # on the tdmrep profile host: images answered with tdm-reservation: 1
MOVED_ROBOTS_PATH = "/moved/robots.txt"  # on every host: the target of the robots_redirect profile
HUGE_ROBOTS_PADDING = 700 * 1024  # past RFC 9309's 500 KiB: rules after it are not read
SITE_PROFILES = ("robots_rules", "robots_group_for_us", "robots_5xx", "robots_huge", "robots_redirect", "tdmrep")
TDMREP_RULES = [
    {"location": "/reserved/open/*", "tdm-reservation": 0},
    {"location": "/reserved/*", "tdm-reservation": 1, "tdm-policy": "https://example.org/tdm-policy.json"},
    {"location": "/*.webp$", "tdm-reservation": 1},
]
METADATA_SERVICE = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
OVERSIZED_BYTES = 25_000_000
CHAIN_HOPS = 3
TOO_MANY_HOPS = 12
VARIANTS = 8
MIN_JPEG_BYTES = 10_000
SMALL_IMAGE_SIZES = ((120, 90), (160, 120), (96, 128), (200, 150))
# From thumbnails to camera photos, about a megapixel on average; one size per variant.
WEB_IMAGE_SIZES = ((320, 240), (500, 375), (640, 480), (800, 600), (1024, 768), (1200, 800), (1600, 1200), (2048, 1536))
# What a page's <img> usually serves: ~95 KB mean as JPEG (quality 90), none past 1200 px.
WEB_PHOTO_SIZES = ((320, 240), (500, 375), (640, 480), (800, 600), (1024, 683), (1024, 768), (1200, 800), (640, 427))
# Lossless and palette formats are rarely used for big photos: those variants are served smaller.
MAX_LOSSLESS_SIDE = 1024


@dataclass(frozen=True)
class LocalUrl:
    """One URL of the fake web with the kind of answer it gives and the status it must end in."""

    url: str
    kind: str
    expected_status: str


def photo_like(width: int, height: int, seed: int, grain: float = 6.0) -> Image.Image:
    """A smooth colour field with blobs and grain: compresses like a photo, not like flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        field = rng.uniform(40, 200) + rng.uniform(-60, 60) * (x / width) + rng.uniform(-60, 60) * (y / height)
        for _ in range(4):
            cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.1, 0.4) * max(width, height)
            field += rng.uniform(-70, 70) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        channels.append(field + rng.normal(0, grain, size=(height, width)))
    return Image.fromarray(np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8))


def _encode(img: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def decompression_bomb_png(side: int = 10_000) -> bytes:
    """A PNG whose header claims side x side pixels: a few KB on the wire, gigabytes if decoded."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    # Padding text keeps it above the downloader's minimum size, so the pixel guard is what trips.
    padding = b"Comment\x00" + b"decompression bomb " * 400
    rows = zlib.compress(b"\x00" * (side + 1) * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"tEXt", padding)
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )


SHAPE_COLORS = [(220, 30, 30), (30, 160, 60), (40, 70, 210), (240, 205, 30), (130, 50, 170), (245, 140, 20)]


def _bound_port(site: web.TCPSite) -> int:
    """The port a started site listens on (port 0 asks the system for a free one)."""
    sockets = getattr(site._server, "sockets", None)  # asyncio's Server or uvloop's
    assert sockets, "the site is started"
    return int(sockets[0].getsockname()[1])


@functools.lru_cache(maxsize=2048)
def shape_image(stem: str, fmt: str = "JPEG", size: int = 320) -> bytes:
    """One coloured shape on a white background, as a generated crawl's caption describes it.

    The placement varies with the name; a faint grain keeps the file above the downloader's
    5000-byte minimum without changing what the picture shows.
    """
    parsed = parse_image_name(stem)
    if parsed is None:
        raise ValueError(f"image name {stem!r} shows no known colour and shape")
    color, shape = parsed
    rng = random.Random(stem)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    radius = size * rng.uniform(0.25, 0.38)
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
    fill = SHAPE_COLORS[color]
    if SHAPES["en"][shape] == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif SHAPES["en"][shape] == "square":
        draw.rectangle((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif SHAPES["en"][shape] == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius * 0.8), (cx + radius, cy + radius * 0.8)], fill=fill)
    else:
        points = []
        for i in range(10):
            r = radius if i % 2 == 0 else radius * 0.45
            angle = math.pi / 2 + i * math.pi / 5
            points.append((cx + r * math.cos(angle), cy - r * math.sin(angle)))
        draw.polygon(points, fill=fill)
    grain = np.random.default_rng(rng.randrange(2**32)).normal(0, 6, (size, size, 1))
    img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + grain, 0, 255).astype(np.uint8))
    return _encode(img, fmt, **({"quality": 90} if fmt != "PNG" else {}))


def _part(text: str) -> tuple[int, int]:
    """``K/N`` of the command line: the part K (from 0) of N."""
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"want K/N with 0 <= K < N, not {text!r}")
    return int(k), int(n)


def _host_address(prefix: str, index: int) -> str:
    return f"{prefix}.{index // 250}.{index % 250 + 1}"


class LocalImageWeb:
    """Serve the fake web from a background thread: ``with LocalImageWeb(n_hosts=8) as web: web.urls()``.

    Hosts are 127.<second>.<x>.<y> addresses (Linux routes all of 127.0.0.0/8 to loopback), one
    aiohttp site each. ``latency`` is a (min, max) seconds range drawn per request. ``hostnames``
    names every URL's host ``<kind>-<n>.h<i>.web.test`` instead, served by ``self.dns`` (a
    LocalDns answering each uncached lookup after ``dns_latency`` seconds, on ``dns_listen`` too).
    """

    assumed_fetch_limits: ClassVar[dict[str, str]] = {
        "retries": ">= 1",
        "max_redirects": "3..11",
        "max_body_bytes": "< 25 MB",
    }

    def __init__(
        self,
        n_hosts: int = 8,
        latency: tuple[float, float] = (0.0, 0.0),
        image_sizes: tuple[tuple[int, int], ...] = SMALL_IMAGE_SIZES,
        seed: int = 0,
        address_prefix: str = "127.77",
        ports: list[int] | None = None,
        hostnames: bool = False,
        dns_latency: tuple[float, float] = (0.0, 0.0),
        dns_listen: tuple[tuple[str, int], ...] = (),
        site_profiles: tuple[str, ...] = (),
        fast_loop: bool = False,
    ) -> None:
        if not 1 <= n_hosts <= 250 * 250 - 1:
            raise ValueError(f"n_hosts must be within 1..62499, not {n_hosts}")
        self.n_hosts = n_hosts
        self.fast_loop = fast_loop  # uvloop (LoopThread's fast): for a web in a process of its own
        self.latency = latency
        self.image_sizes = image_sizes
        self.seed = seed
        self.address_prefix = address_prefix
        # Fixed ports serve the same URLs as an earlier run (the demo's web, served again by `cah dev`).
        self.ports = list(ports) if ports else [0] * n_hosts
        if len(self.ports) != n_hosts:
            raise ValueError(f"{len(self.ports)} ports for {n_hosts} hosts")
        self.hosts: list[str] = []
        unknown = set(site_profiles) - set(SITE_PROFILES)
        if unknown:
            raise ValueError(f"unknown site profiles {sorted(unknown)}; choose from {', '.join(SITE_PROFILES)}")
        self.site_profiles = tuple(site_profiles)
        self.profile_hosts: dict[str, str] = {}  # profile -> address:port of its own host
        self.site_file_requests: Counter[str] = Counter()  # "Host header + path" of robots.txt / tdmrep.json
        self.requests: Counter[str] = Counter()  # per path
        self.user_agents: Counter[str] = Counter()
        self.request_times: defaultdict[str, list[float]] = defaultdict(list)  # monotonic, per path
        self.streamed_bytes: Counter[str] = Counter()  # oversized bodies: how much got written
        self.peak_per_host: Counter[str] = Counter()  # most requests one host served at once
        self.peak_in_flight = 0  # most requests the whole web served at once
        self._in_flight: Counter[str] = Counter()
        self._in_flight_total = 0
        self._attempts: Counter[str] = Counter()
        self._bodies: dict[tuple[str, int], bytes] = {}
        self._photos: dict[int, Image.Image] = {}
        self._loop_thread: LoopThread | None = None
        self._runner: web.AppRunner | None = None
        self._dead_host = ""
        self._dns_addresses: list[str] = []
        self.dns: LocalDns | None = None
        if hostnames:
            # dnslib is a test dependency; the offline demo serves IP literals and runs without it.
            from cah_resources.samples.local_dns import LocalDns

            self.dns = LocalDns(latency=dns_latency, extra_listen=dns_listen, seed=seed, fast_loop=fast_loop)

    def reset_counters(self) -> None:
        """Forget every request seen (and so which "once" failures were served), e.g. between tests."""
        self.requests.clear()
        self.site_file_requests.clear()
        self.user_agents.clear()
        self.request_times.clear()
        self.streamed_bytes.clear()
        self.peak_per_host.clear()
        self.peak_in_flight = 0
        self._attempts.clear()

    # ---- content -------------------------------------------------------------------------

    def body(self, kind: str, variant: int) -> bytes:
        """The bytes a kind serves (built once per variant, deterministic from the seed)."""
        key = (kind, variant % VARIANTS)
        if key not in self._bodies:
            self._bodies[key] = self._make_body(kind, key[1])
        return self._bodies[key]

    def _photo(self, variant: int) -> Image.Image:
        """The variant's picture, grainy enough that its JPEG clears the 5000-byte minimum with room."""
        if variant not in self._photos:
            width, height = self.image_sizes[variant % len(self.image_sizes)]
            grain = 6.0
            photo = photo_like(width, height, self.seed * 1000 + variant, grain)
            while len(_encode(photo, "JPEG", quality=90)) < MIN_JPEG_BYTES and grain < 100:
                grain *= 2
                photo = photo_like(width, height, self.seed * 1000 + variant, grain)
            self._photos[variant] = photo
        return self._photos[variant]

    def _make_body(self, kind: str, variant: int) -> bytes:  # noqa: C901 - a fake web's table of body kinds
        seed = self.seed * 1000 + variant
        photo = self._photo(variant)
        if kind in ("png", "png_alpha", "gif") and max(photo.size) > MAX_LOSSLESS_SIDE:
            photo = photo.reduce(-(-max(photo.size) // MAX_LOSSLESS_SIDE))
        width, height = photo.size
        if kind in (
            "jpeg",
            "jpeg_mislabelled",
            "robots_noai",
            "robots_noimageai",
            "robots_other_bot",
            "flaky_500",
            "rate_limited_once",
            "reset_once",
            "redirect_chain",
        ):
            return _encode(photo, "JPEG", quality=90)
        if kind == "png":
            return _encode(photo, "PNG")
        if kind == "png_alpha":
            rgba = photo.convert("RGBA")
            alpha = Image.new("L", photo.size, 255)
            alpha.paste(0, (0, 0, width // 3, height))
            rgba.putalpha(alpha)
            return _encode(rgba, "PNG")
        if kind == "webp":
            return _encode(photo, "WEBP", quality=90)
        if kind == "jpeg_exif_rotated":
            exif = Image.Exif()
            exif[0x0112] = 6
            return _encode(photo, "JPEG", quality=90, exif=exif)
        if kind in ("truncated_image", "truncated_transfer", "stall_body"):
            whole = _encode(photo, "JPEG", quality=90)
            return whole if kind != "truncated_image" else whole[: len(whole) * 3 // 4]
        if kind == "corrupt_jpeg":
            whole = _encode(photo, "JPEG", quality=90)
            garbage = random.Random(seed).randbytes(len(whole) - 600)
            return whole[:600] + garbage
        if kind == "gif":
            return _encode(photo, "GIF")
        if kind == "tiny":
            return _encode(Image.new("RGB", (40, 30), (200, 30, 30)), "JPEG", quality=80)
        if kind == "banner":
            return _encode(photo_like(1200, 60, seed), "JPEG", quality=90)
        if kind == "bomb":
            return decompression_bomb_png()
        if kind == "html":
            rows = "".join(f"<li><a href='/p/{i}'>item {i}</a> lorem ipsum dolor sit amet</li>" for i in range(120))
            page = f"<!doctype html><html><head><title>not an image</title></head><body><ul>{rows}</ul></body></html>"
            return page.encode()
        raise KeyError(f"no body for kind {kind!r}")

    # ---- URLs ----------------------------------------------------------------------------

    @property
    def local_dns(self) -> LocalDns:
        """The DNS server that resolves the hosts' names; only with ``hostnames``."""
        if self.dns is None:
            raise RuntimeError("this LocalImageWeb serves IP-literal hosts; make it with hostnames=True")
        return self.dns

    @property
    def nameserver(self) -> str:
        """``ip:port`` of the local DNS server (FetchSettings.nameservers); only with ``hostnames``."""
        return self.local_dns.nameserver

    def _named(self, kind: str, n: int, address_port: str) -> str:
        """``address_port`` spelled with a hostname of its own that the local DNS resolves to it."""
        address, port = address_port.rsplit(":", 1)
        label = f"{kind.replace('_', '-')}-{n}"  # hostnames have no underscores
        return f"{self.local_dns.name(self._dns_addresses.index(address), label)}:{port}"

    def literal_url(self, url: str) -> str:
        """A ``hostnames`` URL with its hostname replaced by the address the local DNS answers for it."""
        name = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
        index = int(name.split(".")[-3][1:])
        return url.replace(name, self._dns_addresses[index], 1)

    def own_origin_urls(self, urls: list[str], part: tuple[int, int] = (0, 1)) -> list[str]:
        """This web's URLs (named or literal) each moved to an IP-literal origin of its own, served here.

        Every URL gets an address of its own (``127.<prefix + 1>.x.y``, all on one port): the same
        origins as a hostname per URL, so a client makes the same connections and fetches the same
        site files per origin as on the names, and only the lookups are missing. ``literal_url``
        maps the names onto the web's few hosts instead, where connections and site files are
        shared. URLs of the dead host go to an address where nothing listens. Each origin is a
        listening socket, and a process holds about 20,000 descriptors, its connections' too: with
        ``part=(k, n)`` this web moves and serves only the URLs ``i % n == k`` and returns the
        others as given, so that n webs in n processes serve a large list between them.
        """
        k, n = part
        if not 0 <= k < n:
            raise ValueError(f"part {k} of {n}: want 0 <= k < n")
        first, second = self.address_prefix.split(".")
        prefix = f"{first}.{int(second) + 1}"
        if len(urls) > 249 * 250:
            raise ValueError(f"{len(urls)} URLs: at most {249 * 250} get an origin of their own")
        dead_address = self._dead_host.rsplit(":", 1)[0]
        wanted: dict[int, str] = {}
        paths: list[str] = []
        for i, url in enumerate(urls):
            host, _, path = url.split("//", 1)[1].partition("/")
            paths.append(path)
            if i % n == k and not (host.startswith((dead_address + ":", "dead-host-"))):
                wanted[i] = _host_address(prefix, i)
        assert self._loop_thread is not None, "start the web first"
        port = self._loop_thread.run(self._start_own_sites(list(wanted.values())), timeout=300)
        dead = f"{prefix}.249.250:{port}"  # in the prefix, past every URL's address: nothing listens
        return [
            url if i % n != k else f"http://{wanted[i]}:{port}/{path}" if i in wanted else f"http://{dead}/{path}"
            for i, (url, path) in enumerate(zip(urls, paths, strict=True))
        ]

    async def _start_own_sites(self, addresses: list[str]) -> int:
        """One listening site per address, all on the port the first one got."""
        assert self._runner is not None
        port = 0
        for address in addresses:
            site = web.TCPSite(self._runner, address, port, backlog=128)
            await site.start()
            port = port or _bound_port(site)
        return port

    @property
    def named_origins(self) -> list[str]:
        """``http://site.h<i>.web.test:port`` of every host, resolved by the local DNS (``hostnames`` only)."""
        dns = self.local_dns  # raises on a web without hostnames
        return [f"http://{dns.name(i, 'site')}:{host.rsplit(':', 1)[1]}" for i, host in enumerate(self.hosts)]

    @property
    def origins(self) -> list[str]:
        """``http://host:port`` of every host, e.g. as ``image_base`` of a generated crawl."""
        return [f"http://{host}" for host in self.hosts]

    def url(self, kind: str, n: int) -> str:
        """The URL of the n-th instance of a kind, on host n % n_hosts."""
        if kind not in EXPECTED_STATUS:
            raise KeyError(f"unknown kind {kind!r}; choose from {', '.join(EXPECTED_STATUS)}")
        if not self.hosts:
            raise RuntimeError("LocalImageWeb is not started; call start() or use it in a with block")
        if kind == "dead_host":
            host = self._named(kind, n, self._dead_host) if self.dns is not None else self._dead_host
            return f"http://{host}/jpeg/{n}.jpg"
        host = self.hosts[n % len(self.hosts)]
        if self.dns is not None:
            host = self._named(kind, n, host)
        suffix = {"png": "png", "png_alpha": "png", "webp": "webp", "gif": "gif", "html": "html", "bomb": "png"}.get(
            kind, "jpg"
        )
        return f"http://{host}/{kind}/{n}.{suffix}"

    def site_url(self, profile: str, path: str) -> str:
        """A URL on the host of a site profile, e.g. ``site_url("robots_rules", "/private/jpeg/3.jpg")``."""
        return f"http://{self.profile_hosts[profile]}{path}"

    def urls(self, kinds: dict[str, int] | None = None) -> list[LocalUrl]:
        """``{kind: count}`` URLs (default: one of every kind), each with its expected status."""
        kinds = kinds if kinds is not None else {k: 1 for k in EXPECTED_STATUS}
        out = []
        for kind, count in kinds.items():
            for n in range(count):
                out.append(LocalUrl(self.url(kind, n), kind, EXPECTED_STATUS[kind]))
        return out

    def mixed_urls(self, total: int, mix: dict[str, int] | None = None, seed: int = 0) -> list[LocalUrl]:
        """``total`` URLs drawn from a weighted mix of kinds (default ``WEB_MIX``), shuffled."""
        mix = mix or WEB_MIX
        rng = random.Random(seed)
        kinds = rng.choices(list(mix), weights=list(mix.values()), k=total)
        seen: Counter[str] = Counter()
        out = []
        for kind in kinds:
            out.append(LocalUrl(self.url(kind, seen[kind]), kind, EXPECTED_STATUS[kind]))
            seen[kind] += 1
        return out

    # ---- serving -------------------------------------------------------------------------

    def _delay(self, path: str) -> float:
        low, high = self.latency
        if high <= 0:
            return 0.0
        digest = hashlib.blake2b(f"{self.seed}:{path}:{self._attempts[path]}".encode(), digest_size=8).digest()
        return low + (high - low) * int.from_bytes(digest, "big") / 2**64

    @staticmethod
    def _site(request: web.Request) -> str:
        """``address:port`` of the site that took the request, whatever name the URL gave it."""
        assert request.transport is not None, "a request being answered has its connection"
        address, port = request.transport.get_extra_info("sockname")[:2]
        return f"{address}:{port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        host = self._site(request)
        self._in_flight[host] += 1
        self._in_flight_total += 1
        self.peak_per_host[host] = max(self.peak_per_host[host], self._in_flight[host])
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight_total)
        self.user_agents[request.headers.get("User-Agent", "")] += 1
        try:
            return await self._answer(request)
        finally:
            self._in_flight[host] -= 1
            self._in_flight_total -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:  # noqa: C901 - a fake web's table of routes and faults
        path = request.path
        self.requests[path] += 1
        self.request_times[path].append(time.monotonic())
        attempt = self._attempts[path]
        self._attempts[path] += 1
        delay = self._delay(path)
        if delay:
            await asyncio.sleep(delay)
        if path in (ROBOTS_PATH, TDMREP_PATH, MOVED_ROBOTS_PATH):
            self.site_file_requests[f"{request.host}{path}"] += 1
            return self._site_file(request, path)
        parts = path.strip("/").split("/")
        if parts[0] not in EXPECTED_STATUS and self._site(request) in self.profile_hosts.values():
            # Folders before the kind are for the site's rules to match (profile hosts only).
            parts = parts[next((i for i, p in enumerate(parts) if p in EXPECTED_STATUS), 0) :]
        kind = parts[0]
        if kind == "redirect_to":
            # A redirect anywhere, for tests of what the client does with the target.
            raise web.HTTPFound(request.query.get("to", "/"))
        if kind not in EXPECTED_STATUS:
            return await self._sample_crawl_image(parts[-1])
        try:
            n = int(parts[1].split(".")[0])
        except (IndexError, ValueError):
            raise web.HTTPNotFound() from None
        site = self._site(request)
        host_index = self.hosts.index(site) if site in self.hosts else 0
        next_host = self.hosts[(host_index + 1) % len(self.hosts)]

        if kind in ("flaky_500", "rate_limited_once", "reset_once") and attempt == 0:
            if kind == "flaky_500":
                return web.Response(status=500, text="try again")
            if kind == "rate_limited_once":
                return web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
            return self._reset(request)
        if kind == "not_found":
            raise web.HTTPNotFound()
        if kind == "server_error":
            return web.Response(status=500, text="broken")
        if kind == "rate_limited_forever":
            return web.Response(status=429, headers={"Retry-After": "3600"}, text="come back in an hour")
        if kind == "reset":
            return self._reset(request)
        if kind == "hang":
            await asyncio.Event().wait()
        if kind == "redirect_chain" or kind == "redirect_too_many":
            hops = int(parts[2]) if len(parts) > 2 else (CHAIN_HOPS if kind == "redirect_chain" else TOO_MANY_HOPS)
            if hops > 0:
                raise web.HTTPFound(f"http://{next_host}/{kind}/{n}/{hops - 1}")
            kind = "jpeg"
        if kind == "redirect_loop":
            # Two URLs on two hosts sending the client to each other.
            if len(parts) > 2 and parts[2] == "b":
                raise web.HTTPFound(f"http://{self.hosts[n % len(self.hosts)]}/{kind}/{n}/a")
            raise web.HTTPFound(f"http://{self.hosts[(n + 1) % len(self.hosts)]}/{kind}/{n}/b")
        if kind == "redirect_to_metadata":
            raise web.HTTPFound(METADATA_SERVICE)
        if kind in ("oversized_declared", "oversized_chunked"):
            return await self._stream_zeros(request, declared=kind == "oversized_declared")
        if kind == "stall_body":
            body = self.body(kind, n)
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            await asyncio.Event().wait()
        if kind == "truncated_transfer":
            body = self.body(kind, n)
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            return self._reset(request)

        body = self.body(kind, n)
        headers = {
            "Content-Type": {
                "png": "image/png",
                "png_alpha": "image/png",
                "webp": "image/webp",
                "gif": "image/gif",
                "html": "text/html",
                "bomb": "image/png",
                "jpeg_mislabelled": "text/html",
            }.get(kind, "image/jpeg")
        }
        if kind == "robots_noai":
            headers["X-Robots-Tag"] = "noai"
        elif kind == "robots_noimageai":
            headers["X-Robots-Tag"] = "noimageai, nofollow"
        elif kind == "robots_other_bot":
            headers["X-Robots-Tag"] = "otherbot: noai, noimageai"
        if path.startswith(TDM_HEADER_FOLDER) and self._site(request) == self.profile_hosts.get("tdmrep"):
            headers.update({"tdm-reservation": "1", "tdm-policy": "https://example.org/tdm-policy.json"})
        return web.Response(body=body, headers=headers)

    def _site_file(self, request: web.Request, path: str) -> web.Response:
        """robots.txt and tdmrep.json as the host's profile has them; a 404 on hosts without one."""
        if path == MOVED_ROBOTS_PATH:
            return web.Response(text="User-agent: *\nDisallow: /\n")
        profile = next((p for p, site in self.profile_hosts.items() if site == self._site(request)), None)
        if path == TDMREP_PATH:
            if profile != "tdmrep":
                raise web.HTTPNotFound()
            return web.json_response(TDMREP_RULES)
        if profile == "robots_rules":
            return web.Response(text=ROBOTS_FOR_EVERY_BOT)
        if profile == "robots_group_for_us":
            return web.Response(text=ROBOTS_GROUP_FOR_US)
        if profile == "robots_5xx":
            return web.Response(status=503, text="overloaded")
        if profile == "robots_huge":
            padding = "# padding to push the next rule past 500 KiB\n" * (HUGE_ROBOTS_PADDING // 45)
            return web.Response(text=f"User-agent: *\nDisallow: /early/\n{padding}Disallow: /late/\n")
        if profile == "robots_redirect":
            raise web.HTTPMovedPermanently(f"http://{self.hosts[0]}{MOVED_ROBOTS_PATH}")  # another host
        if profile is None and zlib.crc32(request.host.encode()) % 3:
            return web.Response(text=TYPICAL_ROBOTS)
        raise web.HTTPNotFound()

    @staticmethod
    async def _sample_crawl_image(name: str) -> web.Response:
        """The picture a generated crawl's link names (``red-circle-12.jpg``); ``missing-*`` are 404."""
        stem, _, extension = name.partition(".")
        fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}.get(extension.lower())
        if fmt is None or parse_image_name(stem) is None:
            raise web.HTTPNotFound()
        # Drawn on first request; off the event loop so the other hosts keep answering meanwhile.
        body = await asyncio.get_running_loop().run_in_executor(None, shape_image, stem, fmt)
        return web.Response(body=body, content_type=f"image/{fmt.lower()}")

    @staticmethod
    def _reset(request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError

    async def _stream_zeros(self, request: web.Request, declared: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        if declared:
            response.content_length = OVERSIZED_BYTES
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        block = b"\xff" * 262_144
        sent = 0
        try:
            while sent < OVERSIZED_BYTES:
                await response.write(block)
                sent += len(block)
                self.streamed_bytes[request.path] = sent
        except ConnectionError:
            # The client stopped reading at its size limit: that is the expected ending.
            raise asyncio.CancelledError from None
        return response

    async def _start_sites(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        for i in range(self.n_hosts):
            address = _host_address(self.address_prefix, i)
            site = web.TCPSite(self._runner, address, self.ports[i], backlog=1024)
            await site.start()
            port = _bound_port(site)
            self.hosts.append(f"{address}:{port}")
        for j, profile in enumerate(self.site_profiles):
            address = _host_address(self.address_prefix, self.n_hosts + j)
            site = web.TCPSite(self._runner, address, 0, backlog=1024)
            await site.start()
            self.profile_hosts[profile] = f"{address}:{_bound_port(site)}"
        # A host address with nothing listening: connections to it are refused.
        self._dead_host = f"{self.address_prefix}.249.250:{self.hosts[0].rsplit(':', 1)[1]}"
        self._dns_addresses = [h.rsplit(":", 1)[0] for h in (*self.hosts, self._dead_host)]

    def start(self) -> LocalImageWeb:
        """Start serving on a background thread; returns once every host listens."""
        if self._loop_thread is not None:
            return self
        for kind in EXPECTED_STATUS:
            if kind not in (
                "dead_host",
                "hang",
                "not_found",
                "server_error",
                "rate_limited_forever",
                "reset",
                "redirect_loop",
                "redirect_too_many",
                "redirect_to_metadata",
                "oversized_declared",
                "oversized_chunked",
            ):
                for variant in range(VARIANTS):
                    self.body(kind, variant)
        self._loop_thread = LoopThread("local-image-web", fast=self.fast_loop)
        self._loop_thread.run(self._start_sites())
        if self.dns is not None:
            self.dns.addresses = list(self._dns_addresses)
            self.dns.start()
        return self

    def stop(self) -> None:
        """Stop serving and join the thread; safe to call twice."""
        if self._loop_thread is None:
            return
        if self.dns is not None:
            self.dns.stop()
        if self._runner is not None:
            self._loop_thread.run(self._runner.cleanup())
        self._loop_thread.close()
        self._loop_thread = None
        self.hosts = []
        self.profile_hosts = {}

    def __enter__(self) -> LocalImageWeb:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve the fake web until stdin closes; print one JSON line of URLs first. A ``site_files`` line
    on stdin is answered with a JSON line counting robots.txt and tdmrep.json requests since the last.

    With ``--hostnames`` a second line gives the same URLs with IP-literal hosts (``literal_urls``),
    the ``addresses`` a DNS server must give ``*.h<i>.web.test`` (``python -m
    cah_resources.samples.local_dns --addresses``, in a process of its own so that it does not share this
    one's GIL) and the ``nameserver`` of an in-process one. Used by the benchmark (to keep the
    server off the measured process's CPU budget accounting) and by the offline demo.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=32)
    parser.add_argument("--latency", type=float, nargs=2, default=(0.0, 0.0), metavar=("MIN", "MAX"))
    parser.add_argument("--count", type=int, default=1000, help="number of URLs from the web-like mix")
    parser.add_argument("--web-sized", action="store_true", help="serve 320-2048 px images instead of small ones")
    parser.add_argument("--web-photos", action="store_true", help="serve 320-1200 px images (~95 KB JPEGs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hostnames",
        action="store_true",
        help="every URL on a hostname of its own, served by a local DNS server (its ip:port is "
        "printed on a second line)",
    )
    parser.add_argument(
        "--own-origins",
        action="store_true",
        help="serve the URLs each on an IP-literal origin of its own instead (own_origin_urls); the first "
        "line lists those",
    )
    parser.add_argument(
        "--part",
        type=_part,
        default=(0, 1),
        metavar="K/N",
        help="with --own-origins: serve only the URLs i with i %% N == K (the others are listed as the "
        "names have them); N processes serve a list too large for one's descriptors",
    )
    args = parser.parse_args(argv)
    sizes = WEB_IMAGE_SIZES if args.web_sized else WEB_PHOTO_SIZES if args.web_photos else SMALL_IMAGE_SIZES
    # In a process of its own the web shares the measured program's cores: uvloop keeps its share small.
    with LocalImageWeb(
        args.hosts, tuple(args.latency), sizes, args.seed, hostnames=args.hostnames, fast_loop=True
    ) as fake_web:
        urls = fake_web.mixed_urls(args.count, seed=args.seed)
        if args.own_origins:  # the same kinds and paths as every other web of this count and seed
            owned = fake_web.own_origin_urls([u.url for u in urls], part=args.part)
            urls = [replace(u, url=url) for u, url in zip(urls, owned, strict=True)]
        print(json.dumps([[u.url, u.kind, u.expected_status] for u in urls]), flush=True)
        if args.hostnames:
            literal = [fake_web.literal_url(u.url) for u in urls]
            print(
                json.dumps(
                    {
                        "literal_urls": literal,
                        "addresses": fake_web.local_dns.addresses,
                        "nameserver": fake_web.nameserver,
                    }
                ),
                flush=True,
            )
        for line in sys.stdin:  # "site_files": robots.txt / tdmrep.json requests since the last ask
            if line.strip() == "site_files":
                asked = Counter(fake_web.site_file_requests)
                fake_web.site_file_requests.clear()
                print(
                    json.dumps(
                        {
                            "robots_txt": sum(n for key, n in asked.items() if key.endswith(ROBOTS_PATH)),
                            "tdmrep_json": sum(n for key, n in asked.items() if key.endswith(TDMREP_PATH)),
                            "most_per_host_and_file": max(asked.values(), default=0),
                            "hosts": len({key.split("/", 1)[0] for key in asked}),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
