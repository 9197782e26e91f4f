"""Rebuild this folder's tars: img2dataset's own webdataset output, downloaded from a loopback web.

img2dataset does not install into the project's environment (its webdataset<0.3 pin against the
project's webdataset 1.x; it would also move numpy back and bring wandb, opencv and scipy), so it
runs from a venv of its own, and its output is kept here for tests/test_clip_pairs_webdataset.py:

    uv venv /tmp/img2dataset && uv pip install --python /tmp/img2dataset/bin/python img2dataset==1.47.0
    .venv/bin/python tests/data/img2dataset/make_img2dataset_output.py /tmp/img2dataset/bin/img2dataset

Three runs over the same 12 tiny_clip images (one URL of them 404s: its key is missing from every
tar), encoded as jpg, png and webp: ``00000.tar``, ``00001.tar``, ``00002.tar``. Beside them
``captions.json``: each URL's caption, for the test to check what img2dataset wrote.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cah_resources.samples.tiny_clip.shapes import sample_pairs

HERE = Path(__file__).resolve().parent
MISSING = 5  # this image's URL answers 404


def main(img2dataset: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        web = Path(tmp, "web")
        web.mkdir()
        pairs = sample_pairs(12, seed=11)
        for i, (*_, jpeg) in enumerate(pairs):
            if i != MISSING:
                (web / f"{i}.jpg").write_bytes(jpeg)
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(web))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        urls = [f"{base}/{i}.jpg" for i in range(len(pairs))]
        captions = {url: caption for url, (_, _, caption, _) in zip(urls, pairs, strict=True)}
        pq.write_table(pa.table({"url": urls, "caption": list(captions.values())}), f"{tmp}/urls.parquet")
        try:
            # png's "quality" is its zlib level (0-9); jpg's and webp's are 1-100.
            for number, (encode, quality) in enumerate((("jpg", 95), ("png", 9), ("webp", 95))):
                out = f"{tmp}/out_{encode}"
                subprocess.run(
                    [
                        img2dataset,
                        f"--url_list={tmp}/urls.parquet",
                        "--input_format=parquet",
                        "--url_col=url",
                        "--caption_col=caption",
                        f"--output_folder={out}",
                        "--output_format=webdataset",
                        f"--encode_format={encode}",
                        f"--encode_quality={quality}",
                        "--image_size=48",
                        "--resize_mode=keep_ratio",
                        "--processes_count=1",
                        "--thread_count=4",
                        "--distributor=multiprocessing",
                        "--enable_wandb=False",
                    ],
                    check=True,
                )
                shutil.copyfile(f"{out}/00000.tar", HERE / f"{number:05d}.tar")
        finally:
            server.shutdown()
        (HERE / "captions.json").write_text(json.dumps(captions, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
