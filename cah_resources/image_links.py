"""Turning a page's image links into candidate (url, text) pairs, or the reason each one is dropped."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

HTTP_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class CandidateFilters:
    """Crawling@Home's filters; every drop is counted under its reason (the ``drop_*`` keys)."""

    min_alt_length: int = 5
    max_alt_length: int = 2000
    # Over-long alt text is cut to max_alt_length (its start still describes the image);
    # "drop" discards the link instead.
    long_alt: str = "truncate"
    drop_extensions: tuple[str, ...] = (".svg", ".gif")
    max_domain_length: int = 60

    def __post_init__(self) -> None:
        if self.long_alt not in ("truncate", "drop"):
            raise ValueError(f"long_alt must be 'truncate' or 'drop', not {self.long_alt!r}")


def normalize_alt(alt: str) -> str:
    """Alt text with whitespace runs (newlines, tabs, nbsp) collapsed to one space and trimmed."""
    return " ".join(alt.split())


def base_url_of(page_url: str, base_href: str | None) -> str:
    """The URL relative links resolve against: ``<base href>`` (itself relative to the page) or the page."""
    if not base_href:
        return page_url
    try:
        return urljoin(page_url, base_href.strip())
    except ValueError:
        return page_url


def resolve_image_url(src: str, base: str) -> SplitResult | None:
    """Absolute, normalized form of an ``<img src>`` (scheme and host lower-case, no fragment)."""
    try:
        joined = urlsplit(urljoin(base, src.strip()))
        host = joined.hostname
        port = joined.port
    except ValueError:
        return None
    if not host:
        return joined._replace(scheme=joined.scheme.lower(), netloc="", fragment="")
    netloc = host if ":" not in host else f"[{host}]"
    if port is not None:
        netloc = f"{netloc}:{port}"
    if joined.username is not None:
        userinfo = joined.username + (f":{joined.password}" if joined.password is not None else "")
        netloc = f"{userinfo}@{netloc}"
    return joined._replace(scheme=joined.scheme.lower(), netloc=netloc, fragment="")


def check_image_link(src: str, alt: object, base: str, filters: CandidateFilters) -> tuple[str, str, bool] | str:
    """``(url, text, truncated)`` for a usable link, else the drop reason as a short string."""
    if not isinstance(alt, str):
        return "no_alt"
    text = normalize_alt(alt)
    if len(text) < filters.min_alt_length:
        return "alt_too_short"
    head = src.lstrip()[:11].lower()
    if head.startswith("data:"):
        return "data_url"
    if head.startswith("javascript:"):
        return "javascript_url"
    parts = resolve_image_url(src, base)
    if parts is None:
        return "bad_url"
    if parts.scheme not in HTTP_SCHEMES:
        return "not_http"
    if not parts.netloc:
        return "bad_url"
    path = parts.path.lower()
    for extension in filters.drop_extensions:
        if path.endswith(extension):
            return extension.lstrip(".")
    if len(parts.hostname or "") > filters.max_domain_length:
        return "domain_too_long"
    truncated = False
    if len(text) > filters.max_alt_length:
        if filters.long_alt == "drop":
            return "alt_too_long"
        text = text[: filters.max_alt_length].rstrip()
        truncated = True
    return urlunsplit(parts), text, truncated
