"""One HTML page, decoded and parsed once (resiliparse's lexbor DOM), into its title, main text and images.

Every page is bounded: its bytes (the reader skips one over ``max_html_bytes``), its DOM depth (lexbor
builds any depth, but main-text extraction grows with the square of it and overflows the C stack
near 100k levels), its images, and its time. The time budget is checked between the steps, which
are C calls that cannot be interrupted; the byte and depth caps are what bound each step.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass
from typing import NamedTuple

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import detect_encoding, map_encoding_to_html5
from resiliparse.parse.html import HTMLTree

from cah_resources.contract import PageDropReason
from cah_resources.pages.html_images import PageImages, page_images, rule_tags

REPLACEMENT = "\ufffd"
# resiliparse's main-content extraction, without what is not the page's own prose: image alt texts
# (the candidates' job), list bullets, comments, post metadata, and asides, navigation, headers and
# footers. Chosen on the article-extraction benchmark (benchmarks/warc_bench.py): token F1 0.945
# against 0.898 for resiliparse's defaults and 0.959 for Trafilatura as datatrove runs it.
MAIN_TEXT_OPTIONS = {
    "main_content": True,
    "alt_texts": False,
    "list_bullets": False,
    "comments": False,
    "post_meta": False,
    "skip_elements": ("aside", "nav", "footer", "header"),
}


@dataclass(frozen=True)
class PageRules:
    """Bounds and pre-filters of the WARC pass; every page that fails one is counted under its reason."""

    max_html_bytes: int = 4 << 20
    """A page over this many bytes is dropped as too_long (Common Crawl cuts pages at 1 MiB)."""
    max_dom_depth: int = 256
    """A page nested deeper than this is dropped as too_deep."""
    max_images_per_page: int = 1000
    """A page's <img>s past its first this many are dropped as image_cap."""
    page_budget_s: float = 10.0
    """A page taking longer than this many seconds to parse is dropped as too_slow; generous, so that a
    busy machine drops nothing."""
    min_text_chars: int = 100
    """A page with less main text than this is too_short: it keeps its images and loses its row."""
    max_bad_chars: float = 0.01
    """A page whose decoded text holds a larger share of U+FFFD and NUL is dropped as undecodable."""

    def __post_init__(self) -> None:
        if self.max_dom_depth < 8 or self.max_html_bytes < 1 or self.max_images_per_page < 0:
            raise ValueError("max_dom_depth must be at least 8, max_html_bytes and max_images_per_page positive")


class ParsedPage(NamedTuple):
    title: str
    text: str  # main content, boilerplate removed
    images: PageImages


def decode_html(body: bytes, declared: str | None, max_bad_chars: float) -> str | None:
    """The page as text: in its declared charset (HTTP header), else its ``<meta charset>``, else the
    one detected; a charset that fails on the bytes gives way to the detected one. None when the
    result is mostly replacement characters or NULs (binary, or a charset nothing reads)."""
    first = _codec(declared) or _codec(detect_encoding(body, from_html_meta=True)) or "utf-8"
    text = _decoded(body, first)
    if text is None:
        detected = _codec(detect_encoding(body))
        text = (_decoded(body, detected) if detected and detected != first else None) or body.decode(
            first, errors="replace"
        )
    # A find is cheaper than a count, and most pages have neither character.
    bad = (text.count(REPLACEMENT) if REPLACEMENT in text else 0) + (text.count("\x00") if "\x00" in text else 0)
    if bad and bad > max_bad_chars * len(text):
        return None
    return text


def _decoded(body: bytes, codec: str) -> str | None:
    try:
        return body.decode(codec)
    except UnicodeDecodeError:
        return None


def _codec(label: str | None) -> str | None:
    """Python's codec for a charset label, by the HTML standard's mapping (latin1 → windows-1252), or None."""
    if not label:
        return None
    name = map_encoding_to_html5(label.strip().strip("\"'"), fallback_utf8=False)
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:  # x-user-defined, replacement: labels of the standard Python has no codec for
        return None


def parse_page(text: str, rules: PageRules) -> ParsedPage | PageDropReason:
    """Title, main text and images of one decoded page from one parse, or the drop reason
    (``too_deep``, ``too_slow``)."""
    started = time.perf_counter()
    tree = HTMLTree.parse(text)
    document = tree.document
    if document is not None and document.query_selector(_depth_selector(rules.max_dom_depth)) is not None:
        return PageDropReason.TOO_DEEP
    if time.perf_counter() - started > rules.page_budget_s:
        return PageDropReason.TOO_SLOW
    images = page_images(tree, rules.max_images_per_page, rule_tags(text))
    if time.perf_counter() - started > rules.page_budget_s:
        return PageDropReason.TOO_SLOW
    main_text = extract_plain_text(tree, **MAIN_TEXT_OPTIONS)  # type: ignore[arg-type]  # a dict of mixed options
    if time.perf_counter() - started > rules.page_budget_s:
        return PageDropReason.TOO_SLOW
    return ParsedPage(" ".join((tree.title or "").split()), main_text.strip(), images)


_DEPTH_SELECTORS: dict[int, str] = {}


def _depth_selector(depth: int) -> str:
    """A selector matching an element nested ``depth`` levels under <html>: lexbor matches it right to
    left, so each element costs a walk up its own ancestors, and the first match ends the search."""
    selector = _DEPTH_SELECTORS.get(depth)
    if selector is None:
        selector = _DEPTH_SELECTORS[depth] = "html" + " > *" * depth
    return selector
