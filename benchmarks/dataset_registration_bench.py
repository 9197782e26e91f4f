"""Registering a dataset's files over HTTP without a folder index: each file asked for one at a time vs now.

    .venv/bin/python benchmarks/dataset_registration_bench.py                 # 5,000 files, 20 ms per answer
    .venv/bin/python benchmarks/dataset_registration_bench.py --files 500     # a quick run

The files (empty) are served on loopback by ``samples.file_web``: a folder's URL lists nothing (a CDN,
Hugging Face's resolve/), and every answer comes after ``--delay-ms`` (a far server's round trip).
In one run, on one server:

* reference: what registration did before, ``fs.exists`` for each file in turn (a GET each);
* now: ``expand_files`` on the brace range, which asks for the files the listing did not show, at most
  ``CHECKS_AT_ONCE`` at a time.

The figure is files checked per second of wall time, each way, and their ratio; the server's peak of
requests answered at once is printed beside it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fsspec.core import url_to_fs

from cah_resources.crawl.dataset_files import CHECKS_AT_ONCE, expand_files
from cah_resources.samples.file_web import file_web


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        names = [f"{i:06d}.tar" for i in range(args.files)]
        for name in names:
            (Path(folder) / name).write_bytes(b"")
        with file_web(folder, delay_s=args.delay_ms / 1000) as web:
            urls = [f"{web.url}/{name}" for name in names]
            fs, _ = url_to_fs(web.url)
            started = time.perf_counter()
            assert all(fs.exists(url) for url in urls)
            sequential_s = time.perf_counter() - started
            started = time.perf_counter()
            assert expand_files([f"{web.url}/{{000000..{args.files - 1:06d}}}.tar"]) == urls
            now_s = time.perf_counter() - started
    print(f"{args.files:,} files over HTTP without a folder index, {args.delay_ms:g} ms per answer")
    print(f"reference, one at a time (fs.exists): {sequential_s:8.1f} s  {args.files / sequential_s:8.0f} files/s")
    print(f"now, {CHECKS_AT_ONCE} at a time (expand_files):  {now_s:8.1f} s  {args.files / now_s:8.0f} files/s")
    print(f"ratio: {sequential_s / now_s:.1f}x; server peak in flight: {web.peak_in_flight}")


if __name__ == "__main__":
    main()
