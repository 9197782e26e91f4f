"""Turning <img src> + alt into candidates: URL resolution and every filter's drop reason."""

import random

import pytest

from cah_resources.candidates import image_links
from cah_resources.candidates.image_links import CandidateFilters, base_url_of


@pytest.fixture
def links():
    """The module whose ``check_image_link`` a test drives."""
    return image_links


PAGE = "https://www.site.org/blog/post.html"
RULES = CandidateFilters()
ALT = "a red bicycle leaning on a wall"


@pytest.mark.parametrize(
    "src, base_href, expected",
    [
        ("https://img.site.org/a.jpg", None, "https://img.site.org/a.jpg"),
        ("img/a.jpg", None, "https://www.site.org/blog/img/a.jpg"),
        ("../a.png", None, "https://www.site.org/a.png"),
        ("/static/a.webp", None, "https://www.site.org/static/a.webp"),
        ("//cdn.site.net/a.jpg", None, "https://cdn.site.net/a.jpg"),
        ("img/a.jpg", "https://static.site.com/assets/", "https://static.site.com/assets/img/a.jpg"),
        ("img/a.jpg", "/v2/", "https://www.site.org/v2/img/a.jpg"),
        ("HTTP://IMG.Site.ORG/A.jpg", None, "http://img.site.org/A.jpg"),
        ("https://img.site.org/a.jpg#frag", None, "https://img.site.org/a.jpg"),
        ("  https://img.site.org/a.jpg  ", None, "https://img.site.org/a.jpg"),
        ("https://img.site.org:8443/a.jpg?w=300", None, "https://img.site.org:8443/a.jpg?w=300"),
    ],
)
def test_image_urls_resolve_against_base_href_or_page(src, base_href, expected, links):
    url, text, truncated = links.check_image_link(src, ALT, base_url_of(PAGE, base_href), RULES)
    assert (url, text, truncated) == (expected, ALT, False)


@pytest.mark.parametrize(
    "src, alt, reason",
    [
        ("a.jpg", None, "no_alt"),
        ("a.jpg", 42, "no_alt"),
        ("a.jpg", "logo", "alt_too_short"),
        ("a.jpg", "  \n\t ", "alt_too_short"),
        ("data:image/png;base64,AAAA", ALT, "data_url"),
        (" DATA:image/png;base64,AAAA", ALT, "data_url"),
        ("javascript:void(0)", ALT, "javascript_url"),
        ("JavaScript:alert(1)", ALT, "javascript_url"),
        ("https://img.site.org/a.svg", ALT, "svg"),
        ("https://img.site.org/a.GIF?x=1", ALT, "gif"),
        ("ftp://files.site.org/a.jpg", ALT, "not_http"),
        ("mailto:someone@site.org", ALT, "not_http"),
        ("http://[::1/a.jpg", ALT, "bad_url"),
        ("http://:80/a.jpg", ALT, "bad_url"),
        ("https://" + "x" * 58 + ".com/a.jpg", ALT, "domain_too_long"),
    ],
)
def test_unusable_links_are_dropped_with_their_reason(src, alt, reason, links):
    assert links.check_image_link(src, alt, PAGE, RULES) == reason


def test_alt_text_whitespace_is_normalized(links):
    _, text, _ = links.check_image_link("a.jpg", "  a red\n\tbicycle\u00a0on a wall ", PAGE, RULES)
    assert text == "a red bicycle on a wall"


def test_long_alt_is_truncated_by_default_and_dropped_on_request(links):
    alt = "word " * 1000
    _url, text, truncated = links.check_image_link("a.jpg", alt, PAGE, RULES)
    assert truncated and len(text) <= 2000 and text.startswith("word word")
    assert links.check_image_link("a.jpg", alt, PAGE, CandidateFilters(long_alt="drop")) == "alt_too_long"


def test_filters_are_configurable(links):
    rules = CandidateFilters(min_alt_length=2, drop_extensions=(".png",), max_domain_length=10)
    assert links.check_image_link("https://a.io/x.gif", "ok", PAGE, rules)[0] == "https://a.io/x.gif"
    assert links.check_image_link("https://a.io/x.png", "ok", PAGE, rules) == "png"
    assert links.check_image_link("https://abcdefgh.io/x.jpg", "ok", PAGE, rules) == "domain_too_long"


def test_unknown_long_alt_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="long_alt must be"):
        CandidateFilters(long_alt="shorten")


def test_links_come_out_the_same_with_and_without_the_fast_url_path(monkeypatch, links):
    # Links built from the pieces that make URL resolution subtle, checked as the stage checks
    # them, then again by the Python code with its string-slicing path switched off, so that
    # urllib resolves all.
    pieces = [
        "http://",
        "https://",
        "HTTP://",
        "//",
        "/",
        "./",
        "../",
        "a",
        "B",
        "?",
        "#",
        ";",
        ":",
        "@",
        "%20",
        "[",
        "]",
        ".",
        "..",
        " ",
        "\t",
        "x.jpg",
        "Y.GIF",
        "host.COM",
        "80",
        "?q=1",
        "#f",
        "é",
        "\u00a0",
    ]
    bases = [
        PAGE,
        "http://Site.org",
        "https://h.io/a/b/",
        "https://h.io/a/./b",
        "ftp://x/y",
        "https://h.io?x",
        "https://H.io:8080/x/",
        "https://h.io/a//b/c",
        "http://h.io/#frag",
        "https://h.io/a/b?q#f",
    ]
    rng = random.Random(7)
    cases = [("".join(rng.choice(pieces) for _ in range(rng.randint(1, 7))), rng.choice(bases)) for _ in range(20_000)]
    fast = [links.check_image_link(src, ALT, base, RULES) for src, base in cases]
    assert sum(isinstance(r, tuple) for r in fast) > 5_000

    slow = image_links  # the general path alone: the shortcuts patched out (undone after the test)
    monkeypatch.setattr(slow, "_split_absolute", lambda src: None)
    monkeypatch.setattr(slow, "_resolve_relative", lambda src, plain: None)
    assert [slow.check_image_link(src, ALT, base, RULES) for src, base in cases] == fast


def test_an_alt_is_used_as_it_is_only_when_it_is_already_normalized(links):
    for alt in [
        "a red bicycle",
        "a  red bicycle",
        " a red bicycle",
        "a red bicycle ",
        "a red\u3000bicycle",
        "a red\u2028bicycle",
    ]:
        _, text, _ = links.check_image_link("a.jpg", alt, PAGE, RULES)
        assert text == " ".join(alt.split())


def test_oversized_urls_and_alts_are_dropped_with_their_reason(links):
    long_src = "https://img.site.org/" + "a" * 2100 + ".jpg"
    assert links.check_image_link(long_src, ALT, PAGE, RULES) == "url_too_long"
    long_base = "https://www.site.org/" + "d/" * 1020  # a short relative src that resolves past the cap
    assert links.check_image_link("img/a.jpg", ALT, long_base, RULES) == "url_too_long"
    assert links.check_image_link("a.jpg", "word " * 5_000, PAGE, RULES) == "alt_too_long"
    assert links.check_image_link("https://img.site.org/" + "a" * 2000 + ".jpg", ALT, PAGE, RULES)[1] == ALT


def test_a_pages_links_past_the_cap_are_dropped_as_too_many_links(links):
    images = [(f"/{i}.jpg", ALT) for i in range(5_010)]
    checked = links.check_image_links(images, PAGE, RULES)
    assert len(checked.kept) == 5_000 and checked.dropped == ["too_many_links"] * 10
    assert checked.kept[-1][0] == "https://www.site.org/4999.jpg"
