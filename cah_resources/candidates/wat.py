"""Reading WAT files: metadata records in, HTML pages with their image links out, damage counted."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, NamedTuple, cast

import msgspec
from fastwarc.warc import WarcRecord, WarcRecordType

from cah_resources.contract import CandidatesStats, Damage
from cah_resources.record_files import resilient_records

# A record larger than this is damage. Common Crawl cuts every fetched page at 1 MiB, so the JSON
# describing one is a few MiB at most; the cap bounds what a lying Content-Length, and decoding one
# record (600k links of a 40 MB record took +0.8 GB), can cost.
MAX_RECORD_BYTES = 16 << 20
IMAGE_LINK_PATH = "IMG@/src"
HTML_MARKER = b'"HTML-Metadata"'


# What a page needs of an HTML record, decoded by msgspec straight into these structs: every other
# field is skipped without building a Python object for it, which halves the cost of parsing an HTML
# record. Fields are optional; a record that does not fit (damage, an odd shape, a link whose text
# is not text) goes through the generic path, which reads any shape and counts what is wrong with it.
class _Link(msgspec.Struct, gc=False):
    path: str | None = None
    url: str | None = None
    alt: str | None = None


class _Head(msgspec.Struct, gc=False):
    Base: str | None = None


class _Html(msgspec.Struct, gc=False):
    Head: _Head | None = None
    Links: list[_Link] | None = None


class _Response(msgspec.Struct, gc=False):
    html: _Html | None = msgspec.field(default=None, name="HTML-Metadata")


class _Payload(msgspec.Struct, gc=False):
    response: _Response | None = msgspec.field(default=None, name="HTTP-Response-Metadata")


class _Header(msgspec.Struct, gc=False):
    target_uri: str | None = msgspec.field(default=None, name="WARC-Target-URI")


class _Envelope(msgspec.Struct, gc=False):
    header: _Header | None = msgspec.field(default=None, name="WARC-Header-Metadata")
    payload: _Payload | None = msgspec.field(default=None, name="Payload-Metadata")


class _Record(msgspec.Struct, gc=False):
    Envelope: _Envelope | None = None


_decode_record = msgspec.json.Decoder(_Record).decode
_decode_any = msgspec.json.Decoder().decode
# A \uD800-\uDBFF escape not followed by a \uDC00-\uDFFF one, or one of those not preceded by the first.
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<![\\]u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
_NOT_DECODED = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)
# msgspec decodes nested JSON by recursion and raises RecursionError past Python's recursion limit
# (about 1,000 levels): a record nested that deep is damage (Damage.TOO_DEEP), like invalid JSON.


class Page(NamedTuple):
    """One HTML response of the crawl: its URL, its ``<base href>`` and its ``IMG@/src`` links."""

    url: str
    base_href: str | None
    images: list[tuple[str, object]]  # (src, alt as found: str, None or junk)


def iter_pages(path: str, stats: CandidatesStats, max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[Page]:
    """Yield every HTML page of a WAT file; count records, pages and every kind of damage in ``stats``.

    Damage does not end the file: after a corrupt gzip member, a record larger than
    ``max_record_bytes`` or one shorter than its Content-Length, reading resumes at the next gzip
    member, so one bad record costs that record only (Common Crawl writes one gzip member per record).
    A record's Content-Length is checked before its body is read, so a lie never inflates the rest
    of the file into memory.
    """
    records = 0  # counted here, added once: this runs for every record of the file

    def read(record: WarcRecord) -> Page | Damage | None:
        nonlocal records
        if record.record_type != WarcRecordType.metadata:
            return None  # kept track of, so a record of another type is no unread stretch
        records += 1
        if record.content_length > max_record_bytes:
            return Damage.TOO_LARGE
        body = record.reader.read()
        if len(body) < record.content_length:
            return Damage.TRUNCATED  # a lying Content-Length reads on through the records behind it
        # Requests, non-HTML responses and WARC metadata (most records of a real WAT) cannot hold
        # image links: they are read but not parsed, so damage is counted on HTML records.
        return _page_of(body, record, stats) if HTML_MARKER in body else None

    try:
        yield from resilient_records(path, read, stats.damage, max_record_bytes)
    finally:
        stats.metadata_records += records


def _page_of(body: bytes, record, stats: CandidatesStats) -> Page | None:
    """The page of one HTML record, or None with its damage counted."""
    # The structs skip the fields a page does not need without checking their bytes, so a record
    # is checked for UTF-8 first, as a whole: damage anywhere in it is damage.
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            stats.damage[Damage.NON_UTF8] += 1
            return None
    try:
        # Any: a missing part is None, and its AttributeError sends the record to the slow path below.
        envelope: Any = _decode_record(body).Envelope
        html = envelope.payload.response.html
        page_url = envelope.header.target_uri
    except RecursionError:
        stats.damage[Damage.TOO_DEEP] += 1
        return None
    except (*_NOT_DECODED, AttributeError):
        return _page_of_any_shape(body, record, stats)
    if html is None or page_url.__class__ is not str or not page_url:
        return _page_of_any_shape(body, record, stats)
    base = html.Head.Base if html.Head is not None else None
    # A comprehension, not a loop: a page carries tens of links, most of them not images.
    images = [(link.url, link.alt) for link in html.Links or () if link.path == IMAGE_LINK_PATH]
    return _page(page_url, base, images, stats)


def _page_of_any_shape(body: bytes, record, stats: CandidatesStats) -> Page | None:
    """The page of an HTML record that does not fit the structs, read as plain JSON; damage counted.

    JSON that msgspec refuses only for a lone surrogate escape (``\\ud800`` with no pair: JSON
    allows it, UTF-8 cannot hold it) is read with it as U+FFFD, counted, so one bad alt text does
    not cost the page's other links.
    """
    try:
        doc = _decode_any(body)
    except _NOT_DECODED:
        repaired, lone = _LONE_SURROGATE.subn(rb"\\ufffd", body)
        try:
            doc = _decode_any(repaired) if lone else None
        except (*_NOT_DECODED, RecursionError):
            doc = None
        if doc is None:
            stats.damage[Damage.INVALID_JSON] += 1
            return None
        stats.damage[Damage.LONE_SURROGATE] += lone
    except RecursionError:
        stats.damage[Damage.TOO_DEEP] += 1
        return None
    try:
        envelope = doc["Envelope"]
        payload = envelope["Payload-Metadata"]
    except (KeyError, TypeError):
        stats.damage[Damage.MISSING_FIELDS] += 1
        return None
    html = _html_metadata(payload)
    if html is None:
        return None
    page_url = _target_uri(envelope, record)
    if not isinstance(page_url, str) or not page_url:
        stats.damage[Damage.MISSING_FIELDS] += 1
        return None
    head, links = html.get("Head"), html.get("Links")
    base = head.get("Base") if isinstance(head, dict) else None
    found = (
        [link for link in links if type(link) is dict and link.get("path") == IMAGE_LINK_PATH]
        if isinstance(links, list)
        else []
    )
    return _page(page_url, base, [(link.get("url"), link.get("alt")) for link in found], stats)


def _page(page_url: str, base: object, links: list[tuple[object, object]], stats: CandidatesStats) -> Page:
    """A page from its ``IMG@/src`` (src, alt) pairs; a src that is not text is a malformed link."""
    images = cast(list[tuple[str, object]], [link for link in links if link[0].__class__ is str])
    if len(images) < len(links):
        stats.damage[Damage.LINK] += len(links) - len(images)
    stats.html_pages += 1
    return Page(page_url, base if base.__class__ is str and base else None, images)


def _html_metadata(payload) -> dict | None:
    if not isinstance(payload, dict):
        return None
    response = payload.get("HTTP-Response-Metadata")
    if not isinstance(response, dict):
        return None
    html = response.get("HTML-Metadata")
    return html if isinstance(html, dict) else None


def _target_uri(envelope: dict, record) -> str | None:
    header = envelope.get("WARC-Header-Metadata")
    if isinstance(header, dict) and isinstance(header.get("WARC-Target-URI"), str):
        return header["WARC-Target-URI"]
    return record.headers.get("WARC-Target-URI")
