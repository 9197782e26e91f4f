"""A folder served on loopback over HTTP with no folder index (a CDN, Hugging Face's resolve/).

For tests and benchmarks. A folder's URL answers a page that lists nothing, so a client learns what
is there only by asking for each file. The server can answer each request after a delay (a far
server's round trip), answer chosen files 503 a number of times first (a server having a moment),
ask for a secret (a token in the query, a password) before it answers, and counts the requests and
the most it was answering at once.
"""

from __future__ import annotations

import base64
import functools
import http.server
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class FileWeb:
    """What a running ``file_web`` serves and what it saw."""

    url: str
    delay_s: float = 0.0
    unavailable: Counter[str] = field(default_factory=Counter)  # file name -> 503 answers still to give
    secret: str = ""  # when set, only a request with it in its query or its Basic credentials is answered (else 403)
    requests: Counter[str] = field(default_factory=Counter)  # method -> requests answered
    in_flight: int = 0
    peak_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # socketserver's 5 would make many clients at once wait on SYN retries


class _NoIndexHandler(http.server.SimpleHTTPRequestHandler):
    web: FileWeb

    def _answer(self, answer) -> None:
        web = self.web
        with web.lock:
            web.requests[self.command] += 1
            web.in_flight += 1
            web.peak_in_flight = max(web.peak_in_flight, web.in_flight)
            name = self.path.lstrip("/").partition("?")[0]
            unavailable = web.unavailable[name] > 0
            web.unavailable[name] -= unavailable
        time.sleep(web.delay_s)
        # Out of flight before the answer goes out: a client that sends its next request as soon as
        # it has this answer must not be counted as holding both.
        with web.lock:
            web.in_flight -= 1
        if unavailable:
            self.send_error(503)
        elif web.secret and not self._carries(web.secret):
            self.send_error(403)
        else:
            answer()

    def _carries(self, secret: str) -> bool:
        scheme, _, credentials = self.headers.get("Authorization", "").partition(" ")
        basic = base64.b64decode(credentials).decode(errors="replace") if scheme == "Basic" else ""
        return secret in self.path.partition("?")[2] or secret in basic

    def do_GET(self) -> None:
        self._answer(super().do_GET)

    def do_HEAD(self) -> None:
        self._answer(super().do_HEAD)

    def list_directory(self, path):
        body = b"<html><body>nothing to list here</body></html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return None

    def log_message(self, *args) -> None:
        pass


@contextmanager
def file_web(
    folder: str, delay_s: float = 0.0, unavailable: dict[str, int] | None = None, secret: str = ""
) -> Iterator[FileWeb]:
    """``folder`` served read-only on loopback over HTTP, each answer after ``delay_s``; yields what it serves."""
    web = FileWeb("", delay_s, Counter(unavailable or {}), secret)
    handler = type("Handler", (_NoIndexHandler,), {"web": web})
    server = _Server(("127.0.0.1", 0), functools.partial(handler, directory=folder))
    web.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield web
    finally:
        server.shutdown()
        server.server_close()
