"""An HTML page's images by the documented rules: src, srcset, lazy attributes, <picture>, <noscript>, <base>.

One URL per ``<img>``, the first real one in this order (``url_attribute`` names where it came from):

1. a lazy srcset (``LAZY_SRCSET_ATTRIBUTES``), its best candidate;
2. ``srcset``, its best candidate: the largest width (``w``) descriptor, else the largest density (``x``);
3. a lazy src (``LAZY_SRC_ATTRIBUTES``: OBELICS's list, then other lazy loaders' names), the first real one;
4. ``src``;
5. inside ``<picture>``, when the ``<img>`` gave nothing real: the first ``<source>`` with a real
   (lazy) srcset, its best candidate (``source>srcset``, ``source>data-srcset``).

"Real" excludes placeholders: empty values, ``data:``/``javascript:``/``about:`` URLs, ``#``, spacer
file names (``spacer.gif``, ``blank.gif``, ``1x1.png``, ...), and the ``src`` of an ``<img>`` sized 1x1
or 0x0. So a placeholder ``src`` never wins over a real lazy URL. An ``<img>`` with nothing real
keeps its raw ``src`` (when it has one) so the candidate filters drop it under their reason
(``data_url``, ...); one without any URL is counted, not a link. ``<img>``s inside ``<noscript>`` follow
the same rules, their attribute prefixed ``noscript>``; relative URLs resolve against the first
``<base href>``, itself relative to the page.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from cah_resources.contract import URL_ATTRIBUTE_SRC

# OBELICS's get_media_src order after src and srcset (which it takes first, placeholders included),
# then the names of other common lazy loaders (lazysizes, WordPress plugins, jQuery lazyload, echo.js).
LAZY_SRC_ATTRIBUTES = (
    "data-src",
    "data-src-fg",
    "data-scroll-image",
    "data-lateloadsrc",
    "data-img-src",
    "data-original",
    "data-gt-lazy-src",
    "data-lazy",
    "data-lazy-src",
    "src2",
    "data-url",
    "data-hi-res-src",
    "data-original-src",
    "data-lazyload",
    "data-actualsrc",
    "data-echo",
)
LAZY_SRCSET_ATTRIBUTES = ("data-srcset", "data-lazy-srcset")
SRCSET = "srcset"
NOSCRIPT_PREFIX = "noscript>"
SOURCE_PREFIX = "source>"
PLACEHOLDER_SCHEMES = ("data:", "javascript:", "about:")
# File names that lazy loaders and old layouts put in src while the real image waits elsewhere.
PLACEHOLDER_NAME = re.compile(
    r"^(?:spacer|blank|pixel|transparent|trans|clear|empty|dot|1x1|placeholder|lazy|lazyload|lazy-placeholder"
    r"|loader|loading|grey|gray)(?:[-_.]?(?:1x1|placeholder|pixel|image|img))?\.(?:gif|png|jpe?g|svg|webp)$"
)
TINY_SIZES = ("0", "1", "1px", "0px")


class ImageLink(NamedTuple):
    src: str  # as written in the page, relative or absolute
    alt: str | None
    attribute: str  # url_attribute: where src was found


class PageImages(NamedTuple):
    base_href: str | None
    links: list[ImageLink]
    without_url: int  # <img>s with no URL at all
    over_cap: int  # <img>s past the page's image cap, not looked at


def is_placeholder(url: str) -> bool:
    """Whether ``url`` stands in for an image rather than being one (see the module's rules)."""
    value = url.strip()
    if not value or value[0] == "#":
        return True
    if value[:11].lower().startswith(PLACEHOLDER_SCHEMES):
        return True
    name = value.split("#", 1)[0].split("?", 1)[0].rsplit("/", 1)[-1].lower()
    return PLACEHOLDER_NAME.match(name) is not None


def srcset_candidates(value: str) -> list[tuple[str, str]]:
    """``(url, descriptor)`` pairs of a srcset, as the HTML standard splits it: a URL runs to whitespace
    (commas inside it, as in ``w_300,h_200``, stay), a comma after the descriptor ends a candidate."""
    found: list[tuple[str, str]] = []
    url: str | None = None
    descriptor: list[str] = []
    for token in value.split():
        if url is None:
            stripped = token.strip(",")
            if not stripped:
                continue
            if token.endswith(","):
                found.append((stripped, ""))
            else:
                url = stripped
            continue
        if "," in token:
            head, rest = token.split(",", 1)
            descriptor.append(head)
            found.append((url, " ".join(d for d in descriptor if d)))
            url, descriptor = (rest.strip(",") or None), []
        else:
            descriptor.append(token)
    if url is not None:
        found.append((url, " ".join(d for d in descriptor if d)))
    return found


def best_srcset_url(value: str) -> str | None:
    """The srcset candidate with the largest width descriptor, else the largest density; placeholders
    never count. None when no real candidate is left."""
    best_w: tuple[float, str] | None = None
    best_x: tuple[float, str] | None = None
    for url, descriptor in srcset_candidates(value):
        if is_placeholder(url):
            continue
        kind, size = _descriptor(descriptor)
        if kind == "w":
            if best_w is None or size > best_w[0]:
                best_w = (size, url)
        elif best_x is None or size > best_x[0]:
            best_x = (size, url)
    if best_w is not None:
        return best_w[1]
    return best_x[1] if best_x is not None else None


def _descriptor(descriptor: str) -> tuple[str, float]:
    """("w", width) or ("x", density) of a candidate's descriptor; none or an unreadable one is 1x."""
    for token in descriptor.split():
        unit, number = token[-1:].lower(), token[:-1]
        if unit in ("w", "x"):
            try:
                return unit, float(number)
            except ValueError:
                continue
    return "x", 1.0


def image_of(img, prefix: str = "") -> ImageLink | None:
    """The URL of one ``<img>`` by rules 1-4 (with its alt and attribute), or None when none is real."""
    attrs = img.attrs
    if not attrs:
        return None
    alt = img.getattr("alt") if "alt" in attrs else None
    for name in LAZY_SRCSET_ATTRIBUTES:
        if name in attrs:
            url = best_srcset_url(img.getattr(name) or "")
            if url is not None:
                return ImageLink(url, alt, prefix + name)
    if SRCSET in attrs:
        url = best_srcset_url(img.getattr(SRCSET) or "")
        if url is not None:
            return ImageLink(url, alt, prefix + SRCSET)
    for name in LAZY_SRC_ATTRIBUTES:
        if name in attrs:
            value = img.getattr(name) or ""
            if not is_placeholder(value):
                return ImageLink(value.strip(), alt, prefix + name)
    if URL_ATTRIBUTE_SRC in attrs:
        value = img.getattr(URL_ATTRIBUTE_SRC) or ""
        tiny = img.getattr("width") in TINY_SIZES and img.getattr("height") in TINY_SIZES
        if not tiny and not is_placeholder(value):
            return ImageLink(value.strip(), alt, prefix + URL_ATTRIBUTE_SRC)
    return None


def picture_source_of(img) -> tuple[str, str] | None:
    """Rule 5: (url, attribute) of the first ``<source>`` of the img's ``<picture>`` with a real srcset."""
    picture = img.parent
    if picture is None or picture.tag != "picture":
        return None
    for source in picture.get_elements_by_tag_name("source").values():
        for name in (*LAZY_SRCSET_ATTRIBUTES, SRCSET):
            value = source.getattr(name)
            if value:
                url = best_srcset_url(value)
                if url is not None:
                    return url, SOURCE_PREFIX + name
    return None


# The tags whose presence changes the rules, found in the page's text before any selector runs: a
# regular expression over the text costs less than a DOM query, and most pages have none of them.
RULE_TAGS = re.compile(r"<(base|noscript|picture)\b", re.IGNORECASE)


def rule_tags(text: str) -> frozenset[str]:
    """Which of ``<base>``, ``<noscript>``, ``<picture>`` the page's text may hold (a superset: comments count)."""
    return frozenset(match.group(1).lower() for match in RULE_TAGS.finditer(text))


def page_images(tree, max_images: int, tags: frozenset[str] | None = None) -> PageImages:
    """Every ``<img>`` of a parsed page (resiliparse's lexbor tree) as one link by the module's rules;
    ``tags``: ``rule_tags`` of its text, when known, so that absent tags cost no DOM query."""
    document = tree.document
    if document is None:
        return PageImages(None, [], 0, 0)
    base = document.query_selector("base[href]") if tags is None or "base" in tags else None
    base_href = base.getattr("href") if base is not None else None
    found = document.get_elements_by_tag_name("img")
    total = len(found)
    if total == 0:
        return PageImages(base_href, [], 0, 0)
    # values() builds every node at once; indexing a collection walks the tree each time.
    images = found.values() if total <= max_images else found.values()[:max_images]
    in_noscript = _images_inside(document, "noscript") if tags is None or "noscript" in tags else set()
    in_picture = _images_inside(document, "picture") if tags is None or "picture" in tags else set()
    links: list[ImageLink] = []
    without_url = 0
    for img in images:
        prefix = NOSCRIPT_PREFIX if in_noscript and img in in_noscript else ""
        link = image_of(img, prefix)
        if link is None and in_picture and img in in_picture:
            source = picture_source_of(img)
            if source is not None:
                link = ImageLink(source[0], img.getattr("alt"), prefix + source[1])
        if link is None:
            raw = img.getattr(URL_ATTRIBUTE_SRC)
            if raw is None or not raw.strip():
                without_url += 1
                continue
            link = ImageLink(raw.strip(), img.getattr("alt"), prefix + URL_ATTRIBUTE_SRC)
        links.append(link)
    return PageImages(base_href, links, without_url, max(0, total - max_images))


def _images_inside(document, tag: str) -> set:
    """The ``<img>``s inside any ``<tag>``; one cheap test first, as most pages have none."""
    if document.query_selector(tag) is None:
        return set()
    return set(document.query_selector_all(f"{tag} img").values())
