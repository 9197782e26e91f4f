"""Reading a response body within byte limits: Content-Encoding decoded here, in bounded steps, every byte counted."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from cah_resources.contract import DownloadStatus

try:
    import brotli
except ImportError:  # brotli is an aiohttp speedup; without it "br" is neither asked for nor decoded
    brotli = None

DECODE_ERRORS = (zlib.error, brotli.error) if brotli is not None else (zlib.error,)
# Decoded output is produced at most this much at a time, so a bomb is stopped one step past the cap.
DECODE_STEP = 1 << 16
# Each gzip member starts a decompressor on a copy of the chunk's rest: a body of empty members (20
# bytes each, inflating to nothing, so no byte cap sees them) costs CPU quadratic in the chunk size
# (aiohttp's own decoder had the same flaw, GHSA-h4cc-hm5h-fmm9). Real bodies have one or two.
MAX_GZIP_MEMBERS = 64
ENCODINGS = ("gzip", "deflate", "br") if brotli is not None else ("gzip", "deflate")
# Only what read_body decodes is asked for; aiohttp's own decoding is off (it inflated whole
# chunks at once before 3.13.3, so a bomb's size was seen only after it sat in memory).
REQUEST_OPTIONS: dict[str, Any] = {"auto_decompress": False, "headers": {"Accept-Encoding": ", ".join(ENCODINGS)}}


class BodyBudget(Protocol):
    """Memory the caller lends one download for its body (the shard task's backlog claim)."""

    async def reserve(self, total: int) -> None:
        """Return once ``total`` bytes of body may be held; may wait for other bodies to be let go."""


# The budget of the download running in this asyncio task, if its caller set one: the downloader's
# fetch() knows nothing of shard backlogs, and the body reader finds it here.
body_budget: ContextVar[BodyBudget | None] = ContextVar("body_budget", default=None)


@dataclass(frozen=True)
class Body:
    """What reading a body gave: ``data`` exactly when ``status`` is 'fetched'."""

    status: str
    data: bytes | None = None
    message: str | None = None


class _Zlib:
    """gzip (one or more members) or deflate (zlib-wrapped or raw, both seen on the web)."""

    def __init__(self, coding: str) -> None:
        self.gzip = coding == "gzip"
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if self.gzip else None
        self._head = b""
        self._ended = False
        self._members = 1

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._ended:
            return
        if self._inflater is None:  # deflate: the first two bytes say whether a zlib header wraps it
            data, self._head = self._head + data, b""
            if len(data) < 2:
                self._head = data
                return
            wrapped = data[0] & 0x0F == 8 and int.from_bytes(data[:2], "big") % 31 == 0
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        while True:
            out = self._inflater.decompress(data, DECODE_STEP)
            data = self._inflater.unconsumed_tail
            if out:
                yield out
            if self._inflater.eof:
                data = self._inflater.unused_data  # every byte past the end; unconsumed_tail repeats some
                if not (self.gzip and data.startswith(b"\x1f\x8b")):
                    # Bytes after the end that start no gzip member are ignored, and not kept.
                    self._ended = bool(data) and not (self.gzip and data == b"\x1f")
                    return
                self._members += 1
                if self._members > MAX_GZIP_MEMBERS:
                    raise zlib.error(f"more than {MAX_GZIP_MEMBERS} gzip members")
                self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next gzip member
            elif not data and len(out) < DECODE_STEP:
                return


class _Brotli:
    def __init__(self) -> None:
        self._decompressor = brotli.Decompressor()

    def feed(self, data: bytes) -> Iterator[bytes]:
        out = self._decompressor.process(data, output_buffer_limit=DECODE_STEP)
        # Output held back by the limit comes with the next calls, even once more input could be taken.
        while out:
            yield out
            if self._decompressor.is_finished():
                return
            out = self._decompressor.process(b"", output_buffer_limit=DECODE_STEP)


class _Identity:
    def feed(self, data: bytes) -> Iterator[bytes]:
        yield data


def _decoder(content_encoding: str) -> _Zlib | _Brotli | _Identity | None:
    coding = content_encoding.strip().lower()
    if coding in ("", "identity"):
        return _Identity()
    if coding in ("gzip", "x-gzip", "deflate"):
        return _Zlib("gzip" if coding == "x-gzip" else coding)
    if coding == "br" and brotli is not None:
        return _Brotli()
    return None  # unknown, or stacked ("gzip, br"): nothing we asked for


async def read_body(response: aiohttp.ClientResponse, max_bytes: int, head_only: bool = False) -> Body:
    """The decoded body of ``response``, or why not: 'too_large' once more than ``max_bytes`` are
    decoded (or declared), 'unsupported_encoding', 'bad_encoding'. Network errors propagate.
    ``head_only`` keeps the first ``max_bytes`` of a longer body instead (a robots.txt is parsed that far).

    Every decoded byte is counted against ``max_bytes`` and against the task's body budget before
    it is kept, so memory holds at most the cap plus one decode step per body.
    """
    encoding = response.headers.get("Content-Encoding", "")
    decoder = _decoder(encoding)
    if decoder is None:
        return Body(
            DownloadStatus.UNSUPPORTED_ENCODING, message=f"Content-Encoding {encoding[:100]!r} was not asked for"
        )
    declared = response.content_length
    if declared is not None and declared > max_bytes and not head_only:
        return Body(DownloadStatus.TOO_LARGE, message=f"Content-Length {declared} is over the {max_bytes} byte limit")
    budget = body_budget.get()
    if budget is not None and declared is not None and isinstance(decoder, _Identity):
        await budget.reserve(declared)  # the whole body at once: one wait instead of one per chunk
    chunks, size = [], 0
    try:
        async for raw in response.content.iter_any():
            for piece in decoder.feed(raw):
                size += len(piece)
                if size > max_bytes:
                    response.close()  # the rest is never read: the connection cannot be reused
                    if head_only:
                        chunks.append(piece[: len(piece) - (size - max_bytes)])
                        return Body(DownloadStatus.FETCHED, b"".join(chunks))
                    return Body(DownloadStatus.TOO_LARGE, message=f"body passed the {max_bytes} byte limit")
                if budget is not None:
                    await budget.reserve(size)
                chunks.append(piece)
    except DECODE_ERRORS as exc:
        response.close()
        return Body(DownloadStatus.BAD_ENCODING, message=f"{encoding} body does not decode: {exc}"[:300])
    return Body(DownloadStatus.FETCHED, b"".join(chunks))
