"""Hostile image files made with Pillow for tests, and a loopback web that serves given bodies."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cah_resources.samples.local_web import photo_like

START_OF_SCAN = 0xDA


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment after SOI; a scan's segment runs to the next marker."""
    at, out = 2, []
    while at < len(data):
        marker = data[at + 1]
        if marker == 0xD9:  # end of image
            out.append((marker, at, at + 2))
            break
        end = at + 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
        if marker == START_OF_SCAN:  # entropy-coded data: 0xFF is stuffed (FF 00) or a restart marker
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        out.append((marker, at, end))
        at = end
    return out


def progressive_jpeg_with_repeated_scans(side: int, repeats: int) -> bytes:
    """A progressive JPEG whose cheapest scan (an end-of-band run of a few bytes) comes ``repeats`` more times.

    libjpeg walks every block of the image once per scan, so decoding costs scans x pixels while
    the file stays small: the decode-time attack of a few hundred KB.
    """
    buffer = io.BytesIO()
    photo_like(side, side, seed=5, grain=20).save(buffer, "JPEG", progressive=True, quality=60)
    data = buffer.getvalue()
    scans = [s for s in jpeg_segments(data) if s[0] == START_OF_SCAN]
    _, start, end = min(scans, key=lambda s: s[2] - s[1])
    return data[:end] + data[start:end] * repeats + data[end:]


def jpeg_with_bogus_exif_tags(tags: int) -> bytes:
    """A valid JPEG whose EXIF IFD holds ``tags`` entries pointing at data larger than the EXIF block.

    Pillow warns once per such tag, each with its own message, so none is deduplicated.
    """
    entries = b"".join(struct.pack("<HHII", 0x9000 + i, 4, 1000, 8) for i in range(tags))
    tiff = b"II*\x00" + struct.pack("<IH", 8, tags) + entries + struct.pack("<I", 0)
    buffer = io.BytesIO()
    photo_like(300, 200, seed=6, grain=20).save(buffer, "JPEG", quality=90, exif=b"Exif\x00\x00" + tiff)
    return buffer.getvalue()


class BodiesWeb:
    """``with BodiesWeb({"/a.jpg": data}) as web: web.url("/a.jpg")``: a loopback server of fixed bodies.

    ``headers`` adds response headers per path; ``web.requests`` counts the paths asked for.
    """

    def __init__(self, bodies: dict[str, bytes], headers: dict[str, dict[str, str]] | None = None) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests[self.path] += 1
                body = outer.bodies.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body or b"")))
                for name, value in outer.headers.get(self.path, {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                pass

        self.bodies = bodies
        self.headers = headers or {}
        self.requests: Counter[str] = Counter()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="bodies-web", daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_port}{path}"

    def __enter__(self) -> BodiesWeb:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def sixteen_bit_png(side: int) -> bytes:
    """A greyscale 16-bit PNG of side x side zeros: ~0.2 MB at 9400, under max_pixels, 1 GB+ to convert."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + 2 * side)
    rows = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def jpeg_claiming_a_larger_frame(width: int, height: int) -> bytes:
    """A 640x480 photo JPEG whose frame header says width x height: libjpeg greys what is missing."""
    buffer = io.BytesIO()
    photo_like(640, 480, seed=9, grain=20).save(buffer, "JPEG", quality=80)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)
