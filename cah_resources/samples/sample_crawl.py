"""A seeded generator of realistic Common Crawl WAT files, and the candidates they must yield.

Used by the tests, the benchmarks and the offline demo. Every image link is made as one known
*kind* (relative, protocol-relative, under ``<base href>``, data: URL, svg, short alt, ...), so the
expected outcome of each link is known without running the pipeline's own code.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cah_resources.contract import CandidatesStats, Damage, DropReason

COLORS = {
    "en": ["red", "green", "blue", "yellow", "purple", "orange"],
    "de": ["rot", "grün", "blau", "gelb", "lila", "orange"],
    "fr": ["rouge", "vert", "bleu", "jaune", "violet", "orange"],
    "es": ["rojo", "verde", "azul", "amarillo", "morado", "naranja"],
    "ru": ["красного", "зелёного", "синего", "жёлтого", "фиолетового", "оранжевого"],
}
SHAPES = {
    "en": ["circle", "square", "triangle", "star"],
    "de": ["Kreis", "Quadrat", "Dreieck", "Stern"],
    "fr": ["cercle", "carré", "triangle", "étoile"],
    "es": ["círculo", "cuadrado", "triángulo", "estrella"],
    "ru": ["круг", "квадрат", "треугольник", "звезда"],
}
TEMPLATES = {
    "en": "a picture showing one {color} {shape} on a plain white background",
    "de": "Ein Bild mit einem {shape} in der Farbe {color} auf weißem Hintergrund",
    "fr": "Une image avec un {shape} de couleur {color} sur un fond blanc",
    "es": "Una imagen con un {shape} de color {color} sobre un fondo blanco",
    "ru": "На этой картинке изображён {shape} {color} цвета на белом фоне",
}
LANGUAGES = tuple(TEMPLATES)
# Kinds of image link and what the candidates stage must make of each: a candidate, or a drop reason.
GOOD_KINDS = (
    "absolute",
    "relative",
    "root_relative",
    "protocol_relative",
    "upper_scheme",
    "fragment",
    "huge_alt",
    "messy_alt",
    "camera_name",
)
DROP_KINDS = {
    "data_url": DropReason.DATA_URL,
    "javascript": DropReason.JAVASCRIPT_URL,
    "svg": "svg",  # a dropped extension counts under its name
    "gif": "gif",
    "short_alt": DropReason.ALT_TOO_SHORT,
    "empty_alt": DropReason.ALT_TOO_SHORT,
    "no_alt": DropReason.NO_ALT,
    "long_domain": DropReason.DOMAIN_TOO_LONG,
    "ftp": DropReason.NOT_HTTP,
}
# A repeat of an earlier link (same src and alt) is made by the "duplicate" kind.
REPEAT_KIND = "duplicate"


def caption(language: str, color: int, shape: int) -> str:
    return TEMPLATES[language].format(color=COLORS[language][color], shape=SHAPES[language][shape])


@dataclass
class ExpectedCandidate:
    url: str
    text: str
    page_url: str
    category: str
    language: str
    wat_file: str
    color: int = -1  # what the caption says (indexes into COLORS / SHAPES)
    shape: int = -1
    matches: bool = False  # the image at url shows what the caption says
    image_exists: bool = True  # the local image web serves it (names starting "missing-" are 404)


@dataclass
class SampleCrawl:
    """What was written, and the ground truth: candidates in file order, drop and damage counts."""

    root: str
    crawl: str
    wat_paths: list[str]
    candidates: dict[str, list[ExpectedCandidate]] = field(default_factory=dict)  # per WAT path
    counts: dict[str, CandidatesStats] = field(default_factory=dict)  # per WAT path: what extract_pairs counts

    def expected_segment(self, wat_paths: list[str]) -> list[ExpectedCandidate]:
        """Candidates of these files merged as the stage must: the first occurrence of a pair wins."""
        seen, rows = set(), []
        for path in wat_paths:
            for row in self.candidates[path]:
                if (row.url, row.text) not in seen:
                    seen.add((row.url, row.text))
                    rows.append(row)
        return rows


def _warc_record(headers: dict[str, str], body: bytes) -> bytes:
    lines = ["WARC/1.0"] + [f"{k}: {v}" for k, v in headers.items()] + [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body + b"\r\n\r\n"


class _WatWriter:
    def __init__(self, rng: random.Random, crawl_date: datetime) -> None:
        self.rng = rng
        self.date = crawl_date
        self.members: list[bytes] = []

    def _id(self) -> str:
        return f"<urn:uuid:{uuid.UUID(int=self.rng.getrandbits(128))}>"

    def add(
        self,
        warc_type: str,
        target: str | None,
        body: bytes,
        content_type: str = "application/json",
        extra: dict[str, str] | None = None,
    ) -> None:
        headers = {"WARC-Type": warc_type}
        if target:
            headers["WARC-Target-URI"] = target
        headers.update(
            {
                "WARC-Date": self.date.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "WARC-Record-ID": self._id(),
                "Content-Type": content_type,
                **(extra or {}),
            }
        )
        self.members.append(gzip.compress(_warc_record(headers, body), compresslevel=6, mtime=0))

    def metadata_json(self, page_url: str, kind: str, html: dict | None = None) -> bytes:
        header = {
            "WARC-Type": kind,
            "WARC-Target-URI": page_url,
            "WARC-Date": self.date.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "WARC-Record-ID": self._id(),
            "Content-Type": f"application/http; msgtype={kind}",
        }
        payload: dict = {"Actual-Content-Type": f"application/http; msgtype={kind}"}
        if kind == "request":
            payload["HTTP-Request-Metadata"] = {
                "Request-Message": {"Method": "GET", "Path": "/", "Version": "HTTP/1.1"},
                "Headers": {"User-Agent": "CCBot/2.0 (https://commoncrawl.org/faq/)"},
            }
        else:
            response = {
                "Response-Message": {"Version": "HTTP/1.1", "Status": "200", "Reason": "OK"},
                "Headers": {"Content-Type": "text/html; charset=UTF-8"},
            }
            if html is not None:
                response["HTML-Metadata"] = html
            payload["HTTP-Response-Metadata"] = response
        doc = {
            "Container": {
                "Filename": "CC-MAIN-sample.warc.gz",
                "Compressed": True,
                "Offset": str(self.rng.randrange(10**8)),
            },
            "Envelope": {
                "Format": "WARC",
                "WARC-Header-Length": "500",
                "WARC-Header-Metadata": header,
                "Payload-Metadata": payload,
            },
        }
        return json.dumps(doc, ensure_ascii=False).encode()


def image_name(color: int, shape: int, n: int, missing: bool = False) -> str:
    """Path stem of a sample image: the shape and colour it shows (``missing-`` ones do not exist)."""
    return f"{'missing-' if missing else ''}{COLORS['en'][color]}-{SHAPES['en'][shape]}-{n}"


def parse_image_name(stem: str) -> tuple[int, int] | None:
    """(color, shape) an image name shows, or None for a missing or unknown one."""
    parts = stem.split("-")
    if len(parts) != 3 or parts[0] not in COLORS["en"] or parts[1] not in SHAPES["en"]:
        return None
    return COLORS["en"].index(parts[0]), SHAPES["en"].index(parts[1])


def _image_link(rng, kind, page, ids, image_base, mismatch_rate=0.0, missing_rate=0.0):  # noqa: C901 - one branch per kind of link the sample holds
    """One IMG@/src link of ``kind``: the link, the expected (url, text) or None, and its facts."""
    """One IMG@/src link of ``kind``: the link, the expected (url, text) or None, and its language."""
    n = next(ids)
    language = rng.choice(LANGUAGES)
    color, shape = rng.randrange(6), rng.randrange(4)
    text = caption(language, color, shape)
    host = rng.choice(image_base)
    scheme, netloc = host.split("://")
    shown = (color, shape)
    if mismatch_rate and rng.random() < mismatch_rate:
        shown = ((color + 1 + rng.randrange(5)) % 6, (shape + 1 + rng.randrange(3)) % 4)
    missing = bool(missing_rate) and rng.random() < missing_rate
    name = image_name(*shown, n, missing)
    link = {"path": "IMG@/src", "alt": text}
    expected_url = f"{host}/{name}.jpg"
    if kind == "absolute":
        link["url"] = expected_url
    elif kind == "relative":
        link["url"] = f"img/{name}.jpg"
        expected_url = f"{page['resolve_dir']}img/{name}.jpg"
    elif kind == "root_relative":
        link["url"] = f"/static/{name}.png"
        expected_url = f"{page['resolve_origin']}/static/{name}.png"
    elif kind == "protocol_relative":
        link["url"] = f"//{netloc}/{name}.webp"
        expected_url = f"{page['scheme']}://{netloc}/{name}.webp"
    elif kind == "upper_scheme":
        link["url"] = f"{scheme.upper()}://{netloc.upper()}/{name}.jpg"
    elif kind == "fragment":
        link["url"] = f"{host}/{name}.jpg#zoom"
    elif kind == "huge_alt":
        link["url"] = expected_url
        link["alt"] = ". ".join([text] * 60)
        text = link["alt"][:2000].rstrip()
    elif kind == "messy_alt":
        link["url"] = expected_url
        link["alt"] = f"  {text.replace(' ', chr(10) + ' ', 2)}\t "
    elif kind == "camera_name":
        link["url"] = expected_url
        text = link["alt"] = rng.choice(
            [f"IMG_{rng.randint(20100101, 20241231)}_{rng.randint(1000, 9999)}", f"DSC{rng.randrange(100000):05d}.JPG"]
        )
        language = None
    elif kind == "data_url":
        link["url"] = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    elif kind == "javascript":
        link["url"] = "javascript:void(0)"
    elif kind == "svg":
        link["url"] = f"{host}/{name}.svg"
    elif kind == "gif":
        link["url"] = f"{host}/{name}.GIF?v=2"
    elif kind == "short_alt":
        link["url"], link["alt"] = expected_url, "logo"
    elif kind == "empty_alt":
        link["url"], link["alt"] = expected_url, "   "
    elif kind == "no_alt":
        link["url"] = expected_url
        del link["alt"]
    elif kind == "long_domain":
        link["url"] = f"https://{'very-long-subdomain-' * 4}{n}.example.com/{name}.jpg"
    elif kind == "ftp":
        link["url"] = f"ftp://files.example.com/{name}.jpg"
    if kind in DROP_KINDS:
        return link, None, None
    matches = language is not None and shown == (color, shape)
    return link, (expected_url, " ".join(text.split())), (language, color, shape, matches, not missing)


def generate_crawl(  # noqa: C901 - the sample crawl's records in file order
    root: str,
    crawl: str = "CC-MAIN-SAMPLE",
    wat_files: int = 3,
    pages_per_file: int = 40,
    links_per_page: int = 12,
    seed: int = 0,
    image_base: list[str] | None = None,
    damage: bool = True,
    mismatch_rate: float = 0.0,
    missing_rate: float = 0.0,
    page_base: list[str] | None = None,
) -> SampleCrawl:
    """Write ``crawl-data/<crawl>/wat.paths.gz`` and its WAT files under ``root``; return the truth.

    ``image_base`` / ``page_base``: origins (``http://127.0.0.2:8080``) of image hosts and pages; a
    local image web serving them makes every link fetchable (the offline demo). ``mismatch_rate``:
    share of captions that describe another image; ``missing_rate``: share of images that are 404.
    """
    servable = tuple(o + "/" for o in (image_base or []) + (page_base or []))
    rng = random.Random(seed)
    image_base = image_base or [f"https://img{i}.example.com" for i in range(5)]
    ids = iter(range(10**9))
    date = datetime(2024, 5, 18, tzinfo=UTC)
    sample = SampleCrawl(root, crawl, [])
    earlier_links: list[tuple[dict, tuple[str, str], tuple | None, str]] = []
    kinds = list(GOOD_KINDS) * 3 + list(DROP_KINDS) + [REPEAT_KIND] * 2
    for f in range(wat_files):
        rel = f"crawl-data/{crawl}/segments/1715000000000.{f:02d}/wat/{crawl}-{f:05d}.warc.wat.gz"
        writer = _WatWriter(rng, date + timedelta(minutes=f))
        info = b"Software-Info: cah sample_crawl\r\nformat: WARC File Format 1.0\r\n"
        writer.add("warcinfo", None, info, "application/warc-fields")
        truth: list[ExpectedCandidate] = []
        counts = CandidatesStats()
        seen_in_file: set[tuple[str, str]] = set()
        damaged_pages = set(rng.sample(range(pages_per_file), 5)) if damage and pages_per_file >= 10 else set()
        damage_kinds = iter(["invalid_json", "non_utf8", "missing_fields", "corrupt_gzip", "not_html"])
        for p in range(pages_per_file):
            site = rng.randrange(20)
            scheme = "https" if rng.random() < 0.8 else "http"
            origin = page_base[site % len(page_base)] if page_base else f"{scheme}://www.site{site}.example.org"
            page_url = f"{origin}/section{p % 7}/page{f}-{p}.html"
            base = None
            page = {
                "scheme": origin.split("://")[0],
                "resolve_dir": page_url.rsplit("/", 1)[0] + "/",
                "resolve_origin": origin,
            }
            if rng.random() < 0.2:
                static = page_base[(site + 1) % len(page_base)] if page_base else f"https://static{site}.example.com"
                base = f"{static}/assets/"
                page.update(scheme=static.split("://")[0], resolve_dir=base, resolve_origin=static)
            links = [{"path": "A@/href", "url": f"/section{p % 7}/other.html", "text": "next"}]
            expected: list[tuple[tuple[str, str] | None, tuple | None, str | None, str]] = []
            for _ in range(links_per_page):
                kind = rng.choice(kinds)
                if kind == REPEAT_KIND:
                    if not earlier_links:
                        continue
                    link, pair, lang, was_kind = rng.choice(earlier_links)
                    links.append(dict(link))
                    expected.append((pair, lang, None, was_kind))
                    continue
                link, pair, lang = _image_link(rng, kind, page, ids, image_base, mismatch_rate, missing_rate)
                links.append(link)
                expected.append((pair, lang, DROP_KINDS.get(kind), kind))
                if pair is not None and not link["url"].startswith(("/", "img/")):
                    earlier_links.append((link, pair, lang, kind))
            head = {"Title": f"Page {p}", "Metas": [{"name": "viewport", "content": "width=device-width"}]}
            if base:
                head["Base"] = base
            html = {"Head": head, "Links": links}
            writer.add("metadata", page_url, writer.metadata_json(page_url, "request"))
            damage_kind = next(damage_kinds, None) if p in damaged_pages else None
            body = writer.metadata_json(page_url, "response", html)
            if damage_kind == "invalid_json":
                body = body[: len(body) // 2]
                counts.damage[Damage.INVALID_JSON] += 1
            elif damage_kind == "non_utf8":
                body = body.replace(b'"Title": "Page', b'"Title": "\xff\xfe Page')
                counts.damage[Damage.NON_UTF8] += 1
            elif damage_kind == "missing_fields":
                body = json.dumps({"Container": {}, "HTML-Metadata": None}).encode()
                counts.damage[Damage.MISSING_FIELDS] += 1
            elif damage_kind == "not_html":
                body = writer.metadata_json(page_url, "response", None)
            writer.add("metadata", page_url, body)
            counts.metadata_records += 2 - (damage_kind == "corrupt_gzip")
            if damage_kind == "corrupt_gzip":
                member = writer.members[-1]
                writer.members[-1] = member[: len(member) // 2] + bytes(rng.randrange(256) for _ in range(64))
                counts.damage[Damage.CORRUPT_GZIP] += 1
            if damage_kind is not None:
                continue
            counts.html_pages += 1
            counts.links_seen += len(links) - 1
            for kept, lang, reason, kind in expected:
                if reason is not None:
                    counts.drops[reason] += 1
                    continue
                assert kept is not None and lang is not None, "a link no drop reason names is a pair"
                if kept in seen_in_file:
                    counts.drops[DropReason.DUPLICATE] += 1
                    continue
                seen_in_file.add(kept)
                counts.alt_truncated += kind == "huge_alt"
                language, color, shape, matches, exists = lang
                category = "nolang" if language is None else ("en" if language == "en" else "multi")
                exists = exists and kept[0].startswith(servable) if servable else exists
                truth.append(
                    ExpectedCandidate(
                        kept[0], kept[1], page_url, category, language or "", rel, color, shape, matches, exists
                    )
                )
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(b"".join(writer.members))
        sample.wat_paths.append(rel)
        sample.candidates[rel] = truth
        sample.counts[rel] = counts
    listing = os.path.join(root, "crawl-data", crawl, "wat.paths.gz")
    with gzip.open(listing, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(sample.wat_paths) + "\n")
    return sample
