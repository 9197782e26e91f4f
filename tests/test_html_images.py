"""The image rules of an HTML page, each on a small page parsed by resiliparse's real lexbor DOM."""

import pytest
from resiliparse.parse.html import HTMLTree

from cah_resources.pages.html_images import (
    LAZY_SRC_ATTRIBUTES,
    best_srcset_url,
    is_placeholder,
    page_images,
    srcset_candidates,
)

SPACER = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


def _links(body: str, head: str = "", cap: int = 1000):
    found = page_images(HTMLTree.parse(f"<html><head>{head}</head><body>{body}</body></html>"), cap)
    return [(link.src, link.attribute) for link in found.links], found


def test_plain_src_is_the_image():
    assert _links('<img src="a.jpg" alt="x">')[0] == [("a.jpg", "src")]


def test_srcset_gives_its_widest_candidate_whatever_the_order():
    links, _ = _links('<img src="s.jpg" srcset="m.jpg 640w, l.jpg 1280w, s.jpg 320w" alt="x">')
    assert links == [("l.jpg", "srcset")]


def test_srcset_without_widths_gives_its_densest_candidate():
    assert best_srcset_url("a.jpg, b.jpg 2x,c.jpg 1.5x") == "b.jpg"


def test_srcset_urls_keep_their_commas():
    value = "https://cdn.example/w_300,h_200/a.jpg 300w, https://cdn.example/w_900,h_600/a.jpg 900w"
    assert srcset_candidates(value)[1] == ("https://cdn.example/w_900,h_600/a.jpg", "900w")
    assert best_srcset_url(value) == "https://cdn.example/w_900,h_600/a.jpg"


@pytest.mark.parametrize("attribute", LAZY_SRC_ATTRIBUTES)
def test_each_lazy_attribute_beats_a_placeholder_src(attribute):
    links, _ = _links(f'<img src="{SPACER}" {attribute}="real.jpg" alt="x">')
    assert links == [("real.jpg", attribute)]


@pytest.mark.parametrize("placeholder", [SPACER, "/img/spacer.gif", "blank.gif", "lazy-placeholder.png", "", "#"])
def test_a_placeholder_src_never_wins_over_a_lazy_srcset(placeholder):
    links, _ = _links(f'<img src="{placeholder}" data-srcset="a.jpg 300w, b.jpg 900w" data-src="a.jpg" alt="x">')
    assert links == [("b.jpg", "data-srcset")]


def test_a_1x1_img_gives_its_lazy_url_not_its_src():
    links, _ = _links('<img src="https://t.example/thumb.jpg" width="1" height="1" data-lazy-src="big.jpg" alt="x">')
    assert links == [("big.jpg", "data-lazy-src")]


def test_an_img_with_only_a_placeholder_keeps_it_for_the_filters_to_drop():
    assert _links(f'<img src="{SPACER}" alt="x">')[0] == [(SPACER, "src")]


def test_an_img_without_any_url_is_counted_not_linked():
    links, found = _links('<img alt="x"><img src="  " alt="y">')
    assert links == [] and found.without_url == 2


def test_picture_takes_its_img_when_the_img_is_real():
    body = '<picture><source srcset="a.webp 1x, b.webp 2x" type="image/webp"><img src="c.jpg" alt="x"></picture>'
    assert _links(body)[0] == [("c.jpg", "src")]


def test_picture_takes_its_first_real_source_when_the_img_is_a_placeholder():
    body = (
        f'<picture><source srcset="{SPACER}"><source data-srcset="s.jpg 400w, l.jpg 1400w">'
        f'<source srcset="other.jpg"><img src="{SPACER}" alt="x"></picture>'
    )
    assert _links(body)[0] == [("l.jpg", "source>data-srcset")]


def test_noscript_images_are_found_and_marked():
    assert _links('<noscript><img src="n.jpg" alt="x"></noscript>')[0] == [("n.jpg", "noscript>src")]


def test_base_href_is_reported_with_the_links():
    _, found = _links('<img src="a.jpg" alt="x">', head='<base href="https://cdn.example/assets/">')
    assert found.base_href == "https://cdn.example/assets/"


def test_images_past_the_cap_are_counted_not_read():
    links, found = _links("".join(f'<img src="{i}.jpg" alt="x">' for i in range(12)), cap=5)
    assert [src for src, _ in links] == [f"{i}.jpg" for i in range(5)] and found.over_cap == 7


@pytest.mark.parametrize(
    "url", ["spacer.gif", "/a/b/blank.gif?v=2", "data:image/png;base64,x", "about:blank", "1x1.png"]
)
def test_placeholders_are_recognised(url):
    assert is_placeholder(url)


@pytest.mark.parametrize("url", ["loading-dock.jpg", "/blanket.jpg", "https://a.example/pixel-art-cat.png", "x.gif"])
def test_real_images_with_placeholder_like_names_are_not_placeholders(url):
    assert not is_placeholder(url)
