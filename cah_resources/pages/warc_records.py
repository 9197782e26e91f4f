"""Reading WARC files: response records in, 2xx HTML documents out, pre-filter drops and damage counted."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from typing import NamedTuple

from fastwarc.warc import WarcRecord, WarcRecordType

from cah_resources.contract import Damage, PageDropReason, PagesStats
from cah_resources.record_files import resilient_records

# A WARC record over this is damage (resumed past, as in the WAT reader); an HTML page under it but over
# the page cap is a page drop (too_long), skipped unread. A WARC holds responses as fetched, so its cap
# is the WAT reader's JSON cap's elder: Common Crawl cuts pages at 1 MiB, other crawlers keep more.
MAX_WARC_RECORD_BYTES = 64 << 20
HTML_TYPES = ("text/html", "application/xhtml+xml")
# Content types that say nothing, so the body decides (as a browser sniffs).
UNSPECIFIC_TYPES = ("", "application/octet-stream", "text/plain", "unk", "unknown/unknown")
HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<!--")
SNIFF_BYTES = 1024


class HtmlRecord(NamedTuple):
    """One 2xx HTML response of a WARC file, undecoded, with where its record sits."""

    url: str
    record_id: str
    date: str
    offset: int  # byte offset of the record in the file (its gzip member's first byte)
    body: bytes
    charset: str | None  # declared in the HTTP Content-Type, if at all


def iter_html_records(
    path: str,
    stats: PagesStats,
    starts: list[int],
    max_html_bytes: int,
    max_record_bytes: int = MAX_WARC_RECORD_BYTES,
) -> Iterator[HtmlRecord]:
    """Yield every 2xx HTML response of a WARC file; count the others in ``stats.drops`` per
    PageDropReason and damage in ``stats.damage``; append every record's offset to ``starts``
    (so a record's stored length is the distance to the next one).

    An HTML body over ``max_html_bytes`` is skipped unread (``too_long``). Damage does not end the
    file, as in the WAT reader: after a corrupt gzip member, a record over ``max_record_bytes``, a
    body shorter than its Content-Length, or a record skipped unread whose Content-Length ran over
    the records behind it to the end, reading resumes at the next gzip member (Common Crawl writes
    one per record), so one bad record costs that record only.
    """
    records = 0

    def read(record: WarcRecord) -> HtmlRecord | Damage | None:
        nonlocal records
        records += 1
        if record.content_length > max_record_bytes:
            return Damage.TOO_LARGE
        if record.record_type != WarcRecordType.response:
            return None
        stats.responses += 1
        found = _html_of(record, stats, max_html_bytes)
        return Damage.TRUNCATED if found is _TRUNCATED else found

    try:
        yield from resilient_records(path, read, stats.damage, max_record_bytes, starts)
    finally:
        stats.warc_records += records


_TRUNCATED = HtmlRecord("", "", "", -1, b"", None)


def _html_of(record, stats: PagesStats, max_html_bytes: int) -> HtmlRecord | None:
    """The record as an HtmlRecord, None with its drop reason counted, or _TRUNCATED."""
    if not record.is_http:
        stats.drops[PageDropReason.NOT_HTTP] += 1
        return None
    try:
        record.parse_http()
    except Exception:  # fastwarc raises its own parse errors for garbage headers: not an HTTP message
        stats.drops[PageDropReason.NOT_HTTP] += 1
        return None
    status = record.http_headers.status_code
    if status is None or not 200 <= status < 300:
        stats.drops[PageDropReason.NOT_2XX] += 1
        return None
    content_type = (record.http_content_type or "").strip().lower()
    if content_type not in HTML_TYPES and content_type not in UNSPECIFIC_TYPES:
        stats.drops[PageDropReason.NOT_HTML] += 1
        return None
    if record.content_length > max_html_bytes:
        stats.drops[PageDropReason.TOO_LONG] += 1
        return None
    body = record.reader.read()
    if len(body) < record.content_length:
        return _TRUNCATED
    if content_type not in HTML_TYPES and not looks_like_html(body):
        stats.drops[PageDropReason.NOT_HTML] += 1
        return None
    headers = record.headers
    return HtmlRecord(
        headers.get("WARC-Target-URI") or "",
        record.record_id or "",
        headers.get("WARC-Date") or "",
        record.stream_pos,
        body,
        record.http_charset,
    )


def looks_like_html(body: bytes) -> bool:
    """Whether a body of no declared type starts as HTML does (after a BOM and whitespace)."""
    head = body[:SNIFF_BYTES].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(HTML_STARTS)


def record_lengths(offsets: list[int], starts: list[int], file_size: int) -> list[int]:
    """Stored length of each record at ``offsets``: up to the next record start, or the end of the file."""
    ordered = sorted(set(starts))
    lengths = []
    for offset in offsets:
        i = bisect_right(ordered, offset)
        end = ordered[i] if i < len(ordered) else file_size
        lengths.append(end - offset)
    return lengths
