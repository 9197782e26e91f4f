"""WARC-format files (WARC and WAT) read record by record, resuming past damage.

Common Crawl writes one gzip member per record, so one bad record need cost that record only: after
a corrupt gzip member, a record its reader calls damaged, or a record skipped unread whose
Content-Length ran over the records behind it, reading resumes at the next record's first byte.
"""

from __future__ import annotations

import os
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import nullcontext
from typing import TypeVar

from fastwarc.warc import ArchiveIterator, WarcRecord

from cah_resources.vocabulary import Damage

GZIP_MAGIC = b"\x1f\x8b\x08"
WARC_MAGIC = b"WARC/1."
READ_CHUNK = 1 << 20
UNCOMPRESSED_START = re.compile(rb"\r\n\r\nWARC/1\.[01]\r\n")

T = TypeVar("T")


def resilient_records(
    path: str,
    read: Callable[[WarcRecord], T | Damage | None],
    damage: Counter[str],
    max_record_bytes: int,
    starts: list[int] | None = None,
) -> Iterator[T]:
    """Yield what ``read`` makes of each record of a WARC-format file (None: nothing), and go on past damage.

    ``read`` returns a Damage for a record it finds damaged (too large, a body shorter than its
    Content-Length): counted in ``damage``, and reading resumes at the next record. A corrupt gzip
    stretch counts once however many restarts it takes; a file that ends quietly is checked for what
    fastwarc passed over (a cut last member, trailing bytes, records swallowed by a lying
    Content-Length). ``starts`` gets the offset of every record read or resumed at, so a record's
    stored length is the distance to the next one. A member's inflated size over ``max_record_bytes``
    counts as cut.
    """
    marker = record_marker(path)
    start: int | None = 0
    recovering = False
    while start is not None:
        last_good = start
        try:
            with opened_at(path, start) as source:
                for record in ArchiveIterator(source, parse_http=False):
                    last_good, recovering = record.stream_pos, False
                    if starts is not None:
                        starts.append(record.stream_pos)
                    found = read(record)
                    if found is None:
                        continue
                    if isinstance(found, Damage):
                        damage[found] += 1
                        break
                    yield found
                else:
                    start = _after_quiet_end(path, last_good, marker, damage, max_record_bytes)
                    if start is not None and starts is not None:
                        starts.append(start)
                    continue
        except OSError:
            damage[Damage.CORRUPT_GZIP] += not recovering  # restarts before any record: one stretch
            recovering = True
        start = next_record_offset(path, last_good + 1, marker)
        if start is not None and starts is not None:
            starts.append(start)  # a damaged record ends where reading resumes


def _after_quiet_end(path: str, last: int, marker: bytes, damage: Counter[str], cap: int) -> int | None:
    """Where to resume after fastwarc ended without an error, having read the record at ``last``.

    None at the end of an intact file. A record starting right where the last one read ends was
    swallowed by a Content-Length that lied (``malformed_truncated``), one further on sits behind
    damage fastwarc stopped at quietly (``corrupt_gzip``); a gzip member that never ends, or a last
    member cut short, is ``corrupt_gzip_truncated``; other trailing bytes ``corrupt_trailing_bytes``.
    """
    if marker != GZIP_MAGIC:
        resume = next_record_offset(path, last + 1, marker)
        damage[Damage.TRUNCATED] += resume is not None
        return resume
    end = _member_end(path, last, cap)
    if end is None:
        damage[Damage.CORRUPT_GZIP_TRUNCATED] += 1
        return None
    resume = next_record_offset(path, end, marker)
    if resume is not None:
        damage[Damage.TRUNCATED if resume == end else Damage.CORRUPT_GZIP] += 1
        return resume
    if os.path.getsize(path) > end:
        with open(path, "rb") as handle:
            handle.seek(end)
            cut = handle.read(len(GZIP_MAGIC)) == GZIP_MAGIC  # a member's start, the rest of it missing
        damage[Damage.CORRUPT_GZIP_TRUNCATED if cut else Damage.CORRUPT_TRAILING_BYTES] += 1
    return None


def _member_end(path: str, offset: int, cap: int) -> int | None:
    """The offset just past the gzip member at ``offset``, or None if it is cut short or does not inflate.

    Inflated output is thrown away as it comes; a member inflating past ``cap`` counts as cut.
    """
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    inflated, consumed = 0, 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        while not inflater.eof and (chunk := handle.read(READ_CHUNK)):
            try:
                inflated += len(inflater.decompress(chunk, cap))
                while inflater.unconsumed_tail and not inflater.eof and inflated <= cap:
                    inflated += len(inflater.decompress(inflater.unconsumed_tail, cap))
            except zlib.error:
                return None
            if inflated > cap:
                return None
            consumed += len(chunk)
    if not inflater.eof:
        return None
    return offset + consumed - len(inflater.unused_data)


def opened_at(path: str, start: int) -> ContextManager:
    """What fastwarc reads from byte ``start`` on. From the start, the path: fastwarc opens the
    file itself, 1.5-2x faster than through a Python file object, which only resuming needs."""
    if start == 0:
        return nullcontext(path)
    handle = open(path, "rb")  # noqa: SIM115 - returned open, the caller's `with` closes it
    handle.seek(start)
    return handle


def record_marker(path: str) -> bytes:
    """The bytes a record starts with: its gzip member's header, or in an uncompressed file its version line."""
    with open(path, "rb") as handle:
        return WARC_MAGIC if handle.read(len(WARC_MAGIC)) == WARC_MAGIC else GZIP_MAGIC


def next_record_offset(path: str, offset: int, marker: bytes) -> int | None:
    """Offset of the next record (a gzip member, or an uncompressed record's version line) at or
    after ``offset``, or None. A gzip header counts only if its member inflates to a WARC record's
    start: stray headers, and the magic bytes by chance in compressed data, are passed over."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        carry = b""
        position = offset
        while chunk := handle.read(READ_CHUNK):
            window = carry + chunk
            found = window.find(marker)
            while found >= 0:
                at = position - len(carry) + found
                if _starts_a_record(path, at, marker):
                    return at
                found = window.find(marker, found + 1)
            carry = window[-(len(marker) - 1) :]
            position += len(chunk)
    return None


def _starts_a_record(path: str, offset: int, marker: bytes) -> bool:
    """True when the bytes at ``offset`` begin a WARC record: a gzip member inflating to a version
    line, or in an uncompressed file a version line right after the previous record's blank line
    (a record's body may quote one anywhere else)."""
    with open(path, "rb") as handle:
        if marker != GZIP_MAGIC:
            handle.seek(max(offset - 4, 0))
            return bool(UNCOMPRESSED_START.match(handle.read(16))) if offset >= 4 else offset == 0
        handle.seek(offset)
        head = handle.read(64 * 1024)
    try:
        start = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, len(WARC_MAGIC))
    except zlib.error:
        return False
    return start == WARC_MAGIC
