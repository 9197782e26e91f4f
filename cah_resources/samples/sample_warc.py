"""A seeded generator of realistic Common Crawl WARC files (and their WAT twins), with the ground truth
of the images the documented rules name (pages/html_images.py) and of each page's main text.

Pages look like the web's: a head of scripts and styles, a header with navigation, breadcrumbs, an
article (title, paragraphs, figures), a sidebar, comments, a footer and a cookie banner, in several
charsets (declared in the HTTP header, only in ``<meta charset>``, or not at all). Every ``<img>``
is made as one known *kind* (lazy ``data-*`` attributes behind placeholders, ``srcset`` with width or
density descriptors, ``<picture>``, ``<noscript>`` fallbacks, ``<base href>``, junk the filters drop),
so what the WARC pass must find is known without running its code. The WAT twin of each file holds
what Common Crawl's WAT holds for the same pages: every ``<img src>`` with its alt.
"""

from __future__ import annotations

import gzip
import html
import itertools
import os
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cah_resources.contract import CandidatesStats, DropReason, PageDropReason, PagesStats
from cah_resources.pages.html_images import LAZY_SRC_ATTRIBUTES
from cah_resources.samples.sample_crawl import (
    ExpectedCandidate,
    SampleCrawl,
    _WatWriter,
    caption,
    image_name,
)
from cah_resources.samples.tiny_text_classifier import texts as edu_texts

# Seed text per language: sentences are drawn from these words, so a page reads as its language to
# gcld3 and to a main-text extractor (long paragraphs) without being anyone's prose.
WORDS = {
    "en": "the museum opened a new exhibition about river boats and the people who built them in the old harbour "
    "town visitors can see drawings letters tools and photographs that tell how families lived worked and "
    "travelled along the water during the last two centuries while local schools prepare guided tours",
    "de": "das Museum zeigt eine neue Ausstellung über Flussschiffe und die Menschen die sie in der alten "
    "Hafenstadt gebaut haben Besucher sehen Zeichnungen Briefe Werkzeuge und Fotografien die erzählen wie "
    "Familien am Wasser lebten arbeiteten und reisten während Schulen Führungen für Kinder vorbereiten",
    "fr": "le musée présente une nouvelle exposition sur les bateaux de rivière et les gens qui les ont "
    "construits dans la vieille ville portuaire les visiteurs découvrent des dessins des lettres des outils "
    "et des photographies qui racontent comment les familles vivaient travaillaient et voyageaient",
    "es": "el museo presenta una nueva exposición sobre los barcos de río y las personas que los construyeron "
    "en el antiguo pueblo del puerto los visitantes pueden ver dibujos cartas herramientas y fotografías que "
    "cuentan cómo las familias vivían trabajaban y viajaban junto al agua durante dos siglos",
    "ru": "музей открыл новую выставку о речных лодках и людях которые строили их в старом портовом городе "
    "посетители увидят рисунки письма инструменты и фотографии которые рассказывают как семьи жили работали "
    "и путешествовали вдоль воды в течение двух последних столетий пока школы готовят экскурсии",
    "ja": "博物館 は 古い 港町 で 川船 を 造った 人々 に ついて の 新しい 展示 を 開きました 来館者 は 図面 "
    "手紙 道具 写真 を 見る こと が でき 家族 が 水辺 で どのように 暮らし 働き 旅を した か を 知る こと が できます",
}
JOINER = {"ja": ""}
SENTENCE_END = {"ja": "。"}
# Charsets a page may be written in, with the languages its text and alt texts may use.
CHARSETS = {
    "utf-8": ("en", "de", "fr", "es", "ru", "ja"),
    "windows-1252": ("en", "de", "fr", "es"),
    "windows-1251": ("ru", "en"),
    "shift_jis": ("ja", "en"),
}
CAPTION_LANGUAGES = ("en", "de", "fr", "es", "ru")  # sample_crawl's caption templates
# How a page says its charset: in the HTTP Content-Type, only in <meta charset>, or nowhere.
DECLARATIONS = ("http", "meta", "none")
PLACEHOLDERS = (
    "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7",
    "/wp-content/plugins/lazy/img/blank.gif",
    "/static/spacer.gif",
    "/img/lazy-placeholder.png",
)
# Kinds of <img> and what the WARC pass must make of each: (url_attribute, or the drop reason).
GOOD_IMAGE_KINDS = (
    "src",
    "relative_src",
    "srcset_w",
    "srcset_x",
    "lazy_src",
    "lazy_srcset",
    "tiny_src_lazy",
    "picture_img",
    "picture_source",
    "picture_lazy_source",
    "noscript_fallback",
    "noscript_only",
)
DROP_IMAGE_KINDS = {
    "data_only": DropReason.DATA_URL,
    "svg": "svg",  # a dropped extension counts under its name
    "no_alt": DropReason.NO_ALT,
    "short_alt": DropReason.ALT_TOO_SHORT,
    "spacer_only": "gif",
}
REPEAT_KIND = "duplicate"
NO_URL_KIND = "no_url"
NAV = ("Home", "News", "Culture", "Travel", "Sport", "Science", "Opinion", "Contact")
FOOTER = (
    "Copyright 2024 Harbour Town Gazette. All rights reserved.",
    "Privacy policy | Terms of use | Cookie settings | Advertise with us",
)
SIDEBAR = ("Most read this week", "Weather in Harbour Town: light rain, 14 degrees", "Subscribe to our newsletter")
COOKIE = "We use cookies to improve your experience. By continuing you accept our use of cookies."
SCRIPT = (
    "window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments)}"
    "gtag('js',new Date());gtag('config','G-XXXX');"
    "(function(){var l=document.querySelectorAll('img.lazy');for(var i=0;i<l.length;i++){"
    "l[i].setAttribute('src',l[i].getAttribute('data-src'))}})();"
)
STYLE = (
    "body{margin:0;font-family:Georgia,serif;color:#222}.nav{display:flex;gap:1em}"
    ".article p{line-height:1.6}.sidebar{float:right;width:30%}.footer{font-size:80%}"
)


@dataclass
class ExpectedImage(ExpectedCandidate):
    url_attribute: str = "src"


@dataclass
class ExpectedPage:
    url: str
    title: str
    paragraphs: list[str]  # the article's paragraphs: what the main text must hold
    boilerplate: list[str]  # navigation, sidebar, footer, banner lines: what it must not
    language: str
    charset: str
    declared: str  # http | meta | none
    kept: bool  # long enough to be a page row
    value: float | None = None  # educational value (0-5) it was written with; None: not a classifier language


@dataclass
class SampleWarcCrawl(SampleCrawl):
    """What was written and its truth; ``candidates``/``counts`` are per WARC path, ``wat_paths`` the twins."""

    warc_paths: list[str] = field(default_factory=list)
    pages: dict[str, list[ExpectedPage]] = field(default_factory=dict)  # per WARC path
    wat_links: dict[str, int] = field(default_factory=dict)  # per page URL: IMG@/src links of its WAT twin
    page_counts: dict[str, PagesStats] = field(default_factory=dict)  # per WARC path: what read_warc counts


def _sentence(rng: random.Random, language: str, words: int) -> str:
    vocabulary = WORDS[language].split()
    picked = [rng.choice(vocabulary) for _ in range(words)]
    text = JOINER.get(language, " ").join(picked)
    if language != "ja":
        text = text[0].upper() + text[1:]
    return text + SENTENCE_END.get(language, ".")


def paragraph(rng: random.Random, language: str) -> str:
    return " ".join(_sentence(rng, language, rng.randint(8, 22)) for _ in range(rng.randint(3, 7)))


def article(rng: random.Random, language: str, count: int) -> tuple[list[str], float | None]:
    """``count`` paragraphs of 3-7 sentences and the article's educational value (0-5). In a language the
    tiny text classifier reads, the sentences are its world's (teaching, or the rest of the web, in one
    of its shares), so page_scores has pages worth keeping and a value to score against; other
    languages get seed-word prose and no value."""
    if language not in edu_texts.LANGUAGES or count == 0:
        return [paragraph(rng, language) for _ in range(count)], None
    lengths = [rng.randint(3, 7) for _ in range(count)]
    made, value = edu_texts.mixed_sentences(rng, language, sum(lengths), rng.choice(edu_texts.TEACHING_SHARES))
    ends = list(itertools.accumulate(lengths))
    return [" ".join(made[end - n : end]) for n, end in zip(lengths, ends, strict=True)], value


class _Page:
    """One page being written: its HTML parts, its <img>s' truth, its WAT twin's links."""

    def __init__(self, rng, url, resolve, image_base, ids, mismatch_rate, missing_rate, charset):
        self.rng, self.url, self.resolve = rng, url, resolve  # resolve: relative src -> absolute URL
        self.charset = charset
        languages = CHARSETS[charset]
        self.image_base, self.ids = image_base, ids
        self.mismatch_rate, self.missing_rate = mismatch_rate, missing_rate
        self.languages = [lang for lang in languages if lang in CAPTION_LANGUAGES] or ["en"]
        self.expected: list[tuple] = []  # (pair or None, facts, drop reason, kind, attribute)
        self.wat_links: list[dict] = []
        self.no_url = 0

    def _caption(self):
        rng = self.rng
        language = rng.choice(self.languages)
        color, shape = rng.randrange(6), rng.randrange(4)
        shown = (color, shape)
        if self.mismatch_rate and rng.random() < self.mismatch_rate:
            shown = ((color + 1 + rng.randrange(5)) % 6, (shape + 1 + rng.randrange(3)) % 4)
        missing = bool(self.missing_rate) and rng.random() < self.missing_rate
        name = image_name(*shown, next(self.ids), missing)
        return caption(language, color, shape), language, color, shape, shown == (color, shape), not missing, name

    def img(self, kind: str, earlier: list) -> str:  # noqa: C901 - one branch per kind of image the sample holds
        """The HTML of one image of ``kind``; its truth recorded."""
        rng = self.rng
        if kind == REPEAT_KIND:
            writable = [e for e in earlier[-50:] if _encodable(e[0], self.charset)]
            if not writable:
                kind = "src"
            else:
                markup, pair, facts, attribute, raw = rng.choice(writable)
                for _ in raw if attribute == "data-src" and "<noscript>" in markup else raw[:1]:
                    self.expected.append((pair, facts, None, REPEAT_KIND, attribute))
                self.wat_links.extend(dict(link) for link in raw)
                return markup
        text, language, color, shape, matches, exists, name = self._caption()
        host = rng.choice(self.image_base)
        url = f"{host}/{name}.jpg"
        alt = html.escape(text, quote=True)
        placeholder = rng.choice(PLACEHOLDERS)
        attribute, expected_url, srcs = "src", url, []  # srcs: the <img src> values, for the WAT twin
        if kind == "src":
            markup = f'<img src="{url}" alt="{alt}" width="640" height="480">'
            srcs = [url]
        elif kind == "relative_src":
            markup = f'<img src="media/{name}.jpg" alt="{alt}">'
            expected_url, srcs = self.resolve(f"media/{name}.jpg"), [f"media/{name}.jpg"]
        elif kind == "srcset_w":
            small = f"{host}/w320/{name}.jpg"
            widths = rng.sample([480, 768, 1024, 1600], 3)
            variants = ", ".join(f"{host}/w{w}/{name}.jpg {w}w" for w in widths)
            markup = f'<img src="{small}" srcset="{small} 320w, {variants}" sizes="100vw" alt="{alt}">'
            attribute, expected_url, srcs = "srcset", f"{host}/w{max(widths)}/{name}.jpg", [small]
        elif kind == "srcset_x":
            markup = f'<img src="{url}" srcset="{url} 1x, {host}/x2/{name}.jpg 2x,{host}/x3/{name}.jpg 3x" alt="{alt}">'
            attribute, expected_url, srcs = "srcset", f"{host}/x3/{name}.jpg", [url]
        elif kind == "lazy_src":
            attribute = rng.choice(LAZY_SRC_ATTRIBUTES)
            markup = f'<img class="lazy" src="{placeholder}" {attribute}="{url}" alt="{alt}">'
            srcs = [placeholder]
        elif kind == "lazy_srcset":
            small = f"{host}/w300/{name}.jpg"
            attribute = rng.choice(("data-srcset", "data-lazy-srcset"))
            markup = (
                f'<img class="lazyload" src="{placeholder}" data-src="{small}" '
                f'{attribute}="{small} 300w, {host}/w1200/{name}.jpg 1200w, {host}/w800/{name}.jpg 800w" alt="{alt}">'
            )
            expected_url, srcs = f"{host}/w1200/{name}.jpg", [placeholder]
        elif kind == "tiny_src_lazy":
            markup = f'<img src="{host}/thumbs/{name}.jpg" width="1" height="1" data-lazy-src="{url}" alt="{alt}">'
            attribute, srcs = "data-lazy-src", [f"{host}/thumbs/{name}.jpg"]
        elif kind == "picture_img":
            markup = (
                f'<picture><source type="image/webp" srcset="{host}/webp/{name}.webp 1x, {host}/webp2/{name}.webp 2x">'
                f'<img src="{url}" alt="{alt}"></picture>'
            )
            srcs = [url]
        elif kind in ("picture_source", "picture_lazy_source"):
            name_attr = "srcset" if kind == "picture_source" else "data-srcset"
            markup = (
                f'<picture><source media="(min-width: 800px)" {name_attr}="{host}/w1400/{name}.jpg 1400w, '
                f'{host}/w700/{name}.jpg 700w"><source {name_attr}="{host}/w400/{name}.jpg 400w">'
                f'<img src="{PLACEHOLDERS[0]}" alt="{alt}"></picture>'
            )
            attribute, expected_url, srcs = f"source>{name_attr}", f"{host}/w1400/{name}.jpg", [PLACEHOLDERS[0]]
        elif kind == "noscript_fallback":
            markup = (
                f'<img class="lazy" src="{placeholder}" data-src="{url}" alt="{alt}">'
                f'<noscript><img src="{url}" alt="{alt}"></noscript>'
            )
            attribute, srcs = "data-src", [placeholder, url]
        elif kind == "noscript_only":
            markup = f'<noscript><img src="{url}" alt="{alt}"></noscript>'
            attribute, srcs = "noscript>src", [url]
        elif kind == "data_only":
            markup = f'<img src="{PLACEHOLDERS[0]}" alt="{alt}">'
            srcs = [PLACEHOLDERS[0]]
        elif kind == "svg":
            markup = f'<img src="{host}/icons/{name}.svg" alt="{alt}">'
            srcs = [f"{host}/icons/{name}.svg"]
        elif kind == "no_alt":
            markup = f'<img src="{url}">'
            srcs = [url]
        elif kind == "short_alt":
            markup = f'<img src="{url}" alt="logo">'
            srcs = [url]
        elif kind == "spacer_only":
            markup = f'<img src="/static/spacer.gif" alt="{alt}">'
            srcs = ["/static/spacer.gif"]
        else:
            raise ValueError(kind)
        wat_alt = None if kind == "no_alt" else ("logo" if kind == "short_alt" else text)
        raw = [{"path": "IMG@/src", "url": src, **({"alt": wat_alt} if wat_alt is not None else {})} for src in srcs]
        self.wat_links.extend(raw)
        reason = DROP_IMAGE_KINDS.get(kind)
        pair = None if reason else (expected_url, " ".join(text.split()))
        facts = (language, color, shape, matches, exists)
        self.expected.append((pair, facts, reason, kind, attribute))
        if kind == "noscript_fallback":  # the <noscript> copy: the same pair again, a duplicate on this page
            self.expected.append((pair, facts, None, REPEAT_KIND, "noscript>src"))
        if pair is not None and kind != "relative_src":
            earlier.append((markup, pair, facts, attribute, raw))
        return markup

    def no_url_img(self) -> str:
        self.no_url += 1
        return '<img alt="an image without any address" class="lazy">'


def _encodable(text: str, charset: str) -> bool:
    try:
        text.encode(charset)
    except UnicodeEncodeError:
        return False
    return True


def _figure(markup: str, rng: random.Random, language: str) -> str:
    return f"<figure>{markup}<figcaption>{html.escape(_sentence(rng, language, 6))}</figcaption></figure>"


def page_html(
    page: _Page, rng, title, language, charset, declared, base, paragraphs, kinds, earlier, weight: int = 0
) -> str:
    """The page's HTML; one without paragraphs (a gallery) has no comments either: too short for a page row.
    ``weight``: bytes of app state (a JSON blob of ids, as framework pages inline) and a menu to match."""
    menu = [f'<li><a href="/{n.lower()}/">{n}</a></li>' for n in NAV]
    menu += [
        f'<li><a href="/topics/{rng.randrange(10**6)}/">{rng.choice(NAV)} {i}</a></li>' for i in range(weight // 400)
    ]
    nav = "".join(menu)
    state = (
        f'<script id="__APP_STATE__" type="application/json">{{"ids":"{rng.randbytes(weight * 3 // 8).hex()}"}}'
        "</script>"
        if weight
        else ""
    )
    figures = []
    for kind in kinds:
        markup = page.no_url_img() if kind == NO_URL_KIND else page.img(kind, earlier)
        figures.append(_figure(markup, rng, language) if paragraphs else markup)
    body: list[str] = []
    for i, text in enumerate(paragraphs):
        body.append(f"<p>{html.escape(text)}</p>")
        if figures and (i % 2 == 1 or i == len(paragraphs) - 1):
            body.append(figures.pop(0))
    body.extend(figures)
    related = "".join(
        f'<li><a href="/news/{rng.randrange(10**6)}.html">{html.escape(_sentence(rng, language, 5))}</a></li>'
        for _ in range(6)
    )
    comments = "".join(
        f'<div class="comment"><span class="author">reader{rng.randrange(999)}</span> '
        f"<span>{html.escape(_sentence(rng, language, 4))}</span></div>"
        for _ in range(2 if paragraphs else 0)
    )
    head = [
        f'<meta charset="{charset}">' if declared == "meta" else "",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f'<base href="{base}">' if base else "",
        f"<style>{STYLE * 6}</style>",
        f"<script>{SCRIPT * 4}</script>",
        '<link rel="stylesheet" href="/static/site.css"><script async src="/static/analytics.js"></script>',
    ]
    return (
        "<!DOCTYPE html>\n<html lang='" + language + "'><head>" + "".join(head) + "</head><body>"
        f'<div id="cookie-banner" class="cookie">{COOKIE} <button>OK</button></div>'
        f'<header class="site-header"><a class="logo" href="/"><img src="/static/logo.svg" alt="Gazette"></a>'
        f'<nav class="nav"><ul>{nav}</ul></nav></header>'
        f'<div class="breadcrumbs"><a href="/">Home</a> &rsaquo; <a href="/culture/">Culture</a></div>'
        f'<main><article class="article"><h1>{html.escape(title)}</h1>'
        f'<div class="byline">By staff writer, 18 May 2024</div>' + "".join(body) + "</article>"
        f'<section class="comments"><h3>Comments</h3>{comments}</section></main>'
        f'<aside class="sidebar"><h3>{SIDEBAR[0]}</h3><ul>{related}</ul><p>{SIDEBAR[1]}</p>'
        f'<p><a href="/newsletter">{SIDEBAR[2]}</a></p></aside>'
        f'<footer class="footer"><p>{FOOTER[0]}</p><p>{FOOTER[1]}</p></footer>'
        f"{state}<script>{SCRIPT}</script></body></html>"
    )


def _http_response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nDate: Sat, 18 May 2024 01:58:10 GMT\r\nServer: nginx\r\n"
        f"Content-Type: {content_type}\r\nX-Crawler-Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _WarcWriter(_WatWriter):
    def response(self, url: str, payload: bytes, identified: str = "text/html") -> None:
        request = f"GET / HTTP/1.1\r\nHost: {url.split('/')[2]}\r\n\r\n".encode()
        self.add("request", url, request, "application/http; msgtype=request")
        # Common Crawl names the payload's type as Tika detects it; datatrove's reader trusts it.
        extra = {"WARC-Identified-Payload-Type": identified}
        self.add("response", url, payload, "application/http; msgtype=response", extra)
        meta = b"fetchTimeMs: 112\r\ncharset-detected: UTF-8\r\n"
        self.add("metadata", url, meta, "application/warc-fields")


def generate_warc_crawl(
    root: str,
    crawl: str = "CC-MAIN-SAMPLE-WARC",
    warc_files: int = 2,
    pages_per_file: int = 30,
    images_per_page: int = 8,
    paragraphs_per_page: tuple[int, int] = (4, 9),
    seed: int = 0,
    image_base: list[str] | None = None,
    page_base: list[str] | None = None,
    mismatch_rate: float = 0.0,
    missing_rate: float = 0.0,
    other_records: bool = True,
    page_weight: int = 0,
    first_image_id: int = 0,
) -> SampleWarcCrawl:
    """Write ``crawl-data/<crawl>/warc.paths.gz`` and its WARC files under ``root`` (and the WAT twins,
    ``wat.paths.gz``); return the truth. ``other_records``: also a redirect, a 404, an image and a short
    page per file (each a page drop reason). ``page_weight``: bytes of inline app state and menu per page,
    to reach a real page's size (Common Crawl's pages weigh tens of KB, a third or more of it scripts)."""
    rng = random.Random(seed)
    image_base = image_base or [f"https://img{i}.example.com" for i in range(5)]
    servable = tuple(o + "/" for o in (image_base or []) + (page_base or [])) if page_base else ()
    ids = iter(range(first_image_id, first_image_id + 10**9))
    date = datetime(2024, 5, 18, tzinfo=UTC)
    sample = SampleWarcCrawl(root, crawl, [])
    earlier: list = []
    kinds = list(GOOD_IMAGE_KINDS) * 3 + list(DROP_IMAGE_KINDS) + [REPEAT_KIND] * 2 + [NO_URL_KIND]
    for f in range(warc_files):
        stem = f"crawl-data/{crawl}/segments/1715000000000.{f:02d}"
        rel = f"{stem}/warc/{crawl}-{f:05d}.warc.gz"
        wat_rel = f"{stem}/wat/{crawl}-{f:05d}.warc.wat.gz"
        writer = _WarcWriter(rng, date + timedelta(minutes=f))
        wat = _WatWriter(rng, date + timedelta(minutes=f))
        info = b"software: cah sample_warc\r\nformat: WARC File Format 1.0\r\n"
        writer.add("warcinfo", None, info, "application/warc-fields")
        wat.add("warcinfo", None, b"Software-Info: cah sample_warc\r\n", "application/warc-fields")
        truth: list[ExpectedCandidate] = []  # ExpectedImage rows, kept as the SampleCrawl field types them
        pages: list[ExpectedPage] = []
        counts = CandidatesStats()  # what read_warc counts for the candidates, and for the pages:
        page_counts = PagesStats()
        seen: set[tuple[str, str]] = set()
        page_counts.warc_records += 1 + 3 * pages_per_file  # warcinfo, then request, response, metadata
        page_counts.responses += pages_per_file
        specials = ["redirect", "not_found", "image", "short"] if other_records else []
        positions = rng.sample(range(pages_per_file), min(len(specials), pages_per_file))
        special_at = dict(zip(positions, specials, strict=False))
        for p in range(pages_per_file):
            site = rng.randrange(20)
            origin = page_base[site % len(page_base)] if page_base else f"https://www.site{site}.example.org"
            url = f"{origin}/culture/{f}-{p}/river-boats.html"
            special = special_at.get(p)
            if special in ("redirect", "not_found", "image"):
                status, ctype, body = {
                    "redirect": ("301 Moved Permanently", "text/html", b"<html><body>Moved</body></html>"),
                    "not_found": ("404 Not Found", "text/html", b"<html><body>Not found</body></html>"),
                    "image": ("200 OK", "image/jpeg", b"\xff\xd8\xff\xe0" + rng.randbytes(64)),
                }[special]
                writer.response(url, _http_response(status, ctype, body), ctype)
                page_counts.drops[PageDropReason.NOT_2XX if special != "image" else PageDropReason.NOT_HTML] += 1
                continue
            charset = rng.choice(list(CHARSETS))
            language = rng.choice(CHARSETS[charset])
            declared = rng.choice(DECLARATIONS) if charset == "utf-8" else rng.choice(("http", "meta"))
            base = None
            resolve_dir = url.rsplit("/", 1)[0] + "/"
            if rng.random() < 0.25:
                static = page_base[(site + 1) % len(page_base)] if page_base else f"https://static{site}.example.com"
                base = f"{static}/assets/"
                resolve_dir = base
            page = _Page(
                rng, url, lambda src, d=resolve_dir: d + src, image_base, ids, mismatch_rate, missing_rate, charset
            )
            short = special == "short"
            title = _sentence(rng, language, 6).rstrip(".。")
            paragraphs, value = article(rng, language, 0 if short else rng.randint(*paragraphs_per_page))
            page_kinds = [rng.choice(kinds) for _ in range(images_per_page)]
            markup = page_html(
                page, rng, title, language, charset, declared, base, paragraphs, page_kinds, earlier, page_weight
            )
            encoded = markup.encode(charset, errors="strict")
            ctype = f"text/html; charset={charset}" if declared == "http" else "text/html"
            writer.response(url, _http_response("200 OK", ctype, encoded))
            logo = {"path": "IMG@/src", "url": "/static/logo.svg", "alt": "Gazette"}
            wat_html = {"Head": {"Title": title, **({"Base": base} if base else {})}, "Links": [logo, *page.wat_links]}
            wat.add("metadata", url, wat.metadata_json(url, "response", wat_html))
            sample.wat_links[url] = len(page.wat_links) + 1
            counts.html_pages += 1
            page_counts.html_pages += 1
            page_counts.images_without_url += page.no_url
            counts.links_seen += len(page.expected) + 1  # and the header's logo, an svg
            counts.drops["svg"] += 1
            if short:
                page_counts.drops[PageDropReason.TOO_SHORT] += 1
            else:
                page_counts.pages += 1
            boilerplate = [COOKIE, *FOOTER, SIDEBAR[0], SIDEBAR[1]]
            pages.append(
                ExpectedPage(url, title, paragraphs, boilerplate, language, charset, declared, not short, value)
            )
            for pair, facts, reason, _kind, attribute in page.expected:
                if reason is not None:
                    counts.drops[reason] += 1
                    continue
                if pair in seen:
                    counts.drops[DropReason.DUPLICATE] += 1
                    continue
                seen.add(pair)
                alt_language, color, shape, matches, exists = facts
                category = "en" if alt_language == "en" else "multi"
                exists = exists and pair[0].startswith(servable) if servable else exists
                truth.append(
                    ExpectedImage(
                        pair[0], pair[1], url, category, alt_language, rel, color, shape, matches, exists, attribute
                    )
                )
        for path, members in ((rel, writer.members), (wat_rel, wat.members)):
            full = os.path.join(root, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as handle:
                handle.write(b"".join(members))
        sample.warc_paths.append(rel)
        sample.wat_paths.append(wat_rel)
        sample.candidates[rel] = truth
        sample.pages[rel] = pages
        sample.counts[rel] = counts
        sample.page_counts[rel] = page_counts
    for name, paths in (("warc.paths.gz", sample.warc_paths), ("wat.paths.gz", sample.wat_paths)):
        with gzip.open(os.path.join(root, "crawl-data", crawl, name), "wt", encoding="utf-8") as handle:
            handle.write("\n".join(paths) + "\n")
    return sample
