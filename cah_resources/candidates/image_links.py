"""Turning a page's image links into candidate (url, text) pairs, or the reason each one is dropped."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

from cah_resources.contract import DropReason

HTTP_SCHEMES = ("http", "https")
# First letters of "data:" and "javascript:" in any case: other links skip lower-casing a prefix.
_DATA_OR_JAVASCRIPT = ("d", "D", "j", "J")
# The reasons the per-link loop appends, bound once: module globals are its cheapest lookup.
_NO_ALT, _ALT_TOO_SHORT, _ALT_TOO_LONG = DropReason.NO_ALT, DropReason.ALT_TOO_SHORT, DropReason.ALT_TOO_LONG
_DATA_URL, _JAVASCRIPT_URL, _DOMAIN_TOO_LONG = (
    DropReason.DATA_URL,
    DropReason.JAVASCRIPT_URL,
    DropReason.DOMAIN_TOO_LONG,
)
_URL_TOO_LONG = DropReason.URL_TOO_LONG


@dataclass(frozen=True)
class CandidateFilters:
    """Crawling@Home's filters; every drop is counted under its reason (DropReason, or the extension)."""

    min_alt_length: int = 5
    """Alt text shorter than this, after whitespace is normalized, is dropped as alt_too_short."""
    max_alt_length: int = 2000
    """Alt text longer than this is cut to it, or dropped, as long_alt says."""
    long_alt: str = "truncate"
    """truncate: over-long alt text is cut to max_alt_length (its start still describes the image); drop:
    the link is discarded as alt_too_long."""
    drop_extensions: tuple[str, ...] = (".svg", ".gif")
    """Image URLs whose path ends in one of these (any case) are dropped, counted under the extension."""
    max_domain_length: int = 60
    """Hosts longer than this many characters are dropped as domain_too_long."""
    blocked_url_lists: tuple[str, ...] = ()
    """URL hash lists (SHA-256 or MD5 hex of the URL's UTF-8 bytes, one per line; paths or fsspec URLs,
    as Re-LAION publishes them): a listed URL is dropped as blocklisted_url."""
    max_url_length: int = 2048
    """An image URL over this many characters, as written or resolved, is dropped as url_too_long
    before any work on it."""
    max_raw_alt_length: int = 20_000
    """An alt over this many characters as found, before whitespace is normalized, is dropped as
    alt_too_long whatever long_alt says: it is an attack or junk, not a description."""
    max_links_per_page: int = 5_000
    """A page's image links past its first this many are dropped as too_many_links."""

    def __post_init__(self) -> None:
        if self.long_alt not in ("truncate", "drop"):
            raise ValueError(f"long_alt must be 'truncate' or 'drop', not {self.long_alt!r}")
        object.__setattr__(self, "drop_extensions", tuple(e.lower() for e in self.drop_extensions))


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


class PageLinks(NamedTuple):
    """What ``check_image_links`` makes of one page's image links."""

    kept: list[tuple[str, str]]  # (url, text) of every usable link, in page order
    dropped: list[str]  # the drop reason of every other link
    truncated: list[tuple[str, str]]  # the kept pairs whose text was cut to max_alt_length


def check_image_link(src: str, alt: object, base: str, filters: CandidateFilters) -> tuple[str, str, bool] | str:
    """``(url, text, truncated)`` for a usable link, else the drop reason as a short string."""
    checked = check_image_links([(src, alt)], base, filters)
    if checked.dropped:
        return checked.dropped[0]
    return (*checked.kept[0], bool(checked.truncated))


def check_image_links(images: Iterable[tuple[str, object]], base: str, filters: CandidateFilters) -> PageLinks:  # noqa: C901 - one branch per drop reason, in the per-link hot loop
    """``check_image_link`` of every ``(src, alt)`` of one page, sorted into kept pairs and drop reasons.

    One loop per page rather than one call per link: this is the stage's innermost loop, and its
    results go into plain lists that the caller adds up in bulk.
    """
    plain: _PlainBase | None = None
    plain_known = False  # the base is parsed at the page's first relative link, if it has one
    min_alt, max_alt = filters.min_alt_length, filters.max_alt_length
    extensions, max_domain = tuple(filters.drop_extensions), filters.max_domain_length
    kept: list[tuple[str, str]] = []
    dropped: list[str] = []
    truncated: list[tuple[str, str]] = []
    max_url, max_raw_alt = filters.max_url_length, filters.max_raw_alt_length
    images = images if isinstance(images, list) else list(images)
    if len(images) > filters.max_links_per_page:
        dropped += [DropReason.TOO_MANY_LINKS] * (len(images) - filters.max_links_per_page)
        images = images[: filters.max_links_per_page]
    for src, found_alt in images:
        if type(found_alt) is not str:
            dropped.append(_NO_ALT)
            continue
        if len(found_alt) > max_raw_alt:  # before normalizing: splitting 60 MB of words costs a GB
            dropped.append(_ALT_TOO_LONG)
            continue
        if len(src) > max_url:
            dropped.append(_URL_TOO_LONG)
            continue
        alt = found_alt  # text from here on
        # Every whitespace character but the ASCII space is a control or separator, which
        # isprintable() refuses: a printable alt without doubled or edge spaces is normalized
        # already, and most are, which spares the split and join.
        if not alt.isprintable() or "  " in alt or alt.startswith(" ") or alt.endswith(" "):
            alt = normalize_alt(alt)
        if len(alt) < min_alt:
            dropped.append(_ALT_TOO_SHORT)
            continue
        src = src.strip()
        if src.startswith(_DATA_OR_JAVASCRIPT):
            head = src[:11].lower()
            if head.startswith("data:"):
                dropped.append(_DATA_URL)
                continue
            if head.startswith("javascript:"):
                dropped.append(_JAVASCRIPT_URL)
                continue
        if src.startswith(_ABSOLUTE):
            resolved = _split_absolute(src)
        else:
            if not plain_known:
                plain, plain_known = _plain_base(base), True
            resolved = _resolve_relative(src, plain) if plain is not None else None
        if resolved is None:
            fallback = _resolve_any_url(src, base)
            if isinstance(fallback, str):  # a DropReason
                dropped.append(fallback)
                continue
            resolved = fallback
        url, host, path = resolved
        if len(url) > max_url:  # a short relative src on a long base
            dropped.append(_URL_TOO_LONG)
            continue
        path = path.lower()
        if path.endswith(extensions):
            dropped.append(_extension_of(path, extensions))
            continue
        if len(host) > max_domain:
            dropped.append(_DOMAIN_TOO_LONG)
            continue
        if len(alt) > max_alt:
            if filters.long_alt == "drop":
                dropped.append(_ALT_TOO_LONG)
                continue
            alt = alt[:max_alt].rstrip()
            truncated.append((url, alt))
        kept.append((url, alt))
    return PageLinks(kept, dropped, truncated)


def _extension_of(path: str, extensions: tuple[str, ...]) -> str:
    """The drop reason of a path ending in one of ``extensions``: that extension without its dot."""
    for extension in extensions:
        if path.endswith(extension):
            return extension.lstrip(".")
    raise ValueError(f"{path!r} ends in none of {extensions}")


def _resolve_any_url(src: str, base: str) -> tuple[str, str, str] | str:
    """``(url, host, path)`` of an http(s) image URL, through urllib; else the drop reason."""
    parts = resolve_image_url(src, base)
    if parts is None:
        return DropReason.BAD_URL
    if parts.scheme not in HTTP_SCHEMES:
        return DropReason.NOT_HTTP
    if not parts.netloc:
        return DropReason.BAD_URL
    return urlunsplit(parts), parts.hostname or "", parts.path


# The fast path below gives, for the common shapes of ``src`` (absolute http(s), ``//host/...``,
# ``/path``, ``path``) against a plain base, exactly what ``resolve_image_url`` + ``urlunsplit``
# give, by slicing strings the way urljoin/urlsplit do instead of calling them (they were most of
# the stage's time). Whatever urllib would do more with (params, tab/newline removal, userinfo,
# ports, IPv6, non-ASCII hosts, a colon that may be a scheme) returns None: the general path.


_ABSOLUTE = ("https://", "http://")


class _PlainBase(NamedTuple):
    scheme: str
    origin: str  # "scheme://host", host lower-cased
    host: str
    directory: str  # the base path up to its last slash: "/" or "/a/b/"


def _split_absolute(src: str) -> tuple[str, str, str] | None:
    """``(url, host, path)`` of a plain absolute ``http(s)://`` src (lower-case scheme), else None."""
    # Not printable covers tab, CR and LF, which urllib deletes anywhere in a URL.
    if not src.isprintable():
        return None
    if src[4] == "s":
        return _split_plain("https", src, 8)
    return _split_plain("http", src, 7)


def _resolve_relative(src: str, plain: _PlainBase) -> tuple[str, str, str] | None:
    """``(url, host, path)`` of a plain ``//host/...``, ``/path`` or ``path`` src, else None."""
    if not src.isprintable():
        return None
    if src.startswith("//"):
        return _split_plain(plain.scheme, plain.scheme + ":" + src, len(plain.scheme) + 3)
    path, query = _path_and_query(src)
    if not path or ":" in path or ";" in path:
        return None  # no path keeps the base's; a colon may start a scheme; params are urllib's
    if "/." not in path and "//" not in path and not path.startswith("."):
        # No dot segments and no empty ones: joining is concatenating.
        path = path if path[0] == "/" else plain.directory + path
    else:
        path = _join_path(plain.directory, path)
    return plain.origin + path + query, plain.host, path


def _plain_base(base: str) -> _PlainBase | None:
    """What relative links need of a plain http(s) base URL, else None."""
    if not base.startswith(_ABSOLUTE):
        return None
    split = _split_absolute(base)
    if split is None:
        return None
    _, host, path = split
    # The last segment is a file, or "" after a trailing slash: not part of the directory.
    directory = path[: path.rfind("/") + 1] or "/"
    if "//" in directory or "/./" in directory or "/../" in directory:
        return None  # empty or dot segments: urllib's rules, not concatenation
    scheme = "https" if base[4] == "s" else "http"
    return _PlainBase(scheme, f"{scheme}://{host}", host, directory)


def _join_path(directory: str, path: str) -> str:
    """``path`` joined to a base directory, dot segments removed, exactly as urljoin does."""
    if path[0] == "/":
        segments = path.split("/")
    else:
        segments = [*directory.split("/")[:-1], *path.split("/")]
        segments[1:-1] = filter(None, segments[1:-1])
    resolved: list[str] = []
    for segment in segments:
        if segment == "..":
            if resolved:
                resolved.pop()
        elif segment != ".":
            resolved.append(segment)
    if segments[-1] in (".", ".."):
        resolved.append("")
    joined = "/".join(resolved) or "/"
    return joined if joined[0] == "/" else "/" + joined


def _split_plain(scheme: str, url: str, start) -> tuple[str, str, str] | None:
    """``(url, host, path)`` of ``url`` = ``scheme://`` + the rest from index ``start`` on, when its host
    part is plain, else None. An URL that is already normal (lower-case host, no fragment, no empty
    query) is returned as it is: most are, and that spares building it again."""
    fragment = url.find("#", start)
    rest = url[start:] if fragment < 0 else url[start:fragment]
    query_at = rest.find("?")
    head = rest if query_at < 0 else rest[:query_at]
    slash = head.find("/")
    host, path = (head, "") if slash < 0 else (head[:slash], head[slash:])
    if not host or not host.isascii() or ";" in path:
        return None
    if "@" in host or ":" in host or "[" in host or "]" in host or "%" in host:
        return None
    lower = host.lower()
    if fragment < 0 and lower == host and not rest.endswith("?"):
        return url, host, path
    query = rest[query_at + 1 :] if query_at >= 0 else ""
    return (f"{scheme}://{lower}{path}?{query}" if query else f"{scheme}://{lower}{path}"), lower, path


def _path_and_query(tail: str) -> tuple[str, str]:
    """Path and ``?query`` (empty when the query is) of what follows the host; no fragment."""
    path, _, query = tail.partition("#")[0].partition("?")
    return path, "?" + query if query else ""
